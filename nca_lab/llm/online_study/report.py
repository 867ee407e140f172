"""The online study's report: records JSON, a Markdown table with paired bootstrap CIs, two figures.

Paired comparisons: every final run is evaluated on the same test prompts with the same sampling seed, so two
methods are compared prompt by prompt, seed s with seed s, with the two-level bootstrap of
:func:`nca_lab.llm.study.paired.paired_bootstrap` (seeds, then prompts; 2,000 replicates, fixed seed).  The
comparisons are the ones the study asks about (each method against TRL's Dr. GRPO and DAPO, online NCA against
offline NCA, each method against μ); read them as estimates with a multiplicity note, not as a family of tests.

Matched KL: methods move different distances from μ, so reward and accuracy are also compared at one KL(π‖μ),
the largest KL that every run's path reaches, interpolated linearly along each run's checkpoint path (step 0 = μ,
KL 0), then averaged over a method's seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from nca_lab.llm.online_study.pipeline import METHODS, Experiment, write_json
from nca_lab.llm.study.state import repo_relative

N_BOOT = 2000
PEERS = ("grpo_dr", "grpo_dapo")
LABELS = {
    "infonca_initial": "InfoNCA, ref μ", "infonca_sampler": "InfoNCA, ref sampler",
    "nca_initial": "NCA, ref μ", "nca_sampler": "NCA, ref sampler", "dpo_initial": "DPO best-vs-worst, ref μ",
    "grpo_dapo": "TRL GRPO (dapo)", "grpo_dr": "TRL GRPO (dr_grpo)", "nca_offline": "NCA offline (samples of μ)",
}
STYLE = {  # colour per loss family, line style per reference, marker per method, so that 8 curves stay legible
    # (InfoNCA and NCA at the sampler reference can coincide: NCA's gradient there is half InfoNCA's, Proposition
    # 13, and Adam's update is invariant to that factor; InfoNCA's large hollow marker keeps it visible)
    "infonca_initial": ("C0", "-", "o"), "infonca_sampler": ("C0", "--", "o"), "nca_initial": ("C1", "-", "s"),
    "nca_sampler": ("C1", "--", "s"), "dpo_initial": ("C2", "-", "^"), "grpo_dapo": ("C3", "-", "D"),
    "grpo_dr": ("C3", "--", "D"), "nca_offline": ("C4", ":", "v"),
}


def final_runs(exp: Experiment) -> dict[str, list[dict]]:
    """Each method's final runs (test split, the probe's lr), seeds increasing; methods with no run omitted."""
    lr = (exp.state.get("probe") or {}).get("lr")
    runs = [r for r in exp.state["runs"].values() if r["split"] == "test" and r["lr"] == lr]
    out = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in METHODS}
    return {m: rs for m, rs in out.items() if rs}


def _per_prompt(runs: list[dict], key: str, index: int = -1) -> list[list[float]]:
    return [r["checkpoints"][index]["per_prompt"][key] for r in runs]


def _paired(a, b) -> dict:
    from nca_lab.llm.study.paired import paired_bootstrap

    return paired_bootstrap(a, b, n_boot=N_BOOT, seed=0)


def _path(run: dict, base: dict, key: str) -> tuple[list[float], list[float]]:
    """(KL, value) along a run's checkpoints, starting at μ (KL 0)."""
    kls = [0.0] + [c["kl"] for c in run["checkpoints"]]
    vals = [base[key]] + [c[key] for c in run["checkpoints"]]
    return kls, vals


def at_kl(run: dict, base: dict, key: str, kl: float) -> float | None:
    """``key`` interpolated linearly in KL along the run's path at ``kl``; None where the path never reaches it
    (and, where the path's KL is not monotone, at the first crossing)."""
    kls, vals = _path(run, base, key)
    for (k0, v0), (k1, v1) in zip(zip(kls, vals), zip(kls[1:], vals[1:])):
        if min(k0, k1) <= kl <= max(k0, k1) and k1 != k0:
            return v0 + (v1 - v0) * (kl - k0) / (k1 - k0)
    return None


def summarise(exp: Experiment) -> dict:
    finals = final_runs(exp)
    base = exp.state["base"]["test"]
    for rs in finals.values():  # pairing prompt by prompt needs one prompt order everywhere
        for r in rs:
            for c in r["checkpoints"]:
                if c["per_prompt"]["id"] != base["per_prompt"]["id"]:
                    raise ValueError(f"run {r['id']} step {c['step']}: evaluated on other prompts than μ")
    out: dict = {"methods": {}, "vs_mu": {}, "vs_peer": {}, "online_vs_offline": {}, "matched_kl": None}
    for m, rs in finals.items():
        seconds = [r["seconds"] for r in rs]
        thr = [r["throughput"] for r in rs]
        gen_s = [t.get("generation_seconds") or 0.0 for t in thr]
        out["methods"][m] = {
            "seeds": [r["seed"] for r in rs],
            "samples": rs[0]["samples"],
            **{key: [r[key] for r in rs] for key in ("accuracy", "reward", "kl", "seconds")},
            # the offline method samples once, from μ, before training: its sampling rate
            "generation_tokens_per_second": statistics.mean(
                (r["offline_samples"] or {}).get("sampling_tokens_per_second") or t.get("generation_tokens_per_second")
                or 0.0 for r, t in zip(rs, thr)),
            "generation_seconds": statistics.mean(gen_s),
            "training_tokens_per_second": statistics.mean(t["training_tokens_per_second"] for t in thr)
            if all(t.get("training_tokens_per_second") for t in thr) else None,
            "offline_sampling_seconds": statistics.mean(r["offline_samples"]["sampling_seconds"] for r in rs)
            if rs[0].get("offline_samples") else None,
            "curve": [{"step": c["step"], "samples": c["samples"],
                       **{key: statistics.mean(r["checkpoints"][i][key] for r in rs)
                          for key in ("accuracy", "reward", "kl")}}
                      for i, c in enumerate(rs[0]["checkpoints"])],
        }
        out["methods"][m]["reward_gain_per_minute"] = (statistics.mean(out["methods"][m]["reward"]) - base["reward"]) \
            / (statistics.mean(seconds) / 60)
        out["vs_mu"][m] = {key: _paired(_per_prompt(rs, key), [base["per_prompt"][key]])
                           for key in ("correct", "reward")}
    seeds_of = {m: [r["seed"] for r in rs] for m, rs in finals.items()}
    for peer in PEERS:
        if peer not in finals:
            continue
        for m, rs in finals.items():
            if m == peer or (peer, m) == ("grpo_dapo", "grpo_dr") or seeds_of[m] != seeds_of[peer]:  # dapo−dr once
                continue
            out["vs_peer"].setdefault(peer, {})[m] = {
                key: _paired(_per_prompt(rs, key), _per_prompt(finals[peer], key)) for key in ("correct", "reward")}
    for m in ("nca_initial", "nca_sampler"):
        if m in finals and "nca_offline" in finals and seeds_of[m] == seeds_of["nca_offline"]:
            out["online_vs_offline"][m] = {key: _paired(_per_prompt(finals[m], key),
                                                        _per_prompt(finals["nca_offline"], key))
                                           for key in ("correct", "reward")}
    if finals:
        # the largest KL every run's path reaches (each path starts at μ, KL 0): no run needs extrapolating
        target = min(max(c["kl"] for c in r["checkpoints"]) for rs in finals.values() for r in rs)
        matched = {}
        for m, rs in finals.items():
            vals = {key: [at_kl(r, base, key, target) for r in rs] for key in ("accuracy", "reward")}
            matched[m] = {key: statistics.mean(v) if all(x is not None for x in v) else None
                          for key, v in vals.items()}
        out["matched_kl"] = {"kl": target, "values": matched}
    out["n_comparisons"] = sum(len(v) for v in out["vs_peer"].values()) * 2 + len(out["online_vs_offline"]) * 2
    return out


def _fmt_ci(ci: dict) -> str:
    return f"{ci['mean']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}]"


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def markdown(exp: Experiment, summary: dict, scale: str) -> str:
    cfg, state = exp.cfg, exp.state
    base = state["base"]
    probe = state.get("probe")
    lines = [f"# Online study ({scale}): on-policy contrastive losses vs TRL's GRPO",
             "",
             f"Command: `{state['command']}`. Device: CPU, one torch thread per run, {cfg.workers} runs in parallel.",
             "",
             f"μ: `{cfg.mu or 'a tiny Llama trained by the base stage'}` ({base['n_params']:,} parameters), task "
             f"level `{cfg.level}`; test prompts: the first {cfg.n_test} of the test split ({cfg.eval_samples} "
             f"samples each for the reward and the KL, greedy for accuracy). Every run: {cfg.steps} steps × "
             f"{cfg.batch_size} prompts × K = {cfg.k} = {cfg.samples_per_run} samples, lr schedule "
             f"`{cfg.lr_scheduler}` (warm-up {cfg.warmup_ratio}), β = {cfg.beta}, α = {cfg.alpha} "
             "(InfoNCA/NCA), β = {0} (DPO); TRL GRPO with beta = 0.".format(cfg.beta),
             "",
             f"μ on the test prompts: greedy accuracy {base['test']['accuracy']:.3f}, mean sampled reward "
             f"{base['test']['reward']:.3f}.",
             ""]
    if probe:
        lines += ["## Learning-rate probe (seed {0}, {1} validation prompts, final checkpoint)".format(
            cfg.probe_seed, cfg.n_validation), "",
            "| lr | " + " | ".join(f"{m} reward" for m in cfg.probe_methods) + " | mean |",
            "|---|" + "---|" * (len(cfg.probe_methods) + 1)]
        for row in probe["table"]:
            lines.append(f"| {row['lr']:g} | " + " | ".join(f"{row['rewards'][m]:.3f}" for m in cfg.probe_methods)
                         + f" | {row['mean_reward']:.3f} |")
        lines += ["", f"Chosen lr: **{probe['lr']:g}**" + (" (on the grid's edge)" if probe["on_edge"] else ""),
                  ""]
    if summary["methods"]:
        lines += ["## Final runs (test prompts, final checkpoint; mean ± SD over seeds)", "",
                  "| method | seeds | accuracy | reward | KL(π‖μ) | train s | Δreward / train min | gen tok/s | "
                  "train tok/s | Δreward vs μ [95 % CI] | Δaccuracy vs μ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, s in summary["methods"].items():
            vs = summary["vs_mu"][m]
            tt = s["training_tokens_per_second"]
            lines.append(f"| {LABELS[m]} | {len(s['seeds'])} | {_mean_sd(s['accuracy'])} | {_mean_sd(s['reward'])} | "
                         f"{_mean_sd(s['kl'])} | {statistics.mean(s['seconds']):.0f} | "
                         f"{s['reward_gain_per_minute']:.4f} | "
                         f"{s['generation_tokens_per_second']:.0f} | {f'{tt:.0f}' if tt else '—'} | "
                         f"{_fmt_ci(vs['reward'])} | {_fmt_ci(vs['correct'])} |")
        lines += ["", "`train s`: wall seconds of the training run (sampling, scoring, reference, forward/backward, "
                  "optimiser; the offline method's sampling from μ included); `gen tok/s`: sampled tokens per "
                  "second of `generate`; `train tok/s`: trained tokens per second of forward + backward (our trainer "
                  "only: TRL's step is timed as a whole). The offline method's `gen tok/s` is its one-time sampling "
                  "from μ in batches of many prompts, not comparable with the online batches of "
                  f"{cfg.batch_size} × {cfg.k}. A seed pairs runs that share the test prompts and the seed number; "
                  "our trainer and TRL draw their data order and samples from that seed with different samplers.", ""]
        for peer, table in summary["vs_peer"].items():
            lines += [f"## Paired against {LABELS[peer]} (method − peer, 95 % CI over seeds and prompts)", "",
                      "| method | Δ reward | Δ accuracy |", "|---|---|---|"]
            lines += [f"| {LABELS[m]} | {_fmt_ci(c['reward'])} | {_fmt_ci(c['correct'])} |" for m, c in table.items()]
            lines.append("")
        if summary["online_vs_offline"]:
            lines += ["## Online NCA − offline NCA (same samples budget)", "", "| method | Δ reward | Δ accuracy |",
                      "|---|---|---|"]
            lines += [f"| {LABELS[m]} | {_fmt_ci(c['reward'])} | {_fmt_ci(c['correct'])} |"
                      for m, c in summary["online_vs_offline"].items()]
            lines.append("")
        mk = summary["matched_kl"]
        lines += [f"## At matched KL(π‖μ) = {mk['kl']:.3f} (the largest KL every run reaches; interpolated along each "
                  "run's checkpoints, mean over seeds)", "", "| method | reward | accuracy |", "|---|---|---|"]
        fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        lines += [f"| {LABELS[m]} | {fmt(v['reward'])} | {fmt(v['accuracy'])} |" for m, v in mk["values"].items()]
        lines += ["", f"{summary['n_comparisons']} method-vs-peer/offline intervals are reported: at 95 % each, about "
                  f"{0.05 * summary['n_comparisons']:.1f} would exclude 0 by chance if no method differed.", ""]
    remaining = [s for s in ("base", "probe", "runs") if not exp.done(s)]
    if remaining:
        lines += [f"**Not finished**: stages {remaining} remain; continue with `python -m nca_lab.llm.online_study "
                  f"--scale {scale} --out OUT --resume` (OUT: the first command's --out).", ""]
    return "\n".join(lines)


def figures(exp: Experiment, summary: dict, prefix: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = exp.state["base"]["test"]
    finals = final_runs(exp)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    panels = [("samples", "accuracy", "greedy accuracy (test)"), ("samples", "reward", "mean sampled reward (test)"),
              ("kl", "accuracy", "greedy accuracy (test)"), ("kl", "reward", "mean sampled reward (test)")]
    for ax, (x, y, ylabel) in zip(axes.flat, panels):
        for m, rs in finals.items():
            color, ls, marker = STYLE[m]
            xs = [0.0] + [statistics.mean(r["checkpoints"][i][x] for r in rs) for i in range(len(rs[0]["checkpoints"]))]
            ys = np.array([[base[y]] + [c[y] for c in r["checkpoints"]] for r in rs])
            se = ys.std(axis=0, ddof=1) / np.sqrt(len(rs)) if len(rs) > 1 else np.zeros(ys.shape[1])
            hollow = m == "infonca_sampler"
            ax.errorbar(xs, ys.mean(axis=0), yerr=se, color=color, ls=ls, marker=marker, ms=9 if hollow else 4,
                        mfc="none" if hollow else color, capsize=2, label=LABELS[m])
        ax.set_xlabel("samples drawn (offline: samples trained on)" if x == "samples" else "KL(π‖μ), nats (sampled)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle(f"On-policy vs offline vs TRL GRPO: {base.get('n_prompts')} test prompts, "
                 f"K = {exp.cfg.k} per training prompt, mean ± SE over "
                 f"{max(len(rs) for rs in finals.values())} seeds (CPU)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend under the panels
    fig.savefig(f"{prefix}_curves.png", dpi=110)
    plt.close(fig)

    methods = list(summary["methods"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    gen = [summary["methods"][m]["generation_seconds"] + (summary["methods"][m]["offline_sampling_seconds"] or 0)
           for m in methods]
    total = [statistics.mean(summary["methods"][m]["seconds"]) for m in methods]
    idx = np.arange(len(methods))
    ax.bar(idx, gen, color="C0", label="sampling (generate)")
    ax.bar(idx, [t - g for t, g in zip(total, gen)], bottom=gen, color="C7", label="everything else in the run")
    ax.set_xticks(idx, [LABELS[m] for m in methods], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("seconds per run (mean over seeds)")
    ax.set_title(f"Where a run's time goes: {exp.cfg.samples_per_run} samples, CPU, one torch thread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{prefix}_time.png", dpi=110)
    plt.close(fig)


def write_report(exp: Experiment, *, results_dir: Path, figures_dir: Path, scale: str) -> None:
    if "base" not in exp.state:
        raise ValueError("the report needs the base stage: run --stages base first")
    summary = summarise(exp)
    results_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    name = f"online_{scale}"
    finals = final_runs(exp)
    records = []  # one per final run and checkpoint: the fields, per-prompt outcomes kept
    for m, rs in finals.items():
        for r in rs:
            for c in r["checkpoints"]:
                records.append({"method": m, "loss": r["loss"], "online_ref": r["online_ref"],
                                "loss_type": r["loss_type"], "k": r["k"], "seed": r["seed"], "lr": r["lr"],
                                "step": c["step"], "samples": c["samples"], "accuracy": c["accuracy"],
                                "reward": c["reward"], "kl": c["kl"], "kl_se": c["kl_se"],
                                "well_formed": c["well_formed"], "device": r["device"], "seconds": r["seconds"],
                                "final": c is r["checkpoints"][-1], "per_prompt": {k: v for k, v in
                                                                                  c["per_prompt"].items() if k != "id"}})
    test_ids = exp.state["base"]["test"]["per_prompt"]["id"]
    remaining = [s for s in ("base", "probe", "runs") if not exp.done(s)]
    runs = [{k: v for k, v in r.items() if k != "checkpoints"} for r in exp.state["runs"].values()]
    result = {"experiment": "nca_lab.llm.online_study", "command": exp.state["command"],
              "config": exp.state["config"], "invocations": exp.state.get("invocations"),
              "stages": exp.state["stages"], "remaining_stages": remaining, "base": exp.state["base"],
              "probe": exp.state.get("probe"), "test_prompt_ids": test_ids, "records": records, "runs": runs,
              "summary": summary}
    result = repo_relative(result)
    write_json(results_dir / f"{name}.json", result)
    (results_dir / f"{name}.md").write_text(markdown(exp, summary, scale))
    if summary["methods"]:
        prefix = figures_dir / f"llm_online_{scale}"
        figures(exp, summary, prefix)
        write_json(Path(f"{prefix}.json"), repo_relative({"summary": summary, "base": {
            k: exp.state["base"]["test"][k] for k in ("accuracy", "reward")}}))
    print(f"report: {results_dir / (name + '.json')}" + (f" (remaining stages: {remaining})" if remaining else ""))

"""Writing the v2 study's results from a finished or partial state: ``<dir>/<name>.json`` + ``.md`` (the numbers of
:func:`nca_lab.llm.study.report_v2.build_report`) and the figures ``<figures_dir>/<prefix>_*.png`` + ``.json``:

``<prefix>_paths``        per K, test accuracy and mean sampled reward against KL(π‖μ) along each method's
                          training-time path (μ at KL 0, then the checkpoints; mean over seeds, first μ);
``<prefix>_logp_best``    Δ log π(best response) and Δ log π(worst) on training prompts against the training step;
``<prefix>_matched_kl``   reward and accuracy at the matched-KL targets, mean ± std over seeds.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from nca_lab.llm.study.plots import COLORS, _plt
from nca_lab.llm.study.report_v2 import build_report
from nca_lab.llm.study.state import json_safe, repo_relative, write_json

__all__ = ["write_report", "markdown_v2"]


def _n(x, d=3):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def _ms(st, d=3):
    return "—" if not st or st["n"] == 0 else f"{st['mean']:.{d}f} ± {st['std']:.{d}f}"


def _save(fig, data, path: Path) -> list[str]:
    fig.tight_layout()  # the lower row's titles otherwise sit on the upper row's axis labels
    fig.savefig(path.with_suffix(".png"), dpi=110, bbox_inches="tight")
    _plt().close(fig)
    path.with_suffix(".json").write_text(json.dumps(json_safe(data), indent=1, default=str) + "\n")
    return [str(path.with_suffix(".png")), str(path.with_suffix(".json"))]


def _figures(rep: dict, cfg, fig_dir: Path, prefix: str) -> list[str]:
    plt = _plt()
    fig_dir.mkdir(parents=True, exist_ok=True)
    files = []
    mu0 = cfg.mu_seeds[0]
    paths = [p for p in rep["paths"] if p["mu_seed"] == mu0]
    rows = [r for r in rep["matched_kl"] if "method" in r and r["mu_seed"] == mu0]
    if not paths:  # no final run has an evaluated checkpoint yet: nothing to draw (an empty figure says nothing)
        return files
    ks = [k for k in cfg.ks if any(p["k"] == k for p in paths)]  # a K with no evaluated run gets no empty panel
    fig, axes = plt.subplots(len(ks), 2, figsize=(11, 4 * len(ks)), squeeze=False)
    for i, k in enumerate(ks):
        for j, metric in enumerate(("accuracy", "reward")):
            ax = axes[i][j]
            for p in paths:
                if p["k"] == k:
                    ax.plot(p["kl"], p[metric], "o-", color=COLORS.get(p["method"], "k"), label=p["method"])
            ax.set_xlabel("KL(π‖μ) [nats]")
            ax.set_ylabel(f"test {metric}")
            ax.set_title(f"K = {k}, μ seed {mu0}: training-time path")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    files += _save(fig, paths, fig_dir / f"{prefix}_paths")
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4), squeeze=False)
    for i, k in enumerate(ks):
        ax = axes[0][i]
        for p in paths:
            if p["k"] == k:
                ax.plot(p["step"], p["logp_best_change"], "o-", color=COLORS.get(p["method"], "k"), label=p["method"])
                ax.plot(p["step"], p["logp_worst_change"], "x--", color=COLORS.get(p["method"], "k"))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("training step")
        ax.set_ylabel("Δ log π (solid: best, dashed: worst)")
        ax.set_title(f"K = {k}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    files += _save(fig, paths, fig_dir / f"{prefix}_logp_best")
    if not rows:
        return files
    ks = [k for k in cfg.ks if any(r["k"] == k for r in rows)]
    fig, axes = plt.subplots(len(ks), 2, figsize=(11, 4 * len(ks)), squeeze=False)
    for i, k in enumerate(ks):
        for j, metric in enumerate(("accuracy", "reward")):
            ax = axes[i][j]
            for m in cfg.methods:
                for reading, fmt, name in (("first", "o-", "first reached"), ("best", "s--", "best crossing")):
                    rr = [r for r in rows if r["k"] == k and r["method"] == m and r.get("reading", "first") == reading]
                    if rr:
                        ax.errorbar([r["kl_target"] for r in rr], [r[metric]["mean"] for r in rr],
                                    yerr=[r[metric]["std"] for r in rr], fmt=fmt, capsize=3,
                                    color=COLORS.get(m, "k"), label=f"{m} ({name})")
            ax.set_xlabel("matched KL(π‖μ) [nats]")
            ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
            ax.set_title(f"K = {k}: at equal KL")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    files += _save(fig, rows, fig_dir / f"{prefix}_matched_kl")
    return files


def markdown_v2(res: dict) -> str:
    """The Markdown summary of a v2 result."""
    L = [f"# Verifiable-reasoning study v2 — `{res['scale']}` ({res['device']})", "",
         f"Status: **{'complete' if not res['pending'] else 'partial'}** at {res['written_at']} "
         f"({len(res['pending'])} units pending).  Commands: " + ", ".join(f"`{c}`" for c in res["commands"] if c),
         "", f"Task level `{res['level']}` ({res.get('task', {}).get('difficulty_ops')} operations, operands up to "
         f"{res.get('task', {}).get('max_operand')}); splits disjoint: {res.get('task', {}).get('disjoint')}; test "
         f"prompts {res['config']['eval'].get('n_test')}, validation {res['config']['eval'].get('n_validation')}, "
         f"train {res['config']['data'].get('n_prompts')}; every run {res['steps_per_run']} steps "
         f"({res['config']['align'].get('epochs')} epochs), {res['config']['n_checkpoints']} evaluated checkpoints.", "",
         "Figures: " + (", ".join(f"`{f}`" for f in res.get("figures", []) if f.endswith(".png"))
                        or "none yet (they plot final runs, and no final run has an evaluated checkpoint)"), ""]
    L += ["## μ", "", "| μ seed | parameters | steps | s/step | test accuracy | test reward | reward std | "
          "val. prompts with spread | learnable, not solved |", "|---|---|---|---|---|---|---|---|---|"]
    for s, m in sorted(res.get("mus", {}).items()):
        lb = m.get("learnability", {})
        L.append(f"| {s} | {m.get('n_params')} | {m.get('steps_done')} | {_n(m.get('seconds_per_step'))} | "
                 f"{_n(lb.get('test_greedy_accuracy'))} | {_n(lb.get('test_sampled_reward'))} | "
                 f"{_n(lb.get('test_reward_std'))} | {_n(lb.get('validation_prompts_with_spread'), 2)} | "
                 f"{lb.get('learnable_not_solved')} |")
    L += ["", "## Sample sets (K = 4 from μ; each final seed has its own)", "",
          "| set | mean reward | best | worst | rows with spread |", "|---|---|---|---|---|"]
    for name, s in sorted(res.get("samples", {}).items()):
        st = s["stats"]["k4"]
        L.append(f"| {name} | {_n(st['mean_reward'])} | {_n(st['mean_best_reward'])} | {_n(st['mean_worst_reward'])} "
                 f"| {_n(st['fraction_rows_with_reward_spread'], 2)} |")
    L += ["", "## Sweep (coordinate search on validation; grids extended while the choice is on an edge)", ""]
    for key, sel in sorted(res.get("selection", {}).items()):
        tried = "; ".join(f"{e['param']} {e['values']} → {e['chosen']:g}" + (" (ON EDGE)" if e["on_edge"] else "")
                          for e in sel.get("coordinate_log", []))
        L.append(f"- {key}: {sel['setting']}" + (f" (inherited from {sel['inherited_from']})"
                                                  if sel.get("inherited_from") else f" — {tried}"))
    L += ["", "### Sweep runs so far (tuning runs on validation, sweep seed; exploratory, never a final result)", "",
          "log π/μ of the best and worst training response: mean of the last 4 logged training batches.", "",
          "| method | K | setting | val. accuracy | val. reward | KL(π‖μ) | log π/μ (best) | log π/μ (worst) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in res.get("sweep_runs", []):
        setting = ", ".join(f"{k} {v:g}" for k, v in r["setting"].items() if isinstance(v, (int, float)))
        L.append(f"| {r['method']} | {r['k']} | {setting} | " + ("diverged | | | | |" if r["diverged"] else
                 f"{_n(r['accuracy'])} | {_n(r['reward'])} | {_n(r['kl'], 2)} | "
                 f"{_n(r['train_logratio_best_end'], 2)} | {_n(r['train_logratio_worst_end'], 2)} |"))
    L += ["", "## Final runs: test split, mean ± std over seeds", "",
          "| method | K | μ | seeds | accuracy | reward | KL(π‖μ) | Δ log π(best) | Δ log π(worst) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for s, m in sorted(res.get("mus", {}).items()):
        t = m.get("test", {})
        L.append(f"| μ | – | {s} | – | {_n(t.get('accuracy'))} | {_n(t.get('reward'))} | 0 | 0 | 0 |")
    for r in res["final"]:
        L.append(f"| {r['method']} | {r['k']} | {r['mu_seed']} | {r['n_seeds']} | {_ms(r['accuracy'])} | "
                 f"{_ms(r['reward'])} | {_ms(r['kl'], 2)} | {_ms(r['logp_best_change'], 2)} | "
                 f"{_ms(r['logp_worst_change'], 2)} |")
    L += ["", "## Training-time paths (mean over seeds; step 0 = μ)", ""]
    for p in res["paths"]:
        L.append(f"- {p['method']} K={p['k']} μ{p['mu_seed']}: " + "; ".join(
            f"step {s}: acc {_n(a)}, reward {_n(r)}, KL {_n(kl, 2)}, Δlogπ(best) {_n(b, 2)}"
            for s, a, r, kl, b in zip(p["step"], p["accuracy"], p["reward"], p["kl"], p["logp_best_change"])))
    L += ["", "## Matched KL (each seed's training-time path read at the target KL: *first* = where training first "
          "reaches it, *best* = its best-reward crossing; they differ where KL rises and falls)", ""]
    for r in res["matched_kl"]:
        if "method" in r:
            L.append(f"- K={r['k']} μ{r['mu_seed']} KL {r['kl_target']:.3f} ({r.get('reading', 'first')}): "
                     f"{r['method']} reward {_ms(r['reward'])}, accuracy {_ms(r['accuracy'])} (n = {r['n_seeds']})")
        else:
            L.append(f"  - {r['comparison']} {r['metric']} at KL {r['kl_target']:.3f} ({r.get('reading', 'first')}): "
                     f"{r['mean']:+.4f} "
                     f"[{r['lo']:+.4f}, {r['hi']:+.4f}] (paired bootstrap, {len(r['seeds'])} seeds)")
    L += ["", "## Displacement runs (fixed settings, not the sweep's choice: where the best response's likelihood "
          "falls)", ""]
    if res.get("displacement"):
        L += ["Test split, mean ± std over seeds; Δ log π on training prompts, at the end and along training.", "",
              "| method | K | setting | seeds | accuracy | reward | KL(π‖μ) | Δ log π(best) | Δ log π(worst) | "
              "Δ log π(best) along training |", "|---|---|---|---|---|---|---|---|---|---|"]
        for d in res["displacement"]:
            along = "; ".join(f"{st}: {_n(b, 2)}" for st, b in zip(d["path"]["step"], d["path"]["logp_best_change"])
                              ) if "path" in d else ""
            L.append(f"| {d['method']} | {d['k']} | {d['label']} | {d['n_seeds']} | " + (
                f"{_ms(d['accuracy'])} | {_ms(d['reward'])} | {_ms(d['kl'], 2)} | {_ms(d['logp_best_change'], 2)} | "
                f"{_ms(d['logp_worst_change'], 2)} | {along} |" if d["n_seeds"] else "| | | | | |"))
        L.append("")
        L.append("Their paired intervals (against μ, and between methods at the same lr) are listed with the "
                 "comparisons below, marked *displacement*.")
    else:
        L.append("None in this recipe.")
    L += ["", f"## Paired comparisons ({res['n_comparisons']} comparisons; 95 % two-level bootstrap "
          "interval, seeds then prompts, unadjusted; p_holm = Holm-adjusted over all of them — read an interval "
          "as separated only if p_holm < 0.05)", ""]
    for c in res["comparisons"]:
        L.append(f"- {c['metric']}: {c['a']} − {c['b']} = {c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}], "
                 f"p {c['p_two_sided']:.3g}, p_holm {c['p_holm']:.3g} ({c['n_seeds']} seeds × {c['n_prompts']} prompts)")
    L += ["", f"## Diverged runs ({len(res.get('diverged', []))}; the trainer stopped them on NaN/inf; a diverged "
          "sweep point counts as the worst of its grid)", ""]
    L += [f"- {d['run_id']} ({d['stage']}): {d['message']}" for d in res.get("diverged", [])]
    L += ["", "## Time per unit of work (measured)", "", "| unit | n | mean wall s | mean CPU s | total wall s |",
          "|---|---|---|---|---|"]
    for k, d in res["timing"]["per_unit"].items():
        L.append(f"| {k} | {d['n']} | {d['mean_wall_s']:.1f} | {d['mean_cpu_s']:.1f} | {d['total_wall_s']:.0f} |")
    unmeasured = res["timing"]["unmeasured_kinds"]
    L += ["", f"Remaining wall time, pending units × the measured mean of their kind (an unchosen sweep counted as 6 "
          f"runs): {res['timing']['remaining_wall_s_estimate'] / 3600:.1f} h"
          + (f" — a lower bound: no unit of {', '.join(unmeasured)} has finished yet, so those are not counted"
             if unmeasured else ""), "", f"## Pending ({len(res['pending'])})", ""]
    L += [f"- {p}" for p in res["pending"][:200]]
    if len(res["pending"]) > 200:
        L.append(f"- … and {len(res['pending']) - 200} more")
    return "\n".join(L) + "\n"


def _strip_per_prompt(obj):
    """``obj`` without its per-prompt outcome lists (they stay in ``<out>/state.json``, for every evaluation)."""
    if isinstance(obj, dict):
        return {k: _strip_per_prompt(v) for k, v in obj.items() if k != "per_prompt"}
    if isinstance(obj, list):
        return [_strip_per_prompt(v) for v in obj]
    return obj


def write_report(study) -> dict:
    """Build the report of ``study``'s state and write JSON, Markdown and figures; returns the result."""
    from nca_lab.llm.study.recipe_v2 import run_steps

    cfg = study.cfg
    rep = build_report(study.state, cfg)
    name = cfg.results.get("name", f"study_{cfg.scale}")
    prefix = cfg.results.get("figures_prefix", f"llm_{cfg.scale}")
    res = {**{k: v for k, v in study.state.items() if k != "runs"}, **rep,
           "commands": study.state.get("commands", [study.state.get("command")]),
           "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps_per_run": run_steps(cfg),
           "runs": [{k: v for k, v in r.items() if k != "trajectory"} for r in study.state.get("runs", [])],
           "per_prompt_outcomes": f"in {study.state_path} (every evaluation: μ, sweep runs, checkpoints)"}
    res = _strip_per_prompt(res)
    res["figures"] = _figures(rep, cfg, Path(study.figures_dir), prefix)
    res = repo_relative(res)  # both files: a recorded result must not name the folders of the machine it ran on
    study.results_dir.mkdir(parents=True, exist_ok=True)
    write_json(study.results_dir / f"{name}.json", res)
    (study.results_dir / f"{name}.md").write_text(markdown_v2(json_safe(res)))
    return res

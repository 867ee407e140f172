"""Figures of the verifiable-reasoning study (:mod:`nca_lab.llm.study`), each a PNG plus the JSON of the numbers
drawn in it, written by the study's report stage:

``<prefix>_accuracy_vs_kl``   test greedy accuracy and mean sampled reward against KL(π‖μ) per method; small
                              points are seeds, large ones the mean ± std over seeds; circles K = 4, squares
                              K = 2; μ is the star at KL = 0;
``<prefix>_logps_trajectories`` per method, the trainer's batch means of log π − log μ of the best (solid) and
                              the worst (dashed) response over training steps, mean over seeds (K = 4 dark,
                              K = 2 light); CLHA has no reference, so its panel shows the raw ``logps/best`` and
                              ``logps/worst`` (batch means of log π, which also move with the batch's prompts);
``<prefix>_k2_vs_k4``         test accuracy and reward at K = 2 vs K = 4 per method, as differences from μ's
                              (bars: mean, whiskers: std over seeds, dots: seeds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["write_figures"]

COLORS = {"dpo": "tab:red", "dpo_all": "tab:orange", "infonca": "tab:blue", "nca": "tab:green",
          "nca_pair": "tab:olive", "ipo": "tab:purple", "clha": "tab:brown"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _final_records(result: dict) -> list[dict]:
    return [r for r in result.get("runs", []) if r.get("test") is not None]


def _title(result: dict) -> str:
    return f"scale {result['scale']} — {result['device']}"


def _save(fig, data: dict, out_dir: Path, name: str) -> list[str]:
    png, js = out_dir / f"{name}.png", out_dir / f"{name}.json"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    js.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return [str(png), str(js)]


def _accuracy_vs_kl(result: dict, out_dir: Path, name: str) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    base = (result.get("base_policy") or {}).get("test")
    data = {"mu": None if base is None else {"accuracy": base["accuracy"], "reward": base["reward"], "kl": 0.0},
            "points": [], "means": []}
    for r in _final_records(result):
        data["points"].append({k: r[k] for k in ("method", "k", "seed", "accuracy", "reward", "kl")})
    for row in result.get("summary", []):
        data["means"].append({"method": row["method"], "k": row["k"], "n_seeds": row["n_seeds"],
                              **{m: {"mean": row[m]["mean"], "std": row[m]["std"]} for m in ("accuracy", "reward", "kl")}})
    for ax, metric, label in ((axes[0], "accuracy", "greedy accuracy (test)"),
                              (axes[1], "reward", "mean sampled reward (test)")):
        for p in data["points"]:
            ax.scatter(p["kl"], p[metric], s=12, alpha=0.35, color=COLORS.get(p["method"], "gray"),
                       marker="o" if p["k"] == 4 else "s")
        for m in data["means"]:
            ax.errorbar(m["kl"]["mean"], m[metric]["mean"], xerr=m["kl"]["std"], yerr=m[metric]["std"],
                        fmt="o" if m["k"] == 4 else "s", ms=7, color=COLORS.get(m["method"], "gray"), capsize=2,
                        label=f"{m['method']} K={m['k']}")
        if data["mu"] is not None:
            ax.scatter([0.0], [data["mu"][metric]], marker="*", s=160, color="black", label="μ", zorder=5)
        ax.set_xlabel("KL(π‖μ) from samples (nats)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    # the legend goes below both panels: inside either one it covers points (it hid IPO's in the CPU study)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=8, loc="lower center", bbox_to_anchor=(0.5, -0.1),
               frameon=False)
    fig.suptitle(f"Accuracy and reward against KL — {_title(result)}", fontsize=9)
    return _save(fig, data, out_dir, name)


def _mean_curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Mean over runs of a trajectory, at the steps every run logged."""
    curves = [dict(zip(r["trajectory"]["step"], r["trajectory"][key])) for r in records]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    out_steps, out_vals = [], []
    for s in steps:
        vals = [c[s] for c in curves if c[s] is not None]
        if len(vals) == len(curves):
            out_steps.append(s)
            out_vals.append(sum(vals) / len(vals))
    return out_steps, out_vals


def _trajectories(result: dict, out_dir: Path, name: str) -> list[str]:
    plt = _plt()
    records = _final_records(result)
    methods = [m for m in result.get("methods", {}) if any(r["method"] == m for r in records)]
    ncols = min(4, max(1, len(methods)))
    nrows = max(1, math.ceil(len(methods) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    data = {"curves": []}
    for ax, method in zip(axes.flat, methods):
        reference_free = all(v is None for r in records if r["method"] == method
                             for v in r["trajectory"]["logratio/best"])
        best_key, worst_key = ("logps/best", "logps/worst") if reference_free else ("logratio/best", "logratio/worst")
        for k, alpha in ((4, 1.0), (2, 0.45)):
            recs = [r for r in records if r["method"] == method and r["k"] == k]
            if not recs:
                continue
            for key, style in ((best_key, "-"), (worst_key, "--")):
                steps, vals = _mean_curve(recs, key)
                ax.plot(steps, vals, style, color=COLORS.get(method, "gray"), alpha=alpha,
                        label=f"K={k} {'best' if 'best' in key else 'worst'}")
                data["curves"].append({"method": method, "k": k, "metric": key, "n_runs": len(recs),
                                       "step": steps, "mean": vals})
        ax.axhline(0.0, color="gray", lw=0.6)
        ax.set_title(f"{method}: " + ("log π (no reference)" if reference_free else "log π − log μ"), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle(f"Best/worst response log-likelihood during training (batch means, mean over seeds) — "
                 f"{_title(result)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, data, out_dir, name)


def _k2_vs_k4(result: dict, out_dir: Path, name: str) -> list[str]:
    plt = _plt()
    summary = {(r["method"], r["k"]): r for r in result.get("summary", [])}
    methods = [m for m in result.get("methods", {}) if any((m, k) in summary for k in (2, 4))]
    base = (result.get("base_policy") or {}).get("test")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    data = {"mu": None if base is None else {"accuracy": base["accuracy"], "reward": base["reward"]}, "bars": []}
    width = 0.38
    for ax, metric in ((axes[0], "accuracy"), (axes[1], "reward")):
        for i, method in enumerate(methods):
            for j, k in enumerate((2, 4)):
                row = summary.get((method, k))
                if row is None:
                    continue
                x = i + (j - 0.5) * width
                st = row[metric]
                # Relative to μ: the effects are a few points on a scale where μ sits near 0.5.
                shift = base[metric] if base is not None else 0.0
                ax.bar(x, st["mean"] - shift, width, yerr=st["std"], capsize=2, color=COLORS.get(method, "gray"),
                       alpha=0.45 if k == 2 else 0.95, label=f"K={k}" if i == 0 else None)
                ax.scatter([x] * len(st["values"]), [v - shift for v in st["values"]], s=8, color="black", zorder=3)
                if metric == "accuracy":
                    data["bars"].append({"method": method, "k": k, "n_seeds": row["n_seeds"],
                                         "accuracy": row["accuracy"], "reward": row["reward"]})
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, fontsize=8)
        label = "greedy accuracy" if metric == "accuracy" else "mean sampled reward"
        ax.set_ylabel(f"test {label} − μ's ({base[metric]:.3f})" if base is not None else f"test {label}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"K = 2 (light) vs K = 4 (dark), same samples — {_title(result)}", fontsize=9)
    return _save(fig, data, out_dir, name)


def write_figures(result: dict, out_dir: str | Path, prefix: str) -> list[str]:
    """Write the study's three figures (+ JSON) into ``out_dir`` as ``<prefix>_*``; returns the file paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    files += _accuracy_vs_kl(result, out_dir, f"{prefix}_accuracy_vs_kl")
    files += _trajectories(result, out_dir, f"{prefix}_logps_trajectories")
    files += _k2_vs_k4(result, out_dir, f"{prefix}_k2_vs_k4")
    return files

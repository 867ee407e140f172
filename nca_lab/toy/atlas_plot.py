"""The atlas figure: ``figures/atlas.png`` + ``figures/atlas.json``, written by ``python -m nca_lab.toy.plot``
(``--only atlas`` for this figure alone).

Every registry loss's population minimiser (``nca_lab.toy.atlas.atlas_minimisers``) on one instance
(``ATLAS_INSTANCE``: Y = 5, α = β = 1 wherever a loss has them), plotted against r(y), next to r/α + C (C = 0
drawn) and NCA's target r/α − log Z. Rows: K = 2 and K = 4 with the rewards as labels (R = r: deterministic
preferences, the NCA paper's setting), and K = 2 with Bradley–Terry labels (stochastic preferences).
Reference-based losses show the free minimiser r_θ* (a shift-invariant loss at its normalised representative,
Σ_y μ e^{f/β} = 1); reference-free ones show log π*/μ of the policy parameterisation. Losses without a finite
minimiser (the solver's ``NoMinimiserError``) and the piecewise-linear ones (not solved) are listed under each
row. The JSON holds every number, rounded to ``studies.SIGNIFICANT_DIGITS`` significant digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nca_lab.losses import LOSSES
from nca_lab.toy.atlas import ATLAS_INSTANCE, atlas_minimisers

__all__ = ["ROWS", "atlas_record", "make_atlas", "split_only"]

ROWS = (("reward", 2), ("reward", 4), ("bt", 2))


def split_only(only: str | None) -> tuple[str | None, bool]:
    """``--only`` without the token ``atlas`` (``""`` if nothing else was asked) and whether the atlas is wanted."""
    if only is None:
        return None, True
    tokens = [t.strip() for t in only.split(",")]
    rest = [t for t in tokens if t != "atlas"]
    return ",".join(rest), len(rest) != len(tokens)


def atlas_record() -> dict:
    mu = np.asarray(ATLAS_INSTANCE["mu"], dtype=np.float64)
    r = np.asarray(ATLAS_INSTANCE["r"], dtype=np.float64)
    z = r  # α = 1
    log_Z = float(np.log(np.sum(mu * np.exp(z))))
    rows = {}
    for labels, K in ROWS:
        res = atlas_minimisers(mu, r, Ks=(K,), labels=labels)
        rows[f"{labels}@K={K}"] = {key.split("@")[0]: rec for key, rec in res.items()}
    return {"instance": {"mu": mu.tolist(), "r": r.tolist(), "alpha": 1.0, "beta": 1.0, "log_Z": log_Z},
            "rows": rows}


_STYLE: dict = {}


def _style(name: str):
    """A (colour, marker, line style) unique to each registry loss: ten colours × three marker/line groups."""
    if not _STYLE:
        import matplotlib

        cmap = matplotlib.colormaps["tab10"]
        groups = (("o", "-"), ("s", "--"), ("^", "-."))
        for i, n in enumerate(LOSSES):
            m, ls = groups[(i // 10) % 3]
            _STYLE[n] = (cmap(i % 10), m, ls)
    return _STYLE[name]


def _wrap(names: list[str], width: int = 70) -> str:
    lines, cur = [], ""
    for n in names:
        add = (", " if cur else "") + n
        if len(cur) + len(add) > width:
            lines.append(cur + ",")
            cur = n
        else:
            cur += add
    return "\n".join(lines + [cur]) if cur else "—"


def _draw(plt, record: dict):
    inst = record["instance"]
    r = np.asarray(inst["r"])
    order = np.argsort(r)
    rs = r[order]
    n_rows = len(record["rows"])
    fig, axes = plt.subplots(n_rows, 2, figsize=(17, 5.6 * n_rows), squeeze=False)
    titles = {"reward@K=2": "K = 2, labels R = r (deterministic preferences)",
              "reward@K=4": "K = 4, labels R = r (deterministic preferences)",
              "bt@K=2": "K = 2, Bradley–Terry labels (stochastic preferences)"}
    for (key, row), ax_pair in zip(record["rows"].items(), axes):
        for ax, ref_based in zip(ax_pair, (True, False)):
            none, flat = [], []
            ax.plot(rs, rs, ":", color="0.35", lw=1.6, label="r/α + C (drawn at C = 0)")
            ax.plot(rs, rs - inst["log_Z"], "-", color="0.55", lw=7, alpha=0.35, solid_capstyle="round",
                    label="r/α − log Z (NCA's target)", zorder=1)
            for name, rec in row.items():
                if LOSSES[name].needs_ref != ref_based:
                    continue
                if rec["status"] == "none":
                    none.append(name)
                    continue
                if rec["status"] != "finite":
                    flat.append(name)
                    continue
                f = np.asarray(rec["f"])[order]
                c, m, ls = _style(name)
                tag = " (shift-inv.)" if rec.get("shift_invariant") else ""
                if name == "discopop":
                    tag += " — a local min. (Newton from π = μ)"
                ax.plot(rs, f, marker=m, color=c, ls=ls, lw=1.4, ms=6.5, label=f"{name}{tag}", zorder=3)
            ax.axhline(0, color="0.8", lw=0.8, zorder=0)
            ax.set_xlabel("r(y)   (α = β = 1)")
            ax.set_ylabel("r_θ*(y) = β·log π*(y)/μ(y)" if ref_based else "log π*(y)/μ(y)   (π = softmax θ)")
            side = "reference-based: free minimiser r_θ*" if ref_based else "reference-free: policy parameterisation"
            missing = "no finite minimiser: " + _wrap(sorted(none))
            if flat:
                missing += "\npiecewise linear (not solved): " + ", ".join(sorted(flat))
            ax.set_title(f"{titles.get(key, key)} — {side}\n{missing}", fontsize=9.5, loc="left")
            ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, framealpha=0.9)
            ax.grid(alpha=0.25)
    fig.suptitle(f"The loss atlas — population minimisers on one instance: μ = {inst['mu']}, r = {inst['r']}; "
                 "shift-invariant losses at their normalised representative (Σ μ e^{f/β} = 1)", fontsize=12)
    return fig


def make_atlas(out, record: dict | None = None) -> tuple[Path, Path]:
    """Compute the atlas (unless ``record`` is given), write ``<out>/atlas.json`` and ``<out>/atlas.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nca_lab.toy.studies import round_sig, single_thread

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if record is None:
        with single_thread():
            record = atlas_record()
    record = round_sig({"figure": "atlas", **record})
    json_path, png_path = out / "atlas.json", out / "atlas.png"
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    fig = _draw(plt, record)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(png_path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return png_path, json_path

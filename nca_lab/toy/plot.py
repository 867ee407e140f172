"""Toy-world figures: ``python -m nca_lab.toy.plot [--out figures/] [--only a,c] [--seed 0] [--quick]``.

Each panel writes ``<out>/toy_<letter>_<name>.png`` and ``<out>/toy_<letter>_<name>.json`` (the
numbers behind the figure, rounded to ``studies.SIGNIFICANT_DIGITS`` significant digits, so a
rerun with the same options reproduces the JSON exactly). Panels (``--only`` takes letters or
names, comma-separated):

a ``optimum``       recovered population optimum (``nca_lab.toy.optimum``) against the closed form
                    (``nca_lab.theory``) for InfoNCA, NCA (finite K), DPO and nca_pair (Bradley–Terry
                    pairs) on random instances — points on the diagonal (PROP 1, 3, 7, 8).
b ``nca_gap``       NCA's finite-K gap: K·(f*_K − f*_∞) against K converging to c(y)
                    (``theory.nca_gap_coefficient``); and shape error / normalisation error against
                    K for softmax labels and leave-one-out labels (PROP 3, 4, 19).
c ``trajectories``  chosen-likelihood trajectories log π(y_best) − log μ(y_best) under DPO, InfoNCA
                    and NCA for a tabular and a shared-feature (log-linear) policy; mean over seeds
                    ± one standard deviation (of the per-seed mean over contexts) (PROP 16).
d ``frontier``      reward–KL frontier per loss as β (CPL: α) varies: the PROP 18 study at the
                    recorded config (``toy/configs/prop18.json``) (PROP 18).
e ``ipo_dpo``       IPO vs DPO on deterministic preferences (3 actions a ≻ b ≻ c, uniform μ, data
                    {(a,b), (b,c), (a,c)}): log-ratio margins over gradient descent; IPO converges to
                    1/(3τ), 2/(3τ) (``theory.ipo_three_action_example``), DPO's keep growing (PROP 9).
f ``cpl_bias``      CPL's bias as the conservative λ falls (``theory.cpl_bias``) (PROP 10).

``--quick``: smaller instances, fewer seeds and steps (the studies' recorded ``quick`` configs);
``--seed N``: shifts every random draw (instances of a, b, f; the seeds of c, d) — the default 0
reproduces the committed figures and, for d, ``toy/results/prop18.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nca_lab.toy import studies
from nca_lab.toy.dynamics import Problem, make_problems, train
from nca_lab.toy.studies import round_sig, single_thread

__all__ = ["PANELS", "panel_names", "make_panel", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "figures"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _bar(iterable, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# (a) recovered optimum vs closed form
# --------------------------------------------------------------------------------------------


def panel_optimum(seed: int, quick: bool) -> tuple[dict, Callable]:
    """Per loss, n random instances (Y ∈ {3..5}, r ∈ [−3, 3] with gaps ≥ 0.1, α, β ∈ [0.5, 2],
    K ∈ {2, 3, 4} for the listwise losses): solver optimum vs closed form, elementwise.
    InfoNCA and DPO are shift invariant (their free minimiser is a line f + C): both sides are
    centred (mean over Y removed) before comparing. NCA and nca_pair are compared as they are."""
    from nca_lab import theory
    from nca_lab.toy import optimum, random_instance

    rng = np.random.default_rng([seed, 1])
    n = 3 if quick else 10
    centre = lambda v: v - v.mean()  # noqa: E731
    cases = {
        "infonca": lambda mu, r, K, a, b: (
            centre(optimum("infonca", mu, r, K, alpha=a, beta=b)), centre(theory.infonca_optimum(mu, r, a))),
        "nca": lambda mu, r, K, a, b: (
            optimum("nca", mu, r, K, alpha=a, beta=b), theory.nca_optimum(mu, r, a, K)),
        "dpo": lambda mu, r, K, a, b: (
            centre(optimum("dpo", mu, r, 2, labels="bt", beta=b)), centre(theory.dpo_bt_optimum(mu, r, b))),
        "nca_pair": lambda mu, r, K, a, b: (
            optimum("nca_pair", mu, r, 2, labels="bt", beta=b), theory.nca_pair_optimum(mu, r)),
    }
    data: dict[str, Any] = {}
    for name, fn in _bar(cases.items(), "a: optima"):
        solved, closed, max_err = [], [], 0.0
        for _ in range(n):
            Y = int(rng.integers(3, 6))
            mu, r = random_instance(rng, Y, min_mu=1e-2, min_gap=0.1)
            K = int(rng.integers(2, 5))
            a, b = float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.5, 2.0))
            s, c = fn(mu, r, K, a, b)
            solved.extend(s.tolist()), closed.extend(c.tolist())
            max_err = max(max_err, float(np.abs(s - c).max()))
        data[name] = {"solved": solved, "closed_form": closed, "max_abs_error": max_err}

    def draw(plt):
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
        for ax, (name, d) in zip(axes, data.items()):
            c, s = np.asarray(d["closed_form"]), np.asarray(d["solved"])
            lo, hi = min(c.min(), s.min()), max(c.max(), s.max())
            ax.plot([lo, hi], [lo, hi], color="0.7", lw=1)
            ax.scatter(c, s, s=14)
            ax.set_title(f"{name}  (max |err| = {d['max_abs_error']:.1e})", fontsize=9)
            ax.set_xlabel("closed form (theory)")
        axes[0].set_ylabel("solver optimum r_θ*")
        fig.suptitle("Recovered population optimum vs closed form (InfoNCA, DPO centred: free up to a constant)", fontsize=10)
        return fig

    return {"instances_per_loss": n, "losses": data}, draw


# --------------------------------------------------------------------------------------------
# (b) NCA finite-K gap, LOO labels
# --------------------------------------------------------------------------------------------


def panel_nca_gap(seed: int, quick: bool) -> tuple[dict, Callable]:
    """One random instance (Y = 4, α = 1): K·(f*_K − f*_∞) per response against K, with c(y).
    Errors against K for softmax labels (f*_K) and leave-one-out labels (r/α + C_K):
    shape error = max_y |centred(f) − centred(r/α)|, mass error = |Σ_y μ e^f − 1|."""
    from nca_lab import theory
    from nca_lab.toy import random_instance

    rng = np.random.default_rng([seed, 2])
    mu, r = random_instance(rng, 4, min_mu=0.05, r_low=-1.5, r_high=1.5, min_gap=0.2)
    alpha = 1.0
    Ks = np.unique(np.round(np.geomspace(2, 300 if quick else 5000, 12 if quick else 30)).astype(int))
    limit = theory.nca_optimum(mu, r, alpha)
    c = theory.nca_gap_coefficient(mu, r, alpha)
    centre = lambda v: v - v.mean()  # noqa: E731
    target_shape = centre(r / alpha)
    scaled_gap, shape_sm, mass_sm, shape_loo, mass_loo = [], [], [], [], []
    for K in _bar(Ks, "b: K"):
        f = theory.nca_optimum(mu, r, alpha, int(K))
        scaled_gap.append((K * (f - limit)).tolist())
        shape_sm.append(float(np.abs(centre(f) - target_shape).max()))
        mass_sm.append(float(abs(theory.nca_self_normalisation(mu, f) - 1.0)))
        g = theory.nca_loo_optimum(mu, r, alpha, int(K))
        shape_loo.append(float(np.abs(centre(g) - target_shape).max()))
        mass_loo.append(float(theory.nca_loo_mass(mu, r, alpha, int(K)) - 1.0))
    data = {
        "mu": mu, "r": r, "alpha": alpha, "K": Ks, "gap_coefficient": c,
        "K_times_gap": scaled_gap,
        "softmax_labels": {"shape_error": shape_sm, "mass_error": mass_sm},
        "loo_labels": {"shape_error": shape_loo, "mass_error": mass_loo},
    }

    def draw(plt):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
        gaps = np.asarray(scaled_gap)
        for y in range(len(mu)):
            line, = a1.semilogx(Ks, gaps[:, y], marker=".", label=f"y={y} (r={r[y]:.2f})")
            a1.axhline(c[y], color=line.get_color(), ls="--", lw=1)
        a1.set_xlabel("K"), a1.set_ylabel("K · (f*_K − f*_∞)")
        a1.set_title("NCA finite-K gap → c(y)/K (dashed: c(y))", fontsize=10)
        a1.legend(fontsize=7)
        # A log axis cannot show 0: errors that are exactly 0.0 in float64 are drawn as open markers on a
        # marked floor line below every nonzero value, and the legend says so.
        floor = 1e-17
        a2.axhline(floor, color="0.6", lw=0.8, ls="--", label="exactly 0 in float64: open markers on this line (1e-17)")
        for vals, lab, st in ((shape_sm, "softmax: shape", "-"), (mass_sm, "softmax: mass", ":"),
                              (shape_loo, "LOO: shape", "-"), (mass_loo, "LOO: mass", ":")):
            v = np.abs(np.asarray(vals, dtype=float))
            zero = v == 0.0
            n_zero = int(zero.sum())
            line, = a2.loglog(Ks, np.where(zero, floor, v), st, marker=".",
                              label=lab + (f" ({n_zero} of {len(v)} K exactly 0)" if n_zero else ""))
            if n_zero:
                a2.plot(np.asarray(Ks)[zero], np.full(n_zero, floor), "o", ms=5, mfc="none", color=line.get_color())
        a2.set_ylim(bottom=floor / 10)
        a2.set_xlabel("K"), a2.set_ylabel("error")
        a2.set_title("Shape or normalisation, not both (PROP 19)", fontsize=10)
        a2.legend(fontsize=7)
        return fig

    return data, draw


# --------------------------------------------------------------------------------------------
# (c) chosen-likelihood trajectories
# --------------------------------------------------------------------------------------------

TRAJECTORY_LOSSES = ("dpo", "infonca", "nca")
TRAJECTORY_POLICIES = ("tabular", "loglinear_d16")


def panel_trajectories(seed: int, quick: bool) -> tuple[dict, Callable]:
    """The PROP 16 setting (``toy/configs/prop16.json``, full or quick): the tabular and the
    d = 16 log-linear policy, DPO / InfoNCA / NCA with the study's hyperparameters. Per step: mean
    over seeds of the per-seed mean over contexts of log π(y_best) − log μ(y_best), ± its standard
    deviation over seeds; the same for y_worst."""
    cfg = studies.load_config("prop16", "quick" if quick else "full")
    seeds = list(range(cfg.get("seed_offset", 0) + seed, cfg.get("seed_offset", 0) + seed + cfg["n_seeds"]))
    pols = {p["name"]: p for p in cfg["policies"]}
    names = [n for n in ("tabular", "loglinear_d16") if n in pols]
    out: dict[str, dict] = {}
    for pname in names:
        pol = dict(pols[pname])
        pol.pop("name")
        kind = pol.pop("policy")
        d = pol.pop("features_dim", 8)
        problem = make_problems(seeds, features_dim=d, **cfg["problem"])
        out[pname] = {}
        for lname in _bar(TRAJECTORY_LOSSES, f"c: {pname}"):
            spec = cfg["losses"][lname]
            traj = train(problem, spec["loss"], hparams=spec["hparams"], policy=kind, **cfg["train"], **pol)
            best, worst = traj.logratio_best.mean(-1), traj.logratio_worst.mean(-1)  # [T, G]
            out[pname][lname] = {
                "steps": traj.steps, "best_mean": best.mean(1), "best_sd": best.std(1),
                "worst_mean": worst.mean(1), "worst_sd": worst.std(1),
                "final_fraction_best_below_zero": float((traj.logratio_best[-1] < 0).mean()),
            }

    def draw(plt):
        fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
        for ax, pname in zip(axes[0], names):
            for lname, d in out[pname].items():
                s, m, sd = np.asarray(d["steps"]), np.asarray(d["best_mean"]), np.asarray(d["best_sd"])
                line, = ax.plot(s, m, label=f"{lname} (end < 0: {d['final_fraction_best_below_zero']:.0%})")
                ax.fill_between(s, m - sd, m + sd, color=line.get_color(), alpha=0.2)
            ax.axhline(0, color="0.5", lw=1)
            ax.set_title(f"{pname}: log π(y_best) − log μ(y_best)", fontsize=10)
            ax.set_xlabel("Adam step")
            ax.legend(fontsize=8)
        fig.suptitle(f"Chosen-likelihood trajectories, {len(seeds)} seeds (band: ±1 sd over seeds)", fontsize=10)
        return fig

    return {"config": cfg, "seeds": seeds, "runs": out}, draw


# --------------------------------------------------------------------------------------------
# (d) reward–KL frontier (PROP 18 study)
# --------------------------------------------------------------------------------------------


def panel_frontier(seed: int, quick: bool) -> tuple[dict, Callable]:
    """``studies.prop18_frontier`` at the recorded config (seed offset shifted by ``seed``)."""
    cfg = dict(studies.load_config("prop18", "quick" if quick else "full"))
    cfg["seed_offset"] = cfg.get("seed_offset", 0) + seed
    bar = _bar(range(sum(len(s["sweep"]["values"]) for s in cfg["losses"].values())), "d: frontier")
    it = iter(bar)
    result = studies.prop18_frontier(cfg, progress=lambda msg: next(it, None))
    bar.close()

    def draw(plt):
        fig, ax = plt.subplots(figsize=(10, 5.5))
        # β labels on the curves that spread out (the listwise losses and IPO); the pairwise losses' small-β
        # points crowd together near KL 1.4, where labels would overlap
        labelled = ("infonca", "nca", "ipo")
        for label, d in result["results"].items():
            kl, rw = np.asarray(d["kl_mean"]), np.asarray(d["reward_mean"])
            line, = ax.plot(kl, rw, marker="o", ms=3, label=f"{label} ({d['sweep']})")
            if d.get("loss", label) in labelled or label in labelled:
                # neighbouring sweep values whose points nearly coincide share one label ("β=0.03, 0.01")
                groups: list[list[int]] = []
                for i in range(len(kl)):
                    if groups and abs(kl[i] - kl[groups[-1][0]]) < 0.08 and abs(rw[i] - rw[groups[-1][0]]) < 0.06:
                        groups[-1].append(i)
                    else:
                        groups.append([i])
                sym = "α" if d["sweep"] == "alpha" else "β"
                for g in groups:
                    ax.annotate(f"{sym}=" + ", ".join(f"{d['values'][i]:g}" for i in g), (kl[g[0]], rw[g[0]]),
                                xytext=(4, -9), textcoords="offset points", fontsize=7, color=line.get_color())
        ax.set_xlim(right=1.15 * max(max(d["kl_mean"]) for d in result["results"].values()))  # room for labels
        ax.axhline(result["scale"]["reference_reward"], color="0.5", ls=":", lw=1, label="E_μ r")
        ax.axhline(result["scale"]["max_reward"], color="0.3", ls="--", lw=1, label="max_y r")
        ax.set_xlabel("KL(π‖μ) (mean over contexts and seeds)")
        ax.set_ylabel("E_π r")
        ax.set_title("Reward–KL frontier per loss (tabular, K = 4, final step of each sweep value)", fontsize=10)
        # a curve turns back where a smaller β ends at a smaller KL: name the largest such turn
        turns = []
        for label, d in result["results"].items():
            kl, vals = np.asarray(d["kl_mean"]), d["values"]
            order = np.argsort(vals)  # small β first: KL should fall as β grows
            for i, j in zip(order[:-1], order[1:]):
                if kl[i] < kl[j] - 0.1:
                    turns.append((kl[j] - kl[i], label, vals[j], kl[j], vals[i], kl[i]))
        note = "points joined in sweep order (β, CPL: α)"
        if turns:
            _, label, vj, kj, vi, ki = max(turns)
            note += (f"; at small β the step budget, not β, sets the end point, so a curve can\nturn back "
                     f"({label}: KL {kj:.2f} at β = {vj:g}, {ki:.2f} at β = {vi:g})")
        ax.text(0.99, 0.04, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        return fig

    return result, draw


# --------------------------------------------------------------------------------------------
# (e) IPO vs DPO on deterministic preferences
# --------------------------------------------------------------------------------------------


def panel_ipo_dpo(seed: int, quick: bool) -> tuple[dict, Callable]:
    """Tabular policy, uniform μ over {a, b, c}, the three deterministic pairs, gradient descent
    with τ = β = 0.5: log-ratio margins h(w, l) = (log π_w − log μ_w) − (log π_l − log μ_l).
    The step lr = 0.25 is well inside IPO's stability limit: the Hessian of the mean IPO loss in θ
    is (2/3)·(triangle Laplacian), eigenvalues 0, 2, 2, so GD needs lr < 1 (lr = 1 oscillates
    with period 2). Deterministic: ``seed`` is not used (there is nothing random)."""
    from nca_lab import theory

    tau = 0.5
    problem = Problem(
        mu=np.full((1, 1, 3), 1.0 / 3.0),
        r=np.array([[[2.0, 1.0, 0.0]]]),
        responses=np.array([[[[0, 1], [1, 2], [0, 2]]]], dtype=np.int64),
        rewards=np.tile(np.array([1.0, 0.0]), (1, 1, 3, 1)),
    )
    steps, lr = (400 if quick else 4000), 0.25
    pairs = {"a>b": (0, 1), "b>c": (1, 2), "a>c": (0, 2)}
    # every step is trained and recorded, the JSON keeps ~120 log-spaced steps (every one of the first ten):
    # IPO converges within ten steps (contraction 1 − 2·lr = 0.5 per step), which an even spacing would skip
    keep = np.unique(np.concatenate([[0], np.round(np.geomspace(1, steps, 120)).astype(int)]))
    runs = {}
    for loss in _bar(("ipo", "dpo"), "e: ipo/dpo"):
        traj = train(problem, loss, hparams={"beta": tau}, policy="tabular", optimizer="gd", lr=lr,
                     steps=steps, record_every=1)
        idx = np.searchsorted(np.asarray(traj.steps), keep)
        g = traj.logpi[idx, 0, 0, :] - np.log(1.0 / 3.0)
        runs[loss] = {"steps": np.asarray(traj.steps)[idx], **{k: g[:, w] - g[:, l] for k, (w, l) in pairs.items()}}
    target = theory.ipo_three_action_example(tau)
    data = {"tau": tau, "lr": lr, "ipo_closed_form": {f"{w}>{l}": v for (w, l), v in target.items()}, "runs": runs}

    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        # a>b and b>c are equal at every step (the problem is symmetric under a <-> c with reversed order),
        # so b>c is drawn dashed on top of a solid, wider a>b and the legend says they coincide
        styles = {"a>b": dict(lw=3.5, alpha=0.5), "b>c": dict(lw=1.5, ls=(0, (4, 3))), "a>c": dict(lw=1.5)}
        for ax, loss in zip(axes, ("ipo", "dpo")):
            d = runs[loss]
            same = np.allclose(d["a>b"], d["b>c"], rtol=0, atol=1e-9)
            for k in pairs:
                lab = k + (" (equal to b>c: under it)" if k == "a>b" and same else "")
                line, = ax.plot(d["steps"], d[k], label=lab, marker="." if k == "a>c" else None, ms=3, **styles[k])
                if loss == "ipo":
                    ax.axhline(data["ipo_closed_form"][k], color=line.get_color(), ls=":", lw=1)
            # symlog: step 0 (π = μ) on a linear piece, then a log axis that shows IPO's first steps
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(0, steps * 1.3)
            ax.set_xlabel("gradient-descent step (log scale after 1)"), ax.set_ylabel("log-ratio margin h(w, l)")
            ax.set_title(f"{loss.upper()} (τ = β = {tau})" + ("  dotted: 1/(3τ), 2/(3τ)" if loss == "ipo" else ": no minimiser"), fontsize=10)
            ax.legend(fontsize=8, loc="lower right" if loss == "ipo" else "upper left")
        return fig

    return data, draw


# --------------------------------------------------------------------------------------------
# (f) CPL bias
# --------------------------------------------------------------------------------------------


def panel_cpl_bias(seed: int, quick: bool) -> tuple[dict, Callable]:
    """``theory.cpl_bias`` (max_y distance of the centred log π* at λ from the λ = 1 optimum r/α)
    against λ ∈ (0, 1], for a few random instances (Y = 4, μ for the pairs, Bradley–Terry labels)
    and α ∈ {0.5, 1, 2}."""
    from nca_lab import theory
    from nca_lab.toy import random_instance

    rng = np.random.default_rng([seed, 6])
    lams = np.round(np.linspace(1.0, 0.1, 7 if quick else 19), 6)
    n_inst = 2 if quick else 4
    alphas = (0.5, 1.0, 2.0)
    insts = [random_instance(rng, 4, min_mu=0.05, r_low=-1.5, r_high=1.5, min_gap=0.2) for _ in range(n_inst)]
    curves = {}
    for a in _bar(alphas, "f: cpl"):
        curves[f"alpha={a}"] = [[float(theory.cpl_bias(mu, r, a, float(lam))) for lam in lams] for mu, r in insts]
    # whether each curve rises at every step of falling λ (PROP 10 says the error grows as λ falls)
    monotone = {k: [bool(np.all(np.diff(row) > 0)) for row in rows] for k, rows in curves.items()}
    data = {"lambda": lams, "instances": [{"mu": mu, "r": r} for mu, r in insts], "bias": curves,
            "increasing_as_lambda_falls": monotone}

    def draw(plt):
        fig, ax = plt.subplots(figsize=(8.5, 4.8))
        # colour = α, line style and marker = instance; the curves that turn down are named at their end
        inst_styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]
        for (name, rows), color in zip(curves.items(), ("C0", "C1", "C2")):
            for i, row in enumerate(rows):
                ls, mk = inst_styles[i % len(inst_styles)]
                ax.plot(lams, row, color=color, ls=ls, marker=mk, ms=3, alpha=0.85)
                if not monotone[name][i]:
                    top = int(np.argmax(row))
                    ax.plot([lams[top]], [row[top]], "x", color="black", ms=8, mew=1.5, zorder=5)
        from matplotlib.lines import Line2D

        alpha_handles = [Line2D([], [], color=c, lw=2, label=n.replace("alpha", "α"))
                         for n, c in zip(curves, ("C0", "C1", "C2"))]
        inst_handles = [Line2D([], [], color="0.3", ls=ls, marker=mk, ms=3, label=f"instance {i + 1}")
                        for i, (ls, mk) in enumerate(inst_styles[:len(insts)])]
        turning = [f"{n.replace('alpha', 'α')} instance {i + 1}" for n, flags in monotone.items()
                   for i, ok in enumerate(flags) if not ok]
        extra = [Line2D([], [], ls="none", marker="x", color="black", ms=7, mew=1.5,
                        label="peak of a curve that turns down:\n" + ", ".join(turning))] if turning else []
        ax.legend(handles=alpha_handles + inst_handles + extra, fontsize=7, loc="upper left")
        ax.set_xlabel("λ (CPL conservative bias)"), ax.set_ylabel("max_y |Δ centred log π*|")
        ax.invert_xaxis()
        ax.set_title(f"CPL's distance from the λ = 1 optimum r/α as λ falls ({len(insts)} random instances, Y = 4)",
                     fontsize=10)
        return fig

    return data, draw


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

PANELS: dict[str, tuple[str, Callable[[int, bool], tuple[dict, Callable]]]] = {
    "a": ("optimum", panel_optimum),
    "b": ("nca_gap", panel_nca_gap),
    "c": ("trajectories", panel_trajectories),
    "d": ("frontier", panel_frontier),
    "e": ("ipo_dpo", panel_ipo_dpo),
    "f": ("cpl_bias", panel_cpl_bias),
}


def panel_names(only: str | None) -> list[str]:
    """Panel letters selected by ``--only`` (letters or names, comma-separated; None = all)."""
    if only is None:
        return list(PANELS)
    by_name = {name: letter for letter, (name, _) in PANELS.items()}
    chosen = []
    for token in (t.strip() for t in only.split(",")):
        letter = token if token in PANELS else by_name.get(token)
        if letter is None:
            known = ", ".join(f"{k} ({n})" for k, (n, _) in PANELS.items())
            raise ValueError(f"--only: unknown panel {token!r}; known: {known}")
        if letter not in chosen:
            chosen.append(letter)
    return chosen


def make_panel(letter: str, out: Path | str, *, seed: int = 0, quick: bool = False) -> tuple[Path, Path]:
    """Compute panel ``letter``, write its PNG and JSON under ``out``; returns the two paths."""
    name, fn = PANELS[letter]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with single_thread():
        data, draw = fn(seed, quick)
    record = round_sig({"panel": f"toy_{letter}_{name}", "seed": seed, "quick": quick, "data": data})
    json_path, png_path = out / f"toy_{letter}_{name}.json", out / f"toy_{letter}_{name}.png"
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    plt = _plt()
    fig = draw(plt)
    fig.tight_layout()
    # no timestamp in the PNG metadata, so identical figures give identical files
    fig.savefig(png_path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return png_path, json_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nca_lab.toy.plot", description="Write the toy-world figures (PNG + JSON).",
        epilog="Panels: " + "; ".join(f"{k} = {n}" for k, (n, _) in PANELS.items()),
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: figures/)")
    parser.add_argument("--only", default=None, help="comma-separated panels, letters a-f or names, or atlas (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="shifts every random draw (default 0: the committed figures)")
    parser.add_argument("--quick", action="store_true", help="small instances / quick configs (about a minute)")
    args = parser.parse_args(argv)
    from nca_lab.toy.atlas_plot import make_atlas, split_only  # the loss atlas: figures/atlas.png + .json

    only, want_atlas = split_only(args.only)  # --only atlas: that figure alone
    try:
        letters = panel_names(only) if only != "" else []
    except ValueError as exc:
        parser.error(str(exc))
    from tqdm import tqdm

    t0 = time.perf_counter()
    for letter in tqdm(letters, desc="panels", file=sys.stderr):
        t = time.perf_counter()
        png, js = make_panel(letter, args.out, seed=args.seed, quick=args.quick)
        tqdm.write(f"{png} + {js.name} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    if want_atlas:
        t = time.perf_counter()
        png, js = make_atlas(args.out)
        tqdm.write(f"{png} + {js.name} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    print(f"wrote {len(letters)} panel(s) to {args.out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

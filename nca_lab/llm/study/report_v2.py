"""The v2 study's report, on a finished or a partial state: what it computes.

* ``final``: per (method, K, μ seed) the final test metrics, mean ± std over the finished seeds;
* ``paths``: per (method, K, μ seed) the checkpoint evaluations, mean over seeds at each step (accuracy, reward,
  KL(π‖μ), Δ log π(best/worst response) on training prompts): the training-time path, starting at μ (step 0);
* ``matched_kl``: reward and accuracy at equal KL(π‖μ).  Each seed's path (μ at KL 0, then its checkpoints in
  training order) is read at the target KL twice (``reading``): where training first reaches it, and at its
  best-reward crossing (the frontier) — they differ where KL rises and falls; interpolated linearly in KL at
  targets ``f · KL*`` (f = 0.25, 0.5, 0.75, 1), where KL* is the smallest final-path KL reached by any seed of the compared methods (so no method is extrapolated); per-prompt
  outcomes are interpolated with the same weights, and ``nca − dpo`` and ``infonca − dpo`` at each target get the
  paired two-level bootstrap interval of :func:`nca_lab.llm.study.paired.paired_bootstrap`; so does K = 4 − K = 2
  of every method (paired by seed, targets from the KL range both K reach);
* ``comparisons``: paired two-level bootstrap (seeds, then prompts) of final per-prompt greedy correctness and
  mean sampled reward for the claims' pairs; seeds of a method pair are matched by (μ seed, seed), which fixed the
  same samples and data order.  Multiple comparisons: the Holm-adjusted p of every comparison (over all of them)
  is given next to the unadjusted 95 % interval;
* ``displacement``: the recipe's fixed-setting runs (claims 3–4: where a method pushes the best response's
  likelihood down): per setting, the final metrics over seeds, Δ log π(best/worst) along training, and paired
  intervals against μ (accuracy, reward) and between methods at the same learning rate — these join
  ``comparisons`` (and so Holm's adjustment);
* ``pending``: every unit not finished yet; ``timing``: mean wall/CPU time per unit kind and a remaining-time
  estimate (pending units × measured means).
"""

from __future__ import annotations

import math

import numpy as np

from nca_lab.llm.study.paired import paired_bootstrap
from nca_lab.llm.study.recipe_v2 import GRID_KEYS, displacement_units, final_units, run_steps
from nca_lab.llm.study.stats import mean, std

__all__ = ["build_report", "holm", "interpolate_path", "PAIRS"]

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# how a path is read at a KL it crosses more than once (see interpolate_path): both are reported
READINGS = ("first", "best")
# (a, b) pairs compared at each K: claim (1) reward data, claim (3) NCA vs DPO, the rest for context.
PAIRS = (("nca", "dpo"), ("infonca", "dpo"), ("nca", "dpo_all"), ("infonca", "dpo_all"), ("nca_pair", "dpo"),
         ("nca", "infonca"))


def holm(ps: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (family = all of ``ps``)."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def _finals(state: dict) -> list[dict]:
    return [r for r in state.get("runs", []) if r.get("stage") == "final" and r.get("test") is not None]


def _mu_test(state: dict, mu_seed: int) -> dict | None:
    return (state.get("mus", {}).get(str(mu_seed)) or {}).get("test")


def interpolate_path(points: list[dict], target: float, reading: str = "first"
                     ) -> tuple[dict, np.ndarray, np.ndarray] | None:
    """A training-time path ``[{step, kl, accuracy, reward, correct[P], prompt_reward[P]}]`` read at KL ``target``.

    Walking its points in step order (μ at step 0, KL 0, then the checkpoints), every segment whose KL range holds
    ``target`` is a *crossing*, interpolated linearly in KL.  ``reading="first"``: the first crossing (where
    training first reaches that KL); ``reading="best"``: the crossing with the highest reward (the path's
    reward–KL frontier).  The two differ only on a path whose KL rises and falls (NCA's does here); neither
    re-sorts the points by KL, which would join checkpoints that are not neighbours in training.  ``None`` when
    the path never reaches ``target`` (beyond its largest KL)."""
    if reading not in READINGS:
        raise ValueError(f"reading: expected 'first' or 'best', got {reading!r}")
    pts = sorted(points, key=lambda p: p["step"])
    found = None
    for a, b in zip(pts, pts[1:]):
        lo, hi = min(a["kl"], b["kl"]), max(a["kl"], b["kl"])
        if lo - 1e-12 <= target <= hi + 1e-12:
            w = 0.0 if b["kl"] == a["kl"] else min(1.0, max(0.0, (target - a["kl"]) / (b["kl"] - a["kl"])))
            mix = lambda x, y: (1 - w) * x + w * y  # noqa: E731
            at = ({"accuracy": mix(a["accuracy"], b["accuracy"]), "reward": mix(a["reward"], b["reward"])},
                  mix(a["correct"], b["correct"]), mix(a["prompt_reward"], b["prompt_reward"]))
            if reading == "first":
                return at
            if found is None or at[0]["reward"] > found[0]["reward"]:
                found = at
    return found


def _path(state: dict, rec: dict) -> list[dict]:
    mu = _mu_test(state, rec["mu_seed"])
    pts = []
    if mu is not None:
        pts.append({"step": 0, "kl": 0.0, "accuracy": mu["accuracy"], "reward": mu["reward"],
                    "correct": np.asarray(mu["per_prompt"]["correct"], float),
                    "prompt_reward": np.asarray(mu["per_prompt"]["reward"], float)})
    for step, ev in sorted(rec["checkpoint_evals"].items(), key=lambda kv: int(kv[0])):
        pts.append({"step": int(step), "kl": max(0.0, ev["kl"]), "accuracy": ev["accuracy"], "reward": ev["reward"],
                    "correct": np.asarray(ev["per_prompt"]["correct"], float),
                    "prompt_reward": np.asarray(ev["per_prompt"]["reward"], float)})
    return pts


def _stat(xs):
    xs = [float(x) for x in xs if x is not None and math.isfinite(x)]
    return {"mean": mean(xs), "std": std(xs), "n": len(xs)}


def _groups(finals: list[dict]) -> dict:
    g: dict = {}
    for r in finals:
        g.setdefault((r["method"], r["k"], r["mu_seed"]), {})[r["seed"]] = r
    return g


def _paired(a_recs: dict, b_recs: dict, metric: str, getter) -> dict | None:
    seeds = sorted(set(a_recs) & set(b_recs))
    if not seeds:
        return None
    a = np.stack([getter(a_recs[s]) for s in seeds])
    b = np.stack([getter(b_recs[s]) for s in seeds])
    return {**paired_bootstrap(a, b), "seeds": [list(s) if isinstance(s, tuple) else s for s in seeds],
            "metric": metric}


def _outcome(metric: str):
    key = "correct" if metric == "accuracy" else "reward"
    return lambda r: np.asarray(r["test"]["per_prompt"][key], float)


def build_report(state: dict, cfg) -> dict:
    """Everything the report writes, from a (possibly partial) state."""
    finals = _finals(state)
    groups = _groups(finals)
    out: dict = {"final": [], "paths": [], "comparisons": [], "matched_kl": [], "pending": [], "timing": {}}
    for (m, k, mu), recs in sorted(groups.items(), key=lambda kv: (kv[0][1] != 4, kv[0][2], kv[0][0])):
        rs = list(recs.values())
        out["final"].append({"method": m, "k": k, "mu_seed": mu, "setting": rs[0]["setting"], "n_seeds": len(rs),
                             "seeds": sorted(recs), **{x: _stat([r[x] for r in rs]) for x in
                                                       ("accuracy", "reward", "kl", "logp_best_change",
                                                        "logp_worst_change")}})
    for (m, k, mu), recs in sorted(groups.items()):
        steps = sorted({int(s) for r in recs.values() for s in r["checkpoint_evals"]})
        mu_t = _mu_test(state, mu) or {}
        row = {"method": m, "k": k, "mu_seed": mu, "step": [0], "accuracy": [mu_t.get("accuracy")],
               "reward": [mu_t.get("reward")], "kl": [0.0], "logp_best_change": [0.0], "logp_worst_change": [0.0]}
        for s in steps:
            evs = [r["checkpoint_evals"][str(s)] for r in recs.values() if str(s) in r["checkpoint_evals"]]
            row["step"].append(s)
            for x in ("accuracy", "reward", "kl", "logp_best_change", "logp_worst_change"):
                row[x].append(_stat([e[x] for e in evs])["mean"])
        out["paths"].append(row)
    # paired comparisons of final outcomes: method pairs, K = 4 vs K = 2, method vs μ; pooled over μ seeds
    pooled: dict = {}
    for (m, k, mu), recs in groups.items():
        for s, r in recs.items():
            pooled.setdefault((m, k), {})[(mu, s)] = r
    for metric in ("accuracy", "reward"):
        get = _outcome(metric)
        for k in cfg.ks:
            for a, b in PAIRS:
                if (a, k) in pooled and (b, k) in pooled:
                    res = _paired(pooled[a, k], pooled[b, k], metric, get)
                    if res:
                        out["comparisons"].append({"a": f"{a} K={k}", "b": f"{b} K={k}", **res})
        for m in cfg.methods:
            if (m, 4) in pooled and (m, 2) in pooled:
                res = _paired(pooled[m, 4], pooled[m, 2], metric, get)
                if res:
                    out["comparisons"].append({"a": f"{m} K=4", "b": f"{m} K=2", **res})
        for (m, k), recs in sorted(pooled.items()):
            for mu in sorted({mu for mu, _ in recs}):
                base = _mu_test(state, mu)
                rs = [r for (mm, _), r in sorted(recs.items()) if mm == mu]
                if base is None or not rs:
                    continue
                key = "correct" if metric == "accuracy" else "reward"
                res = paired_bootstrap(np.stack([get(r) for r in rs]),
                                       np.asarray(base["per_prompt"][key], float)[None, :])
                out["comparisons"].append({"a": f"{m} K={k}", "b": f"μ{mu}", "metric": metric, **res,
                                           "seeds": [r["seed"] for r in rs]})
    out["displacement"], disp_comparisons = _displacement(state, cfg)
    out["comparisons"] += disp_comparisons
    adj = holm([c["p_two_sided"] for c in out["comparisons"]])
    for c, p in zip(out["comparisons"], adj):
        c["p_holm"] = p
    out["n_comparisons"] = len(out["comparisons"])
    out["matched_kl"] = _matched_kl(state, groups, cfg)
    out["diverged"] = [{"run_id": r["run_id"], "stage": r["stage"], "message": r["diverged"]}
                       for r in state.get("runs", []) if r.get("diverged")]
    out["sweep_runs"] = sweep_runs(state)
    out["pending"] = pending_units(state, cfg)
    out["timing"] = timing(state, out["pending"])
    return out


def _setting_label(setting: dict) -> str:
    return ", ".join(f"{k} {setting[k]:g}" for k in GRID_KEYS if k in setting)


def _displacement(state: dict, cfg) -> tuple[list[dict], list[dict]]:
    """The displacement runs' rows (one per method and setting, over its evaluated seeds) and their paired
    comparisons: each setting against μ, and each PAIRS pair of methods at the same learning rate."""
    from nca_lab.llm.study.stages_v2 import run_key

    by_id = {r["run_id"]: r for r in state.get("runs", [])}
    cells: dict = {}
    for m, k, setting, mu, s in displacement_units(cfg):
        cell = cells.setdefault((m, _setting_label(setting)), {"method": m, "k": k, "mu_seed": mu,
                                                              "setting": setting, "runs": {}})
        rec = by_id.get(run_key(m, k, setting, mu, s))
        if rec is not None and rec.get("test") is not None:
            cell["runs"][s] = rec
    rows, comps = [], []
    for (m, label), cell in cells.items():
        rs = [cell["runs"][s] for s in sorted(cell["runs"])]
        row = {"method": m, "k": cell["k"], "mu_seed": cell["mu_seed"], "setting": cell["setting"],
               "label": label, "n_seeds": len(rs), "seeds": sorted(cell["runs"]),
               "run_ids": [r["run_id"] for r in rs]}
        if rs:
            row.update({x: _stat([r[x] for r in rs]) for x in ("accuracy", "reward", "kl", "logp_best_change",
                                                                 "logp_worst_change")})
            steps = sorted({int(st) for r in rs for st in r["checkpoint_evals"]})
            row["path"] = {"step": [0] + steps, **{x: [0.0] + [_stat([r["checkpoint_evals"][str(st)][x] for r in rs
                                                                      if str(st) in r["checkpoint_evals"]])["mean"]
                                                               for st in steps]
                                                  for x in ("logp_best_change", "logp_worst_change")}}
            base = _mu_test(state, cell["mu_seed"])
            for metric in ("accuracy", "reward") if base is not None else ():
                key = "correct" if metric == "accuracy" else "reward"
                res = paired_bootstrap(np.stack([_outcome(metric)(r) for r in rs]),
                                       np.asarray(base["per_prompt"][key], float)[None, :])
                comps.append({"a": f"{m} K={cell['k']} ({label}; displacement)", "b": f"μ{cell['mu_seed']}",
                              "metric": metric, **res, "seeds": row["seeds"]})
        rows.append(row)
    for a, b in PAIRS:
        for (ma, la), ca in cells.items():
            for (mb, lb), cb in cells.items():
                if (ma, mb) != (a, b) or ca["setting"]["lr"] != cb["setting"]["lr"]:
                    continue
                for metric in ("accuracy", "reward"):
                    res = _paired(ca["runs"], cb["runs"], metric, _outcome(metric))
                    if res:
                        comps.append({"a": f"{ma} K={ca['k']} ({la}; displacement)",
                                      "b": f"{mb} K={cb['k']} ({lb}; displacement)", **res})
    return rows, comps


def _tail_mean(xs: list | None, n: int = 4) -> float | None:
    xs = [x for x in (xs or [])[-n:] if x is not None]
    return sum(xs) / len(xs) if xs else None


def sweep_runs(state: dict) -> list[dict]:
    """Every recorded sweep run (tuning runs: validation split, sweep seed) with its validation accuracy, reward
    and KL(π‖μ), and the log-ratios log π/μ of the best and worst training response at the end of training (mean
    over the last 4 logged steps of the training batches): where a method lowers the chosen response's
    likelihood shows here first. Exploratory only: no sweep run is a final result."""
    rows = []
    for r in state.get("runs", []):
        if r.get("stage") != "sweep":
            continue
        v, t = r.get("validation") or {}, r.get("trajectory") or {}
        rows.append({"run_id": r["run_id"], "method": r["method"], "k": r["k"], "setting": r["setting"],
                     "diverged": bool(r.get("diverged")), "accuracy": v.get("accuracy"), "reward": v.get("reward"),
                     "kl": v.get("kl"), "train_logratio_best_end": _tail_mean(t.get("logratio/best")),
                     "train_logratio_worst_end": _tail_mean(t.get("logratio/worst"))})
    return sorted(rows, key=lambda x: (x["method"], x["k"], *(x["setting"].get(p, 0.0) for p in ("lr", "beta", "alpha"))))


def _matched_kl(state: dict, groups: dict, cfg) -> list[dict]:
    """Reward and accuracy at matched KL(π‖μ) along the training-time paths (see module docstring)."""
    rows = []
    for k in cfg.ks:
        for mu in cfg.mu_seeds:
            present = {m: groups[m, k, mu] for m in cfg.methods if (m, k, mu) in groups}
            paths = {m: {s: _path(state, r) for s, r in recs.items()} for m, recs in present.items()}
            # a seed whose path never leaves μ (KL 0 throughout: no reward spread in its data) has no range to
            # interpolate on; it is left out of the matched-KL comparison (and counted)
            paths = {m: {s: pts for s, pts in recs.items() if pts and max(p["kl"] for p in pts) > 0}
                     for m, recs in paths.items()}
            paths = {m: recs for m, recs in paths.items() if recs}
            maxima = [max(p["kl"] for p in pts) for recs in paths.values() for pts in recs.values()]
            if not maxima or _mu_test(state, mu) is None:
                continue
            kl_star = min(maxima)
            if not kl_star > 0:  # some method never left μ: no common KL range to compare on
                continue
            for reading, f in ((r, f) for r in READINGS for f in FRACTIONS):
                target = f * kl_star
                at = {}
                for m, recs in paths.items():
                    vals = {s: interpolate_path(pts, target, reading) for s, pts in recs.items()}
                    vals = {s: v for s, v in vals.items() if v is not None}
                    if vals:
                        at[m] = vals
                        rows.append({"k": k, "mu_seed": mu, "kl_target": target, "fraction": f, "reading": reading,
                                     "method": m,
                                     "n_seeds": len(vals), "n_seeds_at_mu": len(present[m]) - len(paths[m]),
                                     "reward": _stat([v[0]["reward"] for v in vals.values()]),
                                     "accuracy": _stat([v[0]["accuracy"] for v in vals.values()])})
                for a, b in PAIRS[:2]:
                    if a in at and b in at:
                        seeds = sorted(set(at[a]) & set(at[b]))
                        if not seeds:
                            continue
                        for metric, idx in (("accuracy", 1), ("reward", 2)):
                            res = paired_bootstrap(np.stack([at[a][s][idx] for s in seeds]),
                                                   np.stack([at[b][s][idx] for s in seeds]))
                            rows.append({"k": k, "mu_seed": mu, "kl_target": target, "fraction": f,
                                         "reading": reading, "comparison": f"{a} − {b}", "metric": metric,
                                         "seeds": seeds, **res})
    rows += _matched_kl_k4_vs_k2(state, groups, cfg)
    return rows


def _moving(paths: dict) -> dict:
    return {s: pts for s, pts in paths.items() if pts and max(p["kl"] for p in pts) > 0}


def _matched_kl_k4_vs_k2(state: dict, groups: dict, cfg) -> list[dict]:
    """K = 4 − K = 2 of each method at matched KL (more responses at a fixed number of prompts), paired by seed
    (seed s at K = 2 trained on the first 2 of the same 4 samples); targets ``f · KL*`` with KL* the smallest
    path maximum over both K."""
    rows = []
    for m in cfg.methods:
        for mu in cfg.mu_seeds:
            if (m, 4, mu) not in groups or (m, 2, mu) not in groups or _mu_test(state, mu) is None:
                continue
            p4 = _moving({s: _path(state, r) for s, r in groups[m, 4, mu].items()})
            p2 = _moving({s: _path(state, r) for s, r in groups[m, 2, mu].items()})
            seeds = sorted(set(p4) & set(p2))
            if not seeds:
                continue
            kl_star = min(max(p["kl"] for p in pts) for pts in [*p4.values(), *p2.values()])
            for reading, f in ((r, f) for r in READINGS for f in FRACTIONS):
                a = {s: interpolate_path(p4[s], f * kl_star, reading) for s in seeds}
                b = {s: interpolate_path(p2[s], f * kl_star, reading) for s in seeds}
                ok = [s for s in seeds if a[s] is not None and b[s] is not None]
                for metric, idx in (("accuracy", 1), ("reward", 2)):
                    if ok:
                        res = paired_bootstrap(np.stack([a[s][idx] for s in ok]), np.stack([b[s][idx] for s in ok]))
                        rows.append({"k": "4 vs 2", "mu_seed": mu, "kl_target": f * kl_star, "fraction": f,
                                     "reading": reading,
                                     "comparison": f"{m} K=4 − {m} K=2", "metric": metric, "seeds": ok, **res})
    return rows


def pending_units(state: dict, cfg) -> list[str]:
    """Every unit of work the recipe asks for that is not finished."""
    from nca_lab.llm.study.stages_v2 import run_key, sample_keys

    out = [f"mu{m}" for m in cfg.mu_seeds if str(m) not in state.get("mus", {})]
    out += [f"sample mu{m}_s{s}" for m, s in sample_keys(cfg) if f"mu{m}_s{s}" not in state.get("samples", {})]
    sel = state.get("selection", {})
    out += [f"sweep {m}_k{k}" for k in cfg.sweep.get("ks", cfg.ks) for m in cfg.methods
            if not sel.get(f"{m}_k{k}", {}).get("complete")]
    n_ck = cfg.n_checkpoints
    by_id = {r["run_id"]: r for r in state.get("runs", [])}

    def unfinished(kind: str, rid: str) -> str | None:
        """``kind rid: what is left``, or None for a finished run (a divergence counts as finished: it is listed
        under "diverged")."""
        rec = by_id.get(rid)
        if rec is None:
            return f"{kind} {rid}: train + {n_ck} evaluations"
        if not rec.get("diverged") and len(rec["checkpoint_evals"]) < n_ck:
            return f"{kind} {rid}: {n_ck - len(rec['checkpoint_evals'])} evaluations"
        return None

    finals = set()
    for m, k, mu, s in final_units(cfg):
        chosen = sel.get(f"{m}_k{k}", {})
        if not chosen.get("complete"):
            out.append(f"final {m}_k{k}_mu{mu}_seed{s} (setting not chosen yet): train + {n_ck} evaluations")
            continue
        rid = run_key(m, k, chosen["setting"], mu, s)
        finals.add(rid)
        out += [e for e in [unfinished("final", rid)] if e]
    for m, k, setting, mu, s in displacement_units(cfg):
        rid = run_key(m, k, setting, mu, s)
        if rid not in finals:  # a displacement setting equal to a final run's is that run, listed once
            out += [e for e in [unfinished("displacement", rid)] if e]
    return out


def timing(state: dict, pending: list[str]) -> dict:
    """Mean wall/CPU seconds per unit kind, totals, and the remaining wall time estimated from the pending list
    (an unchosen sweep is counted as 6 runs)."""
    kinds: dict = {}
    for u in state.get("unit_log", []):
        d = kinds.setdefault(u["kind"], {"n": 0, "wall_s": 0.0, "cpu_s": 0.0})
        d["n"] += 1
        d["wall_s"] += u["wall_s"]
        d["cpu_s"] += u["cpu_s"]
    per = {k: {"n": d["n"], "mean_wall_s": d["wall_s"] / d["n"], "mean_cpu_s": d["cpu_s"] / d["n"],
               "total_wall_s": d["wall_s"], "total_cpu_s": d["cpu_s"]} for k, d in kinds.items()}
    w = lambda k: per.get(k, {}).get("mean_wall_s")  # noqa: E731
    remaining, unknown = 0.0, []
    for p in pending:
        parts = ([("mu", 1)] if p.startswith("mu") else [("sample", 1)] if p.startswith("sample") else
                 [("sweep_run", 6)] if p.startswith("sweep") else [])
        if p.startswith(("final", "displacement")):
            n_eval = int(p.split(": ")[-1].split(" evaluations")[0].split("+ ")[-1])
            parts = ([("final_train", 1)] if "train" in p else []) + [("checkpoint_eval", n_eval)]
        for kind, n in parts:
            if w(kind) is None:
                unknown.append(kind)
            else:
                remaining += n * w(kind)
    return {"per_unit": per, "remaining_wall_s_estimate": remaining,
            "unmeasured_kinds": sorted(set(unknown)), "steps_per_run": None}

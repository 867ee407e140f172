"""The study's statistics over seeds: mean and sample standard deviation, the choice of a sweep's best setting,
the summary table (mean ± std per method and K) and the comparison of two rows (difference of means, its standard
error and a verdict)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from nca_lab.llm.study.recipe import METHODS

__all__ = ["mean", "std", "select_best", "SUMMARY_METRICS", "summarise", "compare"]


def mean(xs: Sequence[float]) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n − 1); 0 for fewer than two values."""
    xs = [float(x) for x in xs]
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def select_best(candidates: Sequence[dict], metric: str = "reward") -> dict:
    """The candidate (a sweep record with ``validation`` metrics) with the highest validation ``metric``;
    ties broken by the other of reward/accuracy, then the lower KL, then the earlier candidate."""
    if not candidates:
        raise ValueError("candidates: nothing to select from")
    if metric not in ("reward", "accuracy"):
        raise ValueError(f"metric: expected 'reward' or 'accuracy', got {metric!r}")
    other = "accuracy" if metric == "reward" else "reward"

    def key(item):
        i, rec = item
        v = rec["validation"]
        return (-v[metric], -v[other], v["kl"], i)

    return min(enumerate(candidates), key=key)[1]


SUMMARY_METRICS = ("accuracy", "reward", "kl", "logp_best_change", "logp_worst_change")


def summarise(records: Sequence[dict]) -> list[dict]:
    """Mean ± std over seeds of the test metrics, one row per (method, K)."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        if rec.get("test") is None:
            continue
        groups.setdefault((rec["method"], rec["k"]), []).append(rec)
    rows = []
    for (method, k), recs in groups.items():
        row = {"method": method, "k": k, "n_seeds": len(recs), "seeds": sorted(r["seed"] for r in recs),
               "beta": recs[0]["beta"], "alpha": recs[0]["alpha"], "setting": recs[0]["setting"]}
        for m in SUMMARY_METRICS:
            values = [r[m] for r in recs if r.get(m) is not None and math.isfinite(r[m])]
            row[m] = {"mean": mean(values), "std": std(values), "n": len(values), "values": values}
        rows.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (order.get(r["method"], 99), r["k"]))


def compare(a: dict, b: dict, metric: str) -> dict:
    """Difference of means ``a − b`` of a summary metric with its standard error √(s_a²/n_a + s_b²/n_b) and a
    verdict: ``"higher"``/``"lower"`` when |Δ| > 2 SE (and SE > 0 or Δ ≠ 0 with n ≥ 2 each), else
    ``"not separated"``.  With fewer than 2 seeds on a side there is no spread: ``"n < 2"``."""
    ma, mb = a[metric], b[metric]
    delta = ma["mean"] - mb["mean"]
    if ma["n"] < 2 or mb["n"] < 2:
        return {"delta": delta, "se": None, "verdict": "n < 2"}
    se = math.sqrt(ma["std"] ** 2 / ma["n"] + mb["std"] ** 2 / mb["n"])
    if (se > 0 and abs(delta) > 2 * se) or (se == 0 and delta != 0):
        verdict = "higher" if delta > 0 else "lower"
    else:
        verdict = "not separated"
    return {"delta": delta, "se": se, "verdict": verdict}

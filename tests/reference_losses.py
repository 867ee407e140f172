"""An independent, plain-Python implementation of every registry loss, one prompt at a time.

Written from the formulas of the loss table in ``README.md`` and the docstrings' contract (not from
``nca_lab/losses.py``'s tensor code): lists of floats, ``math`` only, explicit loops over the valid
responses, the tie rule spelled out ("best"/"worst" = the first valid index with the highest/lowest R;
a pair with equal R carries no preference), pairs chosen by enumerating them, and a stable
log-sigmoid that is exact for |x| up to float64's range. The tests compare ``nca_lab.losses`` with it
on random tuples (masks holding NaN/inf, ties, lengths, every ``pairs`` mode, margins to 1e3) and use
it as the per-tuple oracle of the brute-force population losses, so the code under test is never on
both sides of a comparison.

``DOCUMENTED_DEFAULTS`` are the defaults as the README's loss table states them (the paper values);
the tests assert the registry against this table.
"""

from __future__ import annotations

import math

DOCUMENTED_DEFAULTS = {
    "infonca": {"beta": 0.01, "alpha": 1e-4, "labels": "softmax", "label_weights": None},
    "nca": {"beta": 0.01, "alpha": 1e-4, "labels": "softmax", "label_weights": None},
    "nca_pair": {"beta": 0.01, "pairs": "best_worst"},
    "dpo": {"beta": 0.1, "pairs": "best_worst"},
    "cdpo": {"beta": 0.1, "eps": 0.1, "pairs": "best_worst"},
    "rdpo": {"beta": 0.1, "eps": 0.1, "pairs": "best_worst"},
    "ipo": {"beta": 0.1, "pairs": "best_worst"},
    "hinge": {"beta": 0.1, "pairs": "best_worst"},
    "clha": {"margin": 3.0, "min_gap": 3.0, "sft_gate": 0.0, "sft_weight": 0.05},
    "pro": {"sft_weight": 0.05},
    "rrhf": {"sft_weight": 1.0},
    "cpl": {"alpha": 0.1, "lam": 0.5, "pairs": "best_worst"},
    "simpo": {"beta": 2.5, "gamma": 1.375, "pairs": "best_worst"},
    "sft": {},
}

PAIRWISE = ("nca_pair", "dpo", "cdpo", "rdpo", "ipo", "hinge", "cpl", "simpo")


def log_sigmoid(x: float) -> float:
    """log σ(x) without overflow or cancellation: −log1p(e^{−x}) for x ≥ 0, x − log1p(e^{x}) below."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def best_index(R: list[float], valid: list[int]) -> int:
    b = valid[0]
    for k in valid[1:]:
        if R[k] > R[b]:  # strictly: the first of equal rewards stays
            b = k
    return b


def worst_index(R: list[float], valid: list[int]) -> int:
    w = valid[0]
    for k in valid[1:]:
        if R[k] < R[w]:
            w = k
    return w


def selected_pairs(R: list[float], valid: list[int], mode: str) -> list[tuple[int, int]]:
    b, w = best_index(R, valid), worst_index(R, valid)
    if mode == "best_worst":
        cand = [(b, w)]
    elif mode == "best_rest":
        cand = [(b, j) for j in valid]
    elif mode == "all":
        cand = [(i, j) for i in valid for j in valid]
    else:
        raise ValueError(mode)
    return [(i, j) for i, j in cand if R[i] > R[j]]


def reference_loss(name: str, lp, ref, R, mask=None, lengths=None, **hp) -> float:
    """The per-prompt loss ``name`` on one prompt (sequences of K floats); ``hp`` must be complete
    (every hyperparameter given: this function has no defaults of its own)."""
    K = len(lp)
    mask = [True] * K if mask is None else [bool(m) for m in mask]
    valid = [k for k in range(K) if mask[k]]
    n = len(valid)
    ln = [1.0] * K if lengths is None else [float(x) for x in lengths]
    s = {k: lp[k] / ln[k] for k in valid}  # length-normalised scores
    beta = hp.get("beta")
    rt = {k: beta * (lp[k] - ref[k]) for k in valid} if (ref is not None and beta is not None) else None

    if name in PAIRWISE:
        pairs = selected_pairs(R, valid, hp["pairs"])
        if not pairs:
            return 0.0

        def one(i: int, j: int) -> float:
            if name == "dpo":
                return -log_sigmoid(rt[i] - rt[j])
            if name == "nca_pair":
                return -log_sigmoid(rt[i]) - 0.5 * log_sigmoid(-rt[i]) - 0.5 * log_sigmoid(-rt[j])
            if name == "cdpo":
                e = hp["eps"]
                return -(1 - e) * log_sigmoid(rt[i] - rt[j]) - e * log_sigmoid(rt[j] - rt[i])
            if name == "rdpo":
                e = hp["eps"]
                return ((1 - e) * -log_sigmoid(rt[i] - rt[j]) - e * -log_sigmoid(rt[j] - rt[i])) / (1 - 2 * e)
            if name == "hinge":
                return max(0.0, 1.0 - (rt[i] - rt[j]))
            if name == "ipo":
                gi, gj = (lp[i] - ref[i]) / ln[i], (lp[j] - ref[j]) / ln[j]
                return (gi - gj - 1.0 / (2.0 * beta)) ** 2
            if name == "cpl":
                a, lam = hp["alpha"], hp["lam"]
                return -log_sigmoid(a * lp[i] - lam * a * lp[j])
            if name == "simpo":
                return -log_sigmoid(beta * (s[i] - s[j]) - hp["gamma"])
            raise AssertionError(name)

        return sum(one(i, j) for i, j in pairs) / len(pairs)

    if name in ("infonca", "nca"):
        if hp.get("label_weights") is not None:
            w = {k: float(hp["label_weights"][k]) for k in valid}
        else:
            # e^{z − max z}: exact ratios without subtracting large numbers (z = R/α reaches 3e4 at α = 1e-4,
            # where z − logsumexp(z) would lose ~4e-12 to round-off)
            z = {k: R[k] / hp["alpha"] for k in valid}
            m = max(z.values())
            e = {k: math.exp(z[k] - m) for k in valid}
            if hp["labels"] == "softmax":
                w = {k: e[k] / sum(e.values()) for k in valid}
            else:  # leave-one-out: e^{R_i/α} / (n · mean_{j≠i} e^{R_j/α})
                w = {i: e[i] / (n * sum(e[j] for j in valid if j != i) / (n - 1)) for i in valid}
        if name == "infonca":
            lse = _logsumexp([rt[k] for k in valid])
            return -sum(w[k] * (rt[k] - lse) for k in valid)
        return -sum(w[k] * log_sigmoid(rt[k]) + log_sigmoid(-rt[k]) / n for k in valid)

    if name == "sft":
        return -s[best_index(R, valid)]

    if name == "rrhf":
        rank = sum(max(0.0, s[i] - s[j]) for i in valid for j in valid if R[i] < R[j])
        return rank + hp["sft_weight"] * -s[best_index(R, valid)]

    # listwise on the responses sorted by R descending, equal R in index order
    order = sorted(valid, key=lambda k: (-R[k], k))
    if name == "clha":
        total = 0.0
        for off in range(1, n):
            vals = [
                max(0.0, hp["margin"] * off - (s[order[k]] - s[order[k + off]]))
                for k in range(n - off)
                if R[order[k]] - R[order[k + off]] > hp["min_gap"]
            ]
            total += sum(vals) / len(vals) if vals else 0.0
        gate = 1.0 if R[order[0]] > hp["sft_gate"] else 0.0
        return total + hp["sft_weight"] * (n - 1) ** 2 * -lp[order[0]] * gate
    if name == "pro":
        total = 0.0
        for k in range(n - 1):
            T = [R[order[k]] - R[order[j]] for j in range(k + 1, n)]
            tkk = max(T)
            terms = [s[order[k]] * tkk] + [s[order[j]] * t for j, t in zip(range(k + 1, n), T)]
            total += _logsumexp(terms) - s[order[k]] * tkk
        return total + hp["sft_weight"] * (n - 1) ** 2 * -lp[order[0]]
    raise ValueError(f"no reference for {name!r}")

"""Paired comparisons of two policies evaluated on the same prompts, with a two-level bootstrap.

Two methods trained with the same seeds (a seed fixes the data order, the samples and the initialisation) and
evaluated on the same test prompts give per-prompt outcomes ``a[s, p]`` and ``b[s, p]``.  The statistic is the
mean over seeds and prompts of ``a − b``.  Its uncertainty has two sources: which prompts happened to be in the
test split, and which seeds (training randomness) were run.  :func:`paired_bootstrap` resamples both: each
replicate draws S seeds with replacement, then P prompts with replacement (one prompt draw shared by the drawn
seeds, since every seed is evaluated on the same prompts), and averages the paired differences; the interval is
the percentile interval of the replicates.  A fixed baseline evaluated once (the base policy μ) is a ``[1, P]``
array and is paired with every seed.

With few seeds the seed level is coarse (2 seeds give at most 3 distinct seed draws), so the interval is honest
about seed variance only as far as the seeds allow; with one seed it is the prompt bootstrap alone.

Source: the percentile bootstrap (Efron & Tibshirani 1993, ch. 13); resampling both levels of a nested design
follows Davison & Hinkley (1997, §3.8).
"""

from __future__ import annotations

import numpy as np

__all__ = ["paired_bootstrap"]


def paired_bootstrap(a, b, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``a − b`` and its two-level bootstrap interval.

    Args:
        a: per-prompt outcomes ``[S, P]`` (S seeds × P prompts) of the first policy.
        b: ``[S, P]`` of the second (seed s paired with seed s of ``a``), or ``[1, P]`` (a fixed baseline).
        n_boot: bootstrap replicates; seed: their random generator's seed; level: interval coverage.

    Returns ``{"mean", "lo", "hi", "se", "p_two_sided", "n_seeds", "n_prompts", "n_boot"}``: ``se`` is the
    replicates' standard deviation; ``p_two_sided`` = 2 × the fraction of replicates on the far side of 0 (at
    least 1/n_boot; a rough bootstrap p-value, reported for a multiple-comparison reading, not a test).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a, b: expected [seeds, prompts] arrays, got shapes {a.shape} and {b.shape}")
    if b.shape[0] == 1:
        b = np.broadcast_to(b, a.shape)
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape}: the same seeds and prompts are needed to pair them")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a, b: per-prompt outcomes must be finite")
    diff = a - b
    s, p = diff.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, s, size=(n_boot, s))
    prompts = rng.integers(0, p, size=(n_boot, p))
    # replicate r: mean over drawn seeds i and drawn prompts j of diff[seeds[r, i], prompts[r, j]]
    per_seed_prompt = diff[:, prompts]                    # [S, n_boot, P]: every seed at each prompt draw
    per_seed = per_seed_prompt.mean(axis=2)               # [S, n_boot]
    reps = np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1)  # [n_boot]
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    mean = float(diff.mean())
    far = np.mean(reps <= 0) if mean > 0 else np.mean(reps >= 0)
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "se": float(reps.std(ddof=1)),
            "p_two_sided": float(min(1.0, max(2 * far, 1.0 / n_boot))), "n_seeds": s, "n_prompts": p,
            "n_boot": n_boot}

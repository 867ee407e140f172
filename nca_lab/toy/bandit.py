"""Random bandit instances: a reference μ over Y responses and rewards r, per context.

The setting of ``proofs/README.md``: μ with full support (min μ ≥ 1e-3), r ∈ [−3, 3]; an optional minimum
gap between any two rewards keeps instances away from ties, where several statements change.
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_instance"]


def _one(rng: np.random.Generator, Y: int, min_mu: float, r_low: float, r_high: float, min_gap: float, concentration: float):
    # μ = min_mu + (1 − Y·min_mu)·Dirichlet: full support by construction, exactly normalised.
    mu = min_mu + (1.0 - Y * min_mu) * rng.dirichlet(np.full(Y, concentration))
    mu = mu / mu.sum()
    # Rewards with pairwise gaps ≥ min_gap: sort Y uniforms on the shortened interval, add i·gap
    # to the i-th smallest (uniform over all admissible configurations), then shuffle.
    slack = (r_high - r_low) - (Y - 1) * min_gap
    u = np.sort(rng.uniform(0.0, slack, size=Y)) + min_gap * np.arange(Y)
    return mu, rng.permutation(r_low + u)


def random_instance(
    rng,
    Y: int,
    X: int | None = None,
    *,
    min_mu: float = 1e-3,
    r_low: float = -3.0,
    r_high: float = 3.0,
    min_gap: float = 0.0,
    concentration: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A random instance (mu, r), float64 ``[Y]`` (or ``[X, Y]`` with ``X`` contexts).

    rng: a ``numpy.random.Generator`` or an int seed. μ = min_mu + (1 − Y·min_mu)·Dirichlet(concentration),
    so min μ ≥ min_mu; r uniform on [r_low, r_high] conditioned on every pairwise gap ≥ min_gap.
    """
    rng = np.random.default_rng(rng)
    if not (isinstance(Y, (int, np.integer)) and Y >= 1):
        raise ValueError(f"Y must be an int >= 1, got {Y!r}")
    if X is not None and not (isinstance(X, (int, np.integer)) and X >= 1):
        raise ValueError(f"X must be None or an int >= 1, got {X!r}")
    if not (0.0 < min_mu and Y * min_mu < 1.0):
        raise ValueError(f"min_mu must lie in (0, 1/Y) = (0, {1.0 / Y:.3g}), got {min_mu!r}")
    if not r_low < r_high:
        raise ValueError(f"need r_low < r_high, got [{r_low}, {r_high}]")
    if min_gap < 0 or (Y - 1) * min_gap > r_high - r_low:
        raise ValueError(f"min_gap = {min_gap!r}: {Y} rewards with that gap do not fit in [{r_low}, {r_high}]")
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration!r}")
    if X is None:
        return _one(rng, Y, min_mu, r_low, r_high, min_gap, concentration)
    pairs = [_one(rng, Y, min_mu, r_low, r_high, min_gap, concentration) for _ in range(X)]
    return np.stack([m for m, _ in pairs]), np.stack([r for _, r in pairs])

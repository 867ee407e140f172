"""Hypothesis strategies shared by the property tests (import as ``from strategies import ...``;
``tests/conftest.py`` puts this folder on ``sys.path``).

Instances follow the setting of ``proofs/README.md``: μ with full support (min μ ≥ ``min_mu``), rewards in
[−3, 3], α, β ∈ [0.3, 3]. Rewards are built with a minimum pairwise gap, so hypothesis (which
shrinks towards 0 and towards equal values) cannot produce the ties several statements exclude:
shrinking leads to evenly spaced rewards at exactly the minimum gap, not to a tie.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, reject, settings
from hypothesis import strategies as st

from nca_lab.toy import IllConditionedWarning, optimum
from nca_lab.toy.population import one_thread

__all__ = ["instances", "alphas", "betas", "prop_settings", "R_BOUND", "torch_one_thread", "solve"]

R_BOUND = 3.0


def prop_settings(max_examples: int):
    """Settings of every property test: no deadline (the first call pays for imports/caches),
    derandomised so that a rerun sees the same examples (the suite's fixed seed)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(autouse=True, scope="module")
def torch_one_thread():
    """Import into a test module to run it with one torch thread: the toy world's tensors are tiny,
    and intra-op threads only add synchronisation (100× slower per op on a loaded 2-core machine)."""
    with one_thread():
        yield


def solve(*args, **kwargs) -> np.ndarray:
    """``nca_lab.toy.optimum``, rejecting (hypothesis ``reject``) the rare instance on which it warns
    that float64 round-off alone may move the minimiser by more than the 1e-6 asserted (a response
    with μ ≈ 1e-3 whose implicit reward saturates the sigmoid; ~1 in 150 instances of the widest
    class). Such an instance has no float64-accurate minimiser to compare, for any solver that
    evaluates the registry loss."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = optimum(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, IllConditionedWarning):
            reject()
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


alphas = st.floats(0.3, 3.0, allow_nan=False, allow_infinity=False)
betas = st.floats(0.3, 3.0, allow_nan=False, allow_infinity=False)


@st.composite
def instances(draw, min_y: int = 2, max_y: int = 6, min_gap: float = 0.1, min_mu: float = 1e-3, r_bound: float = R_BOUND):
    """(mu, r) float64 ``[Y]``: min μ ≥ min_mu, r ∈ [−r_bound, r_bound], every reward gap ≥ min_gap."""
    Y = draw(st.integers(min_y, max_y))
    raw = draw(st.lists(st.floats(0.0, 1.0), min_size=Y, max_size=Y))
    total = sum(raw)
    weights = np.full(Y, 1.0 / Y) if total <= 0 else np.asarray(raw) / total
    mu = min_mu + (1.0 - Y * min_mu) * weights
    mu = mu / mu.sum()
    slack = 2 * r_bound - (Y - 1) * min_gap
    base = draw(st.lists(st.floats(0.0, slack), min_size=Y, max_size=Y))
    sorted_r = -r_bound + np.sort(np.asarray(base)) + min_gap * np.arange(Y)
    order = draw(st.permutations(range(Y)))
    r = sorted_r[np.asarray(order)]
    return mu, r

"""PROPOSITION 21 — listwise EXO with ε = 0 and softmax labels has InfoNCA's free minimiser f* = r/α + C at every K;
with ε > 0 its minimiser is biased: at |Y| = 2 the gap is log(q_1/q_2), q_1 = (1−ε)σ(Δ/α) + ε σ(−Δ/α), strictly
inside (0, Δ/α); on larger Y the bias is computed (the spread of f* shrinks below that of r/α, order kept).

Tolerances: 1e-6 is the contract's accuracy of ``optimum`` (Newton step ≤ 1e-10 at exit); the solver-free
stationarity check is at float64 round-off of a gradient of an O(1) loss (1e-12). The ε > 0 bias asserted at
|Y| = 2, |Δ/α| − |gap| > ε|Δ/α|, is ≥ 3e-4 on this class (ε ≥ 0.01, reward gap ≥ 0.1, α ≤ 3), 300 times the
solver tolerance.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory_atlas as TA
from nca_lab.toy import population_loss

TOL = 1e-6


def centered(v):
    return v - v.mean()


@prop_settings(30)
@given(instances(), alphas, betas, st.sampled_from([2, 3, 4]))
def test_prop_21_eps0_is_infonca(inst, alpha, beta, K):
    mu, r = inst
    f = solve("exo", mu, r, K, alpha=alpha, beta=beta, eps=0.0)
    np.testing.assert_allclose(centered(f), centered(r / alpha), atol=TOL, rtol=0)
    # solver-free: every f = r/α + C is stationary for the exact population loss
    for C in (-1.0, 0.0, 2.0):
        logpi = torch.tensor(np.log(mu) + (r / alpha + C) / beta, requires_grad=True)
        (g,) = torch.autograd.grad(population_loss("exo", logpi, mu, r, K, alpha=alpha, beta=beta, eps=0.0), logpi)
        assert float(g.abs().max()) < 1e-12


@prop_settings(30)
@given(instances(min_y=2, max_y=2), alphas, betas, st.floats(0.01, 0.45))
def test_prop_21_eps_bias_closed_form_y2(inst, alpha, beta, eps):
    mu, r = inst
    f = solve("exo", mu, r, 2, alpha=alpha, beta=beta, eps=eps)
    gap = TA.exo_pair_y2_optimum(r[0] - r[1], alpha, eps)
    assert abs((f[0] - f[1]) - gap) < TOL
    # biased towards 0: same sign, and |gap| < (1 − ε)|Δ/α| (≈ (1 − 2ε)Δ/α for small Δ/α; saturating at
    # log((1 − ε)/ε) for large): a bias of at least ε|Δ/α| ≥ 3e-4 here, 300× the solver tolerance
    d = (r[0] - r[1]) / alpha
    assert np.sign(gap) == np.sign(d) and abs(gap) < (1 - eps) * abs(d)
    assert abs(f[0] - f[1]) < abs(d) - eps * abs(d) + TOL


@prop_settings(20)
@given(instances(min_y=3, max_y=5), alphas, st.floats(0.01, 0.45), st.sampled_from([2, 3]))
def test_prop_21_eps_bias_computed(inst, alpha, eps, K):
    """ε > 0 on |Y| ≥ 3 (computed, not proved): f* keeps the order of r, and its spread is smaller than that of
    r/α (label smoothing pulls the minimiser towards uniform)."""
    mu, r = inst
    f = solve("exo", mu, r, K, alpha=alpha, beta=1.0, eps=eps)
    order = np.argsort(r)
    assert np.all(np.diff(f[order]) > 0)
    assert np.ptp(f) < np.ptp(r / alpha)

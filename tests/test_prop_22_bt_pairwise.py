"""PROPOSITION 22 — pairs from μ×μ with Bradley–Terry labels: ``bco_pair`` has f* = logit p_win(y); ``sppo``
(K = 2) has log-ratio* = (p_win(y) − ½)/β; ``apo_zero`` has no finite minimiser and its population gradient
drives every f(y) towards sign(p_win(y) − ½)·∞; ``discopop``'s minimiser is computed: at |Y| = 2 its global
minimiser overshoots DPO's gap Δ, and for τ < (1 − ln 2)/3 its gradient at the reference points the wrong way, to
a second local minimiser of the wrong sign.

p_win(y) = E_{y'~μ} σ(r(y) − r(y')) (``theory.bt_win_probability``). Tolerances: 1e-6 is the contract's accuracy
of ``optimum``; gradient identities hold to float64 round-off (1e-12 on O(1) quantities); the DiscoPOP global
minimiser is found by a dense grid refined by a bounded scalar search (``theory_atlas.discopop_y2_optimum``,
xatol 1e-12), compared with Newton on the registry loss started next to it, to 1e-6.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory, theory_atlas as TA
from nca_lab.toy import NoMinimiserError, optimum, population_loss
from nca_lab.toy.solve import newton_minimise

TOL = 1e-6


@prop_settings(30)
@given(instances(min_gap=0.0), betas)
def test_prop_22_bco_pair(inst, beta):
    mu, r = inst
    f = solve("bco_pair", mu, r, 2, labels="bt", beta=beta)
    np.testing.assert_allclose(f, TA.bco_pair_bt_optimum(mu, r), atol=TOL, rtol=0)


@prop_settings(30)
@given(instances(min_gap=0.0), betas)
def test_prop_22_sppo(inst, beta):
    mu, r = inst
    f = solve("sppo", mu, r, 2, labels="bt", beta=beta)  # f = β·(log π* − log μ)
    p = theory.bt_win_probability(mu, r)
    np.testing.assert_allclose(f / beta, (p - 0.5) / beta, atol=TOL / beta, rtol=0)
    np.testing.assert_allclose(f, TA.sppo_bt_optimum(mu, r, beta), atol=TOL, rtol=0)


@prop_settings(8)
@given(instances(min_gap=0.2), betas, st.integers(0, 10_000))
def test_prop_22_apo_zero(inst, beta, seed):
    mu, r = inst
    p = theory.bt_win_probability(mu, r)
    # the population gradient is 2μ_y(1 − 2p_win)σ'(f_y) in f: descent moves f_y towards sign(p_win − ½)·∞
    f = np.random.default_rng(seed).normal(size=len(mu)) * 2
    logpi = torch.tensor(np.log(mu) + f / beta, requires_grad=True)
    (g,) = torch.autograd.grad(population_loss("apo_zero", logpi, mu, r, 2, "bt", beta=beta), logpi)
    s = 1 / (1 + np.exp(-f))
    expect_df = 2 * mu * (1 - 2 * p) * s * (1 - s)
    np.testing.assert_allclose(g.numpy() / beta, expect_df, atol=1e-12, rtol=0)
    nonzero = np.abs(p - 0.5) > 1e-9
    assert np.all(np.sign(-g.numpy()[nonzero]) == TA.apo_zero_bt_direction(mu, r)[nonzero])
    with pytest.raises(NoMinimiserError):
        optimum("apo_zero", mu, r, 2, labels="bt", beta=beta)


def _discopop_y2_loss(h: torch.Tensor, mu, r, beta, tau):
    f = torch.stack([h / 2, -h / 2])
    return population_loss("discopop", torch.from_numpy(np.log(mu)) + f / beta, mu, r, 2, "bt", beta=beta, tau=tau)


@prop_settings(20)
@given(instances(min_y=2, max_y=2, min_gap=0.05), st.floats(0.02, 0.1))
def test_prop_22_discopop_y2(inst, tau):
    mu, r = inst
    beta = 1.0
    d = r[0] - r[1]
    h_star = TA.discopop_y2_optimum(d, tau)
    # Newton on the registry loss, started next to the grid's global minimiser, lands on it
    h = newton_minimise(lambda x: _discopop_y2_loss(x[0], mu, r, beta, tau), torch.tensor([h_star + 1e-3], dtype=torch.float64))
    assert abs(float(h[0]) - h_star) < TOL
    # it overshoots DPO's gap Δ
    assert abs(h_star) > abs(d) and np.sign(h_star) == np.sign(d)
    # at the reference the population gradient is (2p − 1)·ℓ'(0)·μ_1μ_2·2 in h, ℓ'(0) = (1 − ln 2)/(4τ) − 3/4 > 0
    # for τ < (1 − ln 2)/3: descent from the reference lowers the preferred response ...
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_discopop_y2_loss(x[0], mu, r, beta, tau), x)
    p = 1 / (1 + math.exp(-d))
    dl0 = (1 - math.log(2)) / (4 * tau) - 0.75
    assert float(g[0]) == pytest.approx(2 * mu[0] * mu[1] * (2 * p - 1) * dl0, abs=1e-12)
    # ... towards a second, wrong-sign local minimiser: Newton started at a small wrong-sign gap stops there
    # (it returns only at a positive definite Hessian), well away from the global one
    h_loc = newton_minimise(lambda x: _discopop_y2_loss(x[0], mu, r, beta, tau),
                            torch.tensor([-0.05 * np.sign(d)], dtype=torch.float64))
    assert np.sign(float(h_loc[0])) == -np.sign(d)
    assert float(_discopop_y2_loss(h_loc[0], mu, r, beta, tau)) > float(_discopop_y2_loss(torch.tensor(h_star), mu, r, beta, tau))

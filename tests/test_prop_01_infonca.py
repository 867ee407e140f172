"""PROPOSITION 1 — InfoNCA at finite K: the free minimiser is f* = r/α + C for every K ≥ 2, and in the
policy parameterisation π* ∝ μ·e^{r/(αβ)} for every β.

Tolerance: ``optimum`` stops when its Newton step is ≤ 1e-10, so its argument is exact to far below the
contract's 1e-6 (observed ~1e-14); 1e-6 is the contract's guarantee and what is asserted.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory
from nca_lab.toy import population_loss

TOL = 1e-6


def centered(v):
    return v - v.mean()


@prop_settings(30)
@given(instances(), alphas, betas, st.sampled_from([2, 3, 4]))
def test_prop_01(inst, alpha, beta, K):
    mu, r = inst
    f = solve("infonca", mu, r, K, alpha=alpha, beta=beta)
    # free minimiser: r/α up to a constant over Y
    np.testing.assert_allclose(centered(f), centered(theory.infonca_optimum(mu, r, alpha)), atol=TOL, rtol=0)
    # policy parameterisation: log π* = log μ + r/(αβ) − log-normaliser, whatever β
    f_pol = solve("infonca", mu, r, K, param="policy", alpha=alpha, beta=beta)
    np.testing.assert_allclose(f_pol / beta + np.log(mu), theory.infonca_policy_optimum(mu, r, alpha, beta), atol=TOL, rtol=0)


@prop_settings(30)
@given(instances(), alphas, betas, st.sampled_from([2, 3, 4]), st.floats(-5, 5))
def test_prop_01_closed_form_is_stationary_for_every_constant(inst, alpha, beta, K, C):
    """Solver-free check: at log π = log μ + (r/α + C)/β the population gradient vanishes, for any C."""
    mu, r = inst
    logpi = torch.tensor(np.log(mu) + (r / alpha + C) / beta, requires_grad=True)
    (g,) = torch.autograd.grad(population_loss("infonca", logpi, mu, r, K, alpha=alpha, beta=beta), logpi)
    # float64 round-off of a sum of ≤ 126 O(1) terms: 1e-12 leaves a wide margin
    assert float(g.abs().max()) < 1e-12

"""PROPOSITION 7 — pairwise NCA with pairs from μ×μ and Bradley–Terry labels: the ``nca_pair`` free
minimiser is f*(y) = log(2·p_win(y)), p_win(y) = E_{y'~μ} σ(r(y) − r(y')), and Σ_y μ(y)·2p_win(y) = 1.

Tolerances: 1e-6 is the solver's contract accuracy; the self-normalisation of the closed form is an
identity (Σ μ p_win = ½ by antisymmetry of σ(d) − ½), exact to round-off.
"""

import numpy as np
import torch
from hypothesis import given
from strategies import betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory
from nca_lab.toy import population_loss

TOL = 1e-6


@prop_settings(30)
@given(instances(min_gap=0.0), betas)
def test_prop_07(inst, beta):
    mu, r = inst
    target = theory.nca_pair_optimum(mu, r)
    # p_win written out here, independently of theory
    p_win = np.array([np.sum(mu / (1 + np.exp(-(r[y] - r)))) for y in range(len(mu))])
    np.testing.assert_allclose(target, np.log(2 * p_win), atol=1e-12)
    assert abs(float(np.sum(mu * 2 * p_win)) - 1.0) < 1e-12

    f = solve("nca_pair", mu, r, 2, labels="bt", beta=beta)
    np.testing.assert_allclose(f, target, atol=TOL, rtol=0)

    # solver-free: the closed form is a stationary point of the exact population loss
    logpi = torch.tensor(np.log(mu) + target / beta, requires_grad=True)
    (g,) = torch.autograd.grad(population_loss("nca_pair", logpi, mu, r, 2, "bt", beta=beta), logpi)
    assert float(g.abs().max()) < 1e-12

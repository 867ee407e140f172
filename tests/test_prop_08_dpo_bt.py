"""PROPOSITION 8 — DPO with pairs from μ×μ labelled by Bradley–Terry with reward r: the minimiser is
f* = r + C, i.e. π* ∝ μ·e^{r/β}.

``optimum`` returns the normalised representative (Σ π* = 1), which is ``theory.dpo_bt_optimum``;
the free and the policy parameterisation must agree on it. Tolerance 1e-6: the solver's contract.
"""

import numpy as np
import torch
from hypothesis import given
from strategies import betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory
from nca_lab.toy import population_loss

TOL = 1e-6


def centered(v):
    return v - v.mean()


@prop_settings(30)
@given(instances(min_gap=0.0), betas)
def test_prop_08(inst, beta):
    mu, r = inst
    f_free = solve("dpo", mu, r, 2, labels="bt", beta=beta)
    np.testing.assert_allclose(centered(f_free), centered(r), atol=TOL, rtol=0)
    np.testing.assert_allclose(f_free, theory.dpo_bt_optimum(mu, r, beta), atol=TOL, rtol=0)
    f_pol = solve("dpo", mu, r, 2, param="policy", labels="bt", beta=beta)
    log_pi = f_pol / beta + np.log(mu)
    expected = np.log(mu) + r / beta
    np.testing.assert_allclose(log_pi, expected - np.log(np.sum(np.exp(expected))), atol=TOL, rtol=0)

    # solver-free: every f = r + C is stationary for the exact population loss
    for C in (-2.0, 0.0, 3.0):
        logpi = torch.tensor(np.log(mu) + (r + C) / beta, requires_grad=True)
        (g,) = torch.autograd.grad(population_loss("dpo", logpi, mu, r, 2, "bt", beta=beta), logpi)
        assert float(g.abs().max()) < 1e-12

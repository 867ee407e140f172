"""PROPOSITION 11 — rDPO is unbiased: under symmetric label flips with rate ε, the expectation of the
registry ``rdpo`` loss (with its ε) equals the registry ``dpo`` loss on the clean label — at the tuple
level, hence at the population level, so the noisy-label population minimiser is the clean DPO one.

Tolerances: the identity holds to float64 round-off (1e-12 relative; rdpo divides by 1 − 2ε ≥ 0.1);
minimisers to the solver's contract accuracy 1e-6.
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory
from nca_lab.losses import LOSSES
from nca_lab.toy import population_loss

TOL = 1e-6
eps_rates = st.floats(0.0, 0.45)


@prop_settings(30)
@given(st.lists(st.floats(-6, 6), min_size=8, max_size=8), betas, eps_rates)
def test_prop_11(vals, beta, eps):
    pol = torch.tensor(vals[:4], dtype=torch.float64).reshape(2, 2)
    ref = torch.tensor(vals[4:], dtype=torch.float64).reshape(2, 2)
    clean = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    flipped = 1.0 - clean
    expected = (1 - eps) * LOSSES["rdpo"](pol, ref, clean, beta=beta, eps=eps) + eps * LOSSES["rdpo"](pol, ref, flipped, beta=beta, eps=eps)
    dpo = LOSSES["dpo"](pol, ref, clean, beta=beta)
    torch.testing.assert_close(expected, dpo, atol=1e-12, rtol=1e-12)
    h = (beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))).numpy()
    np.testing.assert_allclose(theory.rdpo_expected_loss(h, eps), dpo.numpy(), atol=1e-12, rtol=1e-12)


@prop_settings(25)
@given(instances(max_y=5), betas, st.floats(0.01, 0.45), st.integers(0, 2**32 - 1))
def test_prop_11_population(inst, beta, eps, seed):
    mu, r = inst
    logpi = np.log(mu) + np.random.default_rng(seed).normal(size=len(mu))
    noisy = float(population_loss("rdpo", logpi, mu, r, 2, "bt", flip_rate=eps, eps=eps, beta=beta))
    clean = float(population_loss("dpo", logpi, mu, r, 2, "bt", beta=beta))
    assert abs(noisy - clean) < 1e-12 * max(1.0, abs(clean))
    # …whereas plain DPO on the noisy labels is a different loss (ε > 0, untied rewards)
    assert abs(float(population_loss("dpo", logpi, mu, r, 2, "bt", flip_rate=eps, beta=beta)) - clean) > 1e-12
    f = solve("rdpo", mu, r, 2, labels="bt", flip_rate=eps, eps=eps, beta=beta)
    np.testing.assert_allclose(f, theory.dpo_bt_optimum(mu, r, beta), atol=TOL, rtol=0)
    np.testing.assert_allclose(f, solve("dpo", mu, r, 2, labels="bt", beta=beta), atol=2 * TOL, rtol=0)

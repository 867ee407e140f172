"""PROPOSITION 24 — listwise DPO (``plackett_luce``) with rankings of the K drawn responses drawn from
Plackett–Luce(e^r): the free minimiser is f* = r + C at every K (K = 2: Bradley–Terry pairs, Proposition 8).

The population loss under Plackett–Luce rankings is ``nca_lab.toy.atlas.pl_population_loss`` (exact
enumeration of tuples × orders). Tolerances: 1e-6 is the contract's accuracy of the Newton solver; the
solver-free stationarity check is at float64 round-off of a gradient of an O(1) loss (1e-12).
"""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import betas, instances, prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.toy import optimum
from nca_lab.toy.atlas import pl_optimum, pl_population_loss

TOL = 1e-6


def centered(v):
    return v - v.mean()


@prop_settings(20)
@given(instances(max_y=4, min_gap=0.0), betas, st.sampled_from([2, 3, 4]))
def test_prop_24(inst, beta, K):
    mu, r = inst
    f = pl_optimum("plackett_luce", mu, r, K, beta=beta)
    np.testing.assert_allclose(centered(f), centered(r), atol=TOL, rtol=0)
    for C in (-1.0, 1.5):
        logpi = torch.tensor(np.log(mu) + (r + C) / beta, requires_grad=True)
        (g,) = torch.autograd.grad(pl_population_loss("plackett_luce", logpi, mu, r, K, beta=beta), logpi)
        assert float(g.abs().max()) < 1e-12


@prop_settings(10)
@given(instances(max_y=4, min_gap=0.0), betas)
def test_prop_24_k2_is_bradley_terry_dpo(inst, beta):
    mu, r = inst
    f_pl = pl_optimum("plackett_luce", mu, r, 2, beta=beta)
    f_bt = optimum("dpo", mu, r, 2, labels="bt", beta=beta)
    np.testing.assert_allclose(f_pl, f_bt, atol=TOL, rtol=0)

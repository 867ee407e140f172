"""PROPOSITION 6 — K = 2 InfoNCA is DPO with the soft label q = σ((r_1 − r_2)/α), exactly; its optimum is
Δf = Δr/α; as α → 0 it becomes DPO with the hard label (untied rewards).

Checked at the tuple level (registry ``infonca`` against the formula and against registry ``cdpo``, whose
label smoothing ε is the soft label's minority weight), at the population level (``population_loss``
against an explicit double sum over ordered pairs), and through the solver. Tolerances: identities in
float64 hold to round-off (1e-12 relative); the solver's contract accuracy is 1e-6.
"""

import math

import numpy as np
from scipy.special import expit
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, instances, prop_settings, solve, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.losses import LOSSES
from nca_lab.toy import population_loss

TOL = 1e-6


def soft_dpo(h, q):
    return -q * F.logsigmoid(h) - (1 - q) * F.logsigmoid(-h)


tuples = st.lists(st.floats(-4, 4), min_size=6, max_size=6)


@prop_settings(25)
@given(tuples, alphas, betas)
def test_prop_06(vals, alpha, beta):
    pol = torch.tensor([vals[0:2]], dtype=torch.float64)
    ref = torch.tensor([vals[2:4]], dtype=torch.float64)
    R = torch.tensor([vals[4:6]], dtype=torch.float64)
    h = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    q = torch.sigmoid((R[:, 0] - R[:, 1]) / alpha)
    info = LOSSES["infonca"](pol, ref, R, alpha=alpha, beta=beta)
    torch.testing.assert_close(info, soft_dpo(h, q), atol=1e-12, rtol=1e-12)
    if abs(vals[4] - vals[5]) > 1e-6:  # a real preference (ε < ½ in float64)
        # registry cdpo: −(1−ε) log σ(h_wl) − ε log σ(−h_wl) with ε = σ(−|ΔR|/α) < ½
        eps = float(torch.sigmoid(-(R[0, 0] - R[0, 1]).abs() / alpha))
        torch.testing.assert_close(info, LOSSES["cdpo"](pol, ref, R, eps=eps, beta=beta), atol=1e-12, rtol=1e-12)
        # α → 0: soft − hard = ε·h_wl exactly, so the gap vanishes like e^{−|ΔR|/α}
        for a in (alpha, alpha / 10, alpha / 100):
            eps = torch.sigmoid(-(R[:, 0] - R[:, 1]).abs() / a)
            h_wl = h * torch.sign(R[:, 0] - R[:, 1])
            diff = LOSSES["infonca"](pol, ref, R, alpha=a, beta=beta) - LOSSES["dpo"](pol, ref, R, beta=beta)
            torch.testing.assert_close(diff, eps * h_wl, atol=1e-12, rtol=1e-9)


@prop_settings(30)
@given(instances(), alphas, betas, st.integers(0, 2**32 - 1))
def test_prop_06_population(inst, alpha, beta, seed):
    mu, r = inst
    Y = len(mu)
    logpi = np.log(mu) + np.random.default_rng(seed).normal(size=Y)
    f = beta * (logpi - np.log(mu))
    explicit = 0.0
    for i in range(Y):
        for j in range(Y):
            q = 1 / (1 + math.exp(-(r[i] - r[j]) / alpha))
            h = torch.tensor(f[i] - f[j], dtype=torch.float64)
            explicit += mu[i] * mu[j] * float(soft_dpo(h, q))
    pop = float(population_loss("infonca", logpi, mu, r, 2, alpha=alpha, beta=beta))
    assert abs(pop - explicit) < 1e-12 * max(1.0, abs(explicit))

    # optimum: Δf = Δr/α
    f_star = solve("infonca", mu, r, 2, alpha=alpha, beta=beta)
    np.testing.assert_allclose(f_star[:, None] - f_star[None, :], (r[:, None] - r[None, :]) / alpha, atol=2 * TOL, rtol=0)

    # α → 0 at the population level: InfoNCA − DPO(hard labels) = 2 Σ_{r_i > r_j} μ_i μ_j ε_ij h_ij exactly,
    # ε_ij = σ(−(r_i − r_j)/α), h_ij = f_i − f_j (the tuple identity, summed over both orders; DPO skips the
    # identical draws, on which InfoNCA's value is log 2 whatever f), and this vanishes as α → 0.
    hard = float(population_loss("dpo", logpi, mu, r, 2, beta=beta)) + math.log(2) * float(np.sum(mu**2))
    for a in (0.3, 0.03, 0.003):
        eps = expit(-(r[:, None] - r[None, :]) / a)
        gap = 2 * np.sum(np.where(r[:, None] > r[None, :], mu[:, None] * mu[None, :] * eps * (f[:, None] - f[None, :]), 0.0))
        soft = float(population_loss("infonca", logpi, mu, r, 2, alpha=a, beta=beta))
        assert abs(soft - hard - gap) < 1e-12 * max(1.0, abs(soft))
    assert abs(gap) < 1e-10  # at α = 0.003 with min reward gap 0.1: ε ≤ σ(−33) ≈ 5e-15

"""PROPOSITION 14 — unseen responses. Free parameterisation (a free logit per response, log π = logit):
a tuple's loss gives exactly zero gradient to every response outside the tuple, for every registry loss.
Policy parameterisation (π = softmax θ): an unseen j receives −π_j Σ_i ∂loss/∂log π(y_i) = −β π_j Σ_i g_i
(g_i = ∂loss/∂r_θ,i) — zero for InfoNCA and DPO (their Σ g = 0, PROPOSITION 12), non-zero for NCA away
from r_θ = 0: NCA moves mass between data and unseen responses, the others only within the data.

The formula is checked against autograd for every loss; NCA's non-zero margin uses tanh(δ/2) ≤ |Σ g|
when every r_θ,i is at least δ from 0 on one side (see test_prop_12). Tolerance: round-off, 1e-12.
"""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.losses import LOSSES

Y = 7  # responses; a tuple covers at most 4 of them, so at least 3 are unseen


@st.composite
def setting(draw):
    K = draw(st.integers(2, 4))
    idx = draw(st.lists(st.integers(0, Y - 1), min_size=K, max_size=K))
    logits = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=Y, max_size=Y)), dtype=torch.float64)
    log_mu = torch.log_softmax(torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=Y, max_size=Y)), dtype=torch.float64), 0)
    R = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=K, max_size=K)), dtype=torch.float64)[None]
    return torch.tensor(idx), logits, log_mu, R


def tuple_loss(name, logpi, log_mu, idx, R, hp):
    return LOSSES[name](logpi[idx][None], log_mu[idx][None], R, **hp).sum()


def hparams(name, alpha, beta):
    d = LOSSES[name].defaults
    return {k: v for k, v in (("alpha", alpha), ("beta", beta)) if k in d}


@prop_settings(25)
@given(setting(), alphas, betas)
def test_prop_14(s, alpha, beta):
    idx, logits, log_mu, R = s
    unseen = torch.tensor([j for j in range(Y) if j not in set(idx.tolist())])
    for name in LOSSES:
        hp = hparams(name, alpha, beta)
        # free parameterisation: exactly zero outside the tuple
        x = logits.clone().requires_grad_(True)
        (g_free,) = torch.autograd.grad(tuple_loss(name, x, log_mu, idx, R, hp), x, allow_unused=False)
        assert torch.all(g_free[unseen] == 0), name
        # policy parameterisation: autograd through log_softmax against −π_j Σ_i ∂loss/∂log π(y_i)
        theta = logits.clone().requires_grad_(True)
        (g_theta,) = torch.autograd.grad(tuple_loss(name, torch.log_softmax(theta, 0), log_mu, idx, R, hp), theta)
        lp = torch.log_softmax(logits, 0).detach().requires_grad_(True)
        (g_lp,) = torch.autograd.grad(tuple_loss(name, lp, log_mu, idx, R, hp), lp)
        pi = lp.detach().exp()
        torch.testing.assert_close(g_theta[unseen], -pi[unseen] * g_lp.sum(), atol=1e-12, rtol=1e-10)
        if name in ("infonca", "dpo"):
            assert float(g_theta[unseen].abs().max()) < 1e-12, name


@prop_settings(25)
@given(setting(), alphas, betas, st.floats(0.1, 3.0), st.sampled_from([1.0, -1.0]))
def test_prop_14_nca_moves_unseen_mass(s, alpha, beta, delta, sign):
    idx, logits, log_mu, R = s
    unseen = torch.tensor([j for j in range(Y) if j not in set(idx.tolist())])
    # put every sampled r_θ = β(log π − log μ) at least δ from 0 on one side
    logpi = torch.log_softmax(logits, 0)
    f = sign * (delta + (beta * (logpi[idx] - log_mu[idx])).abs())
    pol = log_mu[idx] + f / beta
    leaf = pol.detach().requires_grad_(True)
    (g_lp,) = torch.autograd.grad(LOSSES["nca"](leaf[None], log_mu[idx][None], R, alpha=alpha, beta=beta).sum(), leaf)
    sum_g = float(g_lp.sum()) / beta  # Σ_i g_i
    assert sign * sum_g >= math.tanh(delta / 2) - 1e-12
    # an unseen j with policy probability π_j then receives −β π_j Σ g ≠ 0
    pi = logpi.exp()
    moved = -beta * pi[unseen] * sum_g
    assert float(moved.abs().min()) >= beta * float(pi[unseen].min()) * math.tanh(delta / 2) - 1e-12

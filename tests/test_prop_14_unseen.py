"""PROPOSITION 14 — unseen responses. Policy parameterisation (π = softmax θ): an unseen response j receives
∂ℓ/∂θ_j = −β π_j Σ_i g_i (g_i = ∂ℓ/∂r_θ,i) — zero for InfoNCA and DPO (their Σ g = 0, PROPOSITION 12),
non-zero for NCA away from r_θ = 0: NCA moves mass between the data and unseen responses.

What is compared with what (nothing here reads the formula back from the code it checks):
- the gradient the registry loss actually produces on θ_j — autograd through ``log_softmax`` and the loss —
  against −β π_j Σ_i g_i with g_i written out by hand from each loss's formula (NCA:
  g_i = −w_i σ(−r_i) + σ(r_i)/n; InfoNCA: g_i = softmax(r)_i − w_i; DPO: g_w = −σ(−h) = −g_l), in plain
  Python;
- NCA's effect on unseen responses measured, not computed: one small gradient step on θ, then the change of
  the unseen responses' total probability mass read off the new softmax, against the first-order prediction,
  and every unseen log-probability rising (falling) against the data's mean when the data are over-
  (under-)weighted; InfoNCA and DPO leave every unseen θ_j where it was.
(The free-parameterisation half — a loss of f(y_1..y_K) has no gradient on f(j) for j outside the tuple —
holds by construction of indexing and is not a numerical claim; ``proofs/14_unseen_responses.md``.)

Tolerances: gradients of O(1) sums in float64 agree to ~1e-15; 1e-12 asserted. The step test uses
η = 1e-7: the second-order term of the mass change is ~η²·O(1) = 1e-14 against a first-order change of
≥ ~1e-10 (η·β·π_j·tanh(δ/2)), and float64 round-off of the masses is ~2e-16; rel 1e-3 asserted.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.losses import LOSSES

Y = 7  # responses; a tuple covers at most 4 of them, so at least 3 are unseen


@st.composite
def setting(draw):
    K = draw(st.integers(2, 4))
    idx = draw(st.lists(st.integers(0, Y - 1), min_size=K, max_size=K, unique=True))
    logits = torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=Y, max_size=Y)), dtype=torch.float64)
    log_mu = torch.log_softmax(torch.tensor(draw(st.lists(st.floats(-3, 3), min_size=Y, max_size=Y)), dtype=torch.float64), 0)
    R = [draw(st.floats(-3, 3)) for _ in range(K)]
    return idx, logits, log_mu, R


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def hand_coefficients(name, r, R, alpha):
    """g_i = ∂ℓ/∂r_θ,i from each loss's formula (README's loss table), plain Python."""
    n = len(r)
    if name == "nca":
        w = softmax([x / alpha for x in R])
        return [-w[i] * sig(-r[i]) + sig(r[i]) / n for i in range(n)]
    if name == "infonca":
        w, p = softmax([x / alpha for x in R]), softmax(r)
        return [p[i] - w[i] for i in range(n)]
    if name == "dpo":  # best = highest R (first on ties), worst = lowest
        b = max(range(n), key=lambda i: (R[i], -i))
        l = min(range(n), key=lambda i: (R[i], i))
        g = [0.0] * n
        if R[b] > R[l]:
            g[b], g[l] = -sig(-(r[b] - r[l])), sig(-(r[b] - r[l]))
        return g
    raise ValueError(name)


def theta_gradient(name, theta, log_mu, idx, R, hp):
    theta = theta.clone().requires_grad_(True)
    lp = torch.log_softmax(theta, 0)
    loss = LOSSES[name](lp[idx][None], log_mu[idx][None], torch.tensor([R], dtype=torch.float64), **hp).sum()
    (g,) = torch.autograd.grad(loss, theta)
    return g


@prop_settings(25)
@given(setting(), alphas, betas)
def test_prop_14(s, alpha, beta):
    idx, logits, log_mu, R = s
    unseen = [j for j in range(Y) if j not in idx]
    pi = torch.softmax(logits, 0)
    r = [beta * float(torch.log_softmax(logits, 0)[i] - log_mu[i]) for i in idx]
    for name, hp in (("nca", dict(alpha=alpha, beta=beta)), ("infonca", dict(alpha=alpha, beta=beta)), ("dpo", dict(beta=beta))):
        g_theta = theta_gradient(name, logits, log_mu, idx, R, hp)
        sum_g = sum(hand_coefficients(name, r, R, alpha))
        for j in unseen:
            expect = -beta * float(pi[j]) * sum_g
            assert abs(float(g_theta[j]) - expect) <= 1e-12, (name, j, float(g_theta[j]), expect)
        if name in ("infonca", "dpo"):
            assert max(abs(float(g_theta[j])) for j in unseen) < 1e-12, name


@prop_settings(25)
@given(setting(), alphas, betas, st.floats(0.1, 3.0), st.sampled_from([1.0, -1.0]))
def test_prop_14_nca_moves_unseen_mass(s, alpha, beta, delta, sign):
    """Every sampled r_θ at least δ from 0 on one side: NCA's gradient on each unseen θ_j is at least
    β π_j tanh(δ/2) in size (autograd), and one small gradient step changes the unseen mass by the
    first-order amount, in the predicted direction (measured on the new softmax)."""
    idx, logits, log_mu, R = s
    unseen = [j for j in range(Y) if j not in idx]
    # move the sampled logits so that every r_θ,i = β(log π_i − log μ_i) is ≥ δ from 0 on the side `sign`
    theta = logits.clone()
    for _ in range(60):
        lp = torch.log_softmax(theta, 0)
        f = beta * (lp[idx] - log_mu[idx])
        if bool((sign * f >= delta).all()):
            break
        theta[idx] = theta[idx] + sign * 0.5
    lp = torch.log_softmax(theta, 0)
    f = beta * (lp[idx] - log_mu[idx])
    if not bool((sign * f >= delta).all()):
        return  # the sampled responses cannot all sit on that side (all mass on the data): vacuous
    hp = dict(alpha=alpha, beta=beta)
    g = theta_gradient("nca", theta, log_mu, idx, R, hp)
    pi = torch.softmax(theta, 0)
    for j in unseen:
        # sign·Σ g_i ≥ tanh(δ/2) (test_prop_12's bound), so the unseen logit is pushed with that strength
        assert sign * -float(g[j]) / (beta * float(pi[j])) >= math.tanh(delta / 2) - 1e-12
    # measured: the unseen mass after one small step θ ← θ − η∇
    eta = 1e-7
    pi_new = torch.softmax(theta - eta * g, 0)
    moved = float(pi_new[unseen].sum() - pi[unseen].sum())
    predicted = -eta * float(sum(pi[j] * (g[j] - (pi * g).sum()) for j in unseen))
    # abs 1e-15: the moved mass is a difference of O(1) probabilities (float64 rounding ~1e-16 each), so a mass of
    # ~1e-13 (a nearly-deterministic μ, found by hypothesis) carries a rounding error of a few 1e-16
    assert moved == pytest.approx(predicted, rel=1e-3, abs=1e-15)
    # and the unseen logits moved against each other's ratios not at all, but jointly by −η g_j ∝ π_j Σ g:
    # their log-probabilities relative to the data's mean log-probability move by the sign of Σ g
    lp_new = torch.log_softmax(theta - eta * g, 0)
    rel_move = (lp_new[unseen] - lp_new[idx].mean()) - (lp[unseen] - lp[idx].mean())
    assert bool((sign * rel_move > 0).all()), rel_move

"""Proposition 15: DPO on one pair with a tabular softmax policy raises log π(y_w) monotonically.

Derivation (policy π = softmax(θ) over Y; one pair w ≻ l; μ the reference):
h = β[(log π_w − log μ_w) − (log π_l − log μ_l)] = β(θ_w − θ_l − log μ_w + log μ_l) (the log-partition
cancels), L = −log σ(h), so ∇_θ L = −β σ(−h)(e_w − e_l). One gradient step of size η moves
θ by Δθ = η β σ(−h)(e_w − e_l), and since ∇_θ log π_w = e_w − π,

    d log π_w = (e_w − π)·Δθ = η β σ(−h) (1 − π_w + π_l)   (first order in η),

which is > 0 because π_l > 0. Beyond first order the discrete step is also monotone for every
η > 0: with c = η β σ(−h) > 0, the exact change is c − log(1 + π_w(e^c − 1) + π_l(e^{−c} − 1)),
and e^c > 1 + π_w(e^c − 1) + π_l(e^{−c} − 1) ⇔ (1 − π_w)(e^c − 1) + π_l(1 − e^{−c}) > 0, true.
The test checks the rate against autograd through ``nca_lab.losses.dpo``, the exact one-step
change against the closed form, and monotone trajectories under gradient descent
(``nca_lab.toy.dynamics.train``) — including large steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nca_lab.losses import dpo
from nca_lab.toy.dynamics import Problem, train


@st.composite
def single_pair_instances(draw):
    Y = draw(st.integers(2, 8))
    theta = np.array(draw(st.lists(st.floats(-3, 3), min_size=Y, max_size=Y)))
    # μ with full support (min μ ≥ 1e-3 after normalisation): positive weights, normalised
    wts = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=Y, max_size=Y)))
    mu = wts / wts.sum()
    w = draw(st.integers(0, Y - 1))
    l = draw(st.integers(0, Y - 2))
    l = l if l < w else l + 1  # l ≠ w
    beta = draw(st.floats(0.3, 3.0))
    return theta, mu, w, l, beta


def _dpo_loss(theta: torch.Tensor, mu: np.ndarray, w: int, l: int, beta: float) -> torch.Tensor:
    logpi = torch.log_softmax(theta, -1)
    idx = torch.tensor([w, l])
    ref = torch.from_numpy(np.log(mu))[idx][None]
    return dpo(logpi[idx][None], ref, torch.tensor([[1.0, 0.0]], dtype=torch.float64), beta=beta)[0]


def _rate(theta: np.ndarray, mu: np.ndarray, w: int, l: int, beta: float) -> float:
    """β σ(−h)(1 − π_w + π_l): d log π_w per unit learning rate under gradient descent."""
    pi = np.exp(theta - np.logaddexp.reduce(theta))
    h = beta * ((theta[w] - theta[l]) - (math.log(mu[w]) - math.log(mu[l])))
    return beta / (1.0 + math.exp(h)) * (1.0 - pi[w] + pi[l])


@settings(deadline=None, max_examples=30)
@given(single_pair_instances())
def test_prop_15(instance):
    theta0, mu, w, l, beta = instance
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_dpo_loss(theta, mu, w, l, beta), theta)
    # (1) gradient-flow rate: d log π_w / dη along −∇L equals (e_w − π)·(−∇L), exactly the formula.
    pi = torch.softmax(theta.detach(), -1)
    e_w = torch.zeros_like(pi)
    e_w[w] = 1.0
    rate_autograd = float(((e_w - pi) * (-grad)).sum())
    rate = _rate(theta0, mu, w, l, beta)
    assert rate > 0
    # both sides are O(1) sums of a few float64 products: agreement to round-off
    assert math.isclose(rate_autograd, rate, rel_tol=1e-10, abs_tol=1e-14)
    # tabular: only θ_w and θ_l move, by ±β σ(−h) per unit learning rate
    others = [i for i in range(len(theta0)) if i not in (w, l)]
    assert torch.all(grad[others] == 0)
    assert math.isclose(float(-grad[w]), float(grad[l]), rel_tol=1e-12)

    # (2) the exact one-step change matches the closed form, and is positive, for every step size.
    c_per_lr = float(-grad[w])  # = β σ(−h)
    for lr in (1e-6, 0.1, 1.0, 10.0, 100.0):
        new = theta.detach() - lr * grad
        change = float(torch.log_softmax(new, -1)[w] - torch.log_softmax(theta.detach(), -1)[w])
        c = lr * c_per_lr
        p = pi.numpy()
        exact = c - math.log1p(p[w] * math.expm1(c) + p[l] * math.expm1(-c))
        # log_softmax differences of O(10) numbers: round-off ~1e-14 relative to |θ| ≤ 3 + lr·β
        assert math.isclose(change, exact, rel_tol=1e-8, abs_tol=1e-12)
        assert change > 0 or c < 1e-13  # a step smaller than round-off cannot be resolved
    # first order: (change / lr) → rate as lr → 0; the O(lr) remainder at lr = 1e-6 is < 1e-5·rate
    small = theta.detach() - 1e-6 * grad
    fd = float(torch.log_softmax(small, -1)[w] - torch.log_softmax(theta.detach(), -1)[w]) / 1e-6
    assert math.isclose(fd, rate, rel_tol=1e-4, abs_tol=1e-9)

    # (3) along a gradient-descent trajectory (the dynamics module, tabular, one pair) log π_w rises
    # at every step and each step's rise matches the first-order rate up to O(lr²).
    Y = len(theta0)
    problem = Problem(
        mu=mu[None, None],
        r=np.arange(Y, dtype=np.float64)[None, None],  # true r is only used for the recorded E_π r
        responses=np.array([[[[w, l]]]], dtype=np.int64),
        rewards=np.array([[[[1.0, 0.0]]]]),
    )
    lr = 0.01
    traj = train(problem, "dpo", hparams={"beta": beta}, policy="tabular", optimizer="gd", lr=lr, steps=40, record_every=1)
    logpi_w = traj.logpi[:, 0, 0, w]
    steps = np.diff(logpi_w)
    assert np.all(steps > 0)
    pred = np.array([_rate(np.asarray(lp[0, 0]), mu, w, l, beta) * lr for lp in traj.logpi[:-1]])
    # exact step g(c) with c = lr·β·σ(−h): g'(0) = 1 − π_w + π_l = 1 − m and |g''| = Var(Z) ≤ 1 − m² ≤ 2(1 − m)
    # (Z = +1 at w, −1 at l, 0 elsewhere, under the tilted π; m = E Z only grows with c), so the
    # relative second-order remainder is ≤ c ≤ lr·β ≤ 0.03 < rtol
    np.testing.assert_allclose(steps, pred, rtol=0.05)
    # DPO's loss falls monotonically too (convex in θ_w − θ_l, small steps)
    assert np.all(np.diff(traj.loss[:, 0]) < 0)


def test_prop_15_long_trajectories_any_step_size():
    """Monotone log π_w over long gradient-descent runs from μ, with steps far beyond first order
    (the discrete-step argument of the module docstring needs no small-step assumption)."""
    rng = np.random.default_rng(15)
    for _ in range(4):
        Y = int(rng.integers(2, 9))
        mu = rng.dirichlet(np.ones(Y)) * 0.9 + 0.1 / Y
        w, l = (int(i) for i in rng.choice(Y, size=2, replace=False))
        problem = Problem(
            mu=mu[None, None],
            r=np.zeros((1, 1, Y)),
            responses=np.array([[[[w, l]]]], dtype=np.int64),
            rewards=np.array([[[[1.0, 0.0]]]]),
        )
        for lr in (0.5, 5.0):
            traj = train(problem, "dpo", hparams={"beta": 1.0}, optimizer="gd", lr=lr, steps=150, record_every=1)
            logpi_w = traj.logpi[:, 0, 0, w]
            rises = np.diff(logpi_w)
            # once π_w = 1 − O(1e-16) the rise drops below float64 resolution; it must never be negative
            assert np.all(rises >= 0)
            assert logpi_w[-1] > logpi_w[0]
            assert np.all(rises[:10] > 0)

"""PROPOSITION 9 — IPO is regularised where DPO is not. Deterministic preferences, 3 actions a ≻ b ≻ c,
uniform μ, data {(a,b), (b,c), (a,c)}: the empirical loss of registry ``ipo`` has the finite minimiser
h(a,b) = h(b,c) = 1/(3τ), h(a,c) = 2/(3τ) (τ = β, h in log-ratio units), while registry ``dpo`` on the
same data has no minimiser: its directional derivative along θ ↦ θ + t·(1, 0, −1) is strictly negative
everywhere (each pair's margin grows along it), so its gradient never vanishes, the infimum 0 is not
attained, and π(c) → 0 along the descent path — whatever β.

Tolerance 1e-6 for the IPO minimiser: ``newton_minimise`` stops at a Newton step ≤ 1e-10 on a quadratic
(one Newton step is exact), far below it.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import betas, prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory
from nca_lab.losses import LOSSES
from nca_lab.toy.solve import NoMinimiserError, newton_minimise

DATA = [(0, 1), (1, 2), (0, 2)]  # (winner, loser): a ≻ b, b ≻ c, a ≻ c
LOG_MU = torch.full((3,), -np.log(3.0), dtype=torch.float64)


def empirical_loss(name: str, logpi: torch.Tensor, beta: float) -> torch.Tensor:
    """Σ over the three data pairs of the registry loss (rows = pairs, R = (1, 0): winner first)."""
    idx = torch.tensor(DATA)
    R = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    return LOSSES[name](logpi[idx], LOG_MU[idx], R, beta=beta).sum()


def policy(z: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.cat([torch.zeros(1, dtype=torch.float64), z]), dim=0)


@prop_settings(30)
@given(betas)
def test_prop_09(tau):
    z = newton_minimise(lambda z: empirical_loss("ipo", policy(z), tau), torch.zeros(2, dtype=torch.float64))
    g = (policy(z) - LOG_MU).numpy()  # log-ratio g = log π − log μ
    margins = {(w, l): g[w] - g[l] for w, l in DATA}
    expected = {(0, 1): 1 / (3 * tau), (1, 2): 1 / (3 * tau), (0, 2): 2 / (3 * tau)}
    for pair, h in expected.items():
        assert abs(margins[pair] - h) < 1e-6
    named = theory.ipo_three_action_example(tau)
    assert abs(named[("a", "b")] - expected[(0, 1)]) < 1e-12 and abs(named[("a", "c")] - expected[(0, 2)]) < 1e-12
    np.testing.assert_allclose(np.exp(policy(z).numpy()), np.exp(LOG_MU.numpy() + theory.ipo_finite_data_optimum(DATA, 3, tau, mu=np.full(3, 1 / 3))), atol=1e-6)


@prop_settings(30)
@given(betas, st.lists(st.floats(-20, 20), min_size=3, max_size=3))
def test_prop_09_dpo_has_no_minimiser(beta, theta):
    theta = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    loss = empirical_loss("dpo", torch.log_softmax(theta, dim=0), beta)
    (grad,) = torch.autograd.grad(loss, theta)
    d = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    # directional derivative = −β Σ_pairs σ(−β h)(d_w − d_l) with d_w − d_l ∈ {1, 1, 2}: strictly < 0
    # (|θ| ≤ 20 and β ≤ 3 keep β·h ≤ 240, so σ(−β h) ≥ 1e-105 does not underflow in float64)
    assert float(grad @ d) < 0
    assert float(loss.detach()) > 0  # the infimum 0 is never attained


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_prop_09_dpo_descent_sends_loser_to_zero(beta):
    """Gradient descent on DPO's empirical loss: the loss falls monotonically towards 0, π(c) → 0,
    and Newton's method reports that no minimiser exists."""
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    losses, pi_c = [], []
    for _ in range(1000):
        loss = empirical_loss("dpo", torch.log_softmax(theta, dim=0), beta)
        (g,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta -= 2.0 / beta**2 * g  # step 2/β² ~ 1/L (curvature ∝ β²)
        losses.append(float(loss.detach()))
        pi_c.append(float(torch.softmax(theta.detach(), dim=0)[2]))
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert all(b < a for a, b in zip(pi_c, pi_c[1:]))
    # margins grow only like log(steps); after 1000 steps π(c) has fallen below a tenth of its start
    assert pi_c[-1] < 0.1 * pi_c[0] and losses[-1] < 0.1 * losses[0]
    with pytest.raises(NoMinimiserError):
        newton_minimise(lambda z: empirical_loss("dpo", policy(z), beta), torch.zeros(2, dtype=torch.float64))

"""PROPOSITION 12 — shift blindness. On one tuple, the gradient coefficients g_i = ∂loss/∂r_θ,i of InfoNCA
and DPO sum to zero, so adding a constant to every r_θ of the tuple changes nothing; NCA's do not sum to
zero away from r_θ = 0, and do at r_θ = 0.

The coefficients come from autograd of the registry losses (∂/∂policy_logps = β·g). NCA's margin is
rigorous: Σ_i g_i = Σ_i [σ(r_i)/K − w_i σ(−r_i)], so if every r_i ≥ δ > 0 then Σ g ≥ σ(δ) − σ(−δ) =
tanh(δ/2) (and ≤ −tanh(δ/2) if every r_i ≤ −δ). Tolerance for the zero sums: round-off of K ≤ 6 terms
of size ≤ 1, 1e-12.
"""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.losses import LOSSES


@st.composite
def tuples(draw, min_k=2, max_k=6):
    K = draw(st.integers(min_k, max_k))
    vec = st.lists(st.floats(-3, 3), min_size=K, max_size=K)
    ref = torch.tensor(draw(vec), dtype=torch.float64)[None]
    f = torch.tensor(draw(vec), dtype=torch.float64)[None]  # implicit rewards r_θ
    R = torch.tensor(draw(vec), dtype=torch.float64)[None]
    return ref, f, R


def coefficients(name, ref, f, R, beta, **hp):
    """g = ∂loss/∂r_θ on one tuple, with policy_logps = ref + r_θ/β."""
    f = f.clone().requires_grad_(True)
    loss = LOSSES[name](ref + f / beta, ref, R, beta=beta, **hp).sum()
    (g,) = torch.autograd.grad(loss, f)
    return g[0]


@prop_settings(30)
@given(tuples(), alphas, betas, st.floats(-5, 5))
def test_prop_12(tup, alpha, beta, c):
    ref, f, R = tup
    for name, hp in (("infonca", dict(alpha=alpha)), ("dpo", {})):
        g = coefficients(name, ref, f, R, beta, **hp)
        assert abs(float(g.sum())) < 1e-12, name
        before = LOSSES[name](ref + f / beta, ref, R, beta=beta, **hp)
        after = LOSSES[name](ref + (f + c) / beta, ref, R, beta=beta, **hp)
        torch.testing.assert_close(after, before, atol=1e-12, rtol=1e-12)
    # NCA at r_θ = 0: zero sum
    g0 = coefficients("nca", ref, torch.zeros_like(f), R, beta, alpha=alpha)
    assert abs(float(g0.sum())) < 1e-12


@prop_settings(30)
@given(tuples(), alphas, betas, st.floats(0.1, 3.0), st.sampled_from([1.0, -1.0]))
def test_prop_12_nca_not_shift_blind(tup, alpha, beta, delta, sign):
    """All r_θ on one side of 0, at least δ away: |Σ g| ≥ tanh(δ/2) and the shift changes the loss."""
    ref, f, R = tup
    f = sign * (delta + f.abs())
    g = coefficients("nca", ref, f, R, beta, alpha=alpha)
    assert sign * float(g.sum()) >= math.tanh(delta / 2) - 1e-12
    before = LOSSES["nca"](ref + f / beta, ref, R, beta=beta, alpha=alpha)
    after = LOSSES["nca"](ref + (f + sign) / beta, ref, R, beta=beta, alpha=alpha)
    assert abs(float(after - before)) > 1e-6

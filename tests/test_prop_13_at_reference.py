"""PROPOSITION 13 — at the reference (π_θ = μ, every r_θ = 0): ∇NCA = ½∇InfoNCA and ∇nca_pair = ½∇DPO
exactly, on any tuple (random K, rewards, α, β, reference log-probs); the methods differ only from
second order on. Gradients are autograd's w.r.t. policy_logps of the registry losses. Tolerance: round-off
of O(1) terms, 1e-12.
"""

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import alphas, betas, prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.losses import LOSSES


def grad_at_reference(name, ref, R, **hp):
    pol = ref.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(LOSSES[name](pol, ref, R, **hp).sum(), pol)
    return g


@prop_settings(40)
@given(st.integers(2, 6), st.data(), alphas, betas)
def test_prop_13(K, data, alpha, beta):
    vec = st.lists(st.floats(-5, 5), min_size=K, max_size=K)
    ref = torch.tensor(data.draw(vec), dtype=torch.float64)[None]
    R = torch.tensor(data.draw(vec), dtype=torch.float64)[None]
    g_nca = grad_at_reference("nca", ref, R, alpha=alpha, beta=beta)
    g_info = grad_at_reference("infonca", ref, R, alpha=alpha, beta=beta)
    torch.testing.assert_close(g_nca, 0.5 * g_info, atol=1e-12, rtol=1e-12)
    for pairs in ("best_worst", "best_rest", "all"):
        g_pair = grad_at_reference("nca_pair", ref, R, beta=beta, pairs=pairs)
        g_dpo = grad_at_reference("dpo", ref, R, beta=beta, pairs=pairs)
        torch.testing.assert_close(g_pair, 0.5 * g_dpo, atol=1e-12, rtol=1e-12)
    # not a vacuous equality: InfoNCA's gradient at the reference is β(1/K − w), non-zero unless R is constant
    if float(R.max() - R.min()) > 0.1:
        assert float(g_info.abs().max()) > 1e-6

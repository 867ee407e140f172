"""PROPOSITION 20 — at π_θ = μ (r_θ = 0), −∇InfoNCA = β Σ_i (w_i − 1/K) ∇log π_θ(y_i) exactly for any parameterisation (NCA: β/2), so with w = softmax(R/α), (Kα/β)(−∇InfoNCA) = Σ_i (R_i − R̄) ∇log π_θ(y_i) + Δ, ‖Δ‖ ≤ e (max R − min R)²/α Σ_i ‖∇log π_θ(y_i)‖: the group-mean-baseline policy gradient (RLOO / Dr. GRPO; GRPO's standardised one with α = c·(std + 1e-4)).

Derivation and exact statements: ``proofs/20_infonca_policy_gradient.md``; algebra: ``proofs/sympy_policy_gradient.py``.
Two parameterisations of π_θ(y | x) over a categorical Y, both float64: a softmax over free logits (one prompt)
and a small tanh MLP mapping B fixed prompt features to logits (shared parameters). Gradients are autograd's,
through the registry losses, w.r.t. the parameters; ∇ℓ_{b,i} = ∇_θ log π_θ(y_{b,i} | x_b), one autograd call per
sampled response. Away from the reference (r_θ ≠ 0) the weights are w − softmax(r_θ): at InfoNCA's optimum the
update is 0 while the policy-gradient estimator is not.

Tolerances: identities between O(1) float64 quantities built from at most a few hundred operations: 1e-12 absolute
plus 1e-10 relative. The remainder bounds are asserted as stated, plus the round-off of scaling an autograd
gradient by Kα/β (each coefficient w_i − 1/K carries an absolute error of a few ulp of 1/K, ≤ 1e-16·K; multiplied by
Kα/β and by ‖∇ℓ‖), written out where used.
"""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.losses import LOSSES

DT = torch.float64
ATOL, RTOL = 1e-12, 1e-10
E = math.e


# ------------------------------------------------------------------------------------------ parameterisations


class Policy:
    """log π_θ(· | x_b) ``[B, Y]`` for ``kind`` = "softmax" (free logits, B = 1) or "mlp" (tanh MLP of prompt
    features, parameters shared across prompts)."""

    def __init__(self, kind: str, n_y: int, b: int, seed: int, hidden: int = 8, d_in: int = 3):
        g = torch.Generator().manual_seed(seed)
        randn = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
        self.kind = kind
        if kind == "softmax":
            assert b == 1
            self.params = [randn(1, n_y).requires_grad_(True)]
        else:
            self.x = randn(b, d_in)
            self.params = [(randn(d_in, hidden) / math.sqrt(d_in)).requires_grad_(True),
                           (0.3 * randn(hidden)).requires_grad_(True),
                           (randn(hidden, n_y)).requires_grad_(True),
                           (0.3 * randn(n_y)).requires_grad_(True)]

    def logp(self) -> torch.Tensor:
        if self.kind == "softmax":
            logits = self.params[0]
        else:
            w1, b1, w2, b2 = self.params
            logits = torch.tanh(self.x @ w1 + b1) @ w2 + b2
        return torch.log_softmax(logits, dim=-1)

    def flat_grad(self, scalar: torch.Tensor, retain: bool = True) -> torch.Tensor:
        gs = torch.autograd.grad(scalar, self.params, retain_graph=retain, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1) for gr, p in zip(gs, self.params)])


def tuple_logps(policy: Policy, idx: torch.Tensor) -> torch.Tensor:
    return policy.logp().gather(1, idx)  # [B, K]


def per_response_grads(policy: Policy, idx: torch.Tensor) -> torch.Tensor:
    """∇ℓ_{b,i} ``[B, K, P]``."""
    lp = tuple_logps(policy, idx)
    return torch.stack([torch.stack([policy.flat_grad(lp[b, i]) for i in range(lp.shape[1])])
                        for b in range(lp.shape[0])])


def loss_grad(policy: Policy, name: str, idx, R, ref=None, **hp) -> torch.Tensor:
    """∇_θ Σ_b loss_b; the reference log-probs default to the policy's own (detached): r_θ = 0."""
    lp = tuple_logps(policy, idx)
    ref = lp.detach() if ref is None else ref
    return policy.flat_grad(LOSSES[name](lp, ref, R, **hp).sum(), retain=False)


def close(a, b, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------ strategies


@st.composite
def worlds(draw, max_k: int = 6, kinds=("softmax", "mlp")):
    """(policy, idx [B, K], R [B, K]) with K responses per prompt sampled (with repeats allowed) from Y."""
    kind = draw(st.sampled_from(kinds))
    n_y = draw(st.integers(2, 6))
    k = draw(st.integers(2, max_k))
    b = 1 if kind == "softmax" else draw(st.integers(1, 3))
    policy = Policy(kind, n_y, b, seed=draw(st.integers(0, 10_000)))
    idx = torch.tensor(draw(st.lists(st.lists(st.integers(0, n_y - 1), min_size=k, max_size=k),
                                     min_size=b, max_size=b)))
    R = torch.tensor(draw(st.lists(st.lists(st.floats(-3, 3), min_size=k, max_size=k), min_size=b, max_size=b)),
                     dtype=DT)
    return policy, idx, R


def pg_estimator(grads: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Σ_{b,i} A_{b,i} ∇ℓ_{b,i}."""
    return (A[..., None] * grads).sum(dim=(0, 1))


# ------------------------------------------------------------------------------------------ (a) exact at r_θ = 0


@prop_settings(40)
@given(worlds(), st.floats(0.3, 3.0), st.floats(0.3, 3.0))
def test_prop_20_exact_at_reference(world, alpha, beta):
    """(a): −∇InfoNCA = β Σ (w − 1/K) ∇ℓ and −∇NCA = (β/2) Σ (w − 1/K) ∇ℓ, both parameterisations."""
    policy, idx, R = world
    K = idx.shape[1]
    grads = per_response_grads(policy, idx)
    w = torch.softmax(R / alpha, dim=1)
    claim = beta * pg_estimator(grads, w - 1.0 / K)
    close(-loss_grad(policy, "infonca", idx, R, alpha=alpha, beta=beta), claim)
    close(-loss_grad(policy, "nca", idx, R, alpha=alpha, beta=beta), claim / 2)


# ------------------------------------------------------------------------------------------ (b) the α → ∞ limit


@prop_settings(60)
@given(st.integers(2, 8), st.data())
def test_prop_20_label_bound(K, data):
    """(b), labels: |K w_i − 1 − u_i| ≤ e ρ² for ρ ≤ 1 and ≤ ½ρ²e^ρ(2 + ρ) for any ρ (here ρ ≤ 6)."""
    R = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=K, max_size=K)), dtype=DT)
    span = float(R.max() - R.min())
    if span < 1e-3:
        return  # constant rewards: w = 1/K exactly, nothing to bound
    rho = data.draw(st.floats(1e-4, 6.0))
    alpha = span / rho
    u = (R - R.mean()) / alpha
    err = (K * torch.softmax(R / alpha, 0) - 1 - u).abs().max().item()
    bound = E * rho**2 if rho <= 1 else 0.5 * rho**2 * math.exp(rho) * (2 + rho)
    # round-off: K w_i and 1 + u_i are O(1) sums of a few float64 terms, a few ulp each
    assert err <= bound + 1e-14
    # the second-order term of the expansion (the next one is ≤ (5/6) ρ³ from the cubic Taylor coefficient
    # u³/6 − u·mean(u²)/2 − mean(u³)/6; ρ³ + round-off is a safe margin for ρ ≤ 0.1)
    if rho <= 0.1:
        second = 0.5 * (u**2 - (u**2).mean())
        assert (K * torch.softmax(R / alpha, 0) - 1 - u - second).abs().max().item() <= rho**3 + 1e-14


@prop_settings(40)
@given(worlds(max_k=8), st.floats(0.3, 3.0), st.floats(0.0, 4.0))
def test_prop_20_policy_gradient_limit(world, beta, log10_ratio):
    """(b), gradients: (Kα/β)(−∇InfoNCA) = Σ (R − R̄) ∇ℓ + Δ with ‖Δ‖ ≤ e·span²/α·Σ‖∇ℓ‖ (α ≥ span,
    per prompt), the same for (2Kα/β)(−∇NCA); and α·Δ → ½ Σ ((R − R̄)² − mean) ∇ℓ (the remainder is Θ(1/α),
    not smaller)."""
    policy, idx, R = world
    K = idx.shape[1]
    span = (R.max(dim=1).values - R.min(dim=1).values).max().item()
    if span < 1e-3:
        return
    alpha = span * 10**log10_ratio  # ρ = span/α from 1 down to 1e-4
    grads = per_response_grads(policy, idx)
    A = R - R.mean(dim=1, keepdim=True)
    pg = pg_estimator(grads, A)
    norms = grads.norm(dim=-1)  # [B, K]
    spans = R.max(dim=1).values - R.min(dim=1).values
    bound = (E * spans**2 / alpha * norms.sum(dim=1)).sum().item()  # summed over prompts
    # round-off of the scaled autograd gradient: coefficient error ≤ 1e-16·K per response, times Kα/β
    slack = 1e-16 * K * K * alpha / beta * norms.sum().item() + 1e-12
    for name, scale in (("infonca", K * alpha / beta), ("nca", 2 * K * alpha / beta)):
        delta = scale * -loss_grad(policy, name, idx, R, alpha=alpha, beta=beta) - pg
        assert delta.norm().item() <= bound + slack, name
    # the rate: at ρ = 1e-3 the cubic term (≤ (5/6)ρ³ per label, see test_prop_20_label_bound) bounds
    # α·Δ − (second-order term) by α·α·ρ³·Σ‖∇ℓ‖ = span³/α·Σ‖∇ℓ‖ per prompt
    alpha = 1e3 * span
    delta = K * alpha / beta * -loss_grad(policy, "infonca", idx, R, alpha=alpha, beta=beta) - pg
    second = pg_estimator(grads, 0.5 * (A**2 - (A**2).mean(dim=1, keepdim=True)))
    rate_bound = (spans**3 / alpha * norms.sum(dim=1)).sum().item()
    assert (alpha * delta - second).norm().item() <= rate_bound + 1e3 * alpha * slack


@prop_settings(40)
@given(worlds(max_k=8), st.floats(0.3, 3.0), st.floats(0.0, 4.0))
def test_prop_20_grpo_standardised(world, beta, log10_c):
    """(c): α = c·s per prompt, s = Bessel std + 1e-4 (TRL's): (Kc/β)(−∇InfoNCA) = Σ (R − R̄)/s ∇ℓ + Δ',
    ‖Δ'‖ ≤ e·2(K − 1)/c·Σ‖∇ℓ‖ for c ≥ √(2(K − 1)), whatever the rewards' scale. Per-prompt α is applied as the
    registry's labels softmax((R/s)/c), i.e. InfoNCA on standardised rewards at α = c."""
    policy, idx, R = world
    K = idx.shape[1]
    s = R.std(dim=1, keepdim=True) + 1e-4  # torch.std: Bessel-corrected, as TRL's nanstd
    c = math.sqrt(2 * (K - 1)) * 10**log10_c
    grads = per_response_grads(policy, idx)
    A = (R - R.mean(dim=1, keepdim=True)) / s  # GRPO's advantages
    got = K * c / beta * -loss_grad(policy, "infonca", idx, R / s, alpha=c, beta=beta)
    norms = grads.norm(dim=-1)
    bound = E * 2 * (K - 1) / c * norms.sum().item()
    slack = 1e-16 * K * K * c / beta * norms.sum().item() * (1 + (R.abs().max() / s.min()).item()) + 1e-12
    assert (got - pg_estimator(grads, A)).norm().item() <= bound + slack


# ------------------------------------------------------------------------------------------ RLOO and the expectation


@prop_settings(25)
@given(st.sampled_from(["softmax", "mlp"]), st.integers(2, 4), st.integers(2, 3), st.integers(0, 10_000), st.data())
def test_prop_20_on_policy_expectation(kind, n_y, K, seed, data):
    """Over K i.i.d. draws from π_θ = μ (all |Y|^K tuples enumerated), E[Σ (R_i − R̄) ∇ℓ_i] = (K − 1) ∇E_π[R];
    the RLOO estimator (1/K) Σ (R_i − mean_{j≠i} R_j) ∇ℓ_i is 1/(K − 1) times the group-mean one on every tuple."""
    policy = Policy(kind, n_y, 1, seed)
    r = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=n_y, max_size=n_y)), dtype=DT)
    pi = policy.logp().exp()[0].detach()
    expected = torch.zeros_like(policy.flat_grad(policy.logp()[0, 0]))
    for tup in itertools.product(range(n_y), repeat=K):
        idx = torch.tensor([tup])
        R = r[idx]
        grads = per_response_grads(policy, idx)
        group = pg_estimator(grads, R - R.mean())
        rloo = pg_estimator(grads, (R - (R.sum() - R) / (K - 1)) / K)
        close(rloo, group / (K - 1))
        expected += math.prod(float(pi[y]) for y in tup) * group
    grad_J = policy.flat_grad((policy.logp().exp()[0] * r).sum(), retain=False)
    close(expected, (K - 1) * grad_J)


# ------------------------------------------------------------------------------------------ (d) away from the reference


@prop_settings(30)
@given(worlds(), st.floats(0.3, 3.0), st.floats(0.3, 3.0), st.integers(0, 10_000))
def test_prop_20_away_from_reference(world, alpha, beta, seed):
    """(d): at r_θ ≠ 0 (a reference other than π_θ), −∇InfoNCA = β Σ (w − softmax(r_θ)) ∇ℓ."""
    policy, idx, R = world
    g = torch.Generator().manual_seed(seed)
    ref = tuple_logps(policy, idx).detach() + torch.randn(idx.shape, generator=g, dtype=DT)
    lp = tuple_logps(policy, idx).detach()
    coef = torch.softmax(R / alpha, 1) - torch.softmax(beta * (lp - ref), 1)
    claim = beta * pg_estimator(per_response_grads(policy, idx), coef)
    close(-loss_grad(policy, "infonca", idx, R, ref=ref, alpha=alpha, beta=beta), claim)


@prop_settings(30)
@given(st.integers(2, 6), st.integers(2, 6), st.integers(0, 10_000), st.floats(0.3, 3.0), st.floats(0.3, 3.0),
       st.data())
def test_prop_20_zero_at_optimum_not_pg(n_y, K, seed, alpha, beta, data):
    """(d): softmax policy at InfoNCA's optimum π* ∝ μ e^{r/(αβ)} (Proposition 1): the InfoNCA gradient is 0 on
    every tuple, while the group-baseline PG estimator is not (tuples with two distinct rewards) and neither is
    its expectation (K − 1) π*(r − E_{π*} r)."""
    mu_logits = Policy("softmax", n_y, 1, seed).params[0].detach()
    log_mu = torch.log_softmax(mu_logits, -1)
    r = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=n_y, max_size=n_y)), dtype=DT)[None]
    policy = Policy("softmax", n_y, 1, seed)
    with torch.no_grad():
        policy.params[0].copy_(log_mu + r / (alpha * beta))
    idx = torch.tensor([data.draw(st.lists(st.integers(0, n_y - 1), min_size=K, max_size=K))])
    R = r.gather(1, idx)
    g_info = loss_grad(policy, "infonca", idx, R, ref=log_mu.gather(1, idx), alpha=alpha, beta=beta)
    close(g_info, torch.zeros_like(g_info))
    pg = pg_estimator(per_response_grads(policy, idx), R - R.mean())
    if float(R.max() - R.min()) > 0.1:
        # tabular logits: Σ (R_i − R̄)(e_{y_i} − π) = Σ (R_i − R̄) e_{y_i}; the best response's entry is
        # n_best·(max R − R̄) ≥ (max R − min R)/K ≥ 0.1/K
        assert pg.norm().item() >= 0.1 / K - 1e-12
    pi = policy.logp().exp()[0].detach()
    expected_pg = (K - 1) * pi * (r[0] - (pi * r[0]).sum())
    if float(r.max() - r.min()) > 0.1:
        assert expected_pg.norm().item() > 0

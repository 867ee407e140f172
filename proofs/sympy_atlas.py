"""Sympy checks for the loss atlas (Propositions 21–24).

- EXO (21): with ε = 0 the per-tuple loss KL(softmax(f) ‖ softmax(z)) (z = R/α) is stationary at f = z + C for a
  tuple of 3 distinct responses, so the population loss is too; with ε > 0 and two responses the minimiser of
  KL(p ‖ q) over p = softmax(f_1, f_2) is f_1 − f_2 = log(q_1/q_2).
- BT pairs (22): bco_pair's per-response loss −p log σ(f) − (1−p) log σ(−f) is stationary at f = logit p;
  sppo's p(ρ − 1/(2β))² + (1−p)(ρ + 1/(2β))² at ρ = (p − ½)/β; apo_zero's p(1 − σ(f)) + (1−p)σ(f) equals
  p + (1 − 2p)σ(f) (monotone in f: no finite minimiser); DiscoPOP's ℓ'(0) = (1 − ln 2)/(4τ) − 3/4.
- A*PO (23): the second-order expansion of E log M, M = (a + S_{K−1})/K, gives K·(f*_K − target) → c_A =
  1 − a/Z + V/(2Z²) (moments E S = (K−1)Z, Var S = (K−1)V).
- Plackett–Luce (24): for 3 responses the expected PL NLL of f under rankings drawn from PL(e^r) has zero
  gradient at f = r.

Run: python proofs/sympy_atlas.py
"""

import itertools

import sympy as sp


def _softmax(v):
    e = [sp.exp(x) for x in v]
    s = sum(e)
    return [x / s for x in e]


def exo_eps0_stationary_k3() -> bool:
    f = sp.symbols("f1:4", real=True)
    z = sp.symbols("z1:4", real=True)
    C = sp.symbols("C", real=True)
    p, w = _softmax(f), _softmax(z)
    kl = sum(pi * (sp.log(pi) - sp.log(wi)) for pi, wi in zip(p, w))
    at = {fi: zi + C for fi, zi in zip(f, z)}
    return all(sp.simplify(sp.expand_log(sp.diff(kl, fi).subs(at), force=True)) == 0 for fi in f)


def exo_eps_y2_gap() -> bool:
    # any q = (q_1, 1 − q_1) in (0, 1) is (σ(t), σ(−t)) with t = log(q_1/q_2); stationary at h = t
    h, t = sp.symbols("h t", real=True)
    q1, q2 = 1 / (1 + sp.exp(-t)), 1 / (1 + sp.exp(t))
    p1, p2 = 1 / (1 + sp.exp(-h)), 1 / (1 + sp.exp(h))
    kl = p1 * (sp.log(p1) - sp.log(q1)) + p2 * (sp.log(p2) - sp.log(q2))
    g = sp.diff(kl, h).subs(h, t)
    return sp.simplify(g) == 0


def bco_stationary_at_logit() -> bool:
    f = sp.symbols("f", real=True)
    p = sp.symbols("p", positive=True)
    loss = p * sp.log(1 + sp.exp(-f)) + (1 - p) * sp.log(1 + sp.exp(f))
    return sp.simplify(sp.diff(loss, f).subs(f, sp.log(p / (1 - p)))) == 0


def sppo_stationary() -> bool:
    rho, p = sp.symbols("rho p", real=True)
    beta = sp.symbols("beta", positive=True)
    loss = p * (rho - 1 / (2 * beta)) ** 2 + (1 - p) * (rho + 1 / (2 * beta)) ** 2
    return sp.simplify(sp.solve(sp.diff(loss, rho), rho)[0] - (p - sp.Rational(1, 2)) / beta) == 0


def apo_zero_linear_in_sigma() -> bool:
    f, p = sp.symbols("f p", real=True)
    s = 1 / (1 + sp.exp(-f))
    return sp.simplify(p * (1 - s) + (1 - p) * s - (p + (1 - 2 * p) * s)) == 0


def discopop_slope_at_zero() -> bool:
    h = sp.symbols("h", real=True)
    tau = sp.symbols("tau", positive=True)
    m = 1 / (1 + sp.exp(-h / tau))
    ell = (1 - m) * sp.log(1 + sp.exp(-h)) + m * sp.exp(-h)
    slope = sp.diff(ell, h).subs(h, 0)
    return sp.simplify(slope - ((1 - sp.log(2)) / (4 * tau) - sp.Rational(3, 4))) == 0


def astar_gap_coefficient() -> bool:
    """E log(Z + x) = log Z + E x/Z − E x²/(2Z²) + O(E|x|³), x = M − Z, M = (a + S)/K:
    E x = (a − Z)/K, E x² = ((a − Z)² + (K − 1)V)/K². The 1/K coefficient of −(E log M − log Z) is c_A."""
    a, Z, V, K = sp.symbols("a Z V K", positive=True)
    Ex = (a - Z) / K
    Ex2 = ((a - Z) ** 2 + (K - 1) * V) / K**2
    gap = -(Ex / Z - Ex2 / (2 * Z**2))  # f*_K − (r/α − log Z) to second order
    c = sp.limit(K * gap, K, sp.oo)
    return sp.simplify(c - (1 - a / Z + V / (2 * Z**2))) == 0


def plackett_luce_stationary_k3() -> bool:
    r = sp.symbols("r1:4", real=True)
    f = sp.symbols("f1:4", real=True)

    def log_pl(v, order):
        return sum(v[order[k]] - sp.log(sum(sp.exp(v[j]) for j in order[k:])) for k in range(len(order) - 1))

    loss = 0
    for order in itertools.permutations(range(3)):
        loss += sp.exp(log_pl(r, order)) * (-log_pl(f, order))
    at = dict(zip(f, r))
    return all(sp.simplify(sp.diff(loss, fi).subs(at)) == 0 for fi in f)


CHECKS = {
    "exo_eps0_stationary_k3": exo_eps0_stationary_k3,
    "exo_eps_y2_gap": exo_eps_y2_gap,
    "bco_stationary_at_logit": bco_stationary_at_logit,
    "sppo_stationary": sppo_stationary,
    "apo_zero_linear_in_sigma": apo_zero_linear_in_sigma,
    "discopop_slope_at_zero": discopop_slope_at_zero,
    "astar_gap_coefficient": astar_gap_coefficient,
    "plackett_luce_stationary_k3": plackett_luce_stationary_k3,
}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

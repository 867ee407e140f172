"""Sympy checks for IPO vs DPO on deterministic data (Proposition 9).

Three actions a > b > c, data {(a,b), (b,c), (a,c)}, g = log pi - log mu (uniform mu), h = g_w - g_l.
- IPO: sum (h - 1/(2 tau))^2 is a convex quadratic; its normal equations with the gauge
  g_a + g_b + g_c = 0 have the unique solution g = (1/(3 tau), 0, -1/(3 tau)), giving
  h(a,b) = h(b,c) = 1/(3 tau), h(a,c) = 2/(3 tau);
- DPO: sum -log s(beta h) is > 0 for every finite g but tends to 0 along g = t (1, 0, -1),
  t -> inf: the infimum 0 is not attained (no minimiser), and pi(c) -> 0 whatever beta.

Run: python proofs/sympy_ipo.py
"""

import sympy as sp

DATA = [(0, 1), (1, 2), (0, 2)]


def ipo_solution():
    g = sp.symbols("g_a g_b g_c", real=True)
    tau = sp.Symbol("tau", positive=True)
    loss = sum((g[w] - g[l] - 1 / (2 * tau)) ** 2 for w, l in DATA)
    equations = [sp.diff(loss, v) for v in g] + [sum(g)]
    sol = sp.solve(equations, g, dict=True)
    return sol, g, tau, loss


def check_ipo_three_actions() -> bool:
    sol, g, tau, loss = ipo_solution()
    if len(sol) != 1:
        return False
    s = sol[0]
    h = {(w, l): sp.simplify(s[g[w]] - s[g[l]]) for w, l in DATA}
    margins = (
        sp.simplify(h[(0, 1)] - 1 / (3 * tau)) == 0
        and sp.simplify(h[(1, 2)] - 1 / (3 * tau)) == 0
        and sp.simplify(h[(0, 2)] - 2 / (3 * tau)) == 0
    )
    hessian = sp.hessian(loss, g)  # 2 (3 I - J): PSD, null space = constants only
    eigen = hessian.eigenvals()
    convex = eigen == {0: 1, 6: 2}
    return margins and convex


def check_dpo_has_no_minimiser() -> bool:
    t = sp.Symbol("t", positive=True)
    beta = sp.Symbol("beta", positive=True)
    g = (t, 0, -t)
    loss = sum(sp.log(1 + sp.exp(-beta * (g[w] - g[l]))) for w, l in DATA)
    tends_to_zero = sp.limit(loss, t, sp.oo) == 0
    # each term log(1 + e^{-x}) is strictly positive for every real x (sympy's assumptions
    # system derives it from e^{-x} > 0), so no finite g attains the infimum 0
    x = sp.Symbol("x", real=True)
    term_positive = sp.log(1 + sp.exp(-x)).is_positive is True
    return tends_to_zero and term_positive


CHECKS = {"ipo_three_actions": check_ipo_three_actions, "dpo_has_no_minimiser": check_dpo_has_no_minimiser}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

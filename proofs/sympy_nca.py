"""Sympy checks for NCA's population optimum (Propositions 2, 3, 4, 19).

The population NCA loss is separable in f(y): collecting terms, it is
    sum_y [ -A_y log sigma(f_y) - B_y log sigma(-f_y) ],
with A_y the expected label mass on y and B_y = mu_y (the 1/K negative term, K copies).
Checked here, on symbolic instances with |Y| = 2, 3 and K = 2, 3 (enumerating ordered tuples):
- the scalar problem -A log s(f) - B log s(-f) is strictly convex with minimiser log(A/B);
- softmax labels: A_y = K mu_y E[a_y / (a_y + S)] (S = sum of the K-1 other draws), hence
  f*_K = log(K E[...]) and sum_y mu_y e^{f*_K(y)} = 1 (Props. 3, 4);
- exact-normalisation labels a_i/(K Z): A_y = mu_y a_y / Z, so f* = log(a_y/Z) (Prop. 2);
- leave-one-out labels a_i / (K mean_{j!=i} a_j): A_y = mu_y a_y E[1/M_{K-1}], so
  f* - log a_y is the same constant for every y (Prop. 19);
- the leading term of f*_K - log(a/Z) is c/K with c = 1 - a/Z + Var(a)/Z^2 (delta method; the
  neglected third and higher central moments only enter at O(K^-2)).

Run: python proofs/sympy_nca.py
"""

import itertools

import sympy as sp


def sigma(x):
    return 1 / (1 + sp.exp(-x))


def log_sigma(x):
    return -sp.log(1 + sp.exp(-x))


def _instance(n_items: int):
    """Symbolic mu (last entry 1 - sum of the others), a > 0, f real."""
    m = sp.symbols(f"m1:{n_items}", positive=True)
    mu = list(m) + [1 - sum(m)]
    a = sp.symbols(f"a1:{n_items + 1}", positive=True)
    f = sp.symbols(f"f1:{n_items + 1}", real=True)
    return mu, a, f


def _labels(kind: str, tup, a, K):
    vals = [a[y] for y in tup]
    if kind == "softmax":
        return [v / sum(vals) for v in vals]
    if kind == "loo":
        return [v * (K - 1) / (K * (sum(vals) - v)) for v in vals]
    raise ValueError(kind)


def population_nca_loss(mu, a, f, K: int, kind: str = "softmax", Z=None):
    """Exact E over K ordered i.i.d. draws of -sum_i [w_i log s(f_i) + (1/K) log s(-f_i)]."""
    total = 0
    for tup in itertools.product(range(len(mu)), repeat=K):
        prob = sp.Mul(*[mu[y] for y in tup])
        if kind == "exact":
            w = [a[y] / (K * Z) for y in tup]
        else:
            w = _labels(kind, tup, a, K)
        total += prob * -sum(wi * log_sigma(f[y]) + log_sigma(-f[y]) / K for wi, y in zip(w, tup))
    return total


def expected_ratio(mu, a, y: int, K: int):
    """E[a_y / (a_y + S)], S the sum of K-1 i.i.d. draws of a under mu."""
    out = 0
    for rest in itertools.product(range(len(mu)), repeat=K - 1):
        out += sp.Mul(*[mu[j] for j in rest]) * a[y] / (a[y] + sum(a[j] for j in rest))
    return out


def expected_inverse_mean(mu, a, K: int):
    """E[1 / M_{K-1}], M_{K-1} the mean of K-1 i.i.d. draws of a under mu."""
    out = 0
    for rest in itertools.product(range(len(mu)), repeat=K - 1):
        out += sp.Mul(*[mu[j] for j in rest]) * (K - 1) / sum(a[j] for j in rest)
    return out


def check_scalar_problem() -> bool:
    """-A log s(f) - B log s(-f): derivative -A s(-f) + B s(f), root log(A/B), curvature (A+B) s s'."""
    A, B = sp.symbols("A B", positive=True)
    f = sp.Symbol("f", real=True)
    L = -A * log_sigma(f) - B * log_sigma(-f)
    d1 = sp.diff(L, f)
    form = sp.simplify(d1 - (-A * sigma(-f) + B * sigma(f))) == 0
    root = sp.simplify(d1.subs(f, sp.log(A / B))) == 0
    curvature = sp.simplify(sp.diff(L, f, 2) - (A + B) * sigma(f) * sigma(-f)) == 0
    return form and root and curvature


def _gradient_has_form(loss, f, A, B) -> bool:
    return all(
        sp.simplify(sp.diff(loss, f[y]) - (-A[y] * sigma(-f[y]) + B[y] * sigma(f[y]))) == 0
        for y in range(len(f))
    )


def check_softmax_label_coefficients(n_items: int = 2, K: int = 2) -> bool:
    """A_y = K mu_y E[a_y/(a_y+S)], B_y = mu_y (Prop. 3)."""
    mu, a, f = _instance(n_items)
    loss = population_nca_loss(mu, a, f, K, "softmax")
    A = [K * mu[y] * expected_ratio(mu, a, y, K) for y in range(n_items)]
    return _gradient_has_form(loss, f, A, mu)


def check_self_normalisation(n_items: int = 3, K: int = 2) -> bool:
    """sum_y mu_y e^{f*_K(y)} = sum_y K mu_y E[a_y/(a_y+S)] = E[sum_i w_i] = 1 (Prop. 4)."""
    mu, a, _ = _instance(n_items)
    mass = sum(K * mu[y] * expected_ratio(mu, a, y, K) for y in range(n_items))
    return sp.simplify(sp.together(mass) - 1) == 0


def check_exact_normalisation_labels(n_items: int = 2, K: int = 2) -> bool:
    """Labels a_i/(K Z): A_y = mu_y a_y / Z, so f* = log(a_y / Z) for every K (Prop. 2)."""
    mu, a, f = _instance(n_items)
    Z = sum(m * x for m, x in zip(mu, a))
    loss = population_nca_loss(mu, a, f, K, "exact", Z=Z)
    A = [mu[y] * a[y] / Z for y in range(n_items)]
    return _gradient_has_form(loss, f, A, mu)


def check_leave_one_out_labels(n_items: int = 2, K: int = 3) -> bool:
    """LOO labels: A_y = mu_y a_y E[1/M_{K-1}], so f*(y) - log a_y = log E[1/M] for all y (Prop. 19)."""
    mu, a, f = _instance(n_items)
    loss = population_nca_loss(mu, a, f, K, "loo")
    inv_mean = expected_inverse_mean(mu, a, K)
    A = [mu[y] * a[y] * inv_mean for y in range(n_items)]
    return _gradient_has_form(loss, f, A, mu)


def gap_leading_coefficient():
    """Delta method: E[a/(a+S)] = g(s0) + g''(s0) Var(S)/2 + ..., s0 = (K-1) Z, Var(S) = (K-1) v.
    Returns the coefficient of 1/K in log(K E[...]) - log(a/Z)."""
    a, Z, v, eps = sp.symbols("a Z v epsilon", positive=True)  # eps = 1/K
    s = sp.Symbol("s", positive=True)
    K = 1 / eps
    g = a / (a + s)
    s0 = (K - 1) * Z
    approx = g.subs(s, s0) + sp.diff(g, s, 2).subs(s, s0) * (K - 1) * v / 2
    gap = sp.log(K * approx) - sp.log(a / Z)
    return sp.simplify(sp.series(gap, eps, 0, 2).removeO().coeff(eps, 1)), (a, Z, v)


def check_gap_coefficient() -> bool:
    coeff, (a, Z, v) = gap_leading_coefficient()
    return sp.simplify(coeff - (1 - a / Z + v / Z**2)) == 0


CHECKS = {
    "scalar_problem": check_scalar_problem,
    "softmax_label_coefficients_Y2_K2": lambda: check_softmax_label_coefficients(2, 2),
    "softmax_label_coefficients_Y2_K3": lambda: check_softmax_label_coefficients(2, 3),
    "self_normalisation_Y2_K3": lambda: check_self_normalisation(2, 3),
    "self_normalisation_Y3_K2": lambda: check_self_normalisation(3, 2),
    "exact_normalisation_labels_Y2_K3": lambda: check_exact_normalisation_labels(2, 3),
    "leave_one_out_labels_Y2_K3": lambda: check_leave_one_out_labels(2, 3),
    "gap_coefficient": check_gap_coefficient,
}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

"""Sympy checks for Proposition 20 (InfoNCA at the reference is a group-baseline policy gradient).

- chain rule through an ARBITRARY parameterisation: with log pi_i = g_i(theta) (undefined functions) and
  f_i = beta (g_i(theta) - g_i(theta_0)), at theta = theta_0
  -dInfoNCA/dtheta = beta sum_i (w_i - 1/K) g_i'(theta_0) and -dNCA/dtheta = (beta/2) sum_i (w_i - 1/K) g_i'(theta_0),
  for any labels w summing to 1 (K = 2, 3, 4);
- away from the reference: -dInfoNCA/dtheta = beta sum_i (w_i - softmax(f)_i) g_i'(theta) (K = 3);
- expansion of the labels: with u_i = (R_i - mean R)/alpha = t v_i (sum v = 0),
  K softmax(t v)_i = 1 + t v_i + (t^2/2)(v_i^2 - mean v^2) + O(t^3) (K = 2, 3);
- the identity behind the bound: with E(u) = e^u - 1 - u and ebar = mean_j E(u_j) (sum u = 0),
  K softmax(u)_i - 1 - u_i = (E(u_i) - ebar (1 + u_i)) / (1 + ebar) (K = 3);
- RLOO: (1/K) sum_i (R_i - mean_{j != i} R_j) x_i = (1/(K - 1)) sum_i (R_i - mean R) x_i (K = 3, 4);
- the range of K numbers is at most sqrt(2 (K - 1)) times their Bessel-corrected std: the algebraic step
  2 sum_i (R_i - mean)^2 - (R_1 - R_2)^2 = (R_1 + R_2 - 2 mean)^2 + 2 sum_{i > 2} (R_i - mean)^2 >= 0 (K = 3, 4).

Run: python proofs/sympy_policy_gradient.py
"""

import sympy as sp


def log_sigma(x):
    return -sp.log(1 + sp.exp(-x))


def _labels(K):
    w = list(sp.symbols(f"w1:{K}", positive=True))
    w.append(1 - sum(w))
    return w


def _param(K):
    """theta, theta_0, g_i(theta), f_i(theta) = beta (g_i(theta) - g_i(theta_0)) and a substitution that evaluates
    derivatives at theta_0 (g_i' -> symbol d_i, g_i(theta_0) -> symbol c_i)."""
    theta, theta0, beta = sp.symbols("theta theta_0", real=True) + (sp.Symbol("beta", positive=True),)
    g = [sp.Function(f"g{i + 1}") for i in range(K)]
    d = sp.symbols(f"d1:{K + 1}", real=True)
    f = [beta * (gi(theta) - gi(theta0)) for gi in g]
    return theta, theta0, beta, g, d, f


def _at_reference(expr, theta, theta0, g, d):
    expr = expr.subs({sp.Derivative(gi(theta), theta): di for gi, di in zip(g, d)})
    return expr.subs(theta, theta0)


def infonca(f, w):
    lse = sp.log(sum(sp.exp(v) for v in f))
    return -sum(wi * (fi - lse) for wi, fi in zip(w, f))


def nca(f, w):
    K = len(f)
    return -sum(wi * log_sigma(fi) + log_sigma(-fi) / K for wi, fi in zip(w, f))


def check_infonca_is_policy_gradient_at_reference(K: int) -> bool:
    theta, theta0, beta, g, d, f = _param(K)
    w = _labels(K)
    grad = _at_reference(-sp.diff(infonca(f, w), theta), theta, theta0, g, d)
    claim = beta * sum((wi - sp.Rational(1, K)) * di for wi, di in zip(w, d))
    return sp.simplify(grad - claim) == 0


def check_nca_is_half_policy_gradient_at_reference(K: int) -> bool:
    theta, theta0, beta, g, d, f = _param(K)
    w = _labels(K)
    grad = _at_reference(-sp.diff(nca(f, w), theta), theta, theta0, g, d)
    claim = beta / 2 * sum((wi - sp.Rational(1, K)) * di for wi, di in zip(w, d))
    return sp.simplify(grad - claim) == 0


def check_infonca_gradient_away_from_reference(K: int = 3) -> bool:
    theta, theta0, beta, g, d, f = _param(K)
    w = _labels(K)
    grad = -sp.diff(infonca(f, w), theta)
    Z = sum(sp.exp(v) for v in f)
    claim = beta * sum((wi - sp.exp(fi) / Z) * sp.diff(gi(theta), theta) for wi, fi, gi in zip(w, f, g))
    return sp.simplify(grad - claim) == 0


def check_label_expansion(K: int) -> bool:
    t = sp.Symbol("t", real=True)
    v = list(sp.symbols(f"v1:{K}", real=True))
    v.append(-sum(v))  # centred
    Z = sum(sp.exp(t * vi) for vi in v)
    mean_sq = sum(vi**2 for vi in v) / K
    ok = True
    for vi in v:
        series = sp.series(K * sp.exp(t * vi) / Z, t, 0, 3).removeO()
        claim = 1 + t * vi + t**2 / 2 * (vi**2 - mean_sq)
        ok = ok and sp.simplify(sp.expand(series - claim)) == 0
    return ok


def check_remainder_identity(K: int = 3) -> bool:
    u = list(sp.symbols(f"u1:{K}", real=True))
    u.append(-sum(u))
    E = [sp.exp(ui) - 1 - ui for ui in u]
    ebar = sum(E) / K
    Z = sum(sp.exp(ui) for ui in u)
    return all(sp.simplify(K * sp.exp(ui) / Z - 1 - ui - (Ei - ebar * (1 + ui)) / (1 + ebar)) == 0
               for ui, Ei in zip(u, E))


def check_rloo_identity(K: int) -> bool:
    R = sp.symbols(f"R1:{K + 1}", real=True)
    x = sp.symbols(f"x1:{K + 1}", real=True)  # stands for grad log pi(y_i), any vector (linear in it)
    mean = sum(R) / K
    rloo = sum((R[i] - (sum(R) - R[i]) / (K - 1)) * x[i] for i in range(K)) / K
    claim = sum((R[i] - mean) * x[i] for i in range(K)) / (K - 1)
    return sp.simplify(rloo - claim) == 0


def check_range_vs_std(K: int) -> bool:
    R = sp.symbols(f"R1:{K + 1}", real=True)
    mean = sum(R) / K
    lhs = 2 * sum((r - mean) ** 2 for r in R) - (R[0] - R[1]) ** 2
    rhs = (R[0] + R[1] - 2 * mean) ** 2 + 2 * sum((r - mean) ** 2 for r in R[2:])
    return sp.expand(lhs - rhs) == 0


CHECKS = {
    "infonca_is_policy_gradient_at_reference_K2": lambda: check_infonca_is_policy_gradient_at_reference(2),
    "infonca_is_policy_gradient_at_reference_K3": lambda: check_infonca_is_policy_gradient_at_reference(3),
    "infonca_is_policy_gradient_at_reference_K4": lambda: check_infonca_is_policy_gradient_at_reference(4),
    "nca_is_half_policy_gradient_at_reference_K2": lambda: check_nca_is_half_policy_gradient_at_reference(2),
    "nca_is_half_policy_gradient_at_reference_K3": lambda: check_nca_is_half_policy_gradient_at_reference(3),
    "nca_is_half_policy_gradient_at_reference_K4": lambda: check_nca_is_half_policy_gradient_at_reference(4),
    "infonca_gradient_away_from_reference_K3": check_infonca_gradient_away_from_reference,
    "label_expansion_K2": lambda: check_label_expansion(2),
    "label_expansion_K3": lambda: check_label_expansion(3),
    "remainder_identity_K3": check_remainder_identity,
    "rloo_identity_K3": lambda: check_rloo_identity(3),
    "rloo_identity_K4": lambda: check_rloo_identity(4),
    "range_vs_std_K3": lambda: check_range_vs_std(3),
    "range_vs_std_K4": lambda: check_range_vs_std(4),
}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

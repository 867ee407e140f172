"""Sympy checks for the gradient statements (Propositions 12, 13, 14).

Coefficients g_i = d loss / d r_theta,i over one tuple:
- InfoNCA: g_i = softmax(f)_i - w_i; DPO: (-s(-D), s(-D)), D = f_w - f_l; both sum to zero, so
  adding a constant to every r_theta in the tuple changes nothing (Prop. 12);
- NCA: g_i = -w_i s(-f_i) + s(f_i)/K; the sum is zero at f = 0 (sum w = 1) but not in general
  (an explicit rational point shows it);
- at f = 0: grad NCA = 1/2 grad InfoNCA and grad nca_pair = 1/2 grad DPO (Prop. 13), K = 2, 3, 4;
- policy parameterisation f_i = beta (theta_i - logsumexp(theta) - log mu_i): for ANY loss of
  the sampled f's, an unseen response j gets d loss / d theta_j = -beta pi_j sum_i g_i (Prop. 14).

Run: python proofs/sympy_gradients.py
"""

import sympy as sp


def sigma(x):
    return 1 / (1 + sp.exp(-x))


def log_sigma(x):
    return -sp.log(1 + sp.exp(-x))


def _tuple(K):
    f = sp.symbols(f"f1:{K + 1}", real=True)
    w = list(sp.symbols(f"w1:{K}", positive=True))
    w.append(1 - sum(w))  # labels sum to one
    return f, w


def infonca(f, w):
    lse = sp.log(sum(sp.exp(v) for v in f))
    return -sum(wi * (fi - lse) for wi, fi in zip(w, f))


def nca(f, w):
    K = len(f)
    return -sum(wi * log_sigma(fi) + log_sigma(-fi) / K for wi, fi in zip(w, f))


def check_shift_blindness(K: int = 3) -> bool:
    """InfoNCA and DPO coefficients sum to zero for every f."""
    f, w = _tuple(K)
    info_sum = sp.simplify(sum(sp.diff(infonca(f, w), v) for v in f))
    fw, fl = sp.symbols("f_w f_l", real=True)
    dpo = -log_sigma(fw - fl)
    dpo_sum = sp.simplify(sp.diff(dpo, fw) + sp.diff(dpo, fl))
    return info_sum == 0 and dpo_sum == 0


def check_nca_coefficients_sum(K: int = 3) -> bool:
    """NCA's coefficient sum vanishes at f = 0 but not, e.g., at f = (1, 0, ..., 0), w uniform."""
    f, w = _tuple(K)
    total = sum(sp.diff(nca(f, w), v) for v in f)
    at_zero = sp.simplify(total.subs({v: 0 for v in f})) == 0
    elsewhere = total.subs({v: (1 if i == 0 else 0) for i, v in enumerate(f)})
    elsewhere = elsewhere.subs({wi: sp.Rational(1, K) for wi in w[:-1]})
    return at_zero and sp.simplify(elsewhere) != 0 and abs(float(elsewhere)) > 1e-3


def check_nca_is_half_infonca_at_reference(K: int = 3) -> bool:
    f, w = _tuple(K)
    at = {v: 0 for v in f}
    return all(
        sp.simplify((sp.diff(nca(f, w), v) - sp.diff(infonca(f, w), v) / 2).subs(at)) == 0 for v in f
    )


def check_nca_pair_is_half_dpo_at_reference() -> bool:
    fw, fl = sp.symbols("f_w f_l", real=True)
    nca_pair = -log_sigma(fw) - log_sigma(-fw) / 2 - log_sigma(-fl) / 2
    dpo = -log_sigma(fw - fl)
    at = {fw: 0, fl: 0}
    return all(sp.simplify((sp.diff(nca_pair, v) - sp.diff(dpo, v) / 2).subs(at)) == 0 for v in (fw, fl))


def check_unseen_response_gradient(n_actions: int = 4, K: int = 2) -> bool:
    """Policy parameterisation: responses 0..K-1 sampled, K..n-1 unseen; any loss L(f_0..f_{K-1})."""
    theta = sp.symbols(f"theta1:{n_actions + 1}", real=True)
    mu = sp.symbols(f"mu1:{n_actions + 1}", positive=True)
    beta = sp.Symbol("beta", positive=True)
    lse = sp.log(sum(sp.exp(t) for t in theta))
    pi = [sp.exp(t - lse) for t in theta]
    f = [beta * (theta[i] - lse - sp.log(mu[i])) for i in range(K)]
    L = sp.Function("L")
    x = sp.symbols(f"x1:{K + 1}", real=True)
    loss = L(*f)
    g = [sp.diff(L(*x), xi).subs(dict(zip(x, f))) for xi in x]  # coefficients at the tuple
    ok = True
    for j in range(K, n_actions):
        ok = ok and sp.simplify(sp.diff(loss, theta[j]) + beta * pi[j] * sum(g)) == 0
    return ok


CHECKS = {
    "shift_blindness_K2": lambda: check_shift_blindness(2),
    "shift_blindness_K3": lambda: check_shift_blindness(3),
    "nca_coefficients_sum_K2": lambda: check_nca_coefficients_sum(2),
    "nca_coefficients_sum_K3": lambda: check_nca_coefficients_sum(3),
    "nca_is_half_infonca_at_reference_K2": lambda: check_nca_is_half_infonca_at_reference(2),
    "nca_is_half_infonca_at_reference_K3": lambda: check_nca_is_half_infonca_at_reference(3),
    "nca_is_half_infonca_at_reference_K4": lambda: check_nca_is_half_infonca_at_reference(4),
    "nca_pair_is_half_dpo_at_reference": check_nca_pair_is_half_dpo_at_reference,
    "unseen_response_gradient": check_unseen_response_gradient,
}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

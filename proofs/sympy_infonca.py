"""Sympy checks for InfoNCA (Propositions 1, 6 and 12).

- the gradient of -sum_i w_i log softmax(f)_i is softmax(f)_i * sum(w) - w_i, whose entries sum
  to zero when sum(w) = 1 (shift blindness, Prop. 12);
- with w = softmax(r/alpha) the gradient vanishes at f = r/alpha + C for every C (Prop. 1);
- K = 2 InfoNCA equals DPO with soft label q = sigma((r1 - r2)/alpha); its optimum is
  f1 - f2 = (r1 - r2)/alpha; as alpha -> 0 (r1 > r2) it becomes the hard-label DPO loss (Prop. 6).

Run: python proofs/sympy_infonca.py
"""

import sympy as sp


def sigma(x):
    return 1 / (1 + sp.exp(-x))


def _softmax(f):
    total = sum(sp.exp(v) for v in f)
    return [sp.exp(v) / total for v in f]


def infonca_loss(f, w):
    total = sum(sp.exp(v) for v in f)
    return -sum(wi * (fi - sp.log(total)) for wi, fi in zip(w, f))


def check_gradient_coefficients(K: int = 3) -> bool:
    """d loss / d f_i = softmax(f)_i sum(w) - w_i, and the coefficients sum to 0 if sum(w) = 1."""
    f = sp.symbols(f"f1:{K + 1}", real=True)
    w = sp.symbols(f"w1:{K + 1}", positive=True)
    loss = infonca_loss(f, w)
    soft = _softmax(f)
    grads = [sp.diff(loss, fi) for fi in f]
    form_ok = all(sp.simplify(g - (s * sum(w) - wi)) == 0 for g, s, wi in zip(grads, soft, w))
    total = sp.simplify(sum(grads).subs(w[-1], 1 - sum(w[:-1])))
    return form_ok and total == 0


def check_stationary_at_shifted_rewards(K: int = 3) -> bool:
    """With w = softmax(r/alpha), every gradient entry is 0 at f = r/alpha + C."""
    r = sp.symbols(f"r1:{K + 1}", real=True)
    alpha = sp.Symbol("alpha", positive=True)
    C = sp.Symbol("C", real=True)
    w = _softmax([ri / alpha for ri in r])
    f = sp.symbols(f"f1:{K + 1}", real=True)
    loss = infonca_loss(f, w)
    at = {fi: ri / alpha + C for fi, ri in zip(f, r)}
    return all(sp.simplify(sp.diff(loss, fi).subs(at)) == 0 for fi in f)


def check_k2_is_soft_label_dpo() -> bool:
    """K = 2: w_1 = q = sigma((r1-r2)/alpha) and InfoNCA = -q log s(D) - (1-q) log s(-D), D = f1-f2."""
    r1, r2, f1, f2 = sp.symbols("r1 r2 f1 f2", real=True)
    alpha = sp.Symbol("alpha", positive=True)
    w = _softmax([r1 / alpha, r2 / alpha])
    q = sigma((r1 - r2) / alpha)
    label_ok = sp.simplify(w[0] - q) == 0
    infonca = infonca_loss([f1, f2], w)
    soft_dpo = -q * sp.log(sigma(f1 - f2)) - (1 - q) * sp.log(sigma(f2 - f1))
    # the difference has zero gradient in (f1, f2) everywhere and is 0 at f = 0, hence is 0
    diff = infonca - soft_dpo
    flat = all(sp.simplify(sp.diff(diff, v)) == 0 for v in (f1, f2))
    zero_at_origin = sp.simplify(diff.subs({f1: 0, f2: 0})) == 0
    return label_ok and flat and zero_at_origin


def check_k2_optimum_and_hard_label_limit() -> bool:
    """Soft-label DPO is minimised at D = logit(q) = (r1-r2)/alpha; as alpha -> 0+ with
    r1 > r2, q -> 1 and the loss tends to -log sigma(D) (DPO with the hard label)."""
    D = sp.Symbol("D", real=True)
    d = sp.Symbol("d", positive=True)  # r1 - r2 > 0: untied rewards
    alpha = sp.Symbol("alpha", positive=True)
    q = sigma(d / alpha)
    loss = -q * sp.log(sigma(D)) - (1 - q) * sp.log(sigma(-D))
    stationary = sp.simplify(sp.diff(loss, D).subs(D, d / alpha)) == 0
    convex = sp.simplify(sp.diff(loss, D, 2) - sigma(D) * sigma(-D)) == 0  # > 0 everywhere
    q_limit = sp.limit(q, alpha, 0, "+") == 1
    loss_limit = sp.simplify(sp.limit(loss, alpha, 0, "+") + sp.log(sigma(D))) == 0
    return stationary and convex and q_limit and loss_limit


CHECKS = {
    "gradient_coefficients_K2": lambda: check_gradient_coefficients(2),
    "gradient_coefficients_K3": lambda: check_gradient_coefficients(3),
    "gradient_coefficients_K4": lambda: check_gradient_coefficients(4),
    "stationary_at_shifted_rewards_K2": lambda: check_stationary_at_shifted_rewards(2),
    "stationary_at_shifted_rewards_K3": lambda: check_stationary_at_shifted_rewards(3),
    "k2_is_soft_label_dpo": check_k2_is_soft_label_dpo,
    "k2_optimum_and_hard_label_limit": check_k2_optimum_and_hard_label_limit,
}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

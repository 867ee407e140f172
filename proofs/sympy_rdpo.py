"""Sympy check for rDPO unbiasedness (Proposition 11).

rDPO's per-sample loss for a label that may have been flipped with probability eps < 1/2:
    lhat(h) = [(1 - eps) l(h) - eps l(-h)] / (1 - 2 eps).
Under symmetric flips the observed margin is h w.p. 1 - eps and -h w.p. eps, and
    (1 - eps) lhat(h) + eps lhat(-h) = l(h)
for ANY function l (checked with an undefined sympy Function), in particular l(h) = -log s(h).
So the expected noisy rDPO loss is the clean DPO loss and has the clean minimiser.

Run: python proofs/sympy_rdpo.py
"""

import sympy as sp


def rdpo_expectation(ell, h, eps):
    def lhat(x):
        return ((1 - eps) * ell(x) - eps * ell(-x)) / (1 - 2 * eps)

    return (1 - eps) * lhat(h) + eps * lhat(-h)


def check_unbiased_generic() -> bool:
    h = sp.Symbol("h", real=True)
    eps = sp.Symbol("epsilon", positive=True)
    ell = sp.Function("ell")
    return sp.simplify(rdpo_expectation(ell, h, eps) - ell(h)) == 0


def check_unbiased_logistic() -> bool:
    h = sp.Symbol("h", real=True)
    eps = sp.Symbol("epsilon", positive=True)

    def ell(x):
        return sp.log(1 + sp.exp(-x))  # -log sigma(x)

    return sp.simplify(rdpo_expectation(ell, h, eps) - ell(h)) == 0


CHECKS = {"unbiased_generic": check_unbiased_generic, "unbiased_logistic": check_unbiased_logistic}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

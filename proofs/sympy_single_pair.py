"""Sympy check for DPO on a single pair with a tabular policy (Proposition 15).

pi = softmax(theta) over n actions, loss L = -log s(h), h = beta (log pi_w - log pi_l
- log mu_w + log mu_l). Under gradient flow theta' = -grad L:
    d log pi_w / dt = beta s(-h) (1 - pi_w + pi_l) > 0,
    d log pi_l / dt = -beta s(-h) (1 + pi_w - pi_l) < 0,
    d log pi_j / dt = -beta s(-h) (pi_w - pi_l)      (unseen j),
so log pi(y_w) increases monotonically, at a rate proportional to 1 - pi_w + pi_l.

Run: python proofs/sympy_single_pair.py
"""

import sympy as sp


def sigma(x):
    return 1 / (1 + sp.exp(-x))


def flow_rates(n_actions: int = 4):
    theta = sp.symbols(f"theta1:{n_actions + 1}", real=True)
    mu = sp.symbols(f"mu1:{n_actions + 1}", positive=True)
    beta = sp.Symbol("beta", positive=True)
    lse = sp.log(sum(sp.exp(t) for t in theta))
    logpi = [t - lse for t in theta]
    w, l = 0, 1
    h = beta * (logpi[w] - logpi[l] - sp.log(mu[w]) + sp.log(mu[l]))
    loss = sp.log(1 + sp.exp(-h))
    velocity = [-sp.diff(loss, t) for t in theta]
    rates = [sum(sp.diff(lp, t) * v for t, v in zip(theta, velocity)) for lp in logpi]
    pi = [sp.exp(lp) for lp in logpi]
    return rates, pi, h, beta


def check_single_pair_rates(n_actions: int = 4) -> bool:
    rates, pi, h, beta = flow_rates(n_actions)
    base = beta * sigma(-h)
    chosen = sp.simplify(rates[0] - base * (1 - pi[0] + pi[1])) == 0
    rejected = sp.simplify(rates[1] + base * (1 + pi[0] - pi[1])) == 0
    unseen = all(sp.simplify(rates[j] + base * (pi[0] - pi[1])) == 0 for j in range(2, n_actions))
    return chosen and rejected and unseen


CHECKS = {"single_pair_rates_n3": lambda: check_single_pair_rates(3), "single_pair_rates_n4": check_single_pair_rates}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

"""Sympy checks for pairwise losses with Bradley-Terry labels (Propositions 7, 8, 10).

A pair (y1, y2) is drawn from mu x mu and y1 is labelled the winner with probability
sigma(r1 - r2) (identical draws included, either orientation w.p. 1/2). With |Y| = 3 and symbolic
mu and r, the exact population loss is built by enumerating the 9 ordered pairs, and:
- nca_pair, -log s(f_w) - 1/2 log s(-f_w) - 1/2 log s(-f_l), is stationary at
  f = log(2 p_win), p_win(y) = E_{y'} sigma(r_y - r_y'), and sum_y mu 2 p_win = 1 (Prop. 7);
- DPO, -log s(f_w - f_l), is stationary at f = r + C for every C (Prop. 8);
- CPL with lam = 1, -log s(alpha (log pi_w - log pi_l)), is stationary at
  log pi = r/alpha + C, with no dependence on mu (Prop. 10).

Run: python proofs/sympy_pairs.py
"""

import itertools

import sympy as sp

N = 3


def sigma(x):
    return 1 / (1 + sp.exp(-x))


def log_sigma(x):
    return -sp.log(1 + sp.exp(-x))


def _instance():
    m = sp.symbols(f"m1:{N}", positive=True)
    mu = list(m) + [1 - sum(m)]
    r = sp.symbols(f"r1:{N + 1}", real=True)
    f = sp.symbols(f"f1:{N + 1}", real=True)
    return mu, r, f


def bt_population_loss(mu, r, pair_loss):
    """E over (y1, y2) ~ mu x mu and the BT label of pair_loss(winner, loser)."""
    total = 0
    for y1, y2 in itertools.product(range(N), repeat=2):
        p1 = sigma(r[y1] - r[y2])
        total += mu[y1] * mu[y2] * (p1 * pair_loss(y1, y2) + (1 - p1) * pair_loss(y2, y1))
    return total


def win_probability(mu, r, y):
    return sum(mu[j] * sigma(r[y] - r[j]) for j in range(N))


def check_nca_pair_stationarity() -> bool:
    mu, r, f = _instance()

    def nca_pair(w, l):
        return -log_sigma(f[w]) - log_sigma(-f[w]) / 2 - log_sigma(-f[l]) / 2

    loss = bt_population_loss(mu, r, nca_pair)
    e = sp.symbols(f"e1:{N + 1}", positive=True)  # e_i = exp(r_i)
    at = {f[y]: sp.log(2 * win_probability(mu, r, y)) for y in range(N)}
    ok = True
    for y in range(N):
        g = sp.diff(loss, f[y]).subs(at)
        g = g.rewrite(sp.exp).subs({r[i]: sp.log(e[i]) for i in range(N)})
        ok = ok and sp.simplify(sp.factor(sp.simplify(g))) == 0
    mass = sum(mu[y] * 2 * win_probability(mu, r, y) for y in range(N))
    mass = mass.subs({r[i]: sp.log(e[i]) for i in range(N)})
    return ok and sp.simplify(mass - 1) == 0


def check_dpo_bt_stationarity() -> bool:
    mu, r, f = _instance()
    C = sp.Symbol("C", real=True)
    loss = bt_population_loss(mu, r, lambda w, l: -log_sigma(f[w] - f[l]))
    at = {f[y]: r[y] + C for y in range(N)}
    return all(sp.simplify(sp.diff(loss, f[y]).subs(at)) == 0 for y in range(N))


def check_cpl_lambda_one_stationarity() -> bool:
    mu, r, lp = _instance()
    alpha = sp.Symbol("alpha", positive=True)
    C = sp.Symbol("C", real=True)
    loss = bt_population_loss(mu, r, lambda w, l: -log_sigma(alpha * (lp[w] - lp[l])))
    at = {lp[y]: r[y] / alpha + C for y in range(N)}
    return all(sp.simplify(sp.diff(loss, lp[y]).subs(at)) == 0 for y in range(N))


def check_bt_pair_stationarity_scalar() -> bool:
    """One unordered pair: -s(d) log s(D) - s(-d) log s(-D) has derivative s(D) - s(d): root D = d."""
    D, d = sp.symbols("D d", real=True)
    L = -sigma(d) * log_sigma(D) - sigma(-d) * log_sigma(-D)
    return sp.simplify(sp.diff(L, D) - (sigma(D) - sigma(d))) == 0


CHECKS = {
    "bt_pair_stationarity_scalar": check_bt_pair_stationarity_scalar,
    "nca_pair_stationarity": check_nca_pair_stationarity,
    "dpo_bt_stationarity": check_dpo_bt_stationarity,
    "cpl_lambda_one_stationarity": check_cpl_lambda_one_stationarity,
}

if __name__ == "__main__":
    for name, check in CHECKS.items():
        print(f"{name}: {check()}")

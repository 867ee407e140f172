"""Run every check of the sympy scripts in proofs/ and assert it holds.

Each script exposes ``CHECKS``: name -> function returning True when the symbolic identity
simplifies exactly (to 0 or to an equality); the Markdown derivations in proofs/ cite these.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PROOFS = Path(__file__).resolve().parent.parent / "proofs"
SCRIPTS = ["sympy_infonca", "sympy_nca", "sympy_pairs", "sympy_gradients", "sympy_rdpo", "sympy_ipo", "sympy_single_pair",
           "sympy_policy_gradient"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"proofs_{name}", PROOFS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {name: _load(name) for name in SCRIPTS}


def _cases(script: str):
    return [pytest.param(script, check, id=f"{script}::{check}") for check in MODULES[script].CHECKS]


def _run(script: str, check: str):
    assert MODULES[script].CHECKS[check]() is True


@pytest.mark.parametrize("script, check", _cases("sympy_infonca"))
def test_infonca(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_nca"))
def test_nca(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_pairs"))
def test_pairs(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_gradients"))
def test_gradients(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_rdpo"))
def test_rdpo(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_ipo"))
def test_ipo(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_single_pair"))
def test_single_pair(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_policy_gradient"))
def test_policy_gradient(script, check):
    _run(script, check)


def test_every_script_is_covered():
    # sympy_atlas.py (Propositions 21–24) is run by tests/test_proofs_sympy_atlas.py
    scripts = sorted(p.stem for p in PROOFS.glob("sympy_*.py"))
    assert scripts == sorted(SCRIPTS + ["sympy_atlas"])


# ------------------------------------------------------------------ the derived expressions against the code
#
# The scripts above re-type each loss in sympy; the checks below make those expressions check the code:
# each derived expression is lambdified (numpy, float64) and compared with nca_lab's function at random
# points (fixed seeds). Tolerance: both sides evaluate the same O(1)-sized float64 expression by different
# routes (sympy's unsimplified tree vs torch's stable kernels); moderate arguments (|f| ≤ 3) keep the naive
# log(1 + e^{−x}) of the sympy side exact to ~1e-15, so 1e-12 is asserted.

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
import torch  # noqa: E402

from nca_lab import losses as L  # noqa: E402
from nca_lab import theory  # noqa: E402
from nca_lab.toy import population_loss  # noqa: E402

CODE_TOL = 1e-12


def _rng(seed):
    return np.random.default_rng(seed)


def _t(v):
    return torch.tensor(np.asarray(v, dtype=np.float64)[None])


def test_code_infonca_and_nca_losses_and_gradients_are_the_derived_expressions():
    """sympy_gradients.infonca / .nca (and sympy_infonca.infonca_loss) and their sympy gradients against
    nca_lab.losses with explicit label weights (β = 1, log π_ref = 0: r_θ = log π)."""
    grad_mod, info_mod = MODULES["sympy_gradients"], MODULES["sympy_infonca"]
    for K in (2, 3, 4):
        f, w = grad_mod._tuple(K)
        wfree = w[:-1]
        exprs = {
            "infonca": grad_mod.infonca(f, w),
            "nca": grad_mod.nca(f, w),
        }
        info_alt = sp.lambdify([f, wfree], info_mod.infonca_loss(f, w), "numpy")
        for name, expr in exprs.items():
            value = sp.lambdify([f, wfree], expr, "numpy")
            grads = [sp.lambdify([f, wfree], sp.diff(expr, v), "numpy") for v in f]
            rng = _rng(K)
            for _ in range(20):
                fv = rng.uniform(-3, 3, K)
                wv = rng.dirichlet(np.ones(K))
                lp = _t(fv).requires_grad_(True)
                out = getattr(L, name)(lp, torch.zeros(1, K, dtype=torch.float64), _t(np.zeros(K)), beta=1.0, label_weights=_t(wv))
                (g,) = torch.autograd.grad(out.sum(), lp)
                assert float(out.detach()) == pytest.approx(value(fv, wv[:-1]), abs=CODE_TOL), name
                np.testing.assert_allclose(g[0].numpy(), [gr(fv, wv[:-1]) for gr in grads], atol=CODE_TOL, rtol=0)
                if name == "infonca":
                    assert float(out.detach()) == pytest.approx(info_alt(fv, wv[:-1]), abs=CODE_TOL)


def test_code_population_nca_is_the_derived_expression():
    """sympy_nca.population_nca_loss (softmax, leave-one-out and exact-normalisation labels) against
    nca_lab.toy.population_loss('nca', ...) with a = e^{r/α}, f = β(log π − log μ)."""
    mod = MODULES["sympy_nca"]
    for n_items, K in ((2, 2), (3, 2), (2, 3)):
        mu_s, a_s, f_s = mod._instance(n_items)
        m_free = mu_s[:-1]
        Zs = sp.Symbol("Z", positive=True)
        for kind, labels in (("softmax", "reward"), ("loo", "loo"), ("exact", "exact_norm")):
            expr = mod.population_nca_loss(mu_s, a_s, f_s, K, kind, Z=Zs)
            fn = sp.lambdify([m_free, a_s, f_s, Zs], expr, "numpy")
            rng = _rng(10 * n_items + K)
            for _ in range(5):
                mu = rng.dirichlet(np.ones(n_items)) * 0.9 + 0.1 / n_items
                r = rng.uniform(-2, 2, n_items)
                alpha, beta = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)
                logpi = np.log(mu) + rng.normal(size=n_items)
                a = np.exp(r / alpha)
                Z = float(np.dot(mu, a))
                f = beta * (logpi - np.log(mu))
                got = float(population_loss("nca", logpi, mu, r, K, labels, alpha=alpha, beta=beta))
                assert got == pytest.approx(fn(mu[:-1], a, f, Z), abs=CODE_TOL), (n_items, K, kind)
            if kind == "softmax":
                # and the derived expected ratio gives theory's finite-K optimum: f*_K = log(K E[a/(a+S)])
                ratio = [sp.lambdify([m_free, a_s], mod.expected_ratio(mu_s, a_s, y, K), "numpy") for y in range(n_items)]
                np.testing.assert_allclose(
                    theory.nca_optimum(mu, r, alpha, K), np.log([K * q(mu[:-1], a) for q in ratio]), atol=CODE_TOL, rtol=0
                )
            if kind == "loo":
                inv = sp.lambdify([m_free, a_s], mod.expected_inverse_mean(mu_s, a_s, K), "numpy")
                np.testing.assert_allclose(
                    theory.nca_loo_optimum(mu, r, alpha, K), r / alpha + np.log(inv(mu[:-1], np.exp(r / alpha))), atol=CODE_TOL, rtol=0
                )


def test_code_gap_coefficient_is_the_derived_expression():
    """sympy_nca.gap_leading_coefficient (a, Z, Var) against theory.nca_gap_coefficient."""
    coeff, (a_s, Z_s, v_s) = MODULES["sympy_nca"].gap_leading_coefficient()
    fn = sp.lambdify([a_s, Z_s, v_s], coeff, "numpy")
    rng = _rng(3)
    for _ in range(10):
        Y = int(rng.integers(2, 6))
        mu, r, alpha = rng.dirichlet(np.ones(Y)), rng.uniform(-3, 3, Y), rng.uniform(0.3, 3.0)
        a = np.exp(r / alpha)
        Z = float(np.dot(mu, a))
        var = float(np.dot(mu, (a - Z) ** 2))
        np.testing.assert_allclose(theory.nca_gap_coefficient(mu, r, alpha), fn(a, Z, var), atol=1e-10, rtol=1e-12)


def test_code_bt_population_losses_are_the_derived_expressions():
    """sympy_pairs.bt_population_loss for DPO, nca_pair and CPL (λ = 1) against the toy world's
    population losses with labels='bt' and theory.cpl_population_loss."""
    mod = MODULES["sympy_pairs"]
    mu_s, r_s, f_s = mod._instance()
    m_free = mu_s[:-1]
    alpha_s = sp.Symbol("alpha", positive=True)
    exprs = {
        "dpo": mod.bt_population_loss(mu_s, r_s, lambda w, l: -mod.log_sigma(f_s[w] - f_s[l])),
        "nca_pair": mod.bt_population_loss(
            mu_s, r_s, lambda w, l: -mod.log_sigma(f_s[w]) - mod.log_sigma(-f_s[w]) / 2 - mod.log_sigma(-f_s[l]) / 2
        ),
        "cpl": mod.bt_population_loss(mu_s, r_s, lambda w, l: -mod.log_sigma(alpha_s * (f_s[w] - f_s[l]))),
    }
    fns = {k: sp.lambdify([m_free, r_s, f_s, alpha_s], e, "numpy") for k, e in exprs.items()}
    rng = _rng(5)
    N = mod.N
    for _ in range(10):
        mu = rng.dirichlet(np.ones(N)) * 0.9 + 0.1 / N
        r = rng.uniform(-3, 3, N)
        logpi = np.log(mu) + rng.normal(size=N)
        beta, alpha = rng.uniform(0.3, 3.0), rng.uniform(0.3, 3.0)
        f = beta * (logpi - np.log(mu))
        for name in ("dpo", "nca_pair"):
            got = float(population_loss(name, logpi, mu, r, 2, "bt", beta=beta))
            assert got == pytest.approx(fns[name](mu[:-1], r, f, alpha), abs=CODE_TOL), name
        expect = fns["cpl"](mu[:-1], r, logpi, alpha)
        assert float(population_loss("cpl", logpi, mu, r, 2, "bt", alpha=alpha, lam=1.0)) == pytest.approx(expect, abs=CODE_TOL)
        assert float(theory.cpl_population_loss(logpi, mu, r, alpha, 1.0)) == pytest.approx(expect, abs=CODE_TOL)
        # the derived optimum of nca_pair, log(2 p_win), against theory's
        pw = [sp.lambdify([m_free, r_s], mod.win_probability(mu_s, r_s, y), "numpy")(mu[:-1], r) for y in range(N)]
        np.testing.assert_allclose(theory.nca_pair_optimum(mu, r), np.log(2 * np.array(pw)), atol=CODE_TOL, rtol=0)


def test_code_rdpo_is_the_derived_expression():
    """sympy_rdpo's per-sample estimator and its flip expectation against nca_lab.losses.rdpo and theory."""
    mod = MODULES["sympy_rdpo"]
    h_s, eps_s = sp.Symbol("h", real=True), sp.Symbol("epsilon", positive=True)

    def ell(x):
        return sp.log(1 + sp.exp(-x))

    lhat = ((1 - eps_s) * ell(h_s) - eps_s * ell(-h_s)) / (1 - 2 * eps_s)
    per_sample = sp.lambdify([h_s, eps_s], lhat, "numpy")
    expectation = sp.lambdify([h_s, eps_s], mod.rdpo_expectation(ell, h_s, eps_s), "numpy")
    rng = _rng(7)
    for _ in range(20):
        h, eps, beta = rng.uniform(-3, 3), rng.uniform(0.0, 0.45), rng.uniform(0.3, 3.0)
        lp = _t([h / beta, 0.0])
        got = float(L.rdpo(lp, torch.zeros(1, 2, dtype=torch.float64), _t([1.0, 0.0]), beta=beta, eps=eps))
        assert got == pytest.approx(per_sample(h, eps), abs=CODE_TOL)
        assert float(theory.rdpo_per_sample_loss(h, eps)) == pytest.approx(per_sample(h, eps), abs=CODE_TOL)
        assert float(theory.rdpo_expected_loss(h, eps)) == pytest.approx(expectation(h, eps), abs=CODE_TOL)


def test_code_ipo_solution_is_theorys_and_the_losss():
    """sympy_ipo's solved three-action margins against theory.ipo_three_action_example, and its loss
    expression against the registry ipo summed over the three data pairs (β = τ)."""
    sol, g, tau_s, loss = MODULES["sympy_ipo"].ipo_solution()
    (s,) = sol
    margins = {("a", "b"): s[g[0]] - s[g[1]], ("b", "c"): s[g[1]] - s[g[2]], ("a", "c"): s[g[0]] - s[g[2]]}
    loss_fn = sp.lambdify([g, tau_s], loss, "numpy")
    rng = _rng(9)
    for tau in (0.1, 0.37, 1.0, 2.5):
        got = theory.ipo_three_action_example(tau)
        for key, expr in margins.items():
            assert got[key] == pytest.approx(float(expr.subs(tau_s, tau)), abs=CODE_TOL), key
        gv = rng.normal(size=3)
        pol = _t(gv)
        total = 0.0
        for w, l in MODULES["sympy_ipo"].DATA:
            total += float(L.ipo(pol[:, [w, l]], torch.zeros(1, 2, dtype=torch.float64), _t([1.0, 0.0]), beta=tau))
        assert total == pytest.approx(loss_fn(gv, tau), rel=1e-12)


def test_code_single_pair_rates_are_autograds():
    """sympy_single_pair.flow_rates (d log π/dt under gradient flow of the registry dpo loss) against
    autograd: rate_k = Σ_t ∂log π_k/∂θ_t · (−∂L/∂θ_t)."""
    rates, pi, h, beta_s = MODULES["sympy_single_pair"].flow_rates(4)
    # the script's symbols, rebuilt by name and assumptions (sympy symbols with both equal are the same)
    th_syms = sp.symbols("theta1:5", real=True)
    mu_syms = sp.symbols("mu1:5", positive=True)
    fn = sp.lambdify([th_syms, mu_syms, beta_s], rates, "numpy")
    rng = _rng(11)
    for _ in range(10):
        th, mu, beta = rng.normal(size=4), rng.dirichlet(np.ones(4)), rng.uniform(0.3, 3.0)
        theta = torch.tensor(th, requires_grad=True)
        lp = torch.log_softmax(theta, 0)
        loss = L.dpo(lp[[0, 1]][None], torch.log(torch.tensor(mu[[0, 1]]))[None], _t([1.0, 0.0]), beta=beta).sum()
        (gL,) = torch.autograd.grad(loss, theta, create_graph=True)
        velocity = -gL.detach()
        jac = torch.autograd.functional.jacobian(lambda t: torch.log_softmax(t, 0), theta.detach())
        np.testing.assert_allclose((jac @ velocity).numpy(), fn(th, mu, beta), atol=CODE_TOL, rtol=0)

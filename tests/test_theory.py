"""Self-consistency of the closed forms in nca_lab.theory (float64).

These tests check the closed forms against each other and against their defining identities
(exact enumeration vs exact integral, self-normalisation, limits); the comparison with the
minimiser of the population losses lives in tests/test_prop_*.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.special import expit, log_expit

from nca_lab import theory as T

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
MU_MIN = 1e-3


@st.composite
def instances(draw, min_range: float = 0.2, constant: bool = False):
    """(mu, r, alpha): |Y| in 2..8, min mu >= 1e-3, r in [-3, 3], alpha in [0.3, 3].

    ``min_range`` keeps r away from the constant case that several statements exclude
    (hypothesis shrinks towards ties); ``constant=True`` draws exactly that case.
    """
    n = draw(st.integers(2, 8))
    u = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    u = u / u.sum() if u.sum() > 0 else np.full(n, 1.0 / n)
    mu = MU_MIN + (1.0 - n * MU_MIN) * u  # min >= 1e-3, sums to 1
    mu = mu / mu.sum()
    if constant:
        r = np.full(n, draw(st.floats(-3.0, 3.0)))
    else:
        r = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=n, max_size=n)))
        assume(r.max() - r.min() >= min_range)
    alpha = draw(st.floats(0.3, 3.0))
    return mu, r, alpha


# ------------------------------------------------------------------------------ partition, InfoNCA


@SETTINGS
@given(instances())
def test_log_partition_matches_direct_sum(inst):
    mu, r, alpha = inst
    # direct sum is safe here: |r/alpha| <= 10; agreement to round-off
    assert T.log_partition(mu, r, alpha) == pytest.approx(math.log(np.sum(mu * np.exp(r / alpha))), abs=1e-12)


@SETTINGS
@given(instances(), st.floats(0.3, 3.0))
def test_infonca_optima_have_the_stated_shape_and_normalisation(inst, beta):
    mu, r, alpha = inst
    f = T.infonca_optimum(mu, r, alpha)
    shift = f - r / alpha
    assert np.ptp(shift) < 1e-12  # f = r/alpha + C (Prop. 1)
    assert T.nca_self_normalisation(mu, f) == pytest.approx(1.0, abs=1e-12)
    logpi = T.infonca_policy_optimum(mu, r, alpha, beta)
    assert np.exp(logpi).sum() == pytest.approx(1.0, abs=1e-12)
    # beta (log pi - log mu) = r/alpha + C: the policy reaches InfoNCA's free optimum for every beta
    assert np.ptp(beta * (logpi - np.log(mu)) - r / alpha) < 1e-10
    # Proposition 2's optimum from its stationarity condition, not from infonca_optimum (which it returns):
    # the expected label mass on y is μ_y e^{r_y/α}/Z, so σ(f)/σ(−f) = e^{f} = e^{r_y/α}/Z, Z by direct sum
    direct = r / alpha - math.log(math.fsum(m * math.exp(v / alpha) for m, v in zip(mu, r)))
    np.testing.assert_allclose(T.nca_exact_normalisation_optimum(mu, r, alpha), direct, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------ NCA at finite K


@SETTINGS
@given(instances(), st.sampled_from([2, 3, 5, 8]))
def test_nca_enumeration_matches_integral(inst, K):
    mu, r, alpha = inst
    enumerated = T.nca_optimum_enumerated(mu, r, alpha, K)
    integral = T.nca_optimum_integral(mu, r, alpha, K)
    # Both are exact: enumeration up to summation round-off over <= 3432 multisets, the
    # integral to quad's relative 1e-13 per piece; observed agreement ~1e-15, 1e-9 leaves room.
    np.testing.assert_allclose(integral, enumerated, rtol=0, atol=1e-9)


@SETTINGS
@given(instances())
def test_nca_optimum_is_self_normalised_for_every_K(inst):
    mu, r, alpha = inst
    # Prop. 4: sum_y mu e^{f*_K} = E[sum_i w_i] = 1 for every K; exact up to quadrature/summation
    # round-off, so 1e-10 for the default method (the enumeration's multinomial weights exp(gammaln(K) − ...)
    # carry round-off that grows with K: 4.4e-13 at K = 1000, μ = (½, ½)).
    for K in (2, 3, 10, 50, 1000):
        assert T.nca_self_normalisation(mu, T.nca_optimum(mu, r, alpha, K)) == pytest.approx(1.0, abs=1e-10)
    # The integral stays at round-off for large K (observed ≤ 4.4e-16 up to K = 10^5), so 1e-13: an integrand
    # that loses the log1p form of log φ near t = 0 is off by ~1e-11 at K = 10^5, because the (K − 1)-fold power
    # amplifies its round-off.
    for K in (1000, 100_000):
        f = T.nca_optimum(mu, r, alpha, K, method="integral")
        assert T.nca_self_normalisation(mu, f) == pytest.approx(1.0, abs=1e-13)
    assert T.nca_self_normalisation(mu, T.nca_optimum(mu, r, alpha)) == pytest.approx(1.0, abs=1e-12)


@SETTINGS
@given(instances())
def test_nca_finite_k_differs_from_the_limit_at_K2(inst):
    mu, r, alpha = inst
    gap = T.nca_optimum(mu, r, alpha, 2) - T.nca_optimum(mu, r, alpha)
    # r/alpha spans >= 0.2/3 here, so the K=2 bias is of order 1e-2 (c/2 with c ~ the spread of
    # a/Z); 1e-6 is far above round-off and far below the effect.
    assert np.abs(gap).max() > 1e-6


@SETTINGS
@given(instances(constant=True), st.sampled_from([2, 3, 7, 500]))
def test_nca_finite_k_is_exact_for_constant_rewards(inst, K):
    mu, r, alpha = inst
    # constant r: w = 1/K in every tuple, so f*_K = log(K * 1/K) = 0 = r/alpha - log Z
    np.testing.assert_allclose(T.nca_optimum(mu, r, alpha, K), 0.0, atol=1e-12)
    np.testing.assert_allclose(T.nca_gap_coefficient(mu, r, alpha), 0.0, atol=1e-12)


@SETTINGS
@given(instances(min_range=0.5))
def test_nca_gap_coefficient_is_the_leading_term(inst):
    """Prop. 3: f*_K - (r/alpha - log Z) = c/K + c2/K^2 + O(K^-3).

    d(K) = K * gap - c = c2/K + O(K^-2) must shrink by 4x when K quadruples. The expansion is in
    powers of kappa/K with kappa = max(a)/Z (which bounds Var(a)/Z^2 + 1 and every higher
    relative moment), so K1 = 2000 * ceil(kappa) puts the O(K^-2) correction of the ratio below
    ~kappa/K1 <= 1/2000; [3.8, 4.2] leaves 10x room. The integral is accurate to ~1e-13, i.e.
    K * 1e-13 <= 1e-6 in K * gap, far below d(K).
    """
    mu, r, alpha = inst
    a_over_z = np.exp(r / alpha - T.log_partition(mu, r, alpha))
    kappa = a_over_z.max()
    K1 = 2000 * math.ceil(kappa)
    K2 = 4 * K1
    limit = T.nca_optimum(mu, r, alpha)
    c = T.nca_gap_coefficient(mu, r, alpha)
    d1 = K1 * (T.nca_optimum_integral(mu, r, alpha, K1) - limit) - c
    d2 = K2 * (T.nca_optimum_integral(mu, r, alpha, K2) - limit) - c
    ratio = np.abs(d1).max() / np.abs(d2).max()
    assert 3.8 < ratio < 4.2
    # and K * gap is already close to c: |d2| ~ c2/K2 with |c2| <~ kappa^2
    assert np.abs(d2).max() <= 1e-2 * max(1.0, np.abs(c).max())


@SETTINGS
@given(instances(), st.sampled_from([2, 3, 10, None]))
def test_nca_best_above_and_worst_below_reference(inst, K):
    mu, r, alpha = inst
    f = T.nca_optimum(mu, r, alpha, K)
    # Prop. 5: a_best / (a_best + S) >= 1/K since S <= (K-1) a_best (and a_best/Z >= 1 in the limit)
    assert f[np.argmax(r)] >= -1e-12
    assert f[np.argmin(r)] <= 1e-12


# ------------------------------------------------------------------------------ NCA, leave-one-out


@SETTINGS
@given(instances(), st.sampled_from([2, 3, 6]))
def test_nca_loo_enumeration_matches_integral_and_shape_is_exact(inst, K):
    mu, r, alpha = inst
    c_enum = T.nca_loo_constant(mu, r, alpha, K, method="enumerate")
    c_int = T.nca_loo_constant(mu, r, alpha, K, method="integral")
    assert c_int == pytest.approx(c_enum, abs=1e-9)  # both exact; observed ~1e-15
    f = T.nca_loo_optimum(mu, r, alpha, K)
    assert np.ptp(f - r / alpha) < 1e-12  # Prop. 19: the shape r/alpha is exact


@SETTINGS
@given(instances())
def test_nca_loo_mass_exceeds_one_and_decreases_with_K(inst):
    mu, r, alpha = inst
    masses = [float(T.nca_loo_mass(mu, r, alpha, K)) for K in (2, 5, 50, 2000)]
    # Jensen: Z E[1/M] > Z / E[M] = 1 for non-constant r. Sample means decrease in convex
    # order as n grows, so E[1/M_n] is non-increasing in n. The strict gap is at least
    # ~Var(a)/Z^2 / (K-1) >= 1e-7 here; 1e-12 covers quadrature round-off.
    assert masses[0] > 1.0 + 1e-12
    assert all(m > 1.0 for m in masses)
    assert all(a >= b - 1e-12 for a, b in zip(masses, masses[1:]))


@SETTINGS
@given(instances(constant=True), st.sampled_from([2, 4, 100]))
def test_nca_loo_mass_is_one_for_constant_rewards(inst, K):
    mu, r, alpha = inst
    assert T.nca_loo_mass(mu, r, alpha, K) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(T.nca_loo_optimum(mu, r, alpha, K), 0.0, atol=1e-12)


# ------------------------------------------------------------------------------ Bradley-Terry pairs


@SETTINGS
@given(instances(min_range=0.0))
def test_win_probabilities_and_pairwise_optima(inst):
    mu, r, _ = inst
    p = T.bt_win_probability(mu, r)
    direct = np.array([sum(mu[j] * expit(r[i] - r[j]) for j in range(len(r))) for i in range(len(r))])
    np.testing.assert_allclose(p, direct, rtol=0, atol=1e-14)
    # sigma(x) + sigma(-x) = 1 makes sum mu 2 p_win = 1 (Prop. 7)
    assert np.sum(mu * 2.0 * p) == pytest.approx(1.0, abs=1e-13)
    assert T.nca_self_normalisation(mu, T.nca_pair_optimum(mu, r)) == pytest.approx(1.0, abs=1e-13)


@SETTINGS
@given(instances(), st.floats(0.3, 3.0))
def test_dpo_bt_optimum_is_r_plus_constant_with_normalised_policy(inst, beta):
    mu, r, _ = inst
    f = T.dpo_bt_optimum(mu, r, beta)
    assert np.ptp(f - r) < 1e-12
    assert np.sum(mu * np.exp(f / beta)) == pytest.approx(1.0, abs=1e-12)  # pi* = mu e^{f/beta}


# ------------------------------------------------------------------------------ IPO


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_ipo_three_action_example(tau):
    h = T.ipo_three_action_example(tau)
    assert set(h) == {("a", "b"), ("b", "c"), ("a", "c")}
    assert h[("a", "b")] == pytest.approx(1 / (3 * tau), rel=1e-12)
    assert h[("b", "c")] == pytest.approx(1 / (3 * tau), rel=1e-12)
    assert h[("a", "c")] == pytest.approx(2 / (3 * tau), rel=1e-12)


@SETTINGS
@given(
    st.integers(2, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1]),
                     min_size=1, max_size=12),
        )
    ),
    st.floats(0.1, 3.0),
)
def test_ipo_finite_data_optimum_is_stationary_and_min_norm(data, tau):
    n, pairs = data
    g = T.ipo_finite_data_optimum(pairs, n, tau)
    # gradient of sum (g_w - g_l - 1/(2 tau))^2 vanishes at the least-squares solution
    grad = np.zeros(n)
    for w, l in pairs:
        resid = g[w] - g[l] - 1.0 / (2.0 * tau)
        grad[w] += 2 * resid
        grad[l] -= 2 * resid
    np.testing.assert_allclose(grad, 0.0, atol=1e-9 * (1 + len(pairs) / tau))
    # minimum norm: orthogonal to the constants, so the sum over all actions is zero
    assert abs(g.sum()) < 1e-9 / tau
    mu = np.full(n, 1.0 / n)
    g_mu = T.ipo_finite_data_optimum(pairs, n, tau, mu=mu)
    assert np.sum(mu * np.exp(g_mu)) == pytest.approx(1.0, abs=1e-12)
    assert np.ptp(g_mu - g) < 1e-12


# ------------------------------------------------------------------------------ CPL


@settings(max_examples=25, deadline=None, derandomize=True)
@given(instances())
def test_cpl_lambda_one_closed_form_is_the_population_minimiser(inst):
    mu, r, alpha = inst
    closed = T.cpl_bandit_optimum(r, alpha)
    numeric = T.cpl_policy_optimum(mu, r, alpha, 1.0)
    # the numerical solver stops on a Newton step < 1e-9; 1e-8 is the documented accuracy
    np.testing.assert_allclose(numeric, closed, rtol=0, atol=1e-8)
    assert np.exp(closed).sum() == pytest.approx(1.0, abs=1e-12)
    assert T.cpl_bias(mu, r, alpha, 1.0) < 1e-8


@settings(max_examples=25, deadline=None, derandomize=True)
@given(instances(), st.sampled_from([0.9, 0.5, 0.2]))
def test_cpl_policy_optimum_minimises_the_population_loss(inst, lam):
    mu, r, alpha = inst
    logpi = T.cpl_policy_optimum(mu, r, alpha, lam)
    best = T.cpl_population_loss(logpi, mu, r, alpha, lam)
    rng = np.random.default_rng(0)
    for _ in range(20):
        theta = logpi + 1e-3 * rng.standard_normal(len(mu))
        other = theta - np.log(np.exp(theta).sum())
        # a strict minimiser on the simplex: every perturbed normalised policy is no better
        # (second-order increase ~1e-6 * curvature >> round-off 1e-15)
        assert T.cpl_population_loss(other, mu, r, alpha, lam) >= best - 1e-13


def test_cpl_bias_grows_as_lambda_falls_on_a_seeded_instance():
    """Prop. 10's 'the error grows as lambda falls', on one seeded instance (not a law, see below)."""
    rng = np.random.default_rng(0)
    mu = rng.dirichlet(np.ones(5))
    r = rng.uniform(-3, 3, 5)
    bias = [float(T.cpl_bias(mu, r, 1.0, lam)) for lam in (1.0, 0.9, 0.7, 0.5, 0.3)]
    assert bias[0] < 1e-8
    assert all(b2 > b1 + 1e-3 for b1, b2 in zip(bias, bias[1:]))


def test_cpl_bias_is_not_monotone_in_lambda_in_general():
    """Counterexample found by a sweep: with two actions the lam < 1 optimum can pass back
    through the lam = 1 optimum (bias ~ 0 near lam = 0.6) before growing again."""
    mu = np.array([0.672, 0.328])
    r = np.array([-0.05, -2.58])
    alpha = 1.14
    b8, b6, b3 = (float(T.cpl_bias(mu, r, alpha, lam)) for lam in (0.8, 0.6, 0.3))
    assert b6 < 0.1 * b8  # observed 0.0005 vs 0.0305
    assert b3 > b8


# ------------------------------------------------------------------------------ rDPO


@SETTINGS
@given(st.floats(-30.0, 30.0), st.floats(0.0, 0.49))
def test_rdpo_expected_loss_is_the_clean_loss(h, eps):
    clean = -log_expit(h)
    # the identity is exact (proofs/sympy_rdpo.py); numerically the 1/(1 - 2 eps) <= 50 factor
    # amplifies round-off of terms of size <= 31, hence 1e-11 absolute
    assert T.rdpo_expected_loss(h, eps) == pytest.approx(clean, abs=1e-11)


# ------------------------------------------------------------------------------ batches and validation


def test_cpl_bandit_optimum_below_lambda_one_is_the_policy_optimum():
    mu, r = np.array([0.2, 0.5, 0.3]), np.array([1.0, -0.5, 2.0])
    np.testing.assert_allclose(T.cpl_bandit_optimum(r, 0.8, lam=0.6, mu_pairs=mu), T.cpl_policy_optimum(mu, r, 0.8, 0.6), atol=0)
    assert np.abs(T.cpl_bandit_optimum(r, 0.8, lam=0.6, mu_pairs=mu) - T.cpl_bandit_optimum(r, 0.8)).max() > 1e-3


def test_cpl_bias_passes_include_identical_on():
    """cpl_bias is the largest centred gap between CPL's λ-optimum and r/α, for either pair distribution:
    with or without identical pairs (y, y) — the two differ at λ < 1."""
    mu, r, alpha, lam = np.array([0.2, 0.5, 0.3]), np.array([1.0, -0.5, 2.0]), 0.8, 0.5
    for incl in (True, False):
        lp = T.cpl_policy_optimum(mu, r, alpha, lam, include_identical=incl)
        expect = np.abs((lp - lp.mean()) - (r / alpha - (r / alpha).mean())).max()
        assert float(T.cpl_bias(mu, r, alpha, lam, include_identical=incl)) == pytest.approx(expect, abs=1e-12)
    assert abs(float(T.cpl_bias(mu, r, alpha, lam)) - float(T.cpl_bias(mu, r, alpha, lam, include_identical=False))) > 1e-3


@pytest.mark.parametrize("spread", [30.0, 150.0])
@pytest.mark.parametrize("K", [2, 3, 6])
def test_integrals_are_exact_with_rewards_spread_over_30_nats(K, spread):
    """The integral forms against enumeration where their truncation matters: r/α spanning 30 (or 150) nats with
    μ on the lowest reward, so that min a = e^{-30} and the upper cut t1 = (40 + log((K−1)/b))/b, b = (K−1) min a,
    is far out (a cut at (40 − log(…))/b loses 5e-5); at 150 nats a lower cut t0 that ignores the +K−1 in
    a + K − 1 lies beyond t1 when K = 2. Both are exact up to quad's relative 1e-13 per piece; observed ≤ 4e-15,
    1e-13 asserted."""
    mu, r, alpha = np.array([0.9, 0.05, 0.05]), np.array([0.0, spread / 2, spread]), 1.0
    assert float(T.nca_loo_constant(mu, r, alpha, K, method="integral")) == pytest.approx(
        float(T.nca_loo_constant(mu, r, alpha, K, method="enumerate")), abs=1e-13)
    np.testing.assert_allclose(T.nca_optimum(mu, r, alpha, K, method="integral"),
                               T.nca_optimum(mu, r, alpha, K, method="enumerate"), rtol=0, atol=1e-13)


def test_batched_inputs_match_rowwise():
    rng = np.random.default_rng(1)
    mu = rng.dirichlet(np.ones(4), size=3)
    r = rng.uniform(-3, 3, (3, 4))
    for fn in (
        lambda m, x: T.infonca_optimum(m, x, 0.7),
        lambda m, x: T.nca_optimum(m, x, 0.7, 4),
        lambda m, x: T.nca_optimum(m, x, 0.7, 3000),
        lambda m, x: T.nca_loo_optimum(m, x, 0.7, 3),
        lambda m, x: T.nca_gap_coefficient(m, x, 0.7),
        lambda m, x: T.nca_pair_optimum(m, x),
        lambda m, x: T.dpo_bt_optimum(m, x, 0.5),
        lambda m, x: T.cpl_policy_optimum(m, x, 0.7, 0.5),
        lambda m, x: T.cpl_bandit_optimum(x, 0.7),
        lambda m, x: T.cpl_bandit_optimum(x, 0.7, lam=0.6, mu_pairs=m),
        lambda m, x: T.infonca_policy_optimum(m, x, 0.7, 1.3),
        lambda m, x: T.nca_loo_mass(m, x, 0.7, 3),
        lambda m, x: T.bt_win_probability(m, x),
        lambda m, x: T.cpl_bias(m, x, 0.7, 0.5),
        lambda m, x: T.cpl_bias(m, x, 0.7, 0.5, include_identical=False),
        lambda m, x: T.nca_self_normalisation(m, x),
    ):
        batched = fn(mu, r)
        rows = np.stack([fn(mu[i], r[i]) for i in range(3)])
        assert np.shape(batched) == rows.shape  # one value per row, not one pooled over the rows
        np.testing.assert_allclose(batched, rows, rtol=0, atol=1e-14)
    # one mu broadcast against several reward rows
    np.testing.assert_allclose(T.nca_optimum(mu[0], r, 0.7, 3), T.nca_optimum(np.tile(mu[0], (3, 1)), r, 0.7, 3))


def test_cpl_solvers_run_without_warnings():
    """The CPL optima call scipy with the options it documents: an unknown option, or a method that ignores the
    Hessian it is given, would warn (OptimizeWarning / RuntimeWarning) while the Newton polish hides it in the
    value; a library function must not warn on valid input."""
    import warnings

    mu, r = np.array([0.2, 0.5, 0.3]), np.array([1.0, -0.5, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T.cpl_policy_optimum(mu, r, 0.8, 0.5)
        T.cpl_policy_optimum(mu, r, 0.8, 0.5, include_identical=False)
        T.cpl_bandit_optimum(r, 0.8)
        T.cpl_bandit_optimum(r, 0.8, lam=0.6, mu_pairs=mu)


def test_cpl_policy_optimum_says_when_its_newton_steps_do_not_converge(monkeypatch):
    """Newton steps that never shrink below 1e-9 (here every solve returns a step of 1e-6) end in a RuntimeError
    that names the last step, never in a silently inexact optimum."""
    monkeypatch.setattr(T.np.linalg, "solve", lambda h, g: np.full(len(g), 1e-6))
    with pytest.raises(RuntimeError, match=r"cpl_policy_optimum did not converge: last Newton step 1e-06"):
        T.cpl_policy_optimum(np.array([0.2, 0.5, 0.3]), np.array([1.0, -0.5, 2.0]), 0.8, 0.5)


@pytest.mark.parametrize("fn, enumerated, integral", [
    (lambda *a, **kw: T.nca_loo_constant(*a, **kw), "_inverse_mean_enumerated", "_inverse_mean_integral"),
    (lambda *a, **kw: T.nca_optimum(*a, **kw), "_nca_ratio_enumerated", "_nca_ratio_integral"),
])
def test_method_runs_the_algorithm_it_names(monkeypatch, fn, enumerated, integral):
    """The two exact algorithms agree to ~1e-15, so only their calls tell which one ran: "enumerate" and
    "integral" run the one they name and never the other, and the default ("auto") enumerates a few multisets."""
    mu, r, alpha, K = np.array([0.5, 0.3, 0.2]), np.array([0.0, 1.0, 2.0]), 0.7, 3
    expect = float(np.ravel(fn(mu, r, alpha, K, method="enumerate"))[0])
    for name, runs in ((integral, ("enumerate", None)), (enumerated, ("integral",))):
        with monkeypatch.context() as m:
            def refuse(*args, _name=name):
                raise AssertionError(f"{_name} called")
            m.setattr(T, name, refuse)
            for method in runs:
                got = fn(mu, r, alpha, K) if method is None else fn(mu, r, alpha, K, method=method)
                assert float(np.ravel(got)[0]) == pytest.approx(expect, abs=1e-12)
            with pytest.raises(AssertionError, match=f"{name} called"):
                fn(mu, r, alpha, K, method="enumerate" if name == enumerated else "integral")


@pytest.mark.parametrize("fn, enumerated, integral", [
    (lambda *a, **kw: T.nca_loo_constant(*a, **kw), "_inverse_mean_enumerated", "_inverse_mean_integral"),
    (lambda *a, **kw: T.nca_optimum(*a, **kw), "_nca_ratio_enumerated", "_nca_ratio_integral"),
])
def test_auto_enumerates_exactly_up_to_the_documented_number_of_multisets(monkeypatch, fn, enumerated, integral):
    """method="auto" enumerates while there are at most MAX_ENUMERATED_MULTISETS multisets of the K − 1 other
    draws, and integrates beyond. With two responses there are K of them, so K = MAX enumerates and K = MAX + 1
    integrates (each checked by making the other algorithm raise)."""
    mu, r, alpha, limit = np.array([0.5, 0.5]), np.array([0.0, 1.0]), 0.7, T.MAX_ENUMERATED_MULTISETS
    assert T.n_multisets(limit - 1, 2) == limit
    for K, refused in ((limit, integral), (limit + 1, enumerated)):
        with monkeypatch.context() as m:
            m.setattr(T, refused, lambda *args, _name=refused: (_ for _ in ()).throw(AssertionError(f"{_name} called")))
            assert np.all(np.isfinite(fn(mu, r, alpha, K)))


def test_integer_valued_float_k_is_accepted_as_that_integer():
    """K = 3.0 means K = 3 (a float from a config file or a sweep), bitwise the same result; 2.5 is refused
    (in the bad-input table)."""
    mu, r = np.array([0.2, 0.5, 0.3]), np.array([1.0, -0.5, 2.0])
    np.testing.assert_array_equal(T.nca_optimum(mu, r, 0.8, K=3.0), T.nca_optimum(mu, r, 0.8, K=3))
    assert T.nca_loo_constant(mu, r, 0.8, 4.0) == T.nca_loo_constant(mu, r, 0.8, 4)


def test_reward_range_limit_is_on_the_span_of_r_over_alpha():
    """exp(r/α − max r/α) underflows once r/α spans more than 700 nats: a span of exactly 700 is computed (and
    self-normalised), 700.5 is refused with the message that says what to do, whatever the sign of the rewards."""
    mu = np.array([0.5, 0.5])
    f = T.nca_optimum(mu, np.array([-700.0, 0.0]), 1.0, K=3)
    assert np.all(np.isfinite(f)) and T.nca_self_normalisation(mu, f) == pytest.approx(1.0, abs=1e-12)
    for r in ([-700.5, 0.0], [0.0, 700.5], [-350.25, 350.25]):
        with pytest.raises(ValueError, match=r"^r/alpha spans 700.5 > 700.0: exp\(r/alpha\) under/overflows float64; "
                                             r"use a larger alpha or a smaller reward range$"):
            T.nca_optimum(mu, np.array(r), 1.0, K=3)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: T.nca_optimum([0.5, 0.4], [0.0, 1.0], 1.0), "mu"),
        (lambda: T.nca_optimum([1.0, 0.0], [0.0, 1.0], 1.0), "mu"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0, 2.0], 1.0), "shape mismatch"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0], 0.0), "alpha"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0], -1.0), "alpha"),
        # with a finite K the check is the finite-K solver's own (K=None goes through infonca_optimum's)
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0], 0.0, K=3), "alpha must be"),
        (lambda: T.nca_optimum_integral([0.5, 0.5], [0.0, 1.0], -1.0, 3), "alpha must be"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0], 1.0, K=1), "K"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0], 1.0, K=2.5), "K"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, np.nan], 1.0), "r"),
        (lambda: T.nca_loo_mass([0.5, 0.5], [0.0, 1.0], 1.0, K=0), "K"),
        (lambda: T.nca_loo_mass([0.5, 0.5], [0.0, 1.0], 1.0, K=3, method="mc"), "method"),
        (lambda: T.nca_loo_optimum([0.5, 0.5], [0.0, 1.0], 1.0, K=3, method="mc"), "method"),
        (lambda: T.dpo_bt_optimum([0.5, 0.5], [0.0, 1.0], 0.0), "beta"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0], 1.0, K=3, method="mc"), "method"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1000.0], 1.0, K=3), "r/alpha"),
        (lambda: T.ipo_finite_data_optimum([(0, 3)], 3, 1.0), "pairs[0]"),
        (lambda: T.ipo_finite_data_optimum([(1, 1)], 3, 1.0), "pairs[0]"),
        (lambda: T.ipo_finite_data_optimum([(0, 1)], 3, -1.0), "tau"),
        (lambda: T.cpl_bandit_optimum([0.0, 1.0], 1.0, lam=0.5), "mu_pairs"),
        (lambda: T.cpl_policy_optimum([0.5, 0.5], [0.0, 1.0], 1.0, lam=1.5), "lam"),
        (lambda: T.rdpo_expected_loss(0.3, 0.5), "eps"),
        (lambda: T.rdpo_per_sample_loss(0.3, -0.1), "eps"),
        (lambda: T.nca_loo_constant([0.5, 0.5], [0.0, 1.0], -1.0, 3), "alpha"),
        (lambda: T.nca_loo_optimum([0.5, 0.5], [0.0, 1.0], 0.0, 3), "alpha"),
        (lambda: T.nca_loo_mass([0.5, 0.5], [0.0, 1.0], -2.0, 3), "alpha"),
        (lambda: T.cpl_bandit_optimum([0.0, np.nan], 1.0), "r"),
        (lambda: T.cpl_bandit_optimum([0.0, 1.0], 0.0), "alpha"),
        (lambda: T.cpl_bandit_optimum([0.0, 1.0], 1.0, lam=0.0), "lam"),
        (lambda: T.cpl_population_loss([0.0, 0.0, 0.0], [0.5, 0.5], [0.0, 1.0], 1.0, 1.0), "shape mismatch"),
        (lambda: T.cpl_population_loss([np.nan, 0.0], [0.5, 0.5], [0.0, 1.0], 1.0, 1.0), "logpi"),
        (lambda: T.cpl_population_loss([0.0, 0.0], [0.5, 0.5], [0.0, 1.0], -1.0, 1.0), "alpha"),
        (lambda: T.cpl_policy_optimum([0.5, 0.5], [0.0, 1.0], 0.0, 0.5), "alpha"),
        (lambda: T.log_partition([0.5, 0.5], [0.0, 1.0], 0.0), "alpha"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, 1.0], -1.0), "alpha"),
        (lambda: T.infonca_policy_optimum([0.5, 0.5], [0.0, 1.0], 1.0, 0.0), "beta"),
        (lambda: T.infonca_policy_optimum([0.5, 0.5], [0.0, 1.0], 0.0, 1.0), "alpha"),
        (lambda: T.nca_gap_coefficient([0.5, 0.5], [0.0, 1.0], 0.0), "alpha"),
        (lambda: T.nca_optimum([0.5, 0.5], [0.0, 1.0], 1.0, K=True), "K"),
        (lambda: T.nca_optimum([[[0.5, 0.5]]], [0.0, 1.0], 1.0), "mu"),
        (lambda: T.nca_optimum("ab", [0.0, 1.0], 1.0), "mu"),
        (lambda: T.bt_win_probability([0.5, 0.5], [[0.0, 1.0], [1.0]]), "r"),
        (lambda: T.ipo_finite_data_optimum([(0, 1)], 1, 1.0), "n_actions"),
        (lambda: T.ipo_finite_data_optimum([(0, 1)], "3", 1.0), "n_actions"),
        (lambda: T.ipo_finite_data_optimum([], 3, 1.0), "pairs"),
        (lambda: T.ipo_finite_data_optimum([(0, 1, 2)], 3, 1.0), "pairs[0]"),
        (lambda: T.ipo_finite_data_optimum([(0, 1)], 3, 1.0, mu=[0.5, 0.5]), "mu"),
        # an index equal to n_actions is outside [0, n): the winner's bound is as strict as the loser's
        (lambda: T.ipo_finite_data_optimum([(3, 0)], 3, 1.0), "pairs[0] = (3, 0) has an action outside [0, 3)"),
        (lambda: T.ipo_finite_data_optimum([(0, 3)], 3, 1.0), "pairs[0] = (0, 3) has an action outside [0, 3)"),
        # a value that is not a number at all gets its own message, naming it
        (lambda: T.rdpo_per_sample_loss(0.3, "a"), "eps must be a number in [0, 1/2), got 'a'"),
        (lambda: T.rdpo_expected_loss(0.3, None), "eps must be a number in [0, 1/2), got None"),
        (lambda: T.cpl_policy_optimum([0.5, 0.5], [0.0, 1.0], 1.0, lam="half"), "lam must be a number in (0, 1], got 'half'"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(call, field):
    # every message starts with the field it is about (anchored: a message that lost its field name fails)
    with pytest.raises(ValueError, match="^" + __import__("re").escape(field)):
        call()


def test_rdpo_losses_compute_in_float64_whatever_the_input_dtype():
    """A float32 margin is computed in float64 (the closed forms are compared to 1e-11 elsewhere; float32 arithmetic
    would be off by ~1e-7). Independent value: the float64 formula on the same (exactly representable) margins."""
    h32 = np.array([-2.5, 0.75, 3.0], dtype=np.float32)
    h64 = h32.astype(np.float64)
    eps = 0.2
    lhat = ((1 - eps) * np.logaddexp(0.0, -h64) - eps * np.logaddexp(0.0, h64)) / (1 - 2 * eps)
    got = T.rdpo_per_sample_loss(h32, eps)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, lhat, rtol=1e-15, atol=1e-15)
    expected = T.rdpo_expected_loss(h32, eps)
    assert expected.dtype == np.float64
    np.testing.assert_allclose(expected, np.logaddexp(0.0, -h64), rtol=1e-14, atol=1e-14)  # Proposition 11


@pytest.mark.parametrize("n_draws, n_items", [(0, 1), (1, 1), (3, 1), (1, 4), (2, 3), (3, 2), (4, 5), (6, 3)])
def test_n_multisets_counts_what_itertools_enumerates(n_draws, n_items):
    """The stars-and-bars count C(n + k − 1, k − 1) (which picks enumeration over the integral) against a brute-force
    enumeration of the multisets, and against the rows ``_multiset_counts`` builds (exact integers)."""
    import itertools

    brute = sum(1 for _ in itertools.combinations_with_replacement(range(n_items), n_draws))
    assert T.n_multisets(n_draws, n_items) == brute
    counts = T._multiset_counts(n_draws, n_items)
    assert counts.dtype.kind == "i" and counts.shape == (brute, n_items) and (counts >= 0).all()
    assert (counts.sum(axis=1) == n_draws).all() and len({tuple(c) for c in counts}) == brute  # all distinct


def test_a_single_response_has_log_pi_star_zero_by_every_method():
    """With one response π* = 1 whatever the reward, so log π* = 0 (the enumeration over multisets of one item once
    crashed here, where the integral did not)."""
    for method in ("enumerate", "integral"):
        np.testing.assert_array_equal(T.nca_optimum([1.0], [0.5], 0.7, K=3, method=method), [0.0])
        # r/α + log E[1/M] = r/α − r/α: one rounding of an O(1) number, so one ulp (2.2e-16) from 0
        np.testing.assert_allclose(T.nca_loo_optimum([1.0], [0.5], 0.7, 3, method=method), [0.0], rtol=0, atol=1e-15)


def test_instance_checks_say_exactly_what_is_wrong_and_accept_the_boundary():
    """Full text of each refusal of an instance (μ, r) or a positive hyperparameter, and what is accepted next to
    it: sums within 1e-9 of 1, an [X, Y] μ with a shared [Y] r (broadcast), array-likes of any numeric kind."""
    cases = [
        (lambda: T.infonca_optimum(["a", "b"], [0.0, 1.0], 1.0), "mu must be a numeric array, got list"),
        (lambda: T.infonca_optimum([[[0.5, 0.5]]], [0.0, 1.0], 1.0), "mu must have shape [Y] or [X, Y], got shape (1, 1, 2)"),
        (lambda: T.infonca_optimum(0.5, [0.0, 1.0], 1.0), "mu must have shape [Y] or [X, Y], got shape ()"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, np.inf], 1.0), "r contains non-finite values"),
        (lambda: T.infonca_optimum(np.zeros(0), np.zeros(0), 1.0), "mu must have at least one response (last axis is empty)"),
        (lambda: T.infonca_optimum([1.0, 0.0], [0.0, 1.0], 1.0),
         "mu must have full support (every entry > 0); got a minimum of 0: a response with mu = 0 is never sampled, "
         "so its optimum is undefined"),
        (lambda: T.infonca_optimum([[0.5, 0.5], [0.5, 0.6]], [0.0, 1.0], 1.0),
         "mu must sum to 1 along the last axis, got sums [1.  1.1]"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, 1.0], "a"), "alpha must be a positive number, got 'a'"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, 1.0], None), "alpha must be a positive number, got None"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, 1.0], 0.0), "alpha must be a positive finite number, got 0.0"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, 1.0], math.inf), "alpha must be a positive finite number, got inf"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, 1.0], math.nan), "alpha must be a positive finite number, got nan"),
        (lambda: T.infonca_optimum([0.5, 0.5], [0.0, 1.0, 2.0], 1.0),
         "shape mismatch: mu has 2 responses, r has 3 (shapes (2,) and (3,))"),
        (lambda: T.infonca_optimum([[0.5, 0.5]] * 3, [[0.0, 1.0]] * 2, 1.0), "shape mismatch: mu (3, 2) and r (2, 2) do not broadcast"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message
    # accepted: a sum 5e-10 from 1, tiny but positive mass, a shared reward row, integer rewards, a string number α
    got = T.infonca_optimum([[0.5, 0.5 + 5e-10], [1e-300, 1.0]], [0, 1], "2")
    assert got.shape == (2, 2) and got.dtype == np.float64
    # InfoNCA's optimum is r/α up to a per-context constant (chosen so that E_μ π*/μ = 1: the log-partition)
    np.testing.assert_allclose(got[:, 1] - got[:, 0], [0.5, 0.5], rtol=0, atol=1e-12)
    # one response (μ = (1)) is an instance: log E_μ e^{r/α} is r/α itself; α below 1 is as valid as above
    assert float(T.log_partition([1.0], [0.3], 0.5)) == 0.6

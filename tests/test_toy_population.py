"""Software tests of the toy world's population losses, solver and instances (``nca_lab.toy``).

The exact population loss is checked against a brute-force nested sum over ordered K-tuples (one call
per tuple of the plain-Python oracle ``tests/reference_losses.py``, weight ∏ μ), for every registry loss, with and without reward ties; the
Bradley–Terry expectation against its definition; the integral path against enumeration; gradients
against finite differences. Tolerances: sums of ≤ 3⁴ float64 terms agree to ~1e-15 relative, 1e-12 is
asserted; central differences with h = 1e-5 have truncation error ~h²·|f'''| ≈ 1e-10.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import expit
from reference_losses import DOCUMENTED_DEFAULTS, reference_loss
from strategies import torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab.losses import LOSSES
from nca_lab.toy import NoMinimiserError, optimum, population_loss, random_instance
from nca_lab.toy.population import check_instance, nca_label_coefficients
from nca_lab.toy.solve import IllConditionedWarning, newton_minimise

HP = {"alpha": 0.7, "beta": 0.8}


def hp_for(name):
    d = LOSSES[name].defaults
    out = {k: v for k, v in HP.items() if k in d}
    if name in ("clha",):
        out["min_gap"] = 0.5  # let the margin terms act on rewards in [−3, 3]
    return out


def tuple_loss(name, lp, ref, R, hp) -> float:
    """One tuple's loss from the independent plain-Python oracle (``tests/reference_losses.py``), not the
    registry loss under test; a loss the oracle does not cover falls back to the registry (then only the
    enumeration machinery is checked)."""
    if name in DOCUMENTED_DEFAULTS:
        return reference_loss(name, list(lp), list(ref), list(R), **{**DOCUMENTED_DEFAULTS[name], **hp})
    t = lambda v: torch.tensor(np.asarray(v)[None], dtype=torch.float64)  # noqa: E731
    return float(LOSSES[name](t(lp), t(ref), t(R), **hp))


def brute_force(name, logpi, mu, r, K, **hp):
    total = 0.0
    for tup in itertools.product(range(len(mu)), repeat=K):
        idx = list(tup)
        w = float(np.prod(mu[idx]))
        total += w * tuple_loss(name, logpi[idx], np.log(mu[idx]), r[idx], hp)
    return total


INSTANCES = {
    "untied": (np.array([0.2, 0.5, 0.3]), np.array([1.0, -0.5, 2.5])),
    "tied": (np.array([0.25, 0.45, 0.3]), np.array([1.0, 1.0, -2.0])),  # order matters for tie rules
}


@pytest.mark.parametrize("case", sorted(INSTANCES))
@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_enumeration_matches_brute_force(name, K, case):
    mu, r = INSTANCES[case]
    logpi = np.log(mu) + np.array([0.3, -0.8, 0.5])
    hp = hp_for(name)
    exact = float(population_loss(name, logpi, mu, r, K, **hp))
    assert exact == pytest.approx(brute_force(name, logpi, mu, r, K, **hp), rel=1e-12, abs=1e-12)


def test_combination_is_the_weighted_sum():
    mu, r = INSTANCES["untied"]
    logpi = np.log(mu) + 0.4
    combo = float(population_loss("nca+0.1*sft", logpi, mu, r, 3, alpha=0.7, beta=0.8))
    parts = float(population_loss("nca", logpi, mu, r, 3, alpha=0.7, beta=0.8)) + 0.1 * float(population_loss("sft", logpi, mu, r, 3))
    assert combo == pytest.approx(parts, rel=1e-13)


@pytest.mark.parametrize("flip", [0.0, 0.2])
@pytest.mark.parametrize("name", ["dpo", "nca_pair", "cpl", "infonca", "ipo"])
def test_bt_labels_match_definition(name, flip):
    mu, r = INSTANCES["untied"]
    logpi = np.log(mu) + np.array([0.3, -0.8, 0.5])
    hp = hp_for(name)
    expected = 0.0
    for y1, y2 in itertools.product(range(3), repeat=2):
        p = expit(r[y1] - r[y2])
        p = (1 - flip) * p + flip * (1 - p)
        for R, prob in (([1.0, 0.0], p), ([0.0, 1.0], 1 - p)):
            val = tuple_loss(name, [logpi[y1], logpi[y2]], [math.log(mu[y1]), math.log(mu[y2])], R, hp)
            expected += mu[y1] * mu[y2] * prob * val
    got = float(population_loss(name, logpi, mu, r, 2, "bt", flip_rate=flip, **hp))
    assert got == pytest.approx(expected, rel=1e-12)


def test_bt_labels_at_extreme_reward_gaps_are_exact_and_silent():
    """Gaps of 50 and 800 make σ(r1 − r2) exactly 0 or 1 in float64: the impossible orientation gets weight 0 (its
    log-weight −inf) without a warning from log(0) or exp's overflow, and the value is the double-loop expectation."""
    import warnings

    mu, r = np.array([0.2, 0.5, 0.3]), np.array([0.0, 50.0, 800.0])
    logpi = np.log(mu) + np.array([0.3, -0.8, 0.5])
    expected = 0.0
    for y1, y2 in itertools.product(range(3), repeat=2):
        p = expit(r[y1] - r[y2])
        for R, prob in (([1.0, 0.0], p), ([0.0, 1.0], 1 - p)):
            val = tuple_loss("dpo", [logpi[y1], logpi[y2]], [math.log(mu[y1]), math.log(mu[y2])], R, {"beta": 1.0})
            expected += mu[y1] * mu[y2] * prob * val
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = float(population_loss("dpo", logpi, mu, r, 2, "bt", beta=1.0))
    assert got == pytest.approx(expected, rel=1e-12)


def test_bt_labels_with_several_contexts_weigh_each_context():
    """[X, Y] instances: the value is Σ_x ρ_x E[loss | x], each term computed on its own context (ρ uniform here)."""
    mu = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    r = np.array([[0.0, 1.0, 2.5], [1.0, -1.0, 0.5]])
    logpi = np.log(mu) + np.array([0.3, -0.8, 0.5])
    got = float(population_loss("dpo", logpi, mu, r, 2, "bt", flip_rate=0.2, beta=1.0))
    each = [float(population_loss("dpo", logpi[x], mu[x], r[x], 2, "bt", flip_rate=0.2, beta=1.0)) for x in range(2)]
    assert got == pytest.approx(0.5 * sum(each), rel=1e-14)


@pytest.mark.parametrize("labels", ["reward", "loo", "exact_norm"])
def test_integral_path_matches_enumeration(labels):
    mu, r = INSTANCES["untied"]
    logpi = torch.tensor(np.log(mu) + np.array([0.3, -0.8, 0.5]), requires_grad=True)
    values, grads = [], []
    for method in ("enumerate", "integral"):
        v = population_loss("nca", logpi, mu, r, 6, labels, method=method, alpha=0.7, beta=0.8)
        (g,) = torch.autograd.grad(v, logpi)
        values.append(float(v.detach()))
        grads.append(g)
    assert values[1] == pytest.approx(values[0], rel=1e-12)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=1e-11)


def test_label_coefficients_are_scale_free_and_exact_at_small_K():
    mu, r = INSTANCES["untied"]
    # K = 2, softmax labels: c_y = 2 E[a_y/(a_y + a')] written out
    a = np.exp(r / 0.7)
    direct = 2 * np.array([np.sum(mu * a[y] / (a[y] + a)) for y in range(3)])
    np.testing.assert_allclose(nca_label_coefficients(mu, r, 0.7, 2, "reward"), direct, rtol=1e-14)
    np.testing.assert_allclose(nca_label_coefficients(mu, r + 5.0, 0.7, 2, "reward"), direct, rtol=1e-14)


def test_auto_switches_to_integral_for_large_K():
    mu, r = random_instance(1, 4, min_gap=0.2)
    logpi = np.log(mu)
    auto = float(population_loss("nca", logpi, mu, r, 300, alpha=1.0, beta=1.0))  # 4.6M multisets
    assert auto == pytest.approx(float(population_loss("nca", logpi, mu, r, 300, method="integral", alpha=1.0, beta=1.0)), rel=1e-15)
    with pytest.raises(ValueError, match="max_rows"):
        population_loss("infonca", logpi, mu, r, 300, alpha=1.0, beta=1.0)


def test_max_rows_bounds_exactly_the_rows_enumeration_builds():
    """Untied rewards enumerate the C(Y + K − 1, K) multisets (order does not matter), tied rewards the Y^K ordered
    tuples: Y = 3, K = 3 gives 10 and 27 rows. max_rows equal to that count is enough; one less is refused with a
    message that gives the count and its kind."""
    mu = np.array([0.2, 0.5, 0.3])
    logpi = np.log(mu)
    for r, rows, kind in ((np.array([0.0, 1.0, 2.5]), 10, "multisets"),
                          (np.array([0.0, 1.0, 1.0]), 27, r"ordered tuples \(rewards tie, so order matters\)")):
        value = float(population_loss("infonca", logpi, mu, r, 3, max_rows=rows, alpha=1.0, beta=1.0))
        assert value == pytest.approx(float(population_loss("infonca", logpi, mu, r, 3, alpha=1.0, beta=1.0)), rel=0)
        with pytest.raises(ValueError, match=rf"^cannot enumerate: {rows} {kind} of K = 3 draws from Y = 3 responses "
                                             rf"exceed max_rows = {rows - 1}; "):
            population_loss("infonca", logpi, mu, r, 3, max_rows=rows - 1, alpha=1.0, beta=1.0)


def test_gradient_matches_finite_differences():
    mu, r = random_instance(2, 4, min_gap=0.2)
    x0 = np.log(mu) + np.random.default_rng(0).normal(size=4)
    for name, K, labels, hp in [("nca", 3, "reward", dict(alpha=0.6, beta=0.9)), ("dpo", 2, "bt", dict(beta=0.5)), ("pro", 3, "reward", {})]:
        x = torch.tensor(x0, requires_grad=True)
        (g,) = torch.autograd.grad(population_loss(name, x, mu, r, K, labels, **hp), x)
        h = 1e-5
        fd = np.array([
            (float(population_loss(name, x0 + h * e, mu, r, K, labels, **hp)) - float(population_loss(name, x0 - h * e, mu, r, K, labels, **hp))) / (2 * h)
            for e in np.eye(4)
        ])
        np.testing.assert_allclose(g.numpy(), fd, atol=1e-8, rtol=0)


def test_contexts_average_with_weights():
    mu, r = random_instance(3, 4, X=3, min_gap=0.1)
    logpi = np.log(mu) + 0.2
    rho = np.array([0.5, 0.3, 0.2])
    joint = float(population_loss("nca", logpi, mu, r, 3, context_weights=rho, alpha=1.0, beta=1.0))
    parts = [float(population_loss("nca", logpi[x], mu[x], r[x], 3, alpha=1.0, beta=1.0)) for x in range(3)]
    assert joint == pytest.approx(float(np.dot(rho, parts)), rel=1e-13)
    uniform = float(population_loss("nca", logpi, mu, r, 3, alpha=1.0, beta=1.0))
    assert uniform == pytest.approx(float(np.mean(parts)), rel=1e-13)
    f = optimum("nca", mu, r, 3, alpha=1.0, beta=1.0)
    assert f.shape == (3, 4)
    for x in range(3):
        np.testing.assert_allclose(f[x], optimum("nca", mu[x], r[x], 3, alpha=1.0, beta=1.0), atol=1e-12)


def test_at_reference_values():
    """Closed-form values at π = μ: ln 2 per DPO pair (ties skipped), 2 ln 2 for NCA, ln K for InfoNCA."""
    mu, r = INSTANCES["untied"]
    lm = np.log(mu)
    assert float(population_loss("nca", lm, mu, r, 4, alpha=0.5, beta=1.0)) == pytest.approx(2 * math.log(2), rel=1e-13)
    assert float(population_loss("infonca", lm, mu, r, 4, alpha=0.5, beta=1.0)) == pytest.approx(math.log(4), rel=1e-13)
    assert float(population_loss("dpo", lm, mu, r, 2, "bt")) == pytest.approx(math.log(2), rel=1e-13)
    p_distinct = 1 - float(np.sum(mu**2))
    assert float(population_loss("dpo", lm, mu, r, 2)) == pytest.approx(math.log(2) * p_distinct, rel=1e-13)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="nope"), "unknown loss"),
        (dict(name="dpo", K=1), "needs K >= 2"),
        (dict(K=2.0), "K must be an int"),
        (dict(mu=np.array([0.5, 0.5, 0.0])), "full support"),
        (dict(mu=np.array([0.5, 0.4, 0.2])), "sum to 1"),
        (dict(mu=np.array([0.5, np.nan, 0.5])), "NaN"),
        (dict(r=np.zeros(4)), "shape mismatch"),
        (dict(logpi=np.zeros(4)), "shape mismatch"),
        (dict(labels="softmax"), "labels must be one of"),
        (dict(labels="bt", K=3), "needs K = 2"),
        (dict(name="dpo", labels="loo"), "loo"),
        (dict(name="dpo", labels="exact_norm"), "label_weights"),
        (dict(flip_rate=0.1), "flip_rate applies"),
        (dict(labels="bt", K=2, flip_rate=0.5), "flip_rate must lie"),
        (dict(method="mc"), "method must be"),
        (dict(name="dpo", method="integral"), "only for 'nca'"),
        (dict(gamma=1.0), "no hyperparameter"),
        (dict(label_weights=torch.ones(1, 3)), "set by population_loss"),
        (dict(context_weights=np.array([0.5, 0.5])), "context_weights"),
    ],
)
def test_population_loss_errors(kwargs, match):
    mu, r = INSTANCES["untied"]
    args = dict(name="nca", logpi=np.log(mu), mu=mu, r=r, K=3, alpha=1.0, beta=1.0)
    args.update(kwargs)
    if args["name"] == "dpo":
        args.pop("alpha")
    with pytest.raises(ValueError, match=match):
        population_loss(**args)


def test_integral_path_contract():
    """The integral path (NCA only) on its own: contexts weighted by ρ, registry defaults when no hyperparameter
    is given (both equal to enumeration), and its refusals with their full messages."""
    mu, r = random_instance(3, 4, X=3, min_gap=0.1)
    logpi = np.log(mu) + np.array([0.2, -0.3, 0.1, 0.0])
    rho = np.array([0.5, 0.3, 0.2])
    # dict(): nca's defaults β = 0.01, α = 1e-4, on rewards scaled by 1e-4 so that r/α spans a few nats as above
    for kw, rr in ((dict(context_weights=rho, alpha=1.0, beta=1.0), r), (dict(), r * 1e-4)):
        vals = [float(population_loss("nca", logpi, mu, rr, 3, "reward", method=m, **kw)) for m in ("enumerate", "integral")]
        assert vals[1] == pytest.approx(vals[0], rel=1e-12), kw
    m1, r1 = INSTANCES["untied"]
    cases = [
        (dict(name="dpo"), "the one-dimensional-integral path exists only for 'nca' (per-response terms); loss 'dpo' "
                           "needs enumeration"),
        (dict(labels="bt", K=2), "the integral path for 'nca' supports labels 'reward', 'loo', 'exact_norm'; got 'bt'"),
        (dict(beta=0.0), "beta and alpha must be > 0, got beta=0.0, alpha=1.0"),
        (dict(beta=-1.0), "beta and alpha must be > 0, got beta=-1.0, alpha=1.0"),
        (dict(alpha=0.0), "beta and alpha must be > 0, got beta=1.0, alpha=0.0"),
    ]
    for kwargs, message in cases:
        args = dict(name="nca", logpi=np.log(m1), mu=m1, r=r1, K=3, alpha=1.0, beta=1.0, method="integral")
        args.update(kwargs)
        if args["name"] == "dpo":
            args.pop("alpha")
        with pytest.raises(ValueError) as e:
            population_loss(**args)
        assert str(e.value) == message, kwargs


def test_sft_accepts_K_1():
    mu, r = INSTANCES["untied"]
    logpi = np.log([0.1, 0.2, 0.7])
    # K = 1: E[−log π(y)] = cross-entropy of μ against π
    assert float(population_loss("sft", logpi, mu, r, 1)) == pytest.approx(-float(np.dot(mu, logpi)), rel=1e-14)


def test_optimum_errors_and_no_minimiser():
    mu, r = INSTANCES["untied"]
    with pytest.raises(ValueError, match=r"^optimum\(\) uses Newton's method and needs a twice-differentiable loss; 'hinge' is "
                                         r"piecewise linear \(no Hessian, and its minimiser is generally a set, not a point\)$"):
        optimum("hinge", mu, r, 2)
    with pytest.raises(ValueError, match="piecewise"):
        optimum("nca+0.1*rrhf", mu, r, 2, alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="param"):
        optimum("nca", mu, r, 2, param="energy", alpha=1.0, beta=1.0)
    # DPO on deterministic preferences (labels = rewards): no minimiser, in both parameterisations
    for param in ("free", "policy"):
        with pytest.raises(NoMinimiserError):
            optimum("dpo", mu, r, 2, param=param, beta=1.0)
    # CPL with λ < 1, free log π: the loss falls as every log π grows
    with pytest.raises(NoMinimiserError):
        optimum("cpl", mu, r, 2, labels="bt", alpha=1.0, lam=0.5)


def test_optimum_gauge_and_outputs():
    mu, r = INSTANCES["untied"]
    # shift-invariant loss: the free answer is the normalised policy's implicit reward
    f = optimum("infonca", mu, r, 3, alpha=0.7, beta=0.8)
    assert float(np.sum(mu * np.exp(f / 0.8))) == pytest.approx(1.0, abs=1e-12)
    # reference-free loss: log π*, normalised
    lp = optimum("cpl", mu, r, 2, param="policy", labels="bt", alpha=0.7, lam=1.0)
    assert float(np.sum(np.exp(lp))) == pytest.approx(1.0, abs=1e-12)
    # registry default β is used when none is given (DPO: 0.1)
    f_default = optimum("dpo", mu, r, 2, labels="bt")
    np.testing.assert_allclose(f_default, optimum("dpo", mu, r, 2, labels="bt", beta=0.1), atol=1e-12)


# ------------------------------------------------------------------------------------------ instances


def test_random_instance_properties():
    for seed in range(20):
        mu, r = random_instance(seed, 6, min_gap=0.5)
        assert mu.shape == r.shape == (6,)
        assert mu.min() >= 1e-3 - 1e-15 and abs(mu.sum() - 1) < 1e-12
        assert r.min() >= -3 and r.max() <= 3
        assert np.diff(np.sort(r)).min() >= 0.5 - 1e-12
    mu, r = random_instance(np.random.default_rng(0), 3, X=5)
    assert mu.shape == r.shape == (5, 3)
    np.testing.assert_allclose(mu.sum(axis=1), 1.0)
    a, b = random_instance(7, 4), random_instance(7, 4)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(Y=0), "Y must"),
        (dict(Y=4, min_gap=3.0), "min_gap"),
        (dict(Y=4, min_mu=0.3), "min_mu"),
        (dict(Y=4, X=0), "X must"),
        (dict(Y=4, r_low=1.0, r_high=0.0), "r_low"),
    ],
)
def test_random_instance_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_instance(0, **kwargs)


def test_random_instance_mu_is_the_shifted_dirichlet():
    """μ = min_mu + (1 − Y·min_mu)·D with D ~ Dirichlet(c·1): each coordinate of D = (μ − min_mu)/(1 − Y·min_mu)
    is Beta(c, (Y − 1)·c) (the Dirichlet's marginal, computed by scipy, independent of the generator). A
    Kolmogorov–Smirnov test on 3000 draws per case; with a fixed seed the p-value is a fixed number, and
    p > 1e-3 is asserted (a wrong scale or shift, e.g. μ ∈ [0.154, 0.846] instead of [0.4, 0.6] at Y = 2,
    min_mu = 0.4, gives p ≈ 0). The support bounds are asserted exactly too."""
    from scipy import stats

    for Y, min_mu, c in ((2, 0.4, 1.0), (4, 0.05, 0.5), (5, 1e-3, 2.0)):
        mu, _ = random_instance(np.random.default_rng(Y), Y, X=3000, min_mu=min_mu, concentration=c)
        np.testing.assert_allclose(mu.sum(axis=1), 1.0, rtol=0, atol=1e-15)
        assert mu.min() >= min_mu - 1e-15 and mu.max() <= 1 - (Y - 1) * min_mu + 1e-15
        D = (mu - min_mu) / (1 - Y * min_mu)
        for y in range(Y):
            p = stats.kstest(D[:, y], stats.beta(c, (Y - 1) * c).cdf).pvalue
            assert p > 1e-3, (Y, min_mu, c, y, p)


def test_random_instance_rewards_are_uniform_given_the_gaps():
    """r is uniform on [r_low, r_high]^Y conditioned on every pairwise gap ≥ g. Then, sorted, r_(i) − r_low −
    i·g (i = 0..Y−1) are the order statistics of Y uniforms on [0, L − (Y−1)·g], L = r_high − r_low, so the
    i-th is (L − (Y−1)·g)·Beta(i + 1, Y − i); and by symmetry each position holds the largest reward with
    probability 1/Y. KS tests (p > 1e-3, fixed seed) and a chi-square test on the argmax counts."""
    from scipy import stats

    for Y, lo, hi, g in ((2, 0.0, 3.0, 1.0), (4, -3.0, 3.0, 0.5), (3, -1.0, 5.0, 0.0)):
        _, r = random_instance(np.random.default_rng(10 + Y), Y, X=3000, r_low=lo, r_high=hi, min_gap=g)
        assert r.min() >= lo and r.max() <= hi
        slack = (hi - lo) - (Y - 1) * g
        u = np.sort(r, axis=1) - lo - g * np.arange(Y)
        for i in range(Y):
            p = stats.kstest(u[:, i] / slack, stats.beta(i + 1, Y - i).cdf).pvalue
            assert p > 1e-3, (Y, g, i, p)
        counts = np.bincount(r.argmax(axis=1), minlength=Y)
        assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_random_instance_boundaries():
    """The admissible region's edges: Y = 1 and X = 1 are valid; min_mu must be > 0 and Y·min_mu < 1 (the
    message names the interval (0, 1/Y)); r_low = r_high is refused; a gap that fits exactly, (Y−1)·g = L, is
    valid and leaves one configuration (r a permutation of r_low + i·g); concentration 0 is refused."""
    mu, r = random_instance(0, 1)
    assert mu.tolist() == [1.0] and -3 <= r[0] <= 3
    mu, r = random_instance(0, 3, X=1)
    assert mu.shape == r.shape == (1, 3)
    mu, r = random_instance(0, 3, r_low=0.0, r_high=2.0, min_gap=1.0)
    np.testing.assert_allclose(np.sort(r), [0.0, 1.0, 2.0], rtol=0, atol=1e-15)
    for kwargs, match in (
        (dict(Y=4, min_mu=0.0), r"^min_mu must lie in \(0, 1/Y\) = \(0, 0\.25\), got 0\.0$"),
        (dict(Y=4, min_mu=0.25), r"^min_mu must lie in \(0, 1/Y\) = \(0, 0\.25\), got 0\.25$"),
        (dict(Y=3, r_low=1.0, r_high=1.0), r"^need r_low < r_high"),
        (dict(Y=3, r_low=0.0, r_high=2.0, min_gap=1.0 + 1e-9), r"^min_gap = "),
        (dict(Y=3, concentration=0.0), r"^concentration must be > 0, got 0\.0$"),
    ):
        with pytest.raises(ValueError, match=match):
            random_instance(0, **kwargs)


def _labels_by_enumeration(mu, z, K, labels):
    """c_y = K·E[w_1 | y_1 = y] by summing over the (K−1)-tuples of the other draws, in float64 logs."""
    import itertools

    from scipy.special import logsumexp

    Y = len(mu)
    tuples = np.array(list(itertools.product(range(Y), repeat=K - 1)))
    log_p = np.log(mu)[tuples].sum(axis=1)
    log_s = logsumexp(z[tuples], axis=1)  # log S_{K−1}, the other draws' total weight
    if labels == "loo":  # w_1 = a_y (K−1) / (K S_{−1})
        return np.exp(z + np.log(K - 1) + logsumexp(log_p - log_s))
    return np.array([K * np.exp(logsumexp(log_p + z[y] - np.logaddexp(z[y], log_s))) for y in range(Y)])


@pytest.mark.parametrize("K", [2, 3, 8])
def test_label_coefficients_are_exact_with_rewards_spread_over_120_nats(K):
    """The mpmath quadrature behind the integral path, where its break points matter: r/α spanning 120 nats, so
    the integrand ∫ e^{−t a_y} φ(t)^{K−1} dt decays on scales from 1 to e^{120} and must be resolved on each
    decade, and its last piece [t_last, ∞) must hold nothing (a last point at 10·hi left 1.4e-8 of the K = 2
    integral uncounted, and rules that stop short, start late or thin the decades are off by 1e-8 to 1). Against
    enumeration in float64 logs (up to 8⁷ terms, rounding ~1e-14): observed ≤ 1.7e-14 relative, 1e-12 asserted."""
    mu, r, alpha = np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.0, 40.0, 80.0, 120.0]), 1.0
    z = r / alpha - (r / alpha).max()
    for labels in ("reward", "loo"):
        np.testing.assert_allclose(nca_label_coefficients(mu, r, alpha, K, labels),
                                   _labels_by_enumeration(mu, z, K, labels), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, hp, invariant", [
    ("infonca", {}, True), ("dpo", {}, True), ("ipo", {}, True), ("cpl", {"lam": 1.0}, True),
    ("nca", {}, False), ("sft", {}, False), ("cpl", {"lam": 0.5}, False),
])
def test_is_shift_invariant_tells_which_losses_see_only_differences_of_log_pi(name, hp, invariant):
    """A loss of differences log π_i − log π_j (softmax over responses, pairwise margins, CPL with λ = 1) is
    unchanged by log π + c; NCA's per-response σ terms, SFT's log π and CPL's λ < 1 are not (the known answer
    per loss, not a recomputation). Called with its default labels."""
    from nca_lab.toy.solve import is_shift_invariant

    mu, r = INSTANCES["untied"]
    assert is_shift_invariant(name, mu, r, 3 if name in ("infonca", "nca", "sft") else 2, **hp) is invariant


def test_label_coefficients_refuse_labels_without_an_integral_form():
    mu, r = INSTANCES["untied"]
    with pytest.raises(ValueError, match=r"^labels='bt' has no integral form; use 'reward', 'loo' or 'exact_norm'$"):
        nca_label_coefficients(mu, r, 0.7, 2, "bt")


def test_resolve_hparam_takes_the_given_value_else_the_default_and_names_a_missing_one():
    from nca_lab.toy.population import resolve_hparam

    assert resolve_hparam(LOSSES["dpo"], {"beta": 0.3}, "beta") == 0.3
    assert resolve_hparam(LOSSES["dpo"], {}, "beta") == LOSSES["dpo"].defaults["beta"]
    with pytest.raises(ValueError, match=r"^loss 'dpo' has no hyperparameter 'alpha'$"):
        resolve_hparam(LOSSES["dpo"], {}, "alpha")


@pytest.mark.parametrize("name, hp, K, labels, branch", [
    ("infonca", {"alpha": 0.7, "beta": 0.8}, 3, "reward", "policy (shift-invariant)"),
    ("nca", {"alpha": 0.7, "beta": 0.8}, 3, "reward", "free r_θ (reference-based)"),
    ("cpl", {"alpha": 0.7, "lam": 1.0}, 2, "bt", "policy (shift-invariant, reference-free)"),
])
def test_optimum_passes_its_solver_options_and_names_the_problem(name, hp, K, labels, branch):
    """Each parameterisation branch hands xtol and max_iter to Newton's method and names the problem in its errors:
    one allowed iteration cannot converge (the error names loss, K, labels and param), and xtol = 1e3 accepts
    the first Newton step, which is not yet the minimiser (≥ 1e-8 away from the default solve)."""
    mu, r = INSTANCES["untied"]
    with pytest.raises(NoMinimiserError, match=rf"^{name} \(K={K}, labels='{labels}', param='free'\): no minimiser found "
                                               r"— after 1 Newton iterations"):
        optimum(name, mu, r, K, labels=labels, max_iter=1, **hp)
    tight = optimum(name, mu, r, K, labels=labels, **hp)
    loose = optimum(name, mu, r, K, labels=labels, xtol=1e3, **hp)
    assert np.abs(loose - tight).max() > 1e-8, branch


def test_callable_labels_are_checked_with_messages_that_say_what_is_wrong():
    """labels=<callable> maps the rewards R [rows, K] of every enumerated tuple to label weights of the same shape;
    a loss without label_weights, a non-tensor and a tensor of the wrong shape are each refused by name."""
    mu, r = INSTANCES["untied"]
    logpi = np.log(mu)
    rows = 6  # the C(3 + 2 − 1, 2) multisets of K = 2 draws from Y = 3 responses (rewards untied)
    with pytest.raises(ValueError, match=r"^labels=<callable> gives label_weights, which loss 'dpo' does not take$"):
        population_loss("dpo", logpi, mu, r, 2, lambda R: torch.softmax(R, dim=1))
    for bad, got in ((lambda R: [[0.5, 0.5]] * rows, "<class 'list'>"), (lambda R: torch.ones(rows, 3), r"torch.Size\(\[6, 3\]\)")):
        with pytest.raises(ValueError, match=rf"^the labels callable must return a tensor of shape \({rows}, 2\), got {got}$"):
            population_loss("nca", logpi, mu, r, 2, bad, alpha=1.0, beta=1.0)


def test_sft_minimiser_is_the_best_of_k_distribution_and_free_log_pi_has_none():
    """SFT's population loss −E log π(best of K draws) is a cross-entropy, minimised over π = softmax θ by the law
    of the best of K draws: P(best = y) = F(y)^K − F(y⁻)^K with F the CDF of μ in reward order (untied rewards).
    On the free log π it is linear and falls without bound; Newton's method says so (it once crashed on the zero
    Hessian of a linear loss)."""
    mu, r = INSTANCES["untied"]
    order = np.argsort(r)
    cdf = np.cumsum(mu[order])
    for K in (2, 3):
        best = np.empty(3)
        best[order] = cdf**K - np.concatenate([[0.0], cdf[:-1]]) ** K
        # Newton to xtol 1e-10 on a well-conditioned cross-entropy: 1e-9 on log π
        np.testing.assert_allclose(optimum("sft", mu, r, K, param="policy"), np.log(best), rtol=0, atol=1e-9)
    with pytest.raises(NoMinimiserError, match=r"^sft \(K=2, labels='reward', param='free'\): no minimiser found — after 1 Newton"):
        optimum("sft", mu, r, 2, max_iter=1)
    with pytest.raises(NoMinimiserError, match=r"^sft \(K=2, labels='reward', param='free'\): no minimiser"):
        optimum("sft", mu, r, 2)


def test_exact_norm_labels_take_alpha_from_the_registry_default_when_not_given():
    mu, r = INSTANCES["untied"]
    logpi = np.log(mu) + np.array([0.3, -0.8, 0.5])
    default_alpha = LOSSES["nca"].defaults["alpha"]
    got = float(population_loss("nca", logpi, mu, r, 3, "exact_norm", beta=0.5))
    assert got == float(population_loss("nca", logpi, mu, r, 3, "exact_norm", alpha=default_alpha, beta=0.5))
    assert got != float(population_loss("nca", logpi, mu, r, 3, "exact_norm", alpha=1.0, beta=0.5))


def test_exact_norm_labels_normalise_each_context_on_its_own_reward_scale():
    """labels='exact_norm' divides e^{R/α} by K·Z(x) with Z(x) = E_μ(·|x) e^{r/α} *per context*. Two contexts whose
    rewards sit 800 nats apart (r/α to 801, where e^{r/α} overflows float64) must each give what they give alone,
    and the weighted sum must be exact and finite. Each context alone is an X = 1 call, context 1 with its rewards
    shifted by −800 (exact-norm labels depend on reward differences only): no term of the check shares the scale
    of the other context. 1e-13 relative: sums of 10 multisets of 3 draws, a few ulps each."""
    mu = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    r = np.array([[0.0, 1.0, 0.5], [800.0, 801.0, 800.5]])
    logpi = np.log(mu) + np.array([[0.3, -0.8, 0.5], [-0.2, 0.4, 0.1]])
    rho = np.array([0.3, 0.7])
    got = float(population_loss("nca", logpi, mu, r, 3, "exact_norm", context_weights=rho, alpha=1.0, beta=0.5))
    alone = [float(population_loss("nca", logpi[x], mu[x], r[x] - 800.0 * x, 3, "exact_norm", alpha=1.0, beta=0.5))
             for x in range(2)]
    assert math.isfinite(got)
    assert got == pytest.approx(rho @ np.array(alone), rel=1e-13)


def test_population_loss_messages_name_the_argument_and_what_is_wrong():
    """Each refusal names the argument and says what it got (exact text), and the inputs next to a refusal are taken."""
    mu, r = INSTANCES["untied"]
    logpi = np.log(mu)

    def message(**kw):
        args = dict(name="nca", logpi=logpi, mu=mu, r=r, K=3, alpha=1.0, beta=1.0)
        args.update(kw)
        with pytest.raises(ValueError) as e:
            population_loss(**args)
        return str(e.value)

    assert message(logpi=["a", "b", "c"]) == "logpi must be a numeric array of shape [Y] or [X, Y], got list"
    assert message(logpi=np.zeros(4)) == "shape mismatch: logpi has shape (4,), mu has shape (3,)"
    assert message(labels="softmax") == (
        "labels must be one of 'reward', 'bt', 'loo', 'exact_norm' or a callable; got 'softmax'")
    for bad in ("label_weights", "mask", "lengths"):  # `labels` itself is a parameter, never in **hparams
        assert message(**{bad: torch.ones(1, 3)}) == (
            f"{bad} is set by population_loss itself (use its `labels` argument), not passed as a hyperparameter")
    assert message(flip_rate=0.1) == "flip_rate applies to labels='bt' only"
    assert message(K=0) == "K = 0: a tuple holds at least one response (K >= 1)"
    assert message(name="sft", K=0) == "K = 0: a tuple holds at least one response (K >= 1)"
    # the term that needs two responses is named, wherever it stands in a combination
    assert message(name="0.1*sft+dpo", K=1) == "K = 1: loss 'dpo' compares responses and needs K >= 2"
    # a combination made of SFT alone takes K = 1: the weighted cross-entropy of μ against π
    sft_only = float(population_loss("0.75*sft", logpi + np.array([0.1, -0.2, 0.3]), mu, r, 1))
    assert sft_only == pytest.approx(-0.75 * float(mu @ (logpi + np.array([0.1, -0.2, 0.3]))), rel=1e-14)
    # callable labels have no integral form: too many rows is a refusal, not a silent switch to the integral
    assert message(labels=lambda R: torch.softmax(R, dim=-1), max_rows=2).startswith(
        "cannot enumerate: 10 multisets of K = 3 draws from Y = 3 responses exceed max_rows = 2;")


def test_context_weights_are_checked_and_taken_as_given():
    """ρ must be a probability vector over the X contexts (any array shape holding X entries); a zero weight is
    allowed and drops its context."""
    mu = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    r = np.array([[0.0, 1.0, 2.5], [1.0, -1.0, 0.5]])
    logpi = np.log(mu) + np.array([[0.3, -0.8, 0.5], [-0.2, 0.4, 0.1]])
    each = [float(population_loss("nca", logpi[x], mu[x], r[x], 2, alpha=1.0, beta=1.0)) for x in range(2)]
    call = lambda rho: float(population_loss("nca", logpi, mu, r, 2, context_weights=rho, alpha=1.0, beta=1.0))  # noqa: E731
    assert call(np.array([1.0, 0.0])) == pytest.approx(each[0], rel=1e-14)
    assert call(np.array([[0.3], [0.7]])) == pytest.approx(0.3 * each[0] + 0.7 * each[1], rel=1e-14)
    assert call(np.array([[0.3, 0.7]])) == pytest.approx(0.3 * each[0] + 0.7 * each[1], rel=1e-14)
    for bad in ([1.5, -0.5], [0.75, 0.75], [0.5, 0.5 + 1e-8], [1.0]):
        with pytest.raises(ValueError, match=r"^context_weights must be a probability vector of length X = 2, got "):
            call(np.array(bad))
    with pytest.raises(ValueError, match=r"^context_weights must be a numeric array of shape \[Y\] or \[X, Y\], got list$"):
        call(["a", "b"])


def test_float32_policy_input_gives_a_float64_loss():
    """A float32 log π is widened to float64 before any arithmetic. SimPO scores β·log π, a product of the policy
    alone (no float64 reference to promote it), so in float32 it would round: the loss must be float64 and equal
    the float64 computation exactly."""
    mu, r = INSTANCES["untied"]
    logpi32 = torch.tensor([-1.1, -0.7, -1.6], dtype=torch.float32)
    for name in ("simpo", "sft"):
        got = population_loss(name, logpi32, mu, r, 2)
        assert got.dtype == torch.float64
        assert float(got) == float(population_loss(name, logpi32.double(), mu, r, 2)), name


def test_bt_orientation_of_probability_zero_does_not_turn_an_infinite_loss_into_nan():
    """r = (0, 800): σ(−800) is exactly 0 in float64, so "y0 ≻ y1" has weight 0. With log π = (−1e308, 1e308) the DPO
    margin of that impossible orientation overflows to −inf and its loss is +inf; 0·inf must not leak a NaN.
    Exact value: identical pairs (probability ½) have margin 0, loss log 2; the possible orientation of (y0, y1)
    has margin +inf, loss 0. So E = ½ log 2."""
    mu, r = np.array([0.5, 0.5]), np.array([0.0, 800.0])
    got = float(population_loss("dpo", np.array([-1e308, 1e308]), mu, r, 2, "bt", beta=1.0))
    assert got == pytest.approx(0.5 * math.log(2.0), rel=1e-15)


def test_newton_reaches_float64_precision_from_a_float32_start_and_from_next_to_the_minimiser():
    """Newton works in float64 whatever the start's dtype: from a float32 zero it lands on 1/3 (not a float32
    number) to 1e-15, the step tolerance 1e-10 squared by the quadratic convergence. Started 3e-8 from the
    minimiser, its first step is already below 1e-7 (the stall test compares with a previous step that does not
    exist yet) and it still converges."""
    quad = lambda x: 3.0 * ((x - 1.0 / 3.0) ** 2).sum() + ((x - 1.0 / 3.0) ** 4).sum()  # noqa: E731
    x = newton_minimise(quad, torch.zeros(2, dtype=torch.float32))
    assert x.dtype == torch.float64
    np.testing.assert_allclose(x.numpy(), [1.0 / 3.0] * 2, rtol=0, atol=1e-15)
    x = newton_minimise(quad, torch.full((2,), 1.0 / 3.0 + 3e-8, dtype=torch.float64))
    np.testing.assert_allclose(x.numpy(), [1.0 / 3.0] * 2, rtol=0, atol=1e-15)


def test_newton_reports_a_loss_without_minimiser_with_its_defaults_in_the_message():
    """f(x) = −c·x is linear (zero Hessian): Levenberg–Marquardt shifts the spectrum by 1e-6 (the relative
    margin on a unit scale, the Hessian being 0), so the step is c/1e-6, capped at max_step = 5 per iteration.
    c = 1: 5 per step, |x| = 50 after 10 iterations, 1000 after the default 200, past x_max = 1e4 at step 2001.
    c = 1e-9: 1e-3 per step. Messages begin with the default name 'loss'. Step sizes are exact to ~1e-10 relative
    (2 + 2e-6 − 2 in float64), far inside the three printed digits."""
    lin = lambda c: (lambda x: -c * x.sum())  # noqa: E731
    x0 = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(NoMinimiserError) as e:
        newton_minimise(lin(1.0), x0, max_iter=10)
    assert str(e.value) == ("loss: no minimiser found — after 10 Newton iterations the step is still 5 and |x|∞ = 50: the "
                            "loss keeps decreasing along a direction (e.g. DPO on deterministic preferences) or its "
                            "minimiser is not isolated")
    with pytest.raises(NoMinimiserError, match=r"^loss: no minimiser found — after 200 Newton iterations the step "
                                               r"is still 5 and \|x\|∞ = 1e\+03: "):
        newton_minimise(lin(1.0), x0)
    with pytest.raises(NoMinimiserError, match=r"^loss: no minimiser — Newton's iterates ran off to \|x\|∞ = "
                                               r"1e\+04 \(> 10000\) while the loss kept decreasing$"):
        newton_minimise(lin(1.0), x0, max_iter=3000)
    with pytest.raises(NoMinimiserError, match=r"after 10 Newton iterations the step is still 0\.001 and \|x\|∞ = 0\.01: "):
        newton_minimise(lin(1e-9), x0, max_iter=10)
    # f = −x² at x = 1e-12 (Hessian −2, not positive definite): the shift is |λ_min| + 1e-6·max|H| = 2 + 2e-6, so
    # H + shift = 2e-6 and the step is 2e-12 / 2e-6 = 1e-6
    with pytest.raises(NoMinimiserError, match=r"after 1 Newton iterations the step is still 1e-06 and \|x\|∞ = 1e-06: "):
        newton_minimise(lambda x: -(x**2).sum(), torch.full((1,), 1e-12, dtype=torch.float64), max_iter=1)


def test_newton_refuses_a_non_finite_gradient_or_hessian_at_a_finite_value():
    """|x|^1.5 at 0: finite value and gradient, but the second derivative 0.75·|x|^(−1/2) is not finite (NaN from
    autograd); √|x| at 0: the gradient itself is not. Newton must stop with its own error, not step on NaN."""
    x0 = torch.zeros(1, dtype=torch.float64)
    for fn in (lambda x: (x.abs() ** 1.5).sum() + ((x - 1) ** 2).sum(), lambda x: x.abs().sqrt().sum() + ((x - 1) ** 2).sum()):
        with pytest.raises(NoMinimiserError, match=r"^loss: non-finite value/gradient/Hessian at Newton iteration 0 "
                                                   r"\(\|x\|∞ = 0\)$"):
            newton_minimise(fn, x0)


def test_newton_warns_when_round_off_alone_can_move_the_minimiser_past_warn_tol():
    """f = 1e-10·Σ(x − 1)²: Hessian 2e-10, so a gradient error of 1e-15 moves the minimiser by 5e-6 > warn_tol = 1e-6
    (default): an IllConditionedWarning, and the minimiser is still found (a quadratic: Newton's first step is exact).
    The warning points at the user's line, through optimum() too (DPO with μ = 1e-3 on a response whose implicit
    reward saturates the sigmoid: eigenvalue 3.7e-13)."""
    with pytest.warns(IllConditionedWarning) as caught:
        x = newton_minimise(lambda x: 1e-10 * ((x - 1.0) ** 2).sum(), torch.zeros(2, dtype=torch.float64))
    np.testing.assert_allclose(x.numpy(), [1.0, 1.0], rtol=0, atol=1e-12)
    assert [str(w.message) for w in caught] == [
        "loss: the minimiser is determined only to ~5e-06 in float64 (smallest Hessian eigenvalue 2e-10: the loss is "
        "nearly flat along some direction)"]
    _assert_points_at_this_file(caught[0])
    with pytest.warns(IllConditionedWarning, match=r"^dpo \(K=2, labels='bt', param='free'\): the minimiser is determined "
                                                   r"only to ~0\.003 in float64 \(smallest Hessian eigenvalue 3\.7e-13") as caught:
        optimum("dpo", np.array([1e-3, 0.999]), np.array([10.0, -10.0]), 2, labels="bt", beta=0.3)
    _assert_points_at_this_file(caught[0])


def _assert_points_at_this_file(warning) -> None:
    """The warning names the caller's line, never a file of nca_lab/toy. Under mutation testing each call passes
    through mutmut's trampoline (a file outside the package), which then is the first frame outside it."""
    import os
    import sys

    toy_dir = os.path.dirname(os.path.abspath(sys.modules[optimum.__module__].__file__))
    assert os.path.dirname(os.path.abspath(warning.filename)) != toy_dir, warning.filename
    if "mutmut" not in sys.modules:
        assert warning.filename == __file__


def test_newton_needs_a_smooth_loss_and_converges_on_a_degenerate_one():
    """f = (x − 1)² + 10|x| has a kink at its minimiser 0: from x = 0 Newton's direction (towards 1) never decreases f,
    and the line search gives up after halving the step to 1e-12. f = (x − 1)⁴ + 1e-6(x − 1)² is nearly degenerate:
    Newton converges only linearly (ratio 2/3) for ~25 steps before the quadratic term takes over; it must not stop
    early (its minimiser 1 to 1e-12: the Hessian there is 2e-6, the step tolerance 1e-10)."""
    with pytest.raises(NoMinimiserError) as e:
        newton_minimise(lambda x: ((x - 1) ** 2).sum() + 10 * x.abs().sum(), torch.zeros(1, dtype=torch.float64))
    assert str(e.value) == "loss: line search failed at Newton iteration 0 (step 1)"
    x = newton_minimise(lambda x: ((x - 1) ** 4).sum() + 1e-6 * ((x - 1) ** 2).sum(), torch.zeros(1, dtype=torch.float64))
    assert abs(float(x[0]) - 1.0) < 1e-12


def test_newton_line_search_demands_sufficient_decrease_and_keeps_halving():
    """The Armijo rule f(x + tp) ≤ f(x) + 1e-4·t·gᵀp, t halved until it holds. f = √(1 + x²) from x = 1: Newton's step
    p = −x(1 + x²) = −2 lands on f(−1) = f(1), no decrease, so the step is halved once and lands on the minimiser 0
    exactly (accepting the equal value would cycle 1, −1, 1, ...; giving up at the first halving would refuse it).
    f = √(1e-4 + x²) from x = 1 with no step cap: p ≈ −1e4, and the rule is met only after 13 halvings (t = 2⁻¹³);
    a condition that grew with 1/t would never be met. Both converge to 0 (to 1e-10, the step tolerance)."""
    x = newton_minimise(lambda x: torch.sqrt(1 + x**2).sum(), torch.ones(1, dtype=torch.float64))
    assert float(x[0]) == 0.0
    seen = []

    def f(x):
        seen.append(float(x.detach()[0]))
        return torch.sqrt(1e-4 + x**2).sum()

    x = newton_minimise(f, torch.ones(1, dtype=torch.float64), max_step=1e9)
    assert abs(float(x[0])) < 1e-10
    # after the value at x = 1, the first iteration's trial points 1 + t·p for t = 1, ½, ..., 2⁻¹³ (p = −(1e-4 + 1)/1e-4),
    # then the accepted point again (the next iteration's value); p comes from an autograd Hessian of size 1e-4 and
    # a Cholesky solve, observed within 2e-12 relative of the closed form, hence rel=1e-9
    p = -(1e-4 + 1.0) / 1e-4
    assert seen[1:16] == pytest.approx([1.0 + p * 0.5**k for k in range(14)] + [1.0 + p * 0.5**13], rel=1e-9)


def test_check_instance_says_exactly_what_is_wrong_and_accepts_the_boundary():
    """Full text of each refusal of a toy instance, and what passes next to it: sums within 1e-9 of 1, tensors,
    a [Y] instance returned as [1, Y] float64."""
    cases = [
        ((["a"], [0.0]), "mu must be a numeric array of shape [Y] or [X, Y], got list"),
        (([0.5, 0.5], object()), "r must be a numeric array of shape [Y] or [X, Y], got object"),
        ((np.ones((1, 1, 1)), np.ones((1, 1, 1))), "mu must have shape [Y] or [X, Y] with Y >= 1, got shape (1, 1, 1)"),
        ((np.zeros(0), np.zeros(0)), "mu must have shape [Y] or [X, Y] with Y >= 1, got shape (0,)"),
        ((np.ones((2, 0)), np.ones((2, 0))), "mu must have shape [Y] or [X, Y] with Y >= 1, got shape (2, 0)"),
        (([0.5, 0.5], [0.0, np.nan]), "r contains NaN or inf"),
        (([0.5, 0.5], np.ones((1, 1, 2))), "r must have shape [Y] or [X, Y] with Y >= 1, got shape (1, 1, 2)"),
        (([0.5, 0.5], [0.0, 1.0, 2.0]), "shape mismatch: mu has shape (2,), r has shape (3,)"),
        (([1.0, 0.0], [0.0, 1.0]), "mu must have full support (every entry > 0); got min(mu) = 0"),
        (([[0.5, 0.5], [0.5, 0.6]], [[0.0, 1.0]] * 2), "mu must sum to 1 over Y (last axis); got sums [1.  1.1]"),
    ]
    for (mu, r), message in cases:
        with pytest.raises(ValueError) as e:
            check_instance(mu, r)
        assert str(e.value) == message
    mu, r = check_instance(torch.tensor([0.5, 0.5 + 5e-10]), torch.tensor([0, 1]))
    assert mu.shape == r.shape == (1, 2) and mu.dtype == r.dtype == np.float64
    np.testing.assert_array_equal(r, [[0.0, 1.0]])


def test_newton_stops_at_the_round_off_floor_and_scales_its_bound_with_the_loss():
    """Newton's last resort stops: (x − 1)⁴ has a degenerate minimum, so steps shrink only by 2/3 each; once a step is
    ≤ 1e-7 and no longer halving it stops (going on would only walk into round-off: the Hessian 12(x − 1)² vanishes)
    and warns, 1.4e-7 from the minimiser. The round-off bound is 1e-15·max(1, |loss|)·‖H⁻¹‖∞: a loss of 1e6 with
    Hessian 2e-4 gives 5e-6 (a warning); a Hessian of 2e-14 gives 0.05 > 1e-2, where the minimiser is refused."""
    x0 = torch.zeros(1, dtype=torch.float64)
    with pytest.warns(IllConditionedWarning, match=r"^loss: the minimiser is determined only to ~0\.002 in float64"):
        x = newton_minimise(lambda x: ((x - 1) ** 4).sum(), x0)
    assert abs(float(x[0]) - 1.0) < 1e-6
    with pytest.warns(IllConditionedWarning, match=r"^loss: the minimiser is determined only to ~5e-06 in float64 "
                                                   r"\(smallest Hessian eigenvalue 0\.0002: "):
        assert float(newton_minimise(lambda x: 1e6 + 1e-4 * ((x - 1) ** 2).sum(), x0)[0]) == 1.0
    with pytest.raises(NoMinimiserError) as e:
        newton_minimise(lambda x: 1e-14 * ((x - 1) ** 2).sum(), x0)
    assert str(e.value) == ("loss: Newton's step vanished at |x|∞ = 1, but the Hessian is so small there that float64 "
                            "does not determine a minimiser (round-off bound 0.05)")

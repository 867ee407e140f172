"""Population-level checks whose expected values come from independent computations.

- The exact population loss (``nca_lab.toy.population_loss``) against a brute-force sum over ordered
  K-tuples of the plain-Python oracle ``tests/reference_losses.py`` — every registry loss, every ``pairs``
  mode, reward ties, registry defaults (no hyperparameter given) and explicit ones.
- The closed forms of ``nca_lab.theory`` for NCA (exact normalisation, finite K, leave-one-out labels)
  against the minimiser read off a brute-force enumeration of the expected label mass: the population NCA
  loss is Σ_y [−A_y log σ(f_y) − μ_y log σ(−f_y)] with A_y = E[Σ_i w_i 1{y_i = y}], so f*_y = log(A_y/μ_y)
  exactly (each term is minimised separately) — no closed form and no solver of the package involved.
- ``theory.cpl_population_loss``'s value against a double loop over Bradley–Terry pairs.
- The Newton minimiser ``optimum`` against the closed forms at 1e-11 on well-conditioned instances.
- The training dynamics' recorded KL(π‖μ) and E_π r against scipy's relative entropy of the recorded π.

Settings: hypothesis, derandomised (fixed seed), bounded examples, float64 throughout.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_losses import DOCUMENTED_DEFAULTS, PAIRWISE, log_sigmoid, reference_loss
from scipy.special import rel_entr
from strategies import prop_settings, torch_one_thread  # noqa: F401 (autouse fixture)

from nca_lab import theory
from nca_lab.losses import PAIR_MODES
from nca_lab.toy import optimum, population_loss, random_instance


def brute_force(name, logpi, mu, r, K, hp):
    """Σ over ordered K-tuples of ∏μ · oracle loss (hp complete)."""
    total = 0.0
    for tup in itertools.product(range(len(mu)), repeat=K):
        idx = list(tup)
        w = float(np.prod(mu[idx]))
        total += w * reference_loss(name, list(logpi[idx]), list(np.log(mu[idx])), list(r[idx]), **hp)
    return total


@st.composite
def tied_instances(draw, max_y: int = 3):
    """(μ, r, log π): r on a coarse grid so that ties are common; log π a perturbation of log μ."""
    Y = draw(st.integers(2, max_y))
    raw = np.array([draw(st.floats(0.05, 1.0)) for _ in range(Y)])
    mu = raw / raw.sum()
    r = np.array([0.5 * draw(st.integers(-4, 4)) for _ in range(Y)])
    logpi = np.log(mu) + np.array([draw(st.floats(-2.0, 2.0)) for _ in range(Y)])
    return mu, r, logpi


HP_EXPLICIT = {
    "infonca": {"beta": 0.7, "alpha": 0.6}, "nca": {"beta": 0.7, "alpha": 0.6}, "nca_pair": {"beta": 0.7},
    "dpo": {"beta": 0.7}, "cdpo": {"beta": 0.7, "eps": 0.2}, "rdpo": {"beta": 0.7, "eps": 0.2},
    "ipo": {"beta": 0.7}, "hinge": {"beta": 0.7},
    "clha": {"margin": 1.0, "min_gap": 0.5, "sft_gate": 0.0, "sft_weight": 0.3},
    "pro": {"sft_weight": 0.3}, "rrhf": {"sft_weight": 0.3}, "cpl": {"alpha": 0.4, "lam": 0.8},
    "simpo": {"beta": 1.5, "gamma": 0.5}, "sft": {},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
@prop_settings(12)
@given(tied_instances(), st.sampled_from([2, 3]), st.sampled_from(PAIR_MODES), st.booleans())
def test_population_loss_is_the_brute_force_oracle_sum(name, inst, K, pairs, defaults):
    """Every loss, ties, every pairs mode, defaults or explicit hyperparameters. Tolerance: ≤ 27 tuples,
    each loss exact to a few ulps on both sides: rel 1e-12."""
    mu, r, logpi = inst
    hp = {} if defaults else dict(HP_EXPLICIT[name])
    if name in PAIRWISE:
        hp["pairs"] = pairs
    expect = brute_force(name, logpi, mu, r, K, {**DOCUMENTED_DEFAULTS[name], **hp})
    got = float(population_loss(name, logpi, mu, r, K, **hp))
    assert got == pytest.approx(expect, rel=1e-12, abs=1e-12), (name, hp)


# ------------------------------------------------------------------ NCA optima by enumerating label mass


def enumerated_nca_optimum(mu, r, K, labels, alpha):
    """f*_y = log(A_y / μ_y), A_y = Σ over ordered K-tuples of ∏μ · Σ_{i: y_i = y} w_i (math only)."""
    Y = len(mu)
    A = [0.0] * Y
    for tup in itertools.product(range(Y), repeat=K):
        p = math.prod(mu[y] for y in tup)
        z = [r[y] / alpha for y in tup]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        for i, y in enumerate(tup):
            if labels == "softmax":
                w = e[i] / sum(e)
            elif labels == "loo":
                w = e[i] / (K * (sum(e) - e[i]) / (K - 1))
            else:  # exact_norm: e^{r/α}/(K Z), Z = Σ μ e^{r/α} by direct summation
                Z = sum(mu[j] * math.exp(r[j] / alpha) for j in range(Y))
                w = math.exp(r[y] / alpha) / (K * Z)
            A[y] += p * w
    return np.log(np.array(A) / mu)


@prop_settings(20)
@given(st.integers(2, 4), st.sampled_from([2, 3, 4]), st.floats(0.3, 3.0), st.integers(0, 2**31))
def test_nca_closed_forms_equal_enumerated_label_mass(Y, K, alpha, seed):
    """Propositions 2, 3 and 19 from the enumerated expected label mass. Tolerance: Y^K ≤ 256 products
    and sums of O(1) terms, then one log: 1e-12."""
    mu, r = random_instance(seed, Y)
    np.testing.assert_allclose(
        theory.nca_exact_normalisation_optimum(mu, r, alpha), enumerated_nca_optimum(mu, r, K, "exact_norm", alpha), atol=1e-12, rtol=0
    )
    np.testing.assert_allclose(theory.nca_optimum(mu, r, alpha, K), enumerated_nca_optimum(mu, r, K, "softmax", alpha), atol=1e-12, rtol=0)
    np.testing.assert_allclose(theory.nca_loo_optimum(mu, r, alpha, K), enumerated_nca_optimum(mu, r, K, "loo", alpha), atol=1e-12, rtol=0)
    # the K → ∞ target r/α − log Z with Z by direct summation
    direct = r / alpha - math.log(sum(m * math.exp(v / alpha) for m, v in zip(mu, r)))
    np.testing.assert_allclose(theory.nca_optimum(mu, r, alpha), direct, atol=1e-12, rtol=0)


# ------------------------------------------------------------------ CPL's population loss, by a double loop


@prop_settings(25)
@given(st.integers(2, 5), st.floats(0.3, 3.0), st.floats(0.1, 1.0), st.integers(0, 2**31))
def test_cpl_population_loss_value_is_the_pair_expectation(Y, alpha, lam, seed):
    """E over (y1, y2) ~ μ×μ and the BT label: y1 wins w.p. σ(r1 − r2), loss −log σ(α log π_w − λα log π_l).
    Tolerance: Y² ≤ 25 terms of size O(10): 1e-12 relative."""
    mu, r = random_instance(seed, Y)
    logpi = np.log(mu) + np.random.default_rng(seed).normal(size=Y)
    expect = expect_distinct = 0.0
    for a, b in itertools.product(range(Y), repeat=2):
        p = 1.0 / (1.0 + math.exp(-(r[a] - r[b])))
        loss = lambda w, l: -log_sigmoid(alpha * logpi[w] - lam * alpha * logpi[l])  # noqa: E731
        term = mu[a] * mu[b] * (p * loss(a, b) + (1 - p) * loss(b, a))
        expect += term
        expect_distinct += term if a != b else 0.0
    assert float(theory.cpl_population_loss(logpi, mu, r, alpha, lam)) == pytest.approx(expect, rel=1e-12)
    # include_identical=False drops the draws y1 = y2 (and nothing else)
    got = float(theory.cpl_population_loss(logpi, mu, r, alpha, lam, include_identical=False))
    assert got == pytest.approx(expect_distinct, rel=1e-12)
    # the same expectation through the registry loss and the toy world's BT labels
    assert float(population_loss("cpl", logpi, mu, r, 2, "bt", alpha=alpha, lam=lam)) == pytest.approx(expect, rel=1e-12)


# ------------------------------------------------------------------ solver accuracy on well-conditioned instances

# Newton stops once its step is ≤ xtol = 1e-10 and returns x + step: the error is then O(step²), and on
# these instances (min μ ≥ 0.05, reward gaps ≥ 0.3, α, β ∈ [0.5, 2]) measured errors are ≤ 3e-15 for every
# loss below. 1e-11 leaves four orders of margin over that and still fails a solver that stops at a step
# of 1e-4 (measured 1e-10 to 4e-9 on the same instances).
SOLVER_TOL = 1e-11


def _centered(v):
    return v - v.mean()


@prop_settings(10)
@given(st.integers(2, 4), st.floats(0.5, 2.0), st.floats(0.5, 2.0), st.integers(0, 2**31))
def test_solver_reaches_the_closed_forms_to_1e_11(Y, alpha, beta, seed):
    mu, r = random_instance(seed, Y, min_mu=0.05, min_gap=0.3)
    cases = [
        (_centered(optimum("infonca", mu, r, 3, alpha=alpha, beta=beta)), _centered(theory.infonca_optimum(mu, r, alpha))),
        (optimum("nca", mu, r, 3, labels="exact_norm", alpha=alpha, beta=beta), enumerated_nca_optimum(mu, r, 3, "exact_norm", alpha)),
        (optimum("nca", mu, r, 3, alpha=alpha, beta=beta), enumerated_nca_optimum(mu, r, 3, "softmax", alpha)),
        (optimum("nca_pair", mu, r, 2, labels="bt", beta=beta), theory.nca_pair_optimum(mu, r)),
        (optimum("dpo", mu, r, 2, labels="bt", beta=beta), theory.dpo_bt_optimum(mu, r, beta)),
        (optimum("cpl", mu, r, 2, param="policy", labels="bt", alpha=alpha, lam=1.0), theory.cpl_bandit_optimum(r, alpha)),
        (optimum("cpl", mu, r, 2, param="policy", labels="bt", alpha=alpha, lam=0.7), theory.cpl_policy_optimum(mu, r, alpha, 0.7)),
    ]
    for i, (got, expect) in enumerate(cases):
        np.testing.assert_allclose(got, expect, atol=SOLVER_TOL, rtol=0, err_msg=str(i))


# ------------------------------------------------------------------ the dynamics' KL and reward


def test_recorded_kl_and_reward_are_scipys():
    """KL(π‖μ) = Σ π log(π/μ) (scipy ``rel_entr``, not KL(μ‖π)) and E_π r from the recorded log π."""
    from nca_lab.toy.dynamics import make_problems, train

    problem = make_problems([3], contexts=2, responses=5, tuples=2, K=3, features_dim=3)
    traj = train(problem, "dpo", hparams={"beta": 0.5}, steps=20, record_every=5, lr=0.3)
    pi = np.exp(traj.logpi)  # [T, G, X, Y]
    kl = rel_entr(pi, problem.mu[None]).sum(-1).mean(-1)
    np.testing.assert_allclose(traj.kl, kl, rtol=1e-12, atol=1e-15)
    assert kl[-1].min() > 1e-3  # the policy moved: the check is not at KL = 0
    np.testing.assert_allclose(traj.reward, (pi * problem.r[None]).sum(-1).mean(-1), rtol=1e-12, atol=1e-15)

"""The two-level paired bootstrap (nca_lab.llm.study.paired): exact answers where the statistic has no
uncertainty, coverage on synthetic data with a known mean, and seed variance widening the interval."""

from __future__ import annotations

import numpy as np
import pytest

from nca_lab.llm.study.paired import paired_bootstrap


def test_identical_policies_differ_by_exactly_zero():
    a = np.random.default_rng(0).random((3, 50))
    out = paired_bootstrap(a, a.copy())
    assert out["mean"] == out["lo"] == out["hi"] == 0.0 and out["p_two_sided"] == 1.0


def test_a_constant_shift_is_recovered_exactly():
    b = np.random.default_rng(1).random((2, 40))
    out = paired_bootstrap(b + 0.25, b)
    assert out["mean"] == pytest.approx(0.25, abs=1e-12)
    assert out["lo"] == pytest.approx(0.25, abs=1e-12) and out["hi"] == pytest.approx(0.25, abs=1e-12)


def test_a_fixed_baseline_pairs_with_every_seed():
    rng = np.random.default_rng(2)
    base = rng.random((1, 30))
    a = np.vstack([base[0] + 0.1, base[0] + 0.3])
    out = paired_bootstrap(a, base)
    assert out["mean"] == pytest.approx(0.2) and out["n_seeds"] == 2
    assert 0.1 - 1e-12 <= out["lo"] <= out["hi"] <= 0.3 + 1e-12  # seed draws: means 0.1, 0.2 or 0.3


def test_coverage_on_synthetic_data():
    """Prompt effects N(0, 1) shared by both arms, paired noise N(δ, 0.5²) per prompt, seed effects N(0, 0.1²):
    the 90 % interval must cover δ in roughly 90 % of 300 independent data sets (binomial sd 1.7 %: the band
    0.82-0.97 allows ~4.5 sd below, where the seed level's coarseness with 4 seeds makes under-coverage
    expected, and ~4 sd above)."""
    rng = np.random.default_rng(3)
    delta, covered, trials = 0.3, 0, 300
    for t in range(trials):
        prompt = rng.normal(0, 1, 60)
        seed_effect = rng.normal(0, 0.1, (4, 1))
        b = prompt + rng.normal(0, 0.5, (4, 60))
        a = prompt + delta + seed_effect + rng.normal(0, 0.5, (4, 60))
        out = paired_bootstrap(a, b, n_boot=400, seed=t, level=0.90)
        covered += out["lo"] <= delta <= out["hi"]
    assert 0.82 <= covered / trials <= 0.97


def test_seed_variance_widens_the_interval():
    rng = np.random.default_rng(4)
    b = rng.random((4, 80))
    noise = rng.normal(0, 0.05, (4, 80))
    calm = paired_bootstrap(b + 0.1 + noise, b)
    shaky = paired_bootstrap(b + 0.1 + noise + np.array([[-0.3], [0.3], [-0.3], [0.3]]), b)
    assert shaky["hi"] - shaky["lo"] > 3 * (calm["hi"] - calm["lo"])


def test_bad_shapes_and_values_are_refused():
    with pytest.raises(ValueError, match="the same seeds and prompts"):
        paired_bootstrap(np.zeros((2, 5)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\[seeds, prompts\]"):
        paired_bootstrap(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(np.array([[np.nan, 1.0]]), np.zeros((1, 2)))

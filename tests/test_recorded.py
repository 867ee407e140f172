"""The record comparison used by the reproduction tests (``tests/recorded.py``) flags what it must."""

import math

import pytest

from recorded import assert_reproduces, differences

RECORD = {"rate": 0.0125, "kl": [1.65589, 0.0], "name": "nca", "n": 160, "nested": {"ok": True}}

# the shapes of prop16 and prop17 records, with the keys that get their own rules
PROP16_CELL = {"rate_end_below_zero": 0.0125, "rate_ever_below_zero": 0.20625, "seed_rate_sd": 0.0272431,
               "mean_kl": 1.65558, "n_cases": 160}
PROP16_QUICK_CELL = {**PROP16_CELL, "rate_end_below_zero": 0.03125, "rate_ever_below_zero": 0.65625, "n_cases": 32}
PROP17_CELL = {"win_rate": 0.9, "mean_advantage": 0.204363, "advantage_per_seed": [0.125367, -0.00155964] + [0.2] * 18,
               "max_common_kl_per_seed": [1.2] * 20, "mean_envelope_K2": [0.0970081, 0.433017],
               "mean_envelope_K4": [0.14372, 0.5]}


def test_within_tolerance_passes():
    assert differences({**RECORD, "kl": [1.65558, 5e-7]}, RECORD) == []  # 1.9e-4 relative
    assert differences({**RECORD, "rate": math.nan}, {**RECORD, "rate": math.nan}) == []


def test_threshold_rates_are_counts_within_their_tolerance():
    # rate_ever_below_zero: 5 % of n, rounded down: 8 of 160 (measured worst: 5), 1 of 32 (measured: 1)
    assert differences({**PROP16_CELL, "rate_ever_below_zero": 0.25625}, PROP16_CELL) == []       # +8 events
    assert differences({**PROP16_CELL, "rate_ever_below_zero": 0.15625}, PROP16_CELL) == []       # -8 events
    assert differences({**PROP16_QUICK_CELL, "rate_ever_below_zero": 0.6875}, PROP16_QUICK_CELL) == []  # +1 of 32


def test_chaotic_summaries_within_their_tolerance():
    # prop17's envelope quantities: abs 1.5e-3 reward units (measured worst 7.7e-4 and 3.3e-4)
    new = {**PROP17_CELL, "mean_advantage": 0.204363 + 1.4e-3,
           "advantage_per_seed": [0.125367 + 1.4e-3, -0.00155964 - 1.4e-3] + [0.2] * 18,
           "mean_envelope_K2": [0.0970081 - 1.4e-3, 0.432248]}
    assert differences(new, PROP17_CELL) == []


@pytest.mark.parametrize("new, where", [
    ({**RECORD, "kl": [1.65589 * (1 + 2e-3), 0.0]}, "/kl[0]"),   # beyond rel 1e-3
    ({**RECORD, "kl": [1.65589, 1e-5]}, "/kl[1]"),               # beyond abs 1e-6 near 0
    ({**RECORD, "rate": 0.01875}, "/rate"),                      # a float, not a known event rate
    ({**RECORD, "name": "dpo"}, "/name"),
    ({**RECORD, "n": 161}, "/n"),
    ({**RECORD, "kl": [1.65589]}, "/kl"),
    ({k: v for k, v in RECORD.items() if k != "nested"}, ""),
    ({**RECORD, "nested": {"ok": 1}}, "/nested/ok"),             # a bool is not an int
])
def test_differences_are_found(new, where):
    diffs = differences(new, RECORD)
    assert len(diffs) == 1 and diffs[0].startswith(f"{where}:"), diffs
    with pytest.raises(AssertionError, match="differ from the record"):
        assert_reproduces(new, RECORD)


@pytest.mark.parametrize("new, recorded, where, message", [
    # rate_ever_below_zero beyond 5 % of n
    ({**PROP16_CELL, "rate_ever_below_zero": 0.2625}, PROP16_CELL, "/rate_ever_below_zero", "42 vs 33 events of 160, 8 allowed"),
    ({**PROP16_CELL, "rate_ever_below_zero": 0.15}, PROP16_CELL, "/rate_ever_below_zero", "24 vs 33 events of 160, 8 allowed"),
    ({**PROP16_QUICK_CELL, "rate_ever_below_zero": 0.71875}, PROP16_QUICK_CELL, "/rate_ever_below_zero",
     "23 vs 21 events of 32, 1 allowed"),
    # end events and prop17's wins: exact counts (none flipped across the CPUs measured)
    ({**PROP16_CELL, "rate_end_below_zero": 0.01875}, PROP16_CELL, "/rate_end_below_zero", "3 vs 2 events of 160, 0 allowed"),
    ({**PROP17_CELL, "win_rate": 0.95}, PROP17_CELL, "/win_rate", "19 vs 18 events of 20, 0 allowed"),
    # a rate that is no count out of n
    ({**PROP16_CELL, "rate_ever_below_zero": 0.2063}, PROP16_CELL, "/rate_ever_below_zero", "not a count of events out of 160"),
    # the float rule still holds for the other prop16 keys, seed_rate_sd included
    ({**PROP16_CELL, "seed_rate_sd": 0.0272431 * (1 + 2e-3)}, PROP16_CELL, "/seed_rate_sd", "!="),
    ({**PROP16_CELL, "mean_kl": 1.65558 * (1 + 2e-3)}, PROP16_CELL, "/mean_kl", "!="),
    # chaotic summaries beyond abs 1.5e-3
    ({**PROP17_CELL, "advantage_per_seed": [0.125367, -0.00155964 + 1.6e-3] + [0.2] * 18}, PROP17_CELL,
     "/advantage_per_seed[1]", "!="),
    ({**PROP17_CELL, "mean_envelope_K2": [0.0970081, 0.433017 + 1.6e-3]}, PROP17_CELL, "/mean_envelope_K2[1]", "!="),
    ({**PROP17_CELL, "mean_advantage": 0.204363 - 1.6e-3}, PROP17_CELL, "/mean_advantage", "!="),
    # the other prop17 floats keep rel 1e-3
    ({**PROP17_CELL, "max_common_kl_per_seed": [1.2 * (1 + 2e-3)] + [1.2] * 19}, PROP17_CELL,
     "/max_common_kl_per_seed[0]", "!="),
])
def test_rule_violations_are_found(new, recorded, where, message):
    diffs = differences(new, recorded)
    assert len(diffs) == 1 and diffs[0].startswith(f"{where}:") and message in diffs[0], diffs
    with pytest.raises(AssertionError, match="differ from the record"):
        assert_reproduces(new, recorded)

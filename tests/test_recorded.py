"""The record comparison used by the reproduction tests (``tests/recorded.py``) flags what it must."""

import math

import pytest

from recorded import assert_reproduces, differences

RECORD = {"rate": 0.0125, "kl": [1.65589, 0.0], "name": "nca", "n": 160, "nested": {"ok": True}}


def test_within_tolerance_passes():
    assert differences({**RECORD, "kl": [1.65558, 5e-7]}, RECORD) == []  # 1.9e-4 relative: the worst seen
    assert differences({**RECORD, "rate": math.nan}, {**RECORD, "rate": math.nan}) == []


@pytest.mark.parametrize("new, where", [
    ({**RECORD, "kl": [1.65589 * (1 + 2e-3), 0.0]}, "/kl[0]"),   # beyond rel 1e-3
    ({**RECORD, "kl": [1.65589, 1e-5]}, "/kl[1]"),               # beyond abs 1e-6 near 0
    ({**RECORD, "rate": 0.01875}, "/rate"),                      # one case of 160 flipped
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

"""Compare a rerun with a committed record (``toy/results/*.json``, ``figures/*.json``).

On one machine a rerun is exact (tested separately: two runs in one process give equal records).
Across machines it is not: the committed records were produced on an AMD EPYC and CI may run on an
Intel Xeon, whose float64 SIMD kernels (exp/log, matmul blocking, FMA use) differ by a few ulps, and
hundreds of Adam steps amplify that. Measured, AMD record vs Intel rerun: worst relative difference
1.9e-4 (prop16, MLP policy, mean KL after 800 steps); tabular studies differ in the 6th digit. So
floats are compared to ``rel=1e-3`` (five times the worst seen), with ``abs=1e-6`` for values near 0
(records round to 6 significant digits); everything else — structure, keys, strings, integers,
booleans, list lengths — must be identical.
"""

from __future__ import annotations

import math

REL, ABS = 1e-3, 1e-6


def differences(new, recorded, path: str = "") -> list[str]:
    """Every place where ``new`` and ``recorded`` disagree beyond the tolerance above."""
    if isinstance(recorded, dict):
        if not isinstance(new, dict) or set(new) != set(recorded):
            return [f"{path}: keys {sorted(new) if isinstance(new, dict) else type(new).__name__} != {sorted(recorded)}"]
        return [d for k in recorded for d in differences(new[k], recorded[k], f"{path}/{k}")]
    if isinstance(recorded, list):
        if not isinstance(new, list) or len(new) != len(recorded):
            return [f"{path}: length {len(new) if isinstance(new, list) else type(new).__name__} != {len(recorded)}"]
        return [d for i, (a, b) in enumerate(zip(new, recorded)) for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(recorded, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        if math.isnan(recorded) and math.isnan(new):
            return []
        if new == recorded or math.isclose(new, recorded, rel_tol=REL, abs_tol=ABS):
            return []
        return [f"{path}: {new!r} != {recorded!r}"]
    return [] if (type(new) is type(recorded) and new == recorded) else [f"{path}: {new!r} != {recorded!r}"]


def assert_reproduces(new, recorded) -> None:
    diffs = differences(new, recorded)
    assert not diffs, f"{len(diffs)} values differ from the record, e.g.:\n" + "\n".join(diffs[:10])

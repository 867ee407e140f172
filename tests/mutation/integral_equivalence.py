"""Evidence that mutants which only move the truncation points or the absolute-error floor of the finite-K
integrals (``theory._nca_ratio_integral``, ``theory._inverse_mean_integral``) are equivalent: they change the
result by less than the integrals' documented accuracy (~1e-12 relative), so no test can tell them apart.

The integrals drop the pieces below t0 and above t1, each bounded by 1e-16 times a lower bound of the whole
integral, and ``_integrate_positive`` uses that lower bound only for quad's absolute floor (1e-17 of it). A mutant
that shifts t0 or t1 by a constant factor, adds 1 to the exponent's 40, or scales the floor keeps every dropped
piece far below 1e-13 relative, so the value moves only in its last bits.

Run from ``mutants/`` after a mutmut run (``cd mutants && PYTHONPATH=. python ../tests/mutation/integral_equivalence.py
NAME ...``, full mutant names): it switches ``MUTANT_UNDER_TEST`` in-process and prints, per mutant, the largest
relative difference from the original over 40 random instances (Y 2-6, α 0.05-3, K 2 to 10⁵) of
``nca_optimum(method="integral")`` and ``nca_loo_constant(method="integral")``, and, for the K where enumeration is
feasible, the largest difference of the original and of the mutant from the enumeration. Name a killed mutant of the
same function as a control: it must differ or raise, which shows that the switch selects the mutant.
"""

import os
import sys

import numpy as np

import nca_lab.theory as T
from mutant_switch import report_mutants

assert "mutants" in T.__file__, f"run from mutants/ with PYTHONPATH=. (imported {T.__file__})"
rng = np.random.default_rng(0)
cases = []
for _ in range(40):
    Y = int(rng.integers(2, 7))
    cases.append((rng.dirichlet(np.ones(Y)), rng.uniform(-5, 5, Y), float(rng.choice([0.05, 0.3, 1.0, 3.0])),
                  int(rng.choice([2, 3, 5, 20, 100, 1000, 100_000]))))


def run():
    out = []
    for mu, r, a, K in cases:
        out.append(np.concatenate([T.nca_optimum(mu, r, a, K, method="integral"),
                                   [T.nca_loo_constant(mu, r, a, K, method="integral")]]))
    return out


def enumerated():
    out = {}
    for i, (mu, r, a, K) in enumerate(cases):
        if T.n_multisets(K - 1, len(mu)) <= 20_000:
            out[i] = np.concatenate([T.nca_optimum(mu, r, a, K, method="enumerate"),
                                     [T.nca_loo_constant(mu, r, a, K, method="enumerate")]])
    return out


def rel(x, y):
    return float(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(y))))


os.environ["MUTANT_UNDER_TEST"] = ""
base, exact = run(), enumerated()
print(f"original: max difference from the enumeration {max(rel(base[i], e) for i, e in exact.items()):.2g} "
      f"({len(exact)} of {len(cases)} instances enumerable)")
report_mutants(sys.argv[1:], run, base, exact, rel, "enumeration")

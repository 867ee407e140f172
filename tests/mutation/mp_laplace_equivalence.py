"""Evidence that mutants of ``toy.population._mp_laplace`` that only move its tanh–sinh breakpoints are equivalent.

``_mp_laplace`` integrates ∫₀^∞ e^{−t·shift} φ(t)^{K−1} dt in 25-digit mpmath with a breakpoint every decade from
10⁻³·lo to past 10³·hi (lo, hi: the fastest and slowest decay scales). A mutant that moves lo or hi by a bounded
factor, starts the decades elsewhere or adds one more point still resolves every scale, so the float64 labels it
feeds (``nca_label_coefficients``) do not move beyond round-off.

Run from ``mutants/`` after a mutmut run (``cd mutants && PYTHONPATH=. python ../tests/mutation/mp_laplace_equivalence.py
NAME ...``, full mutant names): it switches ``MUTANT_UNDER_TEST`` in-process and prints, per mutant, the largest
relative difference from the original over 24 instances (Y 2–5, r/α spread up to 120 nats, K 2 to 1000, labels
"reward" and "loo"), and the original's and the mutant's largest difference from an independent algorithm: the
float64 scipy integrals of ``nca_lab.theory`` (c_y = e^{f*_K(y)} for "reward"; a_y (K−1) E[1/M] for "loo"). Name a
killed mutant of the same function as a control.
"""

import math
import os
import sys

import numpy as np

import nca_lab.theory as T
import nca_lab.toy.population as P
from mutant_switch import report_mutants

assert "mutants" in P.__file__, f"run from mutants/ with PYTHONPATH=. (imported {P.__file__})"
rng = np.random.default_rng(0)
cases = []
for i in range(24):
    Y = int(rng.integers(2, 6))
    spread = float(rng.choice([1.0, 10.0, 40.0, 120.0]))
    r = np.sort(rng.uniform(0, 1, Y))
    r = (r - r.min()) / (r.max() - r.min()) * spread
    cases.append((rng.dirichlet(np.ones(Y)), r, 1.0, int(rng.choice([2, 3, 10, 100, 1000])), ("reward", "loo")[i % 2]))


def run():
    return [P.nca_label_coefficients(mu, r, a, K, lab) for mu, r, a, K, lab in cases]


def independent():
    out = []
    for mu, r, a, K, lab in cases:
        if lab == "reward":
            out.append(np.exp(T.nca_optimum(mu, r, a, K, method="integral")))
        else:  # c_y = a_y (K−1) E[1/S_{K−1}] = a_y E[1/M_{K−1}] = a_y e^{C_K}, a = e^{r/α − max r/α}
            z = r / a - (r / a).max()
            out.append(np.exp(z + T.nca_loo_constant(mu, r - r.max(), a, K, method="integral")))
    return out


def rel(x, y):
    return float(np.max(np.abs(x - y) / np.abs(y)))


os.environ["MUTANT_UNDER_TEST"] = ""
base, ref = run(), independent()
print(f"original: max relative difference from theory's scipy integrals {max(rel(b, e) for b, e in zip(base, ref)):.2g}")
report_mutants(sys.argv[1:], run, base, dict(enumerate(ref)), rel, "scipy integrals",
               before_each=P._cached_coefficients.cache_clear)

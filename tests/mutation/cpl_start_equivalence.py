"""Evidence that mutants 57, 58 and 60 of ``theory.cpl_policy_optimum`` are equivalent: each changes only the
optimiser's starting point z0. CPL's population loss is convex in θ (−log σ of a linear function of θ minus
(1 − λ)·logsumexp(θ): convex and decreasing composed with concave), so every start reaches the same minimiser.

Run from ``mutants/`` after a mutmut run (``cd mutants && PYTHONPATH=. python ../tests/mutation/cpl_start_equivalence.py``):
it switches ``MUTANT_UNDER_TEST`` in-process and prints, per mutant, the largest difference from the original over
40 random instances. Mutants 56, 61 and 62 are controls (killed mutants of the same function): they must raise or
differ, which shows that the switch selects the mutant.
"""

import os

import numpy as np

import nca_lab.theory as T

assert "mutants" in T.__file__, f"run from mutants/ with PYTHONPATH=. (imported {T.__file__})"
rng = np.random.default_rng(0)
cases = []
for _ in range(40):
    Y = int(rng.integers(2, 6))
    cases.append((rng.dirichlet(np.ones(Y)), rng.uniform(-5, 5, Y), float(rng.choice([0.05, 0.3, 1.0, 3.0, 10.0])),
                  float(rng.choice([0.1, 0.5, 0.9, 1.0])), bool(rng.integers(0, 2))))


def run():
    return [T.cpl_policy_optimum(mu, r, a, lam, include_identical=inc) for mu, r, a, lam, inc in cases]


os.environ["MUTANT_UNDER_TEST"] = ""
base = run()
for n in (57, 58, 60, 56, 61, 62):
    os.environ["MUTANT_UNDER_TEST"] = f"nca_lab.theory.x_cpl_policy_optimum__mutmut_{n}"
    try:
        print(n, "max |Δ log π*| =", max(float(np.abs(a - b).max()) for a, b in zip(run(), base)))
    except Exception as e:  # a control mutant breaks the solver
        print(n, "raised", type(e).__name__)

"""Evidence that mutants of ``theory.cpl_policy_optimum`` that change only how its minimiser is reached are
equivalent. CPL's population loss is convex in θ (−log σ of a linear function of θ minus (1 − λ)·logsumexp(θ):
convex and decreasing composed with concave), so every start reaches the same minimiser (mutants 57, 58, 60 move
the start z0); and the Newton steps that follow scipy's trust-exact polish its result until the step is below
1e-12, so trust-exact's own options (67, 73: default gtol; 84: the method's name in capitals, which scipy
lower-cases; 90: maxiter 1001) and one more allowed Newton step (93) leave the result unchanged; so do the
changes to the Newton stopping rule (106, 107, 109-114, and 118: `<=` for the final `< 1e-9` check): where a result moves by more than 1e-13, both it and the
original are compared with the optimum computed to 40 digits by mpmath, and both stay within the documented 1e-9.

Run from ``mutants/`` after a mutmut run
(``cd mutants && PYTHONPATH=. python ../tests/mutation/cpl_policy_equivalence.py [N ...]``): it switches
``MUTANT_UNDER_TEST`` in-process and prints, per mutant, the largest difference from the original over 40 random
instances. Mutants 56, 61 and 62 are controls (killed mutants of the same function): they must raise or differ,
which shows that the switch selects the mutant.
"""

import os
import sys

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


def exact(i: int, start: np.ndarray) -> np.ndarray:
    """log π* of case i to 40 digits: mpmath's root of the gradient of the population loss (written out here,
    with mpmath's numerical derivative), started at ``start``."""
    import mpmath as mp

    mp.mp.dps = 40
    mu, r, a, lam, inc = cases[i]

    def logpi(z):
        th = [mp.mpf(0), *z]
        lse = mp.log(sum(mp.e ** t for t in th))
        return [t - lse for t in th]

    def loss(*z):
        lp, tot = logpi(z), mp.mpf(0)
        for w in range(len(mu)):
            for l in range(len(mu)):
                if w != l or inc:
                    c = 2 * mp.mpf(mu[w]) * mp.mpf(mu[l]) / (1 + mp.e ** (mp.mpf(r[l]) - mp.mpf(r[w])))
                    tot += c * mp.log(1 + mp.e ** (-a * (lp[w] - lam * lp[l])))
        return tot

    def grad(*z):
        return [mp.diff(lambda t, j=j: loss(*z[:j], t, *z[j + 1:]), z[j]) for j in range(len(z))]

    z = mp.findroot(grad, [mp.mpf(float(v - start[0])) for v in start[1:]], tol=1e-30)
    return np.array([float(v) for v in logpi(list(z))])


os.environ["MUTANT_UNDER_TEST"] = ""
base = run()
for n in [int(a) for a in sys.argv[1:]] or (57, 58, 60, 67, 73, 84, 90, 93, 106, 107, 109, 110, 111, 112, 113, 114, 118,
                                             56, 61, 62):
    os.environ["MUTANT_UNDER_TEST"] = f"nca_lab.theory.x_cpl_policy_optimum__mutmut_{n}"
    try:
        got = run()
    except Exception as e:  # a control mutant breaks the solver
        print(n, "raised", type(e).__name__)
        continue
    diff = [float(np.abs(a - b).max()) for a, b in zip(got, base)]
    line = f"{n} max |Δ log π*| = {max(diff):.3g}"
    for i in [i for i, d in enumerate(diff) if d > 1e-13]:  # where they differ: which is closer to the exact optimum?
        ref = exact(i, base[i])
        line += (f"; case {i}: original {np.abs(base[i] - ref).max():.2g}, mutant {np.abs(got[i] - ref).max():.2g} "
                 f"from the 40-digit optimum")
    print(line)

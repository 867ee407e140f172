"""The loop the equivalence scripts share: switch ``MUTANT_UNDER_TEST`` in-process (mutmut's trampolines read it
at every call), rerun the same computation under each named mutant, and print how far it lands from the original
and from an independent reference. A mutant that raises is reported as such (a control must raise or differ)."""

import os


def report_mutants(names, run, base, reference: dict, rel, reference_name: str, before_each=lambda: None) -> None:
    """``run()`` gives one result per instance; ``base`` is its value with no mutant; ``reference`` maps an
    instance's index to its independent value; ``rel(x, y)`` is the distance printed (its max over instances)."""
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        before_each()  # e.g. clear a cache filled under another mutant
        try:
            got = run()
        except Exception as e:  # a control mutant breaks the computation
            print(name, "raised", type(e).__name__)
            continue
        print(f"{name}: max relative |Δ| from the original {max(rel(g, b) for g, b in zip(got, base)):.2g}; "
              f"from the {reference_name} {max(rel(got[i], e) for i, e in reference.items()):.2g}")

"""The recorded mutation run accounts for every mutant that no test run by a mutation tool killed.

``tests/mutation/state/`` holds mutmut's verdicts (one ``.meta`` file per mutated source file) and
``targeted.json`` (the verdicts of ``tests/mutation/targeted.py``). A mutant that survived there, or that neither
tool checked, must be named in ``tests/MUTATION.md`` with what became of it (killed by a named test outside the
tool, or equivalent with its reason). MUTATION.md names mutants as a function followed by numbers
(```_context_weights` 9, 11, 14–18``), or as ```clha_38`, `_66``` in its tables; this test reads both forms.
"""

from __future__ import annotations

import json
import re

from mutation.run import ROOT, STATE, exit_codes, statuses  # tests/ is on sys.path (conftest.py)


def _short(mutant: str) -> tuple[str, int]:
    """``nca_lab.losses.x__prepare__mutmut_13`` → ``("_prepare", 13)``; methods as ``LossSpec.__call__``."""
    function, number = mutant.rsplit("__mutmut_", 1)
    name = re.sub(r"^x_", "", function.split(".")[-1]).replace("xǁ", "").replace("ǁ", ".")
    return name, int(number)


def _mentioned(text: str, functions: set[str]) -> set[tuple[str, int]]:
    """(function, number) pairs named in the prose: numbers attach to the last function named before them."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # command blocks hold no verdicts (and upset backtick pairing)
    found, current = set(), None
    for tok in re.finditer(r"`([^`]+)`|(\d+)\s*[–-]\s*(\d+)|(\d+)", text):
        if tok.group(1):
            name = tok.group(1).split(".")[-1].split("(")[0]
            table = re.fullmatch(r"(.*?)_(\d+)", name)  # `clha_38`, then `_66` for the same function
            if table and (table.group(1) in functions or (table.group(1) == "" and current)):
                current = table.group(1) or current
                found.add((current, int(table.group(2))))
            elif name in functions:
                current = name
        elif current and tok.group(2):
            found.update((current, i) for i in range(int(tok.group(2)), int(tok.group(3)) + 1))
        elif current and tok.group(4):
            found.add((current, int(tok.group(4))))
    return found


def test_every_mutant_no_tool_killed_is_accounted_for_in_mutation_md():
    status = statuses(STATE)
    functions = {n for short, _ in map(_short, status) for n in (short, short.split(".")[-1])}
    mentioned = _mentioned((ROOT / "tests" / "MUTATION.md").read_text(), functions)
    missing = []
    # survived or without a covering test under mutmut, and neither checked by it nor killed by targeted.py
    for mutant in (name for name, s in status.items() if s in ("survived", "no tests", "not checked")):
        short, number = _short(mutant)
        if (short, number) not in mentioned and (short.split(".")[-1], number) not in mentioned:
            missing.append(mutant)
    assert not missing, f"{len(missing)} surviving or unchecked mutants not named in tests/MUTATION.md: {missing}"


def test_targeted_verdicts_name_real_mutants_and_the_tests_that_ran():
    targeted = json.loads((STATE / "targeted.json").read_text())
    assert targeted and set(targeted) <= set(exit_codes(STATE))
    for name, entry in targeted.items():
        assert entry["verdict"] in ("killed", "SURVIVED", "timeout"), name
        assert entry["pytest_args"] and all(a.startswith(("tests/", "-k")) or not a.startswith("-") for a in entry["pytest_args"])


def test_the_reader_sees_both_forms_and_misses_what_is_absent():
    """The parser itself: a function followed by numbers and ranges, table names, and a number under another name."""
    text = "`_context_weights` 9, 11, 14–16 and `clha_38`, `_66`; `dpo` 3\n```text\n`kto` 5\n```"
    got = _mentioned(text, {"_context_weights", "clha", "dpo", "kto"})
    assert {("_context_weights", i) for i in (9, 11, 14, 15, 16)} | {("clha", 38), ("clha", 66), ("dpo", 3)} <= got
    assert ("kto", 5) not in got and ("_context_weights", 12) not in got

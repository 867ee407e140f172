"""Check mutants against a chosen set of tests in one process: mutmut's own mutants, a faster runner.

``python tests/mutation/targeted.py [--unchecked PREFIX ...] [NAME ...] -- PYTEST_ARGS`` (from the repository root,
after a ``mutmut run`` has generated ``mutants/``; ``--unchecked nca_lab.losses.x__prepare`` takes every mutant of
that function that has no verdict yet in ``mutants/``).

Why: ``mutmut run`` starts a pytest process per mutant and runs *every* test its coverage map lists for the mutated
function. For the input checks every call passes through (``losses._prepare``, ``theory._check_mu``, ...) that is
hundreds of tests per mutant (on 4 December 2026, 20 mutants in 30 minutes on 2 cores). This runner imports the tests once, then, for each mutant, sets
mutmut's ``MUTANT_UNDER_TEST`` (its trampolines read it at every call, so the switch needs no new process) and runs
``pytest.main(["-x", *PYTEST_ARGS])`` on the copy of the package and tests in ``mutants/``. It runs the control
first (no mutant: the tests must pass, else it stops), then prints one line per mutant: ``killed`` (a test
failed), ``SURVIVED`` (all passed: not a verdict, only that these tests do not see it; give it to ``mutmut run
NAME`` or analyse it) or ``timeout`` (longer than ``--timeout`` seconds: a mutant that loops). The verdicts go to
``tests/mutation/state/targeted.json`` with the pytest arguments and date, to be committed; ``run.py --score``
counts a mutant killed here that mutmut has not checked as "killed (targeted)".
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import signal
import sys
import time

from run import STATE, WORK, exit_codes  # the script's own folder is first on sys.path

RECORD = STATE / "targeted.json"


class _Timeout(Exception):
    pass


def unchecked(prefixes: list[str]) -> list[str]:
    """Mutants in ``mutants/`` whose function name starts with one of ``prefixes`` and that have no verdict."""
    names = [name for name, code in exit_codes(WORK).items()
             if code is None and any(name.startswith(p + "__mutmut_") for p in prefixes)]
    return sorted(names, key=lambda n: (n.rsplit("__mutmut_", 1)[0], int(n.rsplit("_", 1)[1])))


def _record(name: str, entry: dict) -> None:
    """Add one verdict to the record, after each mutant (a stop keeps what ran). Read, update and write under a
    lock: two runs on different functions may share the record (each on one core)."""
    with open(RECORD.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        record[name] = entry
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def _pytest_once(name: str, pytest_args: list[str], timeout: float) -> str:
    import pytest

    os.environ["MUTANT_UNDER_TEST"] = name

    def _alarm(signum, frame):
        raise _Timeout

    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.monotonic()
    try:
        code = pytest.main(["-x", "-q", "--no-header", "-p", "no:cacheprovider", "-p", "no:randomly", *pytest_args])
    except _Timeout:
        return "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if time.monotonic() - start >= timeout:
        return "timeout"  # the alarm fired inside a test, which pytest reports as that test's failure
    if code == 0:
        return "SURVIVED"
    if code == 1:
        return "killed"
    return f"error {int(code)}"  # collection or usage error: no verdict


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("error: give the pytest arguments after `--`, e.g. -- tests/test_losses.py -k input_checks", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unchecked", nargs="+", default=[], metavar="PREFIX",
                        help="every mutant without a verdict whose name starts with PREFIX__mutmut_")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant (default 120)")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv[:cut])
    pytest_args = argv[cut + 1:]
    if not args.timeout > 0:  # 0 would disable the alarm and label every mutant a timeout
        print(f"error: --timeout must be > 0 seconds, got {args.timeout:g}", file=sys.stderr)
        return 2
    if not (WORK / "nca_lab").is_dir():
        print(f"error: {WORK} has no nca_lab/: run `mutmut run` (or tests/mutation/run.py) first", file=sys.stderr)
        return 2
    unknown = sorted(set(args.names) - set(exit_codes(WORK)))
    if unknown:  # the trampolines would run the original code for them: a silent "SURVIVED"
        print(f"error: no such mutant in {WORK}: {' '.join(unknown)} (names as `mutmut results` prints them)", file=sys.stderr)
        return 2
    names = [*args.names, *unchecked(args.unchecked)]
    if not names:
        print("error: no mutants named and none unchecked under the given prefixes", file=sys.stderr)
        return 2
    os.chdir(WORK)
    sys.path.insert(0, str(WORK))
    control = _pytest_once("", pytest_args, 10 * args.timeout)
    if control != "SURVIVED":
        print(f"error: the control (no mutant) did not pass: {control}", file=sys.stderr)
        return 1
    today = datetime.date.today().isoformat()
    results = []
    for name in names:
        verdict = _pytest_once(name, pytest_args, args.timeout)
        results.append((name, verdict))
        _record(name, {"verdict": verdict.split()[0], "pytest_args": pytest_args, "date": today})
        print(f"### {name}: {verdict}", flush=True)
    survived = [n for n, v in results if v != "killed" and v != "timeout"]
    print(f"### {len(results)} mutants: {len(results) - len(survived)} killed or timed out; not killed: {' '.join(survived)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

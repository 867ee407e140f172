"""Run mutmut over the configured theory core in resumable slices, and print the score so far.

``python tests/mutation/run.py --minutes 60`` (from the repository root, with the ``mutation`` extra installed):

1. restores mutmut's state from ``tests/mutation/state/`` into ``mutants/`` (its test statistics
   ``mutmut-stats.json`` and one ``<file>.meta`` per mutated source file: each mutant's exit code, and the hash of
   each function it was generated from);
2. runs ``mutmut run --max-children N`` for at most ``--minutes`` (then SIGINT: mutmut stops its workers and
   keeps every verdict it has; it writes the ``.meta`` file after each mutant). mutmut re-tests a mutant only when
   it has no verdict yet or when the function it mutates changed (hash), so each slice continues the last one
   and stale verdicts are dropped by mutmut itself;
3. copies the state back into ``tests/mutation/state/`` (commit it: the next session's slice continues from it)
   and prints the tally per status and the score = killed (incl. timeouts and crashes) / (killed + survived + no tests).

A mutant mutmut has not checked but ``tests/mutation/targeted.py`` killed (its record
``tests/mutation/state/targeted.json``: mutmut's mutants run against chosen tests in one process, much faster for
functions every test covers) counts as "killed (targeted)".

``--score`` only prints the tally of the committed state, and ``--survivors`` only lists its surviving mutants
(names for ``mutmut show NAME``): neither runs anything. Mutant names given as arguments are re-tested even
when they have a verdict (mutmut keeps a survivor's verdict until its function changes: after adding a test
for it, name it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / "tests" / "mutation" / "state"
WORK = ROOT / "mutants"
# mutmut 3.8's exit-code meaning (mutmut.stats.status_by_exit_code), folded into what the score needs
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check", None: "not checked",
          # the test process died of a signal (mutmut calls it "segfault"): SIGKILL, e.g. a mutant that sends a
          # K = 10^5 case to the multiset enumeration and is killed for its memory, or SIGSEGV; either way detected
          -9: "crashed", -11: "crashed"}


def _state_files(root: Path) -> list[Path]:
    # only the mutated package's .meta files: mutmut copies tests/ (and so this state folder) into mutants/ too
    return sorted([*(root / "nca_lab").rglob("*.meta"), *root.glob("mutmut-stats.json")])


def _copy_state(src_root: Path, dst_root: Path) -> int:
    """Copy mutmut's state files from one root to the other (same relative paths); their count."""
    files = _state_files(src_root)
    for src in files:
        dst = dst_root / src.relative_to(src_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return len(files)


def restore() -> int:
    return _copy_state(STATE, WORK)


def save() -> int:
    return _copy_state(WORK, STATE)


def targeted_verdicts() -> dict[str, str]:
    """Verdicts of ``targeted.py`` (mutmut's mutants run against chosen tests in one process), by mutant name."""
    path = STATE / "targeted.json"
    return {k: v["verdict"] for k, v in json.loads(path.read_text()).items()} if path.exists() else {}


def exit_codes(root: Path) -> dict[str, int | None]:
    """mutmut's exit code per mutant name, from the ``.meta`` files under ``root/nca_lab`` (None: not run yet)."""
    return {name: code for meta in sorted((root / "nca_lab").rglob("*.meta"))
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items()}


def statuses(root: Path) -> dict[str, str]:
    """Each mutant's status (``STATUS``), with "killed (targeted)" where mutmut has no verdict and targeted.py killed it."""
    targeted = targeted_verdicts()
    out = {}
    for name, code in exit_codes(root).items():
        status = STATUS.get(code, "suspicious")
        if status == "not checked" and targeted.get(name) in ("killed", "timeout"):
            status = "killed (targeted)"  # mutmut has no verdict; targeted.py's tests fail on it
        out[name] = status
    return out


def tally(root: Path) -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    survivors = []
    for name, status in statuses(root).items():
        counts[status] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{name}  ({status})")
    return counts, survivors


def report(root: Path, show_survivors: bool) -> None:
    counts, survivors = tally(root)
    total = sum(counts.values())
    detected = counts["killed"] + counts["timeout"] + counts["crashed"]
    judged = detected + counts["survived"] + counts["no tests"]
    print(f"mutants: {total}; " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    if judged:
        print(f"score so far: {detected}/{judged} = {detected / judged:.1%} of the mutants mutmut checked detected "
              f"(equivalent mutants not yet removed: a lower bound); not checked by mutmut: "
              f"{counts['not checked'] + counts['killed (targeted)']}, of which killed by targeted.py: "
              f"{counts['killed (targeted)']}")
    if show_survivors:
        print("\n".join(survivors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock limit of this slice")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--score", action="store_true", help="only print the committed state's tally (runs nothing)")
    parser.add_argument("--survivors", action="store_true",
                        help="only print the committed state's tally and its surviving / uncovered mutants (runs nothing)")
    parser.add_argument("names", nargs="*", help="re-test only these mutants (e.g. survivors after a new test)")
    args = parser.parse_args(argv)
    if args.score or args.survivors:
        report(STATE, args.survivors)
        return 0
    if args.minutes <= 0 or args.max_children < 1:
        print("error: --minutes must be > 0 and --max-children ≥ 1", file=sys.stderr)
        return 2
    print(f"restored {restore()} state files into {WORK}")
    t0 = time.monotonic()
    proc = subprocess.Popen(["mutmut", "run", "--max-children", str(args.max_children), *args.names], cwd=ROOT)
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # mutmut: "Stopping...", workers stopped, verdicts kept
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"mutmut ran {time.monotonic() - t0:.0f} s (exit {proc.returncode}); saved {save()} state files to {STATE}")
    report(STATE, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

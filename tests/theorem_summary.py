"""pytest plugin: what the theorem checker verified, as a table at the end of the run.

One row per proposition whose tests ran in the session: its number, a one-line statement and the counts of its
tests that passed, failed (errors included) and were skipped (xfail counted as skipped). The propositions are
found, not listed: a test file ``tests/test_prop_NN_<name>.py`` belongs to proposition NN, and its module
docstring's first paragraph (without a leading ``PROPOSITION NN —``) is the statement. A new proposition's test
file shows up in the table with no change here. ``tests/conftest.py`` registers the hook; elsewhere
``pytest -p theorem_summary`` (with ``tests/`` on the path) does.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

__all__ = ["proposition_number", "statement", "pytest_terminal_summary"]

_PROP_FILE = re.compile(r"(?:^|/)test_prop_(\d+)[^/]*\.py$")
_PREFIX = re.compile(r"^\s*proposition\s+\d+\s*[—–:.\-]*\s*", re.IGNORECASE)
# worst outcome wins when a test reports more than once (a passing call with an erroring teardown: failed)
_RANK = {"passed": 0, "skipped": 1, "failed": 2}
_STAT_KEYS = {"passed": "passed", "xpassed": "passed", "failed": "failed", "error": "failed",
              "skipped": "skipped", "xfailed": "skipped"}


def proposition_number(path: str) -> int | None:
    """NN of a ``test_prop_NN_*.py`` path (a pytest node id's file part), else ``None``."""
    m = _PROP_FILE.search(path.replace("\\", "/"))
    return int(m.group(1)) if m else None


def statement(path: Path, width: int = 88) -> str:
    """The first paragraph of the module docstring on one line, without ``PROPOSITION NN —``, cut at ``width``."""
    try:
        doc = ast.get_docstring(ast.parse(Path(path).read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        doc = ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    text = _PREFIX.sub("", text) or "(no module docstring)"
    text = text[:1].upper() + text[1:]
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _outcomes(stats: dict) -> dict[str, str]:
    """node id -> passed | failed | skipped, over every report of the session."""
    out: dict[str, str] = {}
    for key, outcome in _STAT_KEYS.items():
        for rep in stats.get(key, []):
            nodeid = getattr(rep, "nodeid", None)
            if nodeid and _RANK[outcome] >= _RANK.get(out.get(nodeid, "passed"), 0):
                out[nodeid] = outcome
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows: dict[int, dict] = {}
    for nodeid, outcome in _outcomes(terminalreporter.stats).items():
        file = nodeid.split("::")[0]
        number = proposition_number(file)
        if number is None:
            continue
        row = rows.setdefault(number, {"files": set(), "passed": 0, "failed": 0, "skipped": 0})
        row["files"].add(file)
        row[outcome] += 1
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "propositions checked (tests/test_prop_NN_*.py)")
    tr.write_line(f"{'prop':>4}  {'result':<8}  {'pass':>4} {'fail':>4} {'skip':>4}  statement")
    for number in sorted(rows):
        row = rows[number]
        result = "FAILED" if row["failed"] else ("verified" if row["passed"] else "skipped")
        text = statement(Path(config.rootpath) / sorted(row["files"])[0])
        tr.write_line(f"{number:>4}  {result:<8}  {row['passed']:>4} {row['failed']:>4} {row['skipped']:>4}  {text}",
                      red=bool(row["failed"]), green=result == "verified", yellow=result == "skipped")

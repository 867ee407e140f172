"""The theorem checker's closing table (``tests/theorem_summary.py``): one row per proposition, found from the
``test_prop_NN_*.py`` files that ran, with pass / fail / skip counts; a new proposition's file needs no change."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from theorem_summary import proposition_number, statement

TESTS_DIR = Path(__file__).resolve().parent


def test_proposition_number_and_statement(tmp_path):
    assert proposition_number("tests/test_prop_07_nca_pair.py") == 7
    assert proposition_number("tests/test_prop_24_new.py") == 24
    assert proposition_number("tests/test_losses.py") is None
    f = tmp_path / "test_prop_20_x.py"
    f.write_text('"""PROPOSITION 20 — a new claim,\non two lines.\n\nDetails."""\n')
    assert statement(f) == "A new claim, on two lines."
    f.write_text('"""Proposition 21: ' + "word " * 40 + '"""\n')
    assert statement(f, width=30).endswith("…") and len(statement(f, width=30)) == 30
    f.write_text("def test_x():\n    pass\n")
    assert statement(f) == "(no module docstring)"


def test_table_after_a_run_with_new_proposition_files(tmp_path):
    """Two proposition files the plugin has never seen (numbers 20 and 23): passed, failed and skipped tests are
    counted per proposition, a failing proposition says FAILED, other test files get no row."""
    (tmp_path / "test_prop_20_new_claim.py").write_text(textwrap.dedent('''\
        """PROPOSITION 20 — the new claim holds."""
        import pytest

        def test_a():
            pass

        @pytest.mark.parametrize("i", range(3))
        def test_b(i):
            pass

        def test_c():
            pytest.skip("not today")
        '''))
    (tmp_path / "test_prop_23_broken.py").write_text(textwrap.dedent('''\
        """Proposition 23: a claim that fails."""
        def test_ok():
            pass

        def test_bad():
            assert False
        '''))
    (tmp_path / "test_other.py").write_text("def test_other():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "theorem_summary", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # test_bad fails
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "propositions checked" in line)
    table = lines[start + 1: start + 4]
    assert table[0].split() == ["prop", "result", "pass", "fail", "skip", "statement"]
    assert table[1].split() == ["20", "verified", "4", "0", "1", "The", "new", "claim", "holds."]
    assert table[2].split() == ["23", "FAILED", "1", "1", "0", "A", "claim", "that", "fails."]
    assert not any("test_other" in line for line in lines[start:])


def test_conftest_registers_the_table():
    import conftest

    assert conftest.pytest_terminal_summary is __import__("theorem_summary").pytest_terminal_summary

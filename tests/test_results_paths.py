"""Recorded results name no folder of the machine they ran on: paths inside the repository are relative."""

import glob
import json
from pathlib import Path

from nca_lab.llm.study.state import repo_relative

REPO = Path(__file__).resolve().parents[1]


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def test_repo_relative_strips_the_repository_root_only():
    root = Path("/somewhere/repo")
    got = repo_relative({"a": ["/somewhere/repo/runs/x", "--out /somewhere/repo/runs/y", "/elsewhere/z", 1.5],
                         "b": ("/somewhere/repository/q",)}, root)
    assert got == {"a": ["runs/x", "--out runs/y", "/elsewhere/z", 1.5], "b": ["/somewhere/repository/q"]}
    assert repo_relative(str(REPO / "runs" / "x")) == "runs/x"  # the default root is this checkout


def test_committed_results_hold_no_absolute_path():
    files = sorted(glob.glob(str(REPO / "llm" / "results" / "**" / "*.json"), recursive=True)
                   + glob.glob(str(REPO / "figures" / "*.json")))
    assert files
    for name in files:
        bad = [s for s in _strings(json.loads(Path(name).read_text())) if s.startswith("/") or " /" in s]
        assert not bad, f"{name}: {bad[:3]}"

"""Run every check of ``proofs/sympy_atlas.py`` (Propositions 21–24) and assert it holds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PROOFS = Path(__file__).resolve().parent.parent / "proofs"


def _load():
    spec = importlib.util.spec_from_file_location("proofs_sympy_atlas", PROOFS / "sympy_atlas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ATLAS = _load()


@pytest.mark.parametrize("check", list(ATLAS.CHECKS))
def test_sympy_atlas(check):
    assert ATLAS.CHECKS[check]() is True

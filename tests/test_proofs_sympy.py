"""Run every check of the sympy scripts in proofs/ and assert it holds.

Each script exposes ``CHECKS``: name -> function returning True when the symbolic identity
simplifies exactly (to 0 or to an equality); the Markdown derivations in proofs/ cite these.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PROOFS = Path(__file__).resolve().parent.parent / "proofs"
SCRIPTS = ["sympy_infonca", "sympy_nca", "sympy_pairs", "sympy_gradients", "sympy_rdpo", "sympy_ipo", "sympy_single_pair",
           "sympy_policy_gradient"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"proofs_{name}", PROOFS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {name: _load(name) for name in SCRIPTS}


def _cases(script: str):
    return [pytest.param(script, check, id=f"{script}::{check}") for check in MODULES[script].CHECKS]


def _run(script: str, check: str):
    assert MODULES[script].CHECKS[check]() is True


@pytest.mark.parametrize("script, check", _cases("sympy_infonca"))
def test_infonca(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_nca"))
def test_nca(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_pairs"))
def test_pairs(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_gradients"))
def test_gradients(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_rdpo"))
def test_rdpo(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_ipo"))
def test_ipo(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_single_pair"))
def test_single_pair(script, check):
    _run(script, check)


@pytest.mark.parametrize("script, check", _cases("sympy_policy_gradient"))
def test_policy_gradient(script, check):
    _run(script, check)


def test_every_script_is_covered():
    scripts = sorted(p.stem for p in PROOFS.glob("sympy_*.py"))
    assert scripts == sorted(SCRIPTS)

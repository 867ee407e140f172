"""The demo's thread choice (``nca_lab.llm.demo.busy_cores_threads``): one torch thread when the cores are busy
(1-minute load average at least the usable core count), torch's default otherwise, ``OMP_NUM_THREADS`` wins."""

from __future__ import annotations

import os

import pytest

from nca_lab.llm import demo


@pytest.mark.parametrize("load,cores,omp,expected", [
    (9.0, 2, None, 1),      # busy 2-core machine: one thread
    (2.0, 2, None, 1),      # load equal to the cores: busy
    (1.5, 2, None, None),   # spare capacity: torch's default
    (9.0, 1, None, None),   # one core: nothing to reduce
    (9.0, 2, "2", None),    # the user's OMP_NUM_THREADS wins
])
def test_busy_cores_threads(monkeypatch, load, cores, omp, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert demo.busy_cores_threads() == expected

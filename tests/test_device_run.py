"""``llm/device_run.sh`` (the pending GPU runs in one device call) on CPU at the tiny sizes: every stage runs,
its outputs land in OUT under the names the script's header promises, and the records are the real ones
(the same modules the full-size commands run). Only the sizes differ from the device call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_script_runs_every_stage_at_tiny_size(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    env = dict(os.environ, OUT=str(out), WORK=str(work), PY=sys.executable, WHEELS=str(tmp_path / "no_wheels"),
               OMP_NUM_THREADS="1", STUDY_SCALE="tiny", SCALE_S="200", BENCH_S="300", STUDY_S="400",
               SCALE_ARGS="--size tiny --steps 2 --batch-size 2 --k 4 --seq-len 64",
               BENCH_ARGS="--size tiny --steps 2 --batch-size 2 --seq-len 64 --profile-steps 1 --ablations=")
    proc = subprocess.run(["bash", "llm/device_run.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1000)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (out / "device_run.log").read_text()
    for stage in ("scale run exit 0", "bench exit 0", "study exit 0", "done"):
        assert stage in log, log
    assert "no wheels in" in log and "torch " in log  # versions line of the packages in use
    scale = json.loads((out / "scale_gpu.json").read_text())
    assert scale["device_kind"] == "cpu" and scale["steps"] == 2
    bench = json.loads((out / "bench_gpu.json").read_text())
    assert bench["loss_agreement"]["agree"] and bench["profile"]["steps"] == 1
    assert "speedup_tokens_per_s_vs_trl" in bench and (out / "bench_gpu.md").exists()
    with tarfile.open(out / "study_tiny.tgz") as tar:
        names = tar.getnames()
    assert "results/study_tiny.json" in names and "work/state.json" in names, names
    # what comes back from a device call: at most 8 files, plain names, nothing nested
    files = [p for p in out.iterdir()]
    assert len(files) <= 8 and all(p.is_file() for p in files), files

"""Data parallelism through the ecosystem: ``torchrun --nproc_per_node 2 -m nca_lab.llm.train`` (gloo, CPU)
matches a single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nca_lab.llm.demo import save_demo_model
from nca_lab.llm.train import main

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_two_process_gloo_run_matches_single_process(tmp_path):
    model_dir = save_demo_model(tmp_path / "model", seed=0)
    rows = [{"prompt": f"Question {i}: is {i} even?", "responses": [f"{i} is even.", f"{i} is odd.", "Maybe."],
             "rewards": [float(i % 3), float((i + 1) % 3), float((i + 2) % 3)]} for i in range(8)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model", model_dir, "--data", str(data), "--loss", "nca", "--beta", "0.5", "--lr", "5e-3",
              "--max-steps", "3", "--logging-steps", "1", "--save-steps", "1000", "--seed", "1",
              "--warmup-ratio", "0", "--lr-scheduler", "constant"]

    single, dist = tmp_path / "single", tmp_path / "dist"
    # Global batch 4 prompts: 1 process x 4, or 2 processes x 2 (batch i of the shuffled order goes to rank i % 2,
    # so both runs see the same 4 prompts per step).
    assert main(common + ["--batch-size", "4", "--output-dir", str(single)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "nca_lab.llm.train", *common, "--batch-size", "2", "--output-dir", str(dist)],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    m_single = json.loads((single / "metrics.json").read_text())
    m_dist = json.loads((dist / "metrics.json").read_text())
    assert m_dist["throughput"]["world_size"] == 2
    loss_s = [h["loss"] for h in m_single["log_history"] if "loss" in h]
    loss_d = [h["loss"] for h in m_dist["log_history"] if "loss" in h]
    assert len(loss_s) == len(loss_d) == 3
    # float32: per-process means averaged by DDP's all-reduce vs one mean over 4 prompts differ only in
    # summation order (~1e-7 relative); after 3 Adam steps the losses agree to ~1e-6.
    assert loss_d == pytest.approx(loss_s, abs=1e-5)
    for name in ("rewards/accuracies", "rewards/margins", "logps/chosen"):
        # metrics: sums over both processes / counts over both processes = the single-process batch mean
        assert [h[name] for h in m_dist["log_history"] if "loss" in h] == pytest.approx(
            [h[name] for h in m_single["log_history"] if "loss" in h], abs=1e-4), name
    w_s, w_d = _weights(single), _weights(dist)
    for key in w_s:
        # Adam's update is ~lr per step whatever the gradient scale, so a rounding-level gradient difference
        # moves weights by far less than lr * steps = 1.5e-2; 1e-5 allows rounding but not a different batch.
        torch.testing.assert_close(w_d[key], w_s[key], rtol=0, atol=1e-5, msg=key)

"""FSDP2 sharded training (``--fsdp``, :mod:`nca_lab.llm.sharding`) with two gloo CPU processes, launched by ``torchrun``
and by ``accelerate launch``, against single-process runs on the same global batch; plus ``accelerate launch`` for
plain data parallelism (DDP).

What is checked: the gathered final weights (a plain Hugging Face folder) equal the single-process weights, with
untied and with tied embeddings; the losses and the TRL-named metrics agree step by step; the checkpoints are
sharded (one ``torch.distributed.checkpoint`` shard per rank) and an FSDP run stopped after 2 steps and resumed ends
where the uninterrupted FSDP run ends; the reference log-probs are computed once, by rank 0, and loaded by rank 1.

Every launch costs ~25 s on 2 cores (two interpreters importing torch/transformers), so the runs are few and short.
"""

from __future__ import annotations

import json
import math
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
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected", "logratio/mean")
# Global batch 4 prompts: 1 process x 4, or 2 processes x 2 (batch i of the seeded order goes to rank i % 2, so
# both runs see the same 4 prompts per step). Constant lr, no warm-up: every step moves the weights.
COMMON = ["--loss", "nca", "--beta", "0.5", "--lr", "5e-3", "--logging-steps", "1", "--seed", "1",
          "--warmup-ratio", "0", "--lr-scheduler", "constant"]
# Weights: float32 throughout. The sharded run reduce-scatters (and divides by the world size) where the single
# process sums once, so gradients differ by rounding (~1e-7 relative). Adam divides each coordinate's update by
# its own gradient scale, so on coordinates whose gradient is itself near zero (embedding rows of rare tokens) a
# rounding-level gradient difference becomes an update difference of up to ~lr * rounding / (|g| + eps).
# Measured after 3-4 steps at lr 5e-3: max |w_fsdp - w_single| 1.1e-6 (untied), 1.1e-5 (tied: 2 of 12288 embedding
# entries above 1e-6). 5e-5 allows that; a different batch, a missed gradient reduction or a wrong reference
# moves weights by O(lr) = 5e-3 per step, 100x more.
WEIGHT_ATOL = 5e-5

_LAUNCH_SCRIPT = '''
import os, sys
import nca_lab.llm.reference as reference

def _logged(fn, what):
    def wrapper(*args, **kwargs):
        with open(os.environ["NCA_TEST_REF_LOG"], "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {what}\\n")
        return fn(*args, **kwargs)
    return wrapper

# Which rank computes (and saves) the reference cache and which loads it.
reference._save_cache = _logged(reference._save_cache, "computed")
reference._load_cache = _logged(reference._load_cache, "loaded")

# What each rank holds of the parameters and the optimizer state when the final model is saved.
import json
from nca_lab.llm.sharding import local_state_bytes
from nca_lab.llm.trainer import ContrastiveTrainer
_save_model = ContrastiveTrainer.save_model

def save_model(self, *args, **kwargs):
    with open(os.environ["NCA_TEST_REF_LOG"] + ".bytes." + os.environ.get("RANK", "0"), "w") as f:
        json.dump(local_state_bytes(self), f)
    return _save_model(self, *args, **kwargs)

ContrastiveTrainer.save_model = save_model
from nca_lab.llm.train import main
sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _launch(launcher: str, args: list[str], tmp: Path, ref_log: Path) -> list[dict[str, int]]:
    """Two gloo CPU processes running ``python -m nca_lab.llm.train args`` (through a script that logs the
    reference cache's compute/load per rank); returns each rank's parameter and optimizer-state bytes at the end
    (:func:`nca_lab.llm.sharding.local_state_bytes`)."""
    script = tmp / "launch_train.py"
    script.write_text(_LAUNCH_SCRIPT)
    port = str(_free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:
        # --multi_gpu is accelerate's multi-process launcher (torchrun underneath); on a machine without GPUs the
        # processes train on CPU with gloo. (--cpu would start independent single-process runs instead.)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TMPDIR=str(tmp), NCA_TEST_REF_LOG=str(ref_log))
    proc = subprocess.run(cmd + [str(script), *args], capture_output=True, text=True, env=env, cwd=str(tmp),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(Path(f"{ref_log}.bytes.{rank}").read_text()) for rank in (0, 1)]


def _model_bytes(path) -> int:
    return sum(t.numel() * t.element_size() for t in _weights(path).values())


def _train_logs(out: Path) -> list[dict]:
    return [h for h in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in h]


def _assert_same_run(dist: Path, single: Path, steps: int, *, weight_atol: float = WEIGHT_ATOL) -> float:
    """Losses, TRL metrics and final weights of ``dist`` equal those of ``single``; returns max |Δw|."""
    m = json.loads((dist / "metrics.json").read_text())
    assert m["throughput"]["world_size"] == 2
    logs_d, logs_s = _train_logs(dist), _train_logs(single)
    assert len(logs_d) == len(logs_s) == steps
    # step 1 is at pi_theta = pi_ref: NCA's closed form 2 ln 2, on both ranks' prompts (each rank's reference
    # log-probs are right, not just rank 0's)
    assert logs_d[0]["loss"] == pytest.approx(2 * math.log(2), abs=1e-5)
    assert [h["loss"] for h in logs_d] == pytest.approx([h["loss"] for h in logs_s], abs=1e-5)
    for name in TRL_METRICS:
        assert [h[name] for h in logs_d] == pytest.approx([h[name] for h in logs_s], abs=1e-4), name
    w_d, w_s = _weights(dist), _weights(single)
    worst = 0.0
    for key in w_s:
        torch.testing.assert_close(w_d[key], w_s[key], rtol=0, atol=weight_atol, msg=key)
        worst = max(worst, (w_d[key] - w_s[key]).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny Llama with untied embeddings (the demo model) and the same with tied ones, 8 prompts x 3 responses."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("fsdp")
    untied = save_demo_model(tmp / "untied", seed=0)
    config = AutoConfig.from_pretrained(untied)
    config.tie_word_embeddings = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tied_model = LlamaForCausalLM(config)
    assert tied_model.lm_head.weight is tied_model.model.embed_tokens.weight
    tied_model.save_pretrained(str(tmp / "tied"))
    AutoTokenizer.from_pretrained(untied).save_pretrained(str(tmp / "tied"))
    rows = [{"prompt": f"Question {i}: is {i} even?", "responses": [f"{i} is even.", f"{i} is odd.", "Maybe."],
             "rewards": [float(i % 3), float((i + 1) % 3), float((i + 2) % 3)]} for i in range(8)]
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"tmp": tmp, "untied": untied, "tied": str(tmp / "tied"), "data": str(data)}


@pytest.fixture(scope="module")
def single_untied(setup):
    """The single-process reference run: untied model, 4 steps of 4 prompts."""
    out = setup["tmp"] / "single_untied"
    assert main(["--model", setup["untied"], "--data", setup["data"], *COMMON, "--max-steps", "4",
                 "--save-strategy", "no", "--batch-size", "4", "--output-dir", str(out)]) == 0
    return out


def test_fsdp_option_errors_exit_2(setup, tmp_path, capsys):
    base = ["--model", setup["untied"], "--data", setup["data"], "--output-dir", str(tmp_path / "o")]
    assert main(base + ["--fsdp-param-dtype", "bfloat16"]) == 2
    assert "--fsdp-param-dtype needs --fsdp" in capsys.readouterr().err
    assert main(base + ["--fsdp", "--ref-mode", "online"]) == 2
    assert "--ref-mode online needs --lora" in capsys.readouterr().err


@pytest.mark.slow
def test_fsdp_single_process_is_refused(setup, tmp_path, capsys):
    assert main(["--model", setup["untied"], "--data", setup["data"], *COMMON, "--max-steps", "1",
                 "--batch-size", "4", "--output-dir", str(tmp_path / "o"), "--fsdp"]) == 2
    assert "--fsdp needs 2 or more processes" in capsys.readouterr().err


@pytest.mark.slow
def test_fsdp_untied_matches_single_process_and_resumes(setup, single_untied, tmp_path):
    """torchrun --fsdp = the single-process run; sharded checkpoints; the reference computed once; an FSDP run
    stopped after 2 steps (launched by accelerate launch) and resumed (torchrun) ends where the full run ends."""
    data_args = ["--model", setup["untied"], "--data", setup["data"], *COMMON, "--max-steps", "4",
                 "--batch-size", "2", "--fsdp", "--save-steps", "2"]
    full, part = tmp_path / "full", tmp_path / "part"
    ref_log = tmp_path / "ref_log.txt"
    held = _launch("torchrun", data_args + ["--output-dir", str(full)], tmp_path, ref_log)

    worst = _assert_same_run(full, single_untied, steps=4)
    print(f"untied: max |w_fsdp - w_single| = {worst:.3g}")
    # Each rank holds half the parameters (FSDP2 shards dim 0 of every tensor, padding odd sizes) and half of
    # AdamW's two moments.
    total = _model_bytes(single_untied)
    print(f"FSDP2 bytes per rank: {held} (full parameters: {total})")
    for rank in held:
        assert total / 2 <= rank["parameters"] <= 0.52 * total
        assert total <= rank["optimizer"] <= 1.04 * total
    # The reference: computed once (rank 0, main process first), loaded from the cache by rank 1.
    assert sorted(ref_log.read_text().split("\n")[:-1]) == ["0 computed", "1 loaded"]
    assert len(list((full / "ref_cache").glob("*.pt"))) == 1
    # Sharded checkpoints: model and optimizer as torch.distributed.checkpoint folders, no full weight file.
    ckpt = full / "checkpoint-2"
    names = set(os.listdir(ckpt))
    assert {"pytorch_model_fsdp_0", "optimizer_0", "trainer_state.json"} <= names, names
    assert "model.safetensors" not in names
    assert len(list((ckpt / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2  # one shard per rank
    # The final model is a plain Hugging Face folder.
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(full))
    assert not any(type(p).__name__ == "DTensor" for p in reloaded.parameters())

    # Interrupted after step 2 (its checkpoint-2 saved), then resumed to step 4.
    _launch("accelerate", data_args + ["--output-dir", str(part), "--stop-after-steps", "2"], tmp_path,
            tmp_path / "ref_log_part.txt")
    assert (part / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    _launch("torchrun", data_args + ["--output-dir", str(part), "--resume"], tmp_path, tmp_path / "ref_log_resume.txt")
    w_full, w_resumed = _weights(full), _weights(part)
    for key in w_full:
        # Same sharded arithmetic, the optimizer state and data order restored: equal up to float32 rounding.
        torch.testing.assert_close(w_resumed[key], w_full[key], rtol=0, atol=1e-6, msg=key)
    resumed_logs = {h["step"]: h["loss"] for h in _train_logs(part)}
    for h in _train_logs(full)[2:]:
        assert resumed_logs[h["step"]] == pytest.approx(h["loss"], abs=1e-6)


@pytest.mark.slow
def test_fsdp_tied_embeddings_match_single_process_accelerate_launch(setup, tmp_path):
    """Tied embedding/head weight (one FSDP unit holds it) under accelerate launch --fsdp = single process."""
    args = ["--model", setup["tied"], "--data", setup["data"], *COMMON, "--max-steps", "3", "--save-strategy", "no"]
    single, dist = tmp_path / "single", tmp_path / "dist"
    assert main(args + ["--batch-size", "4", "--output-dir", str(single)]) == 0
    _launch("accelerate", args + ["--batch-size", "2", "--fsdp", "--output-dir", str(dist)], tmp_path,
            tmp_path / "ref_log.txt")
    worst = _assert_same_run(dist, single, steps=3)
    print(f"tied: max |w_fsdp - w_single| = {worst:.3g}")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(dist))
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


@pytest.mark.slow
def test_accelerate_launch_ddp_matches_single_process(setup, single_untied, tmp_path):
    """Plain data parallelism (no --fsdp) under accelerate launch = the single-process run."""
    out = tmp_path / "ddp"
    held = _launch("accelerate", ["--model", setup["untied"], "--data", setup["data"], *COMMON, "--max-steps", "4",
                           "--save-strategy", "no", "--batch-size", "2", "--output-dir", str(out)], tmp_path,
            tmp_path / "ref_log.txt")
    # DDP all-reduces the gradients once per step: rounding only (measured 1.1e-6 after 3 steps).
    worst = _assert_same_run(out, single_untied, steps=4, weight_atol=1e-5)
    print(f"DDP (accelerate launch): max |w_ddp - w_single| = {worst:.3g}")
    total = _model_bytes(single_untied)
    print(f"DDP bytes per rank: {held} (full parameters: {total})")
    for rank in held:  # a full copy on every rank: parameters and both AdamW moments
        assert rank == {"parameters": total, "optimizer": 2 * total}

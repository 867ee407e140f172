"""One run of the online study: train (our trainer, or TRL's GRPOTrainer), then evaluate every checkpoint.

:func:`execute` runs in a worker process with one torch thread (the runs of a stage share the machine's cores as
separate processes: on 2 cores, two one-thread runs finish sooner than one two-thread run after another). It
returns the run's record; the parent writes it into ``state.json``. A run cut halfway is redone from the start
(a run is minutes long; its folder is overwritten).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from nca_lab.llm.online_study.pipeline import METHODS


def train_argv(spec: dict) -> list[str]:
    """``python -m nca_lab.llm.train`` arguments of an online or offline run of our trainer."""
    method, cfg = METHODS[spec["method"]], spec["cfg"]
    argv = ["--model", spec["mu_dir"], "--data", spec["data"], "--loss", method["loss"],
            "--beta", str(cfg["beta"]), "--lr", str(spec["lr"]), "--lr-scheduler", cfg["lr_scheduler"],
            "--warmup-ratio", str(cfg["warmup_ratio"]), "--batch-size", str(cfg["batch_size"]),
            "--max-steps", str(cfg["steps"]), "--seed", str(spec["seed"]), "--max-length", str(cfg["max_length"]),
            "--save-steps", str(spec["save_steps"]), "--logging-steps", str(spec["logging_steps"]),
            "--output-dir", spec["run_dir"], "--overwrite"]
    if method["loss"] in ("infonca", "nca"):
        argv += ["--alpha", str(cfg["alpha"])]
    if method["kind"] == "online":
        # --no-online-kl: the logged KL estimate costs one more forward per step, which TRL's GRPO (beta 0) does
        # not do; the study measures KL(π‖μ) at the checkpoints, for every method alike
        argv += ["--online", "--no-online-kl", "--reward", "arithmetic", "--online-ref", method["online_ref"],
                 "--num-generations", str(cfg["k"]), "--temperature", str(cfg["temperature"]),
                 "--max-new-tokens", str(cfg["max_new_tokens"])]
    return argv


def _train_ours(spec: dict) -> dict:
    from nca_lab.llm.config import config_from_args
    from nca_lab.llm.train import run

    argv = train_argv(spec)
    summary = run(config_from_args(argv), command=["python", "-m", "nca_lab.llm.train", *argv])
    return {"throughput": summary["throughput"], "log_history": summary["log_history"],
            "command": "python -m nca_lab.llm.train " + " ".join(argv)}


def _train_trl(spec: dict) -> dict:
    import json

    from nca_lab.llm.online_study.trl_grpo import train_grpo

    method, cfg = METHODS[spec["method"]], spec["cfg"]
    with open(spec["data"], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    summary = train_grpo(mu_dir=spec["mu_dir"], rows=rows, output_dir=spec["run_dir"],
                         loss_type=method["loss_type"], scale_rewards=method["scale_rewards"], lr=spec["lr"],
                         seed=spec["seed"], steps=cfg["steps"], batch_size=cfg["batch_size"], k=cfg["k"],
                         max_new_tokens=cfg["max_new_tokens"], temperature=cfg["temperature"],
                         lr_scheduler=cfg["lr_scheduler"], warmup_ratio=cfg["warmup_ratio"],
                         save_steps=spec["save_steps"], logging_steps=spec["logging_steps"])
    return {"throughput": summary["throughput"], "log_history": summary["log_history"],
            "command": f"trl GRPOTrainer {summary['config']}"}


def sample_offline(spec: dict) -> dict:
    """The offline method's data: K samples of μ per training prompt (seed ``sample_seed + seed``), scored by the
    verifier, written once to ``spec["data"]``; returns the sampling's size and cost."""
    import os

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nca_lab.llm.study.sampling import _decode, generate_response_ids, write_scored_jsonl
    from nca_lab.llm.study.task import load_splits

    cfg = spec["cfg"]
    tok = AutoTokenizer.from_pretrained(spec["mu_dir"])
    mu = AutoModelForCausalLM.from_pretrained(spec["mu_dir"], dtype=torch.float32).eval()
    problems = load_splits(level=cfg["level"])["train"][:cfg["steps"] * cfg["batch_size"]]
    t0 = time.perf_counter()
    ids = generate_response_ids(mu, tok, [p.prompt for p in problems], k=cfg["k"],
                                max_new_tokens=cfg["max_new_tokens"], do_sample=True,
                                temperature=cfg["temperature"], batch_size=max(1, cfg["eval_batch_size"] // cfg["k"]),
                                seed=cfg["sample_seed"] + spec["seed"])
    seconds = time.perf_counter() - t0
    path = Path(spec["data"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    written = write_scored_jsonl(str(tmp), problems, [[_decode(tok, r) for r in rs] for rs in ids])
    os.replace(tmp, path)
    tokens = sum(len(r) for rs in ids for r in rs)
    written.update(path=path.name, sampling_seconds=round(seconds, 3), sampling_tokens=tokens,
                   sampling_tokens_per_second=round(tokens / seconds, 1) if seconds > 0 else None)
    return written


def evaluate_checkpoints(spec: dict) -> list[dict]:
    """Greedy accuracy, sampled reward and KL(π‖μ) of each ``checkpoint-N`` on the spec's evaluation prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nca_lab.llm.study.evaluation import evaluate_policy_vs_reference
    from nca_lab.llm.study.task import load_splits

    cfg = spec["cfg"]
    tok = AutoTokenizer.from_pretrained(spec["mu_dir"])
    mu = AutoModelForCausalLM.from_pretrained(spec["mu_dir"], dtype=torch.float32).eval()
    split, n = spec["eval_split"], spec["eval_n"]
    problems = load_splits(level=cfg["level"])[split][:n]
    per_step = cfg["batch_size"] * cfg["k"]
    out = []
    for step in spec["checkpoint_steps"]:
        path = Path(spec["run_dir"]) / f"checkpoint-{step}"
        if not path.is_dir():
            raise OSError(f"{path}: the run saved no checkpoint at step {step}")
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        t0 = time.perf_counter()
        ev = evaluate_policy_vs_reference(policy, mu, tok, problems, n_samples=cfg["eval_samples"],
                                          max_new_tokens=cfg["max_new_tokens"], batch_size=cfg["eval_batch_size"],
                                          seed=cfg["eval_seed"])
        ev.update(step=step, samples=step * per_step, eval_seconds=round(time.perf_counter() - t0, 1))
        out.append(ev)
    return out


def execute(spec: dict) -> dict:
    """Train the run ``spec`` describes and evaluate its checkpoints; its record (checkpoint folders deleted)."""
    import torch

    torch.set_num_threads(1)
    method = METHODS[spec["method"]]
    shutil.rmtree(spec["run_dir"], ignore_errors=True)  # a run cut halfway is redone from the start
    t0 = time.perf_counter()
    sampled = sample_offline(spec) if method["kind"] == "offline" else None
    trained = _train_trl(spec) if method["kind"] == "trl" else _train_ours(spec)
    train_seconds = time.perf_counter() - t0  # the offline method's sampling from μ included
    t1 = time.perf_counter()
    checkpoints = evaluate_checkpoints(spec)
    eval_seconds = time.perf_counter() - t1
    shutil.rmtree(spec["run_dir"], ignore_errors=True)  # weights are not kept: the record is the result
    final = checkpoints[-1]
    return {
        "id": spec["id"], "method": spec["method"], "kind": method["kind"], "loss": method.get("loss"),
        "online_ref": method.get("online_ref"), "loss_type": method.get("loss_type"),
        "scale_rewards": method.get("scale_rewards"), "k": spec["cfg"]["k"], "seed": spec["seed"],
        "lr": spec["lr"], "split": spec["eval_split"], "samples": final["samples"], "accuracy": final["accuracy"],
        "reward": final["reward"], "kl": final["kl"], "device": "cpu (1 torch thread)",
        "seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "throughput": trained["throughput"], "offline_samples": sampled, "command": trained["command"],
        "train_log": [{k: v for k, v in entry.items() if isinstance(v, (int, float))}
                      for entry in trained["log_history"]],
        "checkpoints": checkpoints,
    }

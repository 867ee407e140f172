"""One training run of each trainer on the same saved model and data, with the same quantities measured: nca_lab
through its command line's in-process entry point (:func:`run_ours`), TRL's ``DPOTrainer`` (:func:`run_trl`)."""

from __future__ import annotations

import contextlib
import gc
import io
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["run_ours", "run_trl"]


def _reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def run_ours(model_dir: str, data: str, out: Path, *, loss: str, steps: int, batch_size: int, seq_len: int,
             lr: float, beta: float, seed: int, bf16: bool, flags: tuple[str, ...] = (), logging_steps: int | None = None
             ) -> dict[str, Any]:
    """One nca_lab training run through the CLI's in-process entry point; seconds, memory, losses."""
    from nca_lab.llm.config import config_from_args
    from nca_lab.llm.train import run

    argv = ["--model", model_dir, "--data", data, "--schema", "generic", "--output-dir", str(out), "--overwrite",
            "--loss", loss, "--beta", repr(beta), "--max-steps", str(steps), "--batch-size", str(batch_size),
            "--max-length", str(seq_len), "--lr", repr(lr), "--lr-scheduler", "constant", "--warmup-ratio", "0",
            "--logging-steps", str(logging_steps or steps), "--save-strategy", "no", "--seed", str(seed),
            "--bf16" if bf16 else "--no-bf16", *flags]
    cfg = config_from_args(argv)
    # A fresh output folder per run: the reference cache lives in it, and a cache left by an earlier
    # configuration would let this one skip its reference precompute.
    shutil.rmtree(out, ignore_errors=True)
    _reset_memory()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run(cfg, command="python -m nca_lab.llm.train " + shlex.join(argv))
    tp = summary["throughput"]
    return {
        "train_command": "python -m nca_lab.llm.train " + shlex.join(argv),
        "reference_s": float(tp["reference_seconds"]), "train_s": float(tp["train_runtime_s"]),
        "steps": int(tp["steps"]), "peak_memory_bytes": _peak_memory(),
        "losses": [h["loss"] for h in summary["log_history"] if "loss" in h],
        "tokens_seen": tp["tokens"],
    }


def _trl_tokens(trainer) -> list[tuple[list[int], list[int], list[int]]]:
    ds = trainer.train_dataset
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in ds]


def run_trl(model_dir: str, pairs: list[dict], out: Path, *, loss_type: str, precompute: bool, steps: int,
            batch_size: int, seq_len: int, lr: float, beta: float, seed: int, bf16: bool,
            logging_steps: int | None = None, return_tokens: bool = False) -> dict[str, Any]:
    """One TRL ``DPOTrainer`` run on (prompt, chosen, rejected) strings; same quantities as :func:`run_ours`."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from nca_lab.llm.train import _has_accelerator

    timer = {"s": 0.0}

    class TimedDPOTrainer(DPOTrainer):
        # TRL computes the reference log-probs in its constructor: time exactly that part.
        def _precompute_ref_logps(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                timer["s"] += time.perf_counter() - t0

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=bf16,
        gradient_checkpointing=False, logging_steps=logging_steps or steps, save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, beta=beta, loss_type=[loss_type], precompute_ref_log_probs=precompute,
        max_length=seq_len, dataloader_num_workers=0, use_cpu=not _has_accelerator(), disable_tqdm=True,
    )
    _reset_memory()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = TimedDPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                                  processing_class=tokenizer)
        output = trainer.train()
    result = {
        "trl_config": {"loss_type": loss_type, "precompute_ref_log_probs": precompute, "beta": beta, "bf16": bf16,
                       "batch_size": batch_size, "max_length": seq_len, "gradient_checkpointing": False},
        "reference_s": timer["s"], "train_s": float(output.metrics["train_runtime"]),
        "steps": int(trainer.state.global_step), "peak_memory_bytes": _peak_memory(),
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }
    if return_tokens:
        result["token_sequences"] = _trl_tokens(trainer)
    del trainer, model
    _reset_memory()
    return result

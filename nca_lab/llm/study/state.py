"""The state of one study: what ``<out>/state.json`` holds (rewritten after every run, so an interrupted study
can ``--resume``), the run records, and what every stage shares: the device, the stage budgets, μ and its
tokenizer, the task's splits and the evaluation of a policy with the recipe's settings."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from nca_lab.llm.study.evaluation import evaluate_policy_vs_reference
from nca_lab.llm.study.recipe import METHODS, StudyConfig

__all__ = ["json_safe", "write_json", "Budget", "Study"]


def _versions() -> dict:
    import accelerate
    import datasets
    import torch
    import transformers

    import nca_lab

    return {"python": platform.python_version(), "nca_lab": nca_lab.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__}


def _device_string(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (cuda, torch {torch.__version__})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, " \
           f"{torch.get_num_threads()} torch threads; no GPU)"


def json_safe(obj):
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN: a metric that could
    not be measured, e.g. a mean over no rows, is written as null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def repo_relative(obj, root: Path | None = None):
    """``obj`` with every string path inside the repository written relative to it (a recorded result must not
    name the folders of the machine it ran on); other strings unchanged."""
    prefix = str(root or Path(__file__).resolve().parents[3]) + os.sep
    if isinstance(obj, str):
        return obj.replace(prefix, "")
    if isinstance(obj, dict):
        return {k: repo_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [repo_relative(v, root) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """``obj`` as strict JSON (see :func:`json_safe`), written to ``path`` atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=1, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


class Budget:
    """Wall-clock budget of one stage."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def allows(self, estimate: float = 0.0) -> bool:
        return self.seconds is None or self.elapsed + estimate <= self.seconds


class Study:
    """State and shared objects of one study (its stages are the functions of :mod:`nca_lab.llm.study.stages`).
    ``state`` is what ``state.json`` holds."""

    def __init__(self, cfg: StudyConfig, out: Path, *, command: str, time_budget_s: float | None,
                 results_dir: Path, figures_dir: Path, progress: bool):
        import torch

        self.cfg, self.out, self.progress = cfg, out, progress
        self.results_dir, self.figures_dir = results_dir, figures_dir
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        if cfg.torch_threads and self.device == "cpu":
            # With other processes on the same cores, one thread per process avoids oversubscription (measured:
            # 4x faster per step than 2 threads on the 2-core development machine under load).
            torch.set_num_threads(cfg.torch_threads)
        budgets = {k: float(v) for k, v in cfg.budgets_s.items()}
        if time_budget_s is not None and budgets:
            scale = time_budget_s / sum(budgets.values())
            budgets = {k: v * scale for k, v in budgets.items()}
        self.budgets = budgets
        self.state_path = out / "state.json"
        self.state: dict[str, Any] = {
            "study": "verifiable-reasoning study of the NCA paper's four claims",
            "scale": cfg.scale, "command": command, "device": _device_string(self.device),
            "versions": _versions(), "config": dataclasses.asdict(cfg), "budgets_s": budgets,
            "methods": {m: {"loss": METHODS[m].loss, "fixed": METHODS[m].fixed,
                            "description": METHODS[m].description} for m in cfg.methods},
            "timings": {}, "skipped": [], "runs": [], "selection": {},
        }
        self._mu = None
        self._tokenizer = None

    # -- persistence
    def save(self) -> None:
        write_json(self.state_path, self.state)

    def load(self) -> None:
        saved = json.loads(self.state_path.read_text())
        # Everything measured comes from the file, and so do the command, device and versions that measured it
        # (records carry their own device); every later invocation is appended to "commands".
        commands = saved.get("commands", [saved.get("command")]) + [self.state["command"]]
        for key in ("command", "device", "versions", "task", "base_policy", "data", "data_paths", "runs",
                    "selection", "timings", "skipped"):
            if key in saved:
                self.state[key] = saved[key]
        self.state["commands"] = commands

    def stage_done(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to the stage's timing and save the state."""
        self.state["timings"][f"{name}_s"] = round(self.state["timings"].get(f"{name}_s", 0.0) + seconds, 1)
        self.save()

    # -- shared objects
    @property
    def tokenizer(self):
        """μ's tokenizer (loaded once)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.state["base_policy"]["path"])
        return self._tokenizer

    @property
    def mu(self):
        """μ (loaded once, from ``state["base_policy"]["path"]``)."""
        if self._mu is None:
            self._mu = self.load_model(self.state["base_policy"]["path"])
        return self._mu

    def forget_mu(self) -> None:
        """Drop the loaded μ: the next use of :attr:`mu` loads it from ``state["base_policy"]["path"]``."""
        self._mu = None

    def load_model(self, path: str):
        """A saved model (μ or an aligned policy) on the study's device, in eval mode."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path).to(self.device)
        model.eval()
        return model

    def problems(self, split: str, n: int):
        """The first ``n`` problems of a task split (the train split drawn as large as ``data.n_prompts``)."""
        from nca_lab.llm.study.task import load_splits

        n_train = self.cfg.data.get("n_prompts", 0) if split == "train" else 0
        return load_splits(n_train)[split][:n]

    def evaluate(self, policy, split: str, reference=True) -> dict:
        """The recipe's evaluation (:func:`evaluate_policy_vs_reference`) of ``policy`` on ``split``;
        ``reference=False``: the policy is μ itself (KL = 0)."""
        e = self.cfg.eval
        n = e.get("n_validation", 100) if split == "validation" else e.get("n_test", 200)
        return evaluate_policy_vs_reference(
            policy, self.mu if reference else None, self.tokenizer, self.problems(split, n),
            n_samples=e.get("n_samples", 4), max_new_tokens=e.get("max_new_tokens", 64),
            batch_size=e.get("batch_size", 64), seed=e.get("seed", 1234), device=self.device)

    # -- run records
    def record(self, rec: dict) -> None:
        """Add a run's record (replacing one of the same run) and save the state."""
        runs = [r for r in self.state["runs"] if r["run_id"] != rec["run_id"]]
        self.state["runs"] = runs + [rec]
        self.save()

    def find_run(self, rid: str) -> dict | None:
        """The record of run ``rid``, or ``None``."""
        return next((r for r in self.state["runs"] if r["run_id"] == rid), None)

    def method_k_pairs(self) -> list[tuple[str, int]]:
        """Every (method, K) of the recipe in run order: K descending, then the recipe's methods."""
        return [(m, k) for k in sorted(self.cfg.ks, reverse=True) for m in self.cfg.methods]

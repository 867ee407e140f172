"""The v2 study's recipes (``version: 2`` in ``llm/study/<name>.yaml``, e.g. ``cpu_v2.yaml``, ``tiny_v2.yaml``):
what they hold, how they are checked, and what they expand to (the μ seeds, the sample sets, the coordinate
sweep's grid points, the final runs in the order they are run).

What v2 changes from v1 (:mod:`nca_lab.llm.study.recipe`):

* ``level`` picks the task level (:data:`nca_lab.llm.study.task.LEVELS`) for μ, the data and the evaluation;
* ``mu_seeds``: μ is trained once per μ seed; the ``headline`` methods run on every μ, the others on the first;
* every final seed ``s`` draws its **own** K = 4 samples from μ (sampling seed ``s``) and trains with seed ``s``;
  the sweep uses ``sweep.seed`` (its own sample set and data order), which may not be a final seed, so no
  sweep run is ever reused as a final run;
* ``grids`` include the learning rate ``lr``; the sweep is a coordinate search over ``sweep.order`` whose grid is
  extended (geometrically, by the ratio of the two outermost values) while the chosen value is on an edge, at most
  ``sweep.max_extend`` times per hyperparameter;
* ``align.epochs`` fixes the run length: ``max_steps = epochs · ceil(n_prompts / batch_size)``, with
  ``n_checkpoints`` evenly spaced checkpoints, each evaluated (the training-time path of every final run);
* ``displacement`` (optional): extra runs at **fixed** settings, not the sweep's choice, on the first μ, for the
  regime where a method pushes the best response's likelihood down (claims 3–4): ``{k, seeds, runs: {method:
  [setting, ...]}}``, each setting giving every hyperparameter of the method's grid. They are trained and
  evaluated like final runs (same samples and data order per seed, every checkpoint), right after the first K's
  final runs on the first μ; a setting equal to a final run's is that run, not a second one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nca_lab.llm.study.recipe import METHODS, _PER_RUN_FIELDS, _check_keys

__all__ = ["StudyV2Config", "is_v2_recipe", "load_v2_config", "run_steps", "final_units", "displacement_units"]

_BASE_KEYS = {"size", "n_train", "error_rate", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "bf16",
              "n_eval", "eval_samples", "max_new_tokens"}
_DATA_KEYS = {"n_prompts", "k", "temperature", "max_new_tokens", "batch_size"}
_EVAL_KEYS = {"n_validation", "n_test", "n_samples", "max_new_tokens", "batch_size", "seed", "n_logp_prompts"}
_SWEEP_KEYS = {"seed", "ks", "order", "max_extend", "selection"}
# the swept hyperparameters, in the order run ids and labels name them
GRID_KEYS = ("lr", "beta", "alpha", "margin", "sft_weight")
_RESULT_KEYS = {"dir", "name", "figures_dir", "figures_prefix"}


@dataclass
class StudyV2Config:
    """A v2 study recipe; every key is described in ``llm/study/cpu_v2.yaml``."""

    version: int
    scale: str
    level: str
    base: dict
    data: dict
    align: dict
    grids: dict
    sweep: dict
    methods: list = field(default_factory=lambda: ["nca", "dpo"])
    headline: list = field(default_factory=lambda: ["nca", "dpo"])
    ks: list = field(default_factory=lambda: [4, 2])
    mu_seeds: list = field(default_factory=lambda: [0])
    seeds: list = field(default_factory=lambda: [1, 2, 3, 4, 5])
    n_checkpoints: int = 4
    displacement: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    budgets_s: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    device: str = "auto"
    torch_threads: int | None = None
    description: str = ""
    # what v1's Study expects of a config (unused by v2's stages)
    selection: str = "reward"
    sweep_seed: int = 0


def is_v2_recipe(path: str | os.PathLike) -> bool:
    """Whether the recipe file declares ``version: 2``."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return isinstance(raw, dict) and raw.get("version") == 2


def load_v2_config(path: str | os.PathLike) -> StudyV2Config:
    """Read and check a v2 recipe; every problem is a ``ValueError`` naming the key."""
    from nca_lab.llm.config import TrainConfig
    from nca_lab.llm.study.task import LEVELS

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    where = f"recipe {path.name}"
    _check_keys(where, raw, {f.name for f in dataclasses.fields(StudyV2Config)} - {"selection", "sweep_seed"})
    for required in ("version", "scale", "level", "base", "data", "align", "grids", "sweep"):
        if required not in raw:
            raise ValueError(f"{where}: missing key {required!r}")
    cfg = StudyV2Config(**raw)
    if cfg.version != 2:
        raise ValueError(f"{where}: version: expected 2, got {cfg.version!r}")
    if cfg.level not in LEVELS:
        raise ValueError(f"{where}: level: expected one of {sorted(LEVELS)}, got {cfg.level!r}")
    _check_keys(f"{where}: base", cfg.base, _BASE_KEYS)
    _check_keys(f"{where}: data", cfg.data, _DATA_KEYS)
    _check_keys(f"{where}: eval", cfg.eval, _EVAL_KEYS)
    _check_keys(f"{where}: sweep", cfg.sweep, _SWEEP_KEYS)
    _check_keys(f"{where}: results", cfg.results, _RESULT_KEYS)
    _check_keys(f"{where}: budgets_s", cfg.budgets_s, {"base", "sample", "sweep", "seeds", "report"})
    align_allowed = ({f.name for f in dataclasses.fields(TrainConfig)} - _PER_RUN_FIELDS
                     - {"lr", "max_steps", "save_strategy", "save_steps"})
    _check_keys(f"{where}: align", cfg.align, align_allowed)
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"{where}: methods: unknown method {m!r}; known: {', '.join(METHODS)}")
        if m not in cfg.grids:
            raise ValueError(f"{where}: grids: no grid for method {m!r}")
        _check_keys(f"{where}: grids.{m}", cfg.grids[m], set(GRID_KEYS))
        if "lr" not in cfg.grids[m]:
            raise ValueError(f"{where}: grids.{m}: needs an lr list (the learning rate is swept in v2)")
        for name, values in cfg.grids[m].items():
            if not isinstance(values, list) or not values or any(not (isinstance(v, (int, float)) and v > 0)
                                                                 for v in values):
                raise ValueError(f"{where}: grids.{m}.{name}: expected a non-empty list of positive numbers")
    if any(m not in cfg.methods for m in cfg.headline):
        raise ValueError(f"{where}: headline: every headline method must be in methods")
    if not cfg.ks or any(k not in (2, 4) for k in cfg.ks):
        raise ValueError(f"{where}: ks: expected a subset of [2, 4], got {cfg.ks!r}")
    if not cfg.mu_seeds or not cfg.seeds:
        raise ValueError(f"{where}: mu_seeds, seeds: must be non-empty")
    if cfg.sweep.get("seed", 0) in cfg.seeds:
        raise ValueError(f"{where}: sweep.seed {cfg.sweep.get('seed', 0)} is a final seed; the sweep's runs may "
                         "never be reused as final runs, so the seeds must be disjoint")
    if any(k not in cfg.ks for k in cfg.sweep.get("ks", cfg.ks)):
        raise ValueError(f"{where}: sweep.ks: must be a subset of ks")
    if cfg.sweep.get("selection", "reward") not in ("reward", "accuracy"):
        raise ValueError(f"{where}: sweep.selection: expected 'reward' or 'accuracy'")
    if not (isinstance(cfg.n_checkpoints, int) and cfg.n_checkpoints >= 1):
        raise ValueError(f"{where}: n_checkpoints: expected a positive int")
    if run_steps(cfg) % cfg.n_checkpoints:
        raise ValueError(f"{where}: n_checkpoints {cfg.n_checkpoints} does not divide the run's {run_steps(cfg)} "
                         "steps (epochs x ceil(n_prompts / batch_size))")
    _check_displacement(where, cfg)
    cfg.selection = cfg.sweep.get("selection", "reward")
    cfg.sweep_seed = cfg.sweep.get("seed", 0)
    return cfg


def run_steps(cfg: StudyV2Config) -> int:
    """Optimizer steps of every alignment run: ``epochs · ceil(n_prompts / batch_size)``."""
    per_epoch = math.ceil(cfg.data["n_prompts"] / cfg.align.get("batch_size", 8))
    return int(round(cfg.align.get("epochs", 1) * per_epoch))


def final_units(cfg: StudyV2Config) -> list[tuple[str, int, int, int]]:
    """Every final run ``(method, K, μ seed, seed)`` in run order: the first μ at the first K (seed-major, so a cut
    leaves every method with the same seeds), then the headline methods on the other μs at that K, then the same
    for the next K."""
    out = []
    for k in cfg.ks:
        out += [(m, k, cfg.mu_seeds[0], s) for s in cfg.seeds for m in cfg.methods]
        out += [(m, k, mu, s) for mu in cfg.mu_seeds[1:] for s in cfg.seeds for m in cfg.headline]
    return out


def _check_displacement(where: str, cfg: StudyV2Config) -> None:
    d = cfg.displacement
    if not d:
        return
    _check_keys(f"{where}: displacement", d, {"k", "seeds", "runs"})
    if d.get("k", 4) not in cfg.ks:
        raise ValueError(f"{where}: displacement.k: {d.get('k')!r} is not one of ks {cfg.ks}")
    seeds = d.get("seeds", [])
    if not seeds or any(s not in cfg.seeds for s in seeds):
        raise ValueError(f"{where}: displacement.seeds: expected a non-empty subset of seeds {cfg.seeds} (their "
                         f"sample sets are the final runs'), got {seeds!r}")
    runs = d.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise ValueError(f"{where}: displacement.runs: expected {{method: [setting, ...]}}")
    for m, settings in runs.items():
        if m not in cfg.methods:
            raise ValueError(f"{where}: displacement.runs: {m!r} is not one of methods {cfg.methods}")
        if not isinstance(settings, list) or not settings:
            raise ValueError(f"{where}: displacement.runs.{m}: expected a non-empty list of settings")
        for i, st in enumerate(settings):
            want = set(cfg.grids[m])
            if not isinstance(st, dict) or set(st) != want or any(
                    not (isinstance(v, (int, float)) and v > 0) for v in st.values()):
                raise ValueError(f"{where}: displacement.runs.{m}[{i}]: expected a positive value for each of "
                                 f"{', '.join(sorted(want))} (the method's grid), got {st!r}")


def displacement_units(cfg: StudyV2Config) -> list[tuple[str, int, dict, int, int]]:
    """The ``displacement`` runs ``(method, K, setting, μ seed, seed)`` in run order (seed-major, so a cut leaves
    every setting with the same seeds); settings as floats, in the recipe's order."""
    d = cfg.displacement
    if not d:
        return []
    return [(m, d.get("k", 4), {**METHODS[m].fixed, **{p: float(v) for p, v in st.items()}}, cfg.mu_seeds[0], s)
            for s in d["seeds"] for m, settings in d["runs"].items() for st in settings]

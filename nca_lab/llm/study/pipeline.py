"""The study's driver: :func:`run_study` runs the chosen stages of a recipe in pipeline order, and continues a
study (``--resume``, or a subset of ``--stages``) from its ``state.json``; :func:`main` is
``python -m nca_lab.llm.study``.

Outputs: ``<out>/state.json`` (rewritten after every run, so an interrupted study can ``--resume``), and in the
report stage ``<results-dir>/study_<scale>.json`` + ``.md`` and ``<figures-dir>/llm_<scale>_*.png`` + ``.json``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from nca_lab.llm.study.recipe import RECIPES_DIR, REPO_ROOT, load_study_config, recipe_path
from nca_lab.llm.study.stages import (STAGES, stage_base, stage_report, stage_sample, stage_seeds, stage_sweep,
                                      stage_task)
from nca_lab.llm.study.state import Study

__all__ = ["run_study", "main"]

# The stages before the report, by name (the report returns the result: run_study returns it).
_RUN_STAGE = {"task": stage_task, "base": stage_base, "sample": stage_sample, "sweep": stage_sweep,
              "seeds": stage_seeds}


def prepare_out_dir(out_dir: Path, *, fresh: bool, overwrite: bool) -> None:
    """Create the study's work directory.  A ``fresh`` study refuses a non-empty one unless ``overwrite``, and
    then deletes it only if it holds a study (a ``state.json``): never a folder of something else."""
    if fresh and out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"out: {str(out_dir)!r} is not empty; pass --resume to continue its study or "
                             "--overwrite to start over")
        if not (out_dir / "state.json").is_file():
            raise ValueError(f"out: {str(out_dir)!r} holds no study (no state.json); refusing to delete it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _quiet_libraries() -> None:
    """The driver's own progress bars are the ones to read: silence the per-run bars and info logs."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_study(scale: str | None = None, *, config: str | None = None, out: str | None = None,
              stages: Sequence[str] = STAGES, time_budget_s: float | None = None, resume: bool = False,
              overwrite: bool = False, results_dir: str | None = None, figures_dir: str | None = None,
              progress: bool = True, command: str | None = None, stop_after_units: int | None = None,
              methods: Sequence[str] | None = None, workers: int = 1) -> dict:
    """Run the study's ``stages`` (in pipeline order) for the recipe of ``scale`` (or the file ``config``).

    ``out`` (default ``runs/llm_study_<scale>``) holds μ, the data, the runs and ``state.json``.  The report goes
    to ``results_dir`` / ``figures_dir`` (defaults: ``llm/results`` and ``figures`` for the ``cpu`` and ``gpu``
    scales, ``<out>`` and ``<out>/figures`` otherwise).  A subset of stages, or ``resume``, continues the study
    in ``out`` (runs already recorded are not repeated); a fresh study refuses a non-empty ``out`` unless
    ``overwrite``.  Returns the result written to ``study_<scale>.json`` (or the state, without ``report``)."""
    if (scale is None) == (config is None):
        raise ValueError("give exactly one of scale (a recipe under llm/study/) or config (a recipe file)")
    from nca_lab.llm.study.recipe_v2 import is_v2_recipe

    recipe = config if config is not None else recipe_path(scale)
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    if Path(recipe).is_file() and is_v2_recipe(recipe):  # a v2 recipe: its own driver (pipeline_v2)
        from nca_lab.llm.study.pipeline_v2 import run_study_v2

        if workers > 1:
            if methods is not None or stop_after_units is not None:
                raise ValueError("workers: splits every method over processes itself; give it without --methods "
                                 "and --stop-after-units")
            from nca_lab.llm.study.recipe_v2 import load_v2_config
            from nca_lab.llm.study.workers import run_with_workers

            out = out or str(REPO_ROOT / "runs" / f"llm_study_{load_v2_config(str(recipe)).scale}")
            return run_with_workers(str(recipe), workers=workers, out=out, stages=stages, time_budget_s=time_budget_s,
                                    resume=resume, overwrite=overwrite, results_dir=results_dir,
                                    figures_dir=figures_dir, progress=progress, command=command)

        return run_study_v2(str(recipe), out=out, stages=stages, time_budget_s=time_budget_s, resume=resume,
                            overwrite=overwrite, results_dir=results_dir, figures_dir=figures_dir, progress=progress,
                            command=command, stop_after_units=stop_after_units, methods=methods)
    if stop_after_units is not None:
        raise ValueError("stop_after_units: only v2 recipes (version: 2) are cut between units")
    if methods is not None or workers > 1:
        raise ValueError(f"{'methods' if methods is not None else 'workers'}: only v2 recipes (version: 2) split "
                         "their methods over processes")
    cfg = load_study_config(config if config is not None else recipe_path(scale))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages: unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    out_dir = Path(out) if out is not None else REPO_ROOT / "runs" / f"llm_study_{cfg.scale}"
    publish = cfg.scale in ("cpu", "gpu")
    res_dir = Path(results_dir) if results_dir else (REPO_ROOT / "llm" / "results" if publish else out_dir)
    fig_dir = Path(figures_dir) if figures_dir else (REPO_ROOT / "figures" if publish else out_dir / "figures")
    continuing = resume or list(stages) != list(STAGES)
    state_file = out_dir / "state.json"
    if continuing and not state_file.is_file() and stages[0] not in ("task", "base"):
        raise ValueError(f"out: no study to continue in {str(out_dir)!r} (state.json missing); run the earlier "
                         "stages first")
    prepare_out_dir(out_dir, fresh=not continuing, overwrite=overwrite)
    _quiet_libraries()
    study = Study(cfg, out_dir, command=command or "python -m nca_lab.llm.study", time_budget_s=time_budget_s,
                  results_dir=res_dir, figures_dir=fig_dir, progress=progress)
    if continuing and state_file.is_file():
        study.load()
    study.save()
    for stage in stages:
        if progress:
            print(f"[study {cfg.scale}] stage {stage} (budget {study.budgets.get(stage, 'none')} s)", flush=True)
        if stage == "base" and "base_policy" in study.state and resume:
            continue
        if stage == "sample" and "data_paths" in study.state and resume:
            continue
        if stage == "report":
            return stage_report(study)
        _RUN_STAGE[stage](study)
    return study.state


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m nca_lab.llm.study --scale tiny|cpu|gpu [--out DIR] [--time-budget-s N] [--stages ...]``."""
    import nca_lab.llm.study as study_package

    parser = argparse.ArgumentParser(prog="python -m nca_lab.llm.study",
                                     description=study_package.__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    scales = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) or None
    which.add_argument("--scale", choices=scales,
                       help="recipe llm/study/<scale>.yaml (choices: %(choices)s; tiny: a smoke test, cpu: the "
                            "recorded CPU study, gpu: the GPU scale); this or --config is required")
    which.add_argument("--config", help="a recipe file instead of --scale (default: none)")
    parser.add_argument("--out", help="work directory: mu, data, runs, state.json (default: runs/llm_study_<scale> "
                                      "in the repository)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="stages to run; a subset continues the study in --out (choices: %(choices)s; default: "
                             "all, in this order)")
    parser.add_argument("--time-budget-s", type=float,
                        help="total budget in seconds; the recipe's stage budgets are scaled to it (default: the "
                             "recipe's own budgets)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study in --out; recorded runs are not repeated (default: off)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the study in --out and start over (default: off; a fresh study refuses a "
                             "non-empty --out)")
    parser.add_argument("--results-dir", help="where study_<scale>.json/.md go (default: llm/results for the cpu "
                                              "and gpu scales, --out otherwise)")
    parser.add_argument("--figures-dir", help="where llm_<scale>_*.png/.json go (default: figures/ for the cpu and "
                                              "gpu scales, <out>/figures otherwise)")
    parser.add_argument("--stop-after-units", type=int,
                        help="v2 recipes: stop after N finished units of work (a μ, a sample set, a run, a "
                             "checkpoint evaluation); --resume continues (default: no limit)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="v2 recipes: train only these methods (sweep and final runs), so that one process per "
                             "group of methods can share --out and use one core each; run the task, base and sample "
                             "stages first without it (default: every method of the recipe)")
    parser.add_argument("--workers", type=int, default=1,
                        help="v2 recipes: run the sweep and final runs in this many processes (one per group of "
                             "methods, one core each) after the shared stages; the result is the single-process "
                             "study's (default: 1)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (default: off, progress shown)")
    args = parser.parse_args(argv)
    command = "python -m nca_lab.llm.study " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        run_study(args.scale, config=args.config, out=args.out, stages=args.stages, time_budget_s=args.time_budget_s,
                  resume=args.resume, overwrite=args.overwrite, results_dir=args.results_dir,
                  figures_dir=args.figures_dir, progress=not args.no_progress, command=command,
                  stop_after_units=args.stop_after_units, methods=args.methods, workers=args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

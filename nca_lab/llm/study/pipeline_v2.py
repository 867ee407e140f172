"""The v2 study's driver (:func:`run_study_v2`; ``python -m nca_lab.llm.study --config llm/study/cpu_v2.yaml``
hands a ``version: 2`` recipe here).  It runs the chosen stages in order; ``--resume`` continues from
``<out>/state.json``, skipping every finished unit (a μ, a sample set, a run, a checkpoint evaluation), however
many times the study was cut.  ``--time-budget-s`` stops the study between two units once the next one (estimated
from the finished ones of its kind) would pass the budget; the report stage then still runs on what is finished
(the report stage alone, ``--stages report --resume``, writes the results of a partial or running study and
leaves ``state.json`` as it is).

Results: ``<results.dir>/<results.name>.json`` + ``.md`` and ``<results.figures_dir>/<results.figures_prefix>_*``
(the recipe's ``results``; paths relative to the repository root; default ``<out>`` and ``<out>/figures``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

from nca_lab.llm.study.recipe import REPO_ROOT
from nca_lab.llm.study.recipe_v2 import load_v2_config

__all__ = ["run_study_v2", "STAGES_V2"]

STAGES_V2 = ("task", "base", "sample", "sweep", "seeds", "report")


def run_study_v2(config: str, *, out: str | None = None, stages: Sequence[str] = STAGES_V2,
                 time_budget_s: float | None = None, resume: bool = False, overwrite: bool = False,
                 results_dir: str | None = None, figures_dir: str | None = None, progress: bool = True,
                 command: str | None = None, stop_after_units: int | None = None,
                 methods: Sequence[str] | None = None) -> dict:
    """Run ``stages`` of the v2 recipe ``config``; returns the report (when the report stage ran) or the state.

    ``stop_after_units`` stops after that many finished units (a deterministic cut, as a kill between two units
    would leave it); ``resume`` continues; a fresh study refuses a non-empty ``out`` unless ``overwrite``.
    ``methods``: train only these of the recipe's methods (sweep and final runs), so that several processes can
    share one ``out`` (one per group of methods: their saves merge, see :mod:`nca_lab.llm.study.shared_state`);
    the shared stages (task, base, sample) must be finished first, by a run without ``methods``."""
    from nca_lab.llm.study.pipeline import _quiet_libraries, prepare_out_dir
    from nca_lab.llm.study.results_v2 import write_report
    from nca_lab.llm.study.shared_state import lock_methods
    from nca_lab.llm.study.stages_v2 import STAGE_FUNCS, StopStudy, StudyV2

    cfg = load_v2_config(config)
    unknown = [s for s in stages if s not in STAGES_V2]
    if unknown:
        raise ValueError(f"stages: unknown stage {unknown[0]!r}; stages: {', '.join(STAGES_V2)}")
    stages = [s for s in STAGES_V2 if s in stages]
    if methods is not None:
        bad = [m for m in methods if m not in cfg.methods]
        if bad or not methods:
            raise ValueError((f"methods: {bad[0]} is not a method of the recipe" if bad else "methods: none given")
                             + f"; its methods: {', '.join(cfg.methods)}")
        shared = [s for s in stages if s in ("task", "base", "sample")]
        if shared:
            raise ValueError(f"methods: a process for some methods runs only the sweep, seeds and report stages; "
                             f"run {', '.join(shared)} first without --methods (then --stages sweep seeds report)")
    out_dir = Path(out) if out is not None else REPO_ROOT / "runs" / f"llm_study_{cfg.scale}"
    r = cfg.results
    res_dir = Path(results_dir) if results_dir else (REPO_ROOT / r["dir"] if "dir" in r else out_dir)
    fig_dir = Path(figures_dir) if figures_dir else (REPO_ROOT / r["figures_dir"] if "figures_dir" in r
                                                     else out_dir / "figures")
    state_file = out_dir / "state.json"
    continuing = resume or list(stages) != list(STAGES_V2)
    if continuing and not state_file.is_file() and stages[0] != "task":
        raise ValueError(f"out: no study to continue in {str(out_dir)!r} (state.json missing)")
    prepare_out_dir(out_dir, fresh=not continuing, overwrite=overwrite)
    _quiet_libraries()
    study = StudyV2(cfg, out_dir, command=command or "python -m nca_lab.llm.study", time_budget_s=time_budget_s,
                    stop_after_units=stop_after_units, methods=methods, results_dir=res_dir, figures_dir=fig_dir,
                    progress=progress)
    if continuing and state_file.is_file():
        study.load()
    if methods is not None and stages != ["report"]:
        from nca_lab.llm.study.stages_v2 import sample_keys

        missing = [f"mu{m}_s{s}" for m, s in sample_keys(cfg) if f"mu{m}_s{s}" not in study.state["samples"]]
        if missing:
            raise ValueError(f"methods: the shared stages are not finished in {str(out_dir)!r} (sample set "
                             f"{missing[0]} missing); run --stages task base sample first without --methods")
    if stages == ["report"]:
        # report only: read the state, never write it (the study may be running in another process)
        return write_report(study)
    with contextlib.ExitStack() as locks:
        if any(s in stages for s in ("sweep", "seeds")):
            lock_methods(out_dir, study.methods, locks)
        study.state["stopped"] = None
        study.save()
        for stage in stages:
            if stage == "report":
                return write_report(study)
            if progress:
                print(f"[study {cfg.scale}] stage {stage}", flush=True)
            t0, c0 = time.monotonic(), time.process_time()
            try:
                STAGE_FUNCS[stage](study)
            except StopStudy as why:
                study.state["stopped"] = f"{stage}: {why}"
                study.state.setdefault("stopped_by", {})[study.process_key] = study.state["stopped"]
                if progress:
                    print(f"[study {cfg.scale}] stopped in stage {stage} ({why}); continue with --resume", flush=True)
                break
            finally:
                tm = study.state["timings"]
                tm[f"{stage}_wall_s"] = round(tm.get(f"{stage}_wall_s", 0.0) + time.monotonic() - t0, 1)
                tm[f"{stage}_cpu_s"] = round(tm.get(f"{stage}_cpu_s", 0.0) + time.process_time() - c0, 1)
                study.save()
    if "report" in stages:
        return write_report(study)
    return study.state

"""``--workers N`` for v2 recipes: the shared stages in this process, then the sweep and final runs split by
method over N child processes on the same ``--out`` (one torch thread each, so N cores), then the report.

Each child is ``python -m nca_lab.llm.study --config … --out … --resume --stages sweep seeds --methods GROUP``;
their saves merge under a lock (:mod:`nca_lab.llm.study.shared_state`), so the result is the single-process
study's (``tests/test_llm_study_v2.py`` checks it number for number). A cut child is continued by ``--resume``
like any other study.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["method_groups", "run_with_workers"]


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def method_groups(cfg, n: int) -> list[list[str]]:
    """The recipe's methods in ``n`` groups of about equal work: greedily, the method with the most final runs
    (the headline methods also run on every other μ) to the group with the fewest so far; empty groups dropped.
    Within a group the recipe's order is kept."""
    from nca_lab.llm.study.recipe_v2 import final_units

    units = {m: sum(1 for u in final_units(cfg) if u[0] == m) for m in cfg.methods}
    groups: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for m in sorted(cfg.methods, key=lambda m: (-units[m], cfg.methods.index(m))):
        i = load.index(min(load))
        groups[i].append(m)
        load[i] += units[m]
    return [sorted(g, key=cfg.methods.index) for g in groups if g]


def run_with_workers(config: str, *, workers: int, out: str, stages: Sequence[str], time_budget_s: float | None,
                     resume: bool, overwrite: bool, results_dir: str | None, figures_dir: str | None,
                     progress: bool, command: str | None) -> dict:
    """Run ``stages`` of the v2 recipe ``config`` with the sweep and seeds stages over ``workers`` processes.

    A child stopped by its time budget records why under its pid in ``state["stopped_by"]``; after the children,
    ``state["stopped"]`` lists those reasons (or is null). If this process is interrupted, its children are
    terminated (their finished units are saved; ``--resume`` continues)."""
    from nca_lab.llm.study.pipeline import prepare_out_dir
    from nca_lab.llm.study.pipeline_v2 import STAGES_V2, run_study_v2
    from nca_lab.llm.study.recipe_v2 import load_v2_config
    from nca_lab.llm.study.shared_state import locked_save
    from nca_lab.llm.study.state import write_json

    cfg = load_v2_config(config)
    unknown = [s for s in stages if s not in STAGES_V2]
    if unknown:
        raise ValueError(f"stages: unknown stage {unknown[0]!r}; stages: {', '.join(STAGES_V2)}")
    continuing = resume or [s for s in STAGES_V2 if s in stages] != list(STAGES_V2)
    state_path = Path(out) / "state.json"
    if continuing and not state_path.is_file() and "task" not in stages:
        raise ValueError(f"out: no study to continue in {out!r} (state.json missing)")
    prepare_out_dir(Path(out), fresh=not continuing, overwrite=overwrite)
    kw = dict(out=out, results_dir=results_dir, figures_dir=figures_dir, progress=progress, command=command)
    t0 = time.monotonic()
    shared = [s for s in ("task", "base", "sample") if s in stages]
    state = None
    if shared:
        state = run_study_v2(config, stages=shared, time_budget_s=time_budget_s, resume=True, **kw)
    parallel = [s for s in ("sweep", "seeds") if s in stages]
    failed: list[str] = []
    if parallel and not (state and state.get("stopped")):
        groups = method_groups(cfg, workers)
        argv = [sys.executable, "-m", "nca_lab.llm.study", "--config", config, "--out", out, "--resume",
                "--stages", *parallel] + ([] if progress else ["--no-progress"])
        if time_budget_s is not None:
            argv += ["--time-budget-s", str(max(1.0, time_budget_s - (time.monotonic() - t0)))]
        logs = [Path(out) / f"worker_{i}.log" for i in range(len(groups))]
        if progress:
            print(f"[study {cfg.scale}] {len(groups)} workers: " + " | ".join(" ".join(g) for g in groups)
                  + f" (logs, appended: {', '.join(str(p) for p in logs)})", flush=True)
        procs = []
        # SIGTERM (a job scheduler, `kill`, a session ending) would end this process without its `finally`, leaving
        # the children training on their own; raising SystemExit instead runs it, so they are terminated too.
        # (SIGINT already raises KeyboardInterrupt — unless the shell started this process with SIGINT ignored,
        # as `cmd &` in a script does: there, stop it with SIGTERM.)
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            for group, log in zip(groups, logs):
                with open(log, "a") as fh:
                    procs.append(subprocess.Popen([*argv, "--methods", *group], stdout=fh, stderr=subprocess.STDOUT))
            codes = [p.wait() for p in procs]
        finally:
            signal.signal(signal.SIGTERM, previous)
            for p in procs:  # interrupted: no child outlives its parent (each holds its methods' locks)
                if p.poll() is None:
                    p.terminate()
                    p.wait()
        failed = [f"{' '.join(g)} (exit {c}, log {log})" for g, c, log in zip(groups, codes, logs) if c != 0]
        done = json.loads(state_path.read_text())
        stops = [f"{' '.join(g)}: {why}" for g, p in zip(groups, procs)
                 for key, why in done.get("stopped_by", {}).items() if key.endswith(f"pid {p.pid}") and why]
        done["stopped"] = "; ".join(stops) or None
        locked_save(state_path, done, write_json, done.get("timings"))  # its timings are the file's: add none
    result = run_study_v2(config, stages=["report"], resume=True, **kw) if "report" in stages else \
        json.loads(state_path.read_text())
    if failed:
        raise ValueError(f"workers: {len(failed)} worker(s) failed: {'; '.join(failed)}; after fixing the cause, "
                         "--resume continues" + (" (the report above covers what finished)" if "report" in stages
                                                  else ""))
    return result

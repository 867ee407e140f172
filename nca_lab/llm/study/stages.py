"""The study's stages, one function each, in pipeline order (``--stages``; each has a time budget, see the recipe's
``budgets_s``):

``task``    (:func:`stage_task`) the fixed splits and the character tokenizer of :mod:`nca_lab.llm.study.task`;
``base``    (:func:`stage_base`) train μ from scratch (:func:`nca_lab.llm.study.base_policy.train_base_policy`) and
            evaluate it on the test split (the baseline every aligned policy is compared with);
``sample``  (:func:`stage_sample`) K = 4 responses per training prompt from μ (temperature 1, no truncation), scored
            by the exact verifier, written as generic JSONL (``data_k4.jsonl``).  The K = 2 dataset
            (``data_k2.jsonl``) is the **first 2 of the same 4 samples**, so K = 2 and K = 4 differ only by the two
            extra responses;
``sweep``   (:func:`stage_sweep`) one seed (``sweep_seed``) per grid point of each (method, K); each run is
            evaluated on the validation split; the setting with the highest validation **mean sampled reward** (the
            quantity the alignment optimises; ties: higher greedy accuracy, then lower KL, then grid order) is chosen;
``seeds``   (:func:`stage_seeds`) the chosen setting with every seed of ``seeds`` (the sweep's run is reused for
            ``sweep_seed``); each run evaluated on the test split (greedy accuracy, mean sampled reward, KL(π‖μ) from
            samples) and on a fixed set of training prompts (change of log π of the best and the worst response);
``report``  (:func:`stage_report`) summary table (mean ± std over seeds), claim-by-claim comparisons, figures,
            results JSON + Markdown.

Every alignment run calls the trainer's in-process entry point :func:`nca_lab.llm.train.run` (what
``python -m nca_lab.llm.train`` runs), with a config built by the CLI's own parser from the equivalent command
line, which is recorded with the run.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from pathlib import Path

from nca_lab.llm.study.evaluation import data_statistics, logp_change, read_rows
from nca_lab.llm.study.recipe import METHODS, grid_settings, run_id, train_argv
from nca_lab.llm.study.report import claims, markdown_report
from nca_lab.llm.study.state import Budget, Study, json_safe, repo_relative, write_json
from nca_lab.llm.study.stats import mean, select_best, summarise

__all__ = ["STAGES", "RECORD_KEYS", "stage_task", "stage_base", "stage_sample", "stage_sweep", "stage_seeds",
           "stage_report"]

STAGES = ("task", "base", "sample", "sweep", "seeds", "report")
# Keys every alignment-run record in llm/results/study_*.json carries, whatever else it holds: what was run (method,
# K, seed, β, α), what it measured (accuracy, reward, KL to μ) and on what device.
RECORD_KEYS = ("method", "k", "seed", "beta", "alpha", "accuracy", "reward", "kl", "device")


def stage_task(study: Study) -> None:
    """Record the task: its splits (fixed by their seeds), the prompts used and the tokenizer's size."""
    from nca_lab.llm.study.task import DIFFICULTY, SPLITS, build_task_tokenizer

    t0 = time.monotonic()
    tokenizer = build_task_tokenizer()
    study.state["task"] = {
        # the task's name as every recorded state has it (the module is nca_lab.llm.study.task since the move)
        "module": "nca_lab.llm.task", "difficulty_ops": list(DIFFICULTY),
        "splits": {k: {"seed": v.seed, "size": v.size} for k, v in SPLITS.items()},
        "used": {"train_prompts": study.cfg.data.get("n_prompts"),
                 "validation_prompts": study.cfg.eval.get("n_validation", 100),
                 "test_prompts": study.cfg.eval.get("n_test", 200)},
        "vocab_size": len(tokenizer),
    }
    study.stage_done("task", time.monotonic() - t0)


def stage_base(study: Study) -> None:
    """Train μ (``<out>/mu``), evaluated on the validation split while training and on the test split."""
    from nca_lab.llm.study.base_policy import train_base_policy

    t0 = time.monotonic()
    path = study.out / "mu"
    kwargs = dict(study.cfg.base)
    budget = study.budgets.get("base")
    # The budget covers training and evaluation; train_base_policy's own budget covers its training loop.
    result = train_base_policy(str(path), device=study.device, progress=study.progress,
                               time_budget_s=0.8 * budget if budget else None, **kwargs)
    result.pop("model")
    study.forget_mu()
    study.state["base_policy"] = {**{k: v for k, v in result.items() if k != "eval"}, "path": str(path),
                                  "validation": result["eval"]}
    if result.get("stopped_by_time_budget"):
        study.state["skipped"].append(f"base: μ stopped by the time budget after {result['steps_done']} of "
                                      f"{result['steps']} steps")
    study.state["base_policy"]["test"] = study.evaluate(study.mu, "test", reference=False)
    study.stage_done("base", time.monotonic() - t0)


def stage_sample(study: Study) -> None:
    """K = 4 scored samples from μ per training prompt (``data_k4.jsonl``); K = 2: the first two of them."""
    from tqdm.auto import tqdm

    from nca_lab.llm.study.sampling import sample_responses, write_scored_jsonl

    t0 = time.monotonic()
    budget = Budget(study.budgets.get("sample"))
    d = study.cfg.data
    problems = study.problems("train", d["n_prompts"])
    chunk = d.get("batch_size", 64)
    responses: list[list[str]] = []
    for start in tqdm(range(0, len(problems), chunk), desc="sample K=4 from μ", disable=not study.progress):
        if not budget.allows():
            study.state["skipped"].append(f"sample: stopped by the time budget after {len(responses)} of "
                                          f"{len(problems)} prompts")
            break
        # Seed per chunk (the sampler seeds batch i with seed + i inside a chunk): distinct seeds per chunk.
        responses += sample_responses(study.mu, study.tokenizer, [p.prompt for p in problems[start:start + chunk]],
                                      k=4, max_new_tokens=d.get("max_new_tokens", 64),
                                      temperature=d.get("temperature", 1.0), batch_size=chunk,
                                      seed=d.get("seed", 0) + 10_000 * (start // chunk), device=study.device)
    problems = problems[:len(responses)]
    path4 = study.out / "data_k4.jsonl"
    report4 = write_scored_jsonl(str(path4), problems, responses)
    rows4 = read_rows(path4)
    # K = 2: the first two of the same samples (rows re-scored identically: the verifier is deterministic).
    path2 = study.out / "data_k2.jsonl"
    report2 = write_scored_jsonl(str(path2), problems, [rs[:2] for rs in responses])
    rows2 = read_rows(path2)
    study.state["data_paths"] = {"4": str(path4), "2": str(path2)}
    study.state["data"] = {"k4": {**data_statistics(rows4), "write": report4},
                           "k2": {**data_statistics(rows2), "write": report2}}
    study.stage_done("sample", time.monotonic() - t0)


def _run_alignment(study: Study, method: str, k: int, setting: dict, seed: int, stage: str) -> dict:
    """One alignment run via the trainer's in-process entry point; returns its record (no evaluation)."""
    from nca_lab.llm.config import config_from_args
    from nca_lab.llm.train import run

    rid = run_id(method, k, setting, seed)
    run_dir = study.out / "runs" / rid
    argv = train_argv(model=study.state["base_policy"]["path"], data=study.state["data_paths"][str(k)],
                      method=method, setting=setting, seed=seed, output_dir=str(run_dir),
                      ref_cache_dir=str(study.out / "ref_cache"), align=study.cfg.align)
    cfg = config_from_args(argv)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(run_dir.parent / f"{rid}.log", "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        summary = run(cfg, command="python -m nca_lab.llm.train " + shlex.join(argv))
    train_s = time.monotonic() - t0
    history = [h for h in summary["log_history"] if "loss" in h]
    beta_metric = summary["loss"]["metric_beta"]
    trajectory = {
        "step": [h["step"] for h in history], "loss": [h["loss"] for h in history],
        # the trainer's logps/chosen and logps/rejected: batch means of log π of the best / worst response
        "logps/best": [h.get("logps/chosen") for h in history],
        "logps/worst": [h.get("logps/rejected") for h in history],
        # rewards/chosen / β = batch mean of log π − log μ of the best response (reference-based losses)
        "logratio/best": [h["rewards/chosen"] / beta_metric if "rewards/chosen" in h else None for h in history],
        "logratio/worst": [h["rewards/rejected"] / beta_metric if "rewards/rejected" in h else None
                           for h in history],
    }
    hparams = summary["loss"]["hparams"]
    return {
        "run_id": rid, "stage": stage, "method": method, "loss": METHODS[method].loss, "k": k, "seed": seed,
        "beta": hparams.get("beta"), "alpha": hparams.get("alpha"), "hparams": hparams, "setting": setting,
        "accuracy": None, "reward": None, "kl": None, "kl_se": None, "eval_split": None,
        "validation": None, "test": None, "logp_best_change": None, "logp_worst_change": None,
        "device": study.state["device"], "steps": summary["throughput"]["steps"],
        "train_seconds": round(train_s, 2), "train_runtime_s": summary["throughput"]["train_runtime_s"],
        "train_command": "python -m nca_lab.llm.train " + shlex.join(argv),
        "output_dir": str(run_dir), "trajectory": trajectory,
    }


def _evaluate_record(study: Study, rec: dict, split: str) -> None:
    """Evaluate a run's policy on ``split`` into its record; on the test split also the change of log π of the
    best and the worst response on the first ``eval.n_logp_prompts`` training rows."""
    t0 = time.monotonic()
    policy = study.load_model(rec["output_dir"])
    ev = study.evaluate(policy, split)
    rec[split] = ev
    rec.update(accuracy=ev["accuracy"], reward=ev["reward"], kl=ev["kl"], kl_se=ev["kl_se"], eval_split=split)
    if split == "test":
        e = study.cfg.eval
        rows = read_rows(Path(study.state["data_paths"][str(rec["k"])]))[:e.get("n_logp_prompts", 128)]
        change = logp_change(policy, study.mu, study.tokenizer, rows, batch_size=e.get("batch_size", 64),
                             max_length=study.cfg.align.get("max_length", 1024), device=study.device)
        rec.update(logp_best_change=change["best"], logp_worst_change=change["worst"], logp_change=change)
    rec[f"{split}_eval_seconds"] = round(time.monotonic() - t0, 2)


def stage_sweep(study: Study) -> None:
    """Every grid point of each (method, K) with the sweep seed, on the validation split; then the choice."""
    from tqdm.auto import tqdm

    t0 = time.monotonic()
    budget = Budget(study.budgets.get("sweep"))
    grids = {m: grid_settings(m, study.cfg.grids[m]) for m in study.cfg.methods}
    # Round-robin over (method, K) by grid position: if the budget runs out, every method has its first
    # grid points (the recipe lists the registry-like default first).
    todo = [(m, k, s) for i in range(max(len(g) for g in grids.values()))
            for (m, k) in study.method_k_pairs() for s in grids[m][i:i + 1]]
    seed = study.cfg.sweep_seed
    durations: list[float] = []
    bar = tqdm(todo, desc="sweep (1 seed, validation)", disable=not study.progress)
    for method, k, setting in bar:
        rid = run_id(method, k, setting, seed)
        if (rec := study.find_run(rid)) is not None and rec.get("validation") is not None:
            continue
        estimate = mean(durations) if durations else 0.0
        if not budget.allows(estimate):
            study.state["skipped"].append(f"sweep: {rid} (time budget)")
            continue
        bar.set_postfix_str(rid)
        t = time.monotonic()
        rec = _run_alignment(study, method, k, setting, seed, "sweep")
        _evaluate_record(study, rec, "validation")
        study.record(rec)
        durations.append(time.monotonic() - t)
    _select_settings(study)
    study.stage_done("sweep", time.monotonic() - t0)


def _select_settings(study: Study) -> None:
    """The chosen setting of each (method, K): the best of its validated sweep runs (:func:`select_best`)."""
    for method, k in study.method_k_pairs():
        cands = [r for r in study.state["runs"] if r["method"] == method and r["k"] == k
                 and r["stage"] == "sweep" and r.get("validation") is not None]
        if not cands:
            continue
        best = select_best(cands, study.cfg.selection)
        study.state["selection"][f"{method}_k{k}"] = {
            "setting": best["setting"], "run_id": best["run_id"], "metric": f"validation {study.cfg.selection}",
            "candidates": [{"setting": c["setting"], "accuracy": c["validation"]["accuracy"],
                            "reward": c["validation"]["reward"], "kl": c["validation"]["kl"]} for c in cands],
        }
    study.save()


def stage_seeds(study: Study) -> None:
    """The chosen setting of each (method, K) with every seed, on the test split."""
    from tqdm.auto import tqdm

    t0 = time.monotonic()
    budget = Budget(study.budgets.get("seeds"))
    # Seed-major order: if the budget runs out, every (method, K) has the same number of seeds.
    seeds = [study.cfg.sweep_seed] + [s for s in study.cfg.seeds if s != study.cfg.sweep_seed]
    todo = [(m, k, s) for s in seeds for (m, k) in study.method_k_pairs() if f"{m}_k{k}" in study.state["selection"]]
    durations: list[float] = []
    bar = tqdm(todo, desc="seeds (test)", disable=not study.progress)
    for method, k, seed in bar:
        setting = study.state["selection"][f"{method}_k{k}"]["setting"]
        rid = run_id(method, k, setting, seed)
        rec = study.find_run(rid)
        if rec is not None and rec.get("test") is not None:
            continue
        estimate = mean(durations) if durations else 0.0
        if not budget.allows(estimate):
            study.state["skipped"].append(f"seeds: {rid} (time budget)")
            continue
        bar.set_postfix_str(rid)
        t = time.monotonic()
        if rec is None:  # the sweep's run is reused for sweep_seed
            rec = _run_alignment(study, method, k, setting, seed, "seeds")
        _evaluate_record(study, rec, "test")
        study.record(rec)
        durations.append(time.monotonic() - t)
    _prune_models(study)
    study.stage_done("seeds", time.monotonic() - t0)


def _forget_skips_done_later(study: Study) -> None:
    """Drop "skipped" entries of runs that a later ``--resume`` completed (so the list says what is missing)."""
    done = {("sweep", r["run_id"]) for r in study.state["runs"] if r.get("validation") is not None}
    done |= {("seeds", r["run_id"]) for r in study.state["runs"] if r.get("test") is not None}
    kept = []
    for entry in study.state["skipped"]:
        stage, _, rest = entry.partition(": ")
        if (stage, rest.split(" ")[0]) not in done:
            kept.append(entry)
    study.state["skipped"] = kept


def _prune_models(study: Study) -> None:
    """Delete the weights of sweep runs that were not chosen (their records and metrics stay)."""
    keep = {r["run_id"] for r in study.state["runs"] if r.get("test") is not None}
    keep |= {sel["run_id"] for sel in study.state["selection"].values()}  # a chosen run still to be tested
    for r in study.state["runs"]:
        if r["run_id"] not in keep and os.path.isdir(r["output_dir"]):
            for name in os.listdir(r["output_dir"]):
                if name.endswith(".safetensors") or name.endswith(".bin"):
                    os.remove(os.path.join(r["output_dir"], name))


def stage_report(study: Study) -> dict:
    """Summary, claims, figures; ``study_<scale>.json`` + ``.md``.  Returns the result written."""
    from nca_lab.llm.study.plots import write_figures

    t0 = time.monotonic()
    _forget_skips_done_later(study)
    summary = summarise(study.state["runs"])
    base_test = (study.state.get("base_policy") or {}).get("test")
    result = {**study.state, "summary": summary, "claims": claims(summary, base_test)}
    study.figures_dir.mkdir(parents=True, exist_ok=True)
    result["figures"] = write_figures(result, study.figures_dir, prefix=f"llm_{study.cfg.scale}")
    study.state["timings"]["report_s"] = round(time.monotonic() - t0, 1)
    study.state["timings"]["total_s"] = round(sum(v for k, v in study.state["timings"].items()
                                                  if k != "total_s"), 1)
    result["timings"] = study.state["timings"]
    study.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = study.results_dir / f"study_{study.cfg.scale}.json"
    md_path = study.results_dir / f"study_{study.cfg.scale}.md"
    result["results_files"] = {"json": str(json_path), "markdown": str(md_path)}
    result = repo_relative(json_safe(result))
    write_json(json_path, result)
    md_path.write_text(markdown_report(result))
    study.save()
    return result

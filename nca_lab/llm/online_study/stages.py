"""The stages of :mod:`nca_lab.llm.online_study.pipeline`, one function each, in the order they run."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

from nca_lab.llm.online_study.pipeline import METHODS, Experiment, run_id

MAX_EXTEND = 2  # at most two geometric extensions of the lr grid beyond its edge


def _spec(exp: Experiment, method: str, lr: float, seed: int, split: str, n: int, checkpoint_steps: list[int]) -> dict:
    cfg = exp.cfg
    rid = run_id(method, lr, seed, split)
    kind = METHODS[method]["kind"]
    return {
        "id": rid, "method": method, "lr": lr, "seed": seed, "eval_split": split, "eval_n": n,
        "checkpoint_steps": checkpoint_steps,
        "save_steps": checkpoint_steps[0] if len(checkpoint_steps) == 1 else checkpoint_steps[1] - checkpoint_steps[0],
        "logging_steps": max(1, cfg.steps // 12),
        "mu_dir": str(exp.mu_dir), "run_dir": str(exp.out / "runs" / rid),
        "data": str(exp.offline_file(seed) if kind == "offline" else exp.prompts_file()),
        "cfg": dataclasses.asdict(cfg),
    }


def run_all(exp: Experiment, specs: list[dict], desc: str) -> None:
    """Execute the specs not yet in ``state["runs"]``, ``exp.workers`` at a time, saving the state after each."""
    from tqdm.auto import tqdm

    from nca_lab.llm.online_study.runs import execute

    pending = [s for s in specs if s["id"] not in exp.state["runs"]]
    bar = tqdm(total=len(specs), initial=len(specs) - len(pending), desc=desc, unit="run")

    def keep(record: dict) -> None:
        exp.state["runs"][record["id"]] = record
        exp.save()
        bar.update(1)
        bar.set_postfix_str(f"{record['id']}: reward {record['reward']:.3f}, kl {record['kl']:.2f}")

    if getattr(exp, "workers", 1) <= 1 or len(pending) <= 1:
        for spec in pending:
            keep(execute(spec))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a fresh interpreter per worker (no forked torch thread pools); one run per worker process at a
        # time, a new process per run (max_tasks_per_child), so no state leaks from one run into the next
        with ProcessPoolExecutor(max_workers=exp.workers, mp_context=multiprocessing.get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            futures = {pool.submit(execute, spec): spec["id"] for spec in pending}
            failed = None
            for future in as_completed(futures):
                try:
                    keep(future.result())
                except Exception as e:  # keep the other runs' results; stop queuing new ones; re-raise below
                    failed = failed or (futures[future], e)
                    for other in futures:
                        other.cancel()
            if failed:
                raise ValueError(f"run {failed[0]} failed: {type(failed[1]).__name__}: {failed[1]}") from failed[1]
    bar.close()


def stage_base(exp: Experiment, **_) -> None:
    """μ on the validation and test prompts (the step-0 point of every curve); a tiny μ is trained first when the
    scale names none."""
    if exp.done("base"):
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nca_lab.llm.study.base_policy import n_params, train_base_policy
    from nca_lab.llm.study.evaluation import evaluate_policy_vs_reference

    t0 = time.perf_counter()
    cfg = exp.cfg
    torch.set_num_threads(1)
    if cfg.mu is None and not (exp.mu_dir / "config.json").exists():
        train_base_policy(str(exp.mu_dir), size="tiny", level=cfg.level, steps=cfg.base_steps, n_eval=4,
                          eval_samples=2, max_new_tokens=cfg.max_new_tokens, progress=False)
    if not (exp.mu_dir / "config.json").exists():
        raise OSError(f"{exp.mu_dir}: no model folder (config.json) for μ")
    tok = AutoTokenizer.from_pretrained(exp.mu_dir)
    mu = AutoModelForCausalLM.from_pretrained(exp.mu_dir, dtype=torch.float32).eval()
    base = {"n_params": n_params(mu)}
    for split, n in (("validation", cfg.n_validation), ("test", cfg.n_test)):
        base[split] = evaluate_policy_vs_reference(mu, None, tok, exp.problems(split, n), n_samples=cfg.eval_samples,
                                                   max_new_tokens=cfg.max_new_tokens,
                                                   batch_size=cfg.eval_batch_size, seed=cfg.eval_seed)
    exp.state["base"] = base
    exp.finish("base", time.perf_counter() - t0)


def stage_probe(exp: Experiment, **_) -> None:
    """Each lr of the grid with each probe method (seed ``probe_seed``, validation prompts, final checkpoint);
    the lr with the highest mean validation reward over the probe methods is every method's lr. When it is on
    the grid's edge, the grid is extended by one geometric step beyond that edge (up to :data:`MAX_EXTEND`
    times) and the new lr probed."""
    if exp.done("probe"):
        return
    cfg = exp.cfg
    t0 = time.perf_counter()
    lrs = sorted(cfg.lrs)
    for _ in range(MAX_EXTEND + 1):
        specs = [_spec(exp, m, lr, cfg.probe_seed, "validation", cfg.n_validation, [cfg.steps])
                 for lr in lrs for m in cfg.probe_methods]
        run_all(exp, specs, "probe")
        table = []
        for lr in lrs:
            rewards = {m: exp.state["runs"][run_id(m, lr, cfg.probe_seed, "validation")]["reward"]
                       for m in cfg.probe_methods}
            table.append({"lr": lr, "rewards": rewards, "mean_reward": statistics.mean(rewards.values())})
        chosen = max(table, key=lambda row: row["mean_reward"])
        on_edge = len(lrs) > 1 and chosen["lr"] in (lrs[0], lrs[-1])
        if not on_edge or len(lrs) - len(cfg.lrs) >= MAX_EXTEND:
            break
        # the best lr is on the grid's edge: extend the grid one geometric step beyond it and probe again
        ratio = lrs[1] / lrs[0]
        lrs = sorted(lrs + [float(f"{chosen['lr'] / ratio:.3g}") if chosen["lr"] == lrs[0]
                            else float(f"{chosen['lr'] * ratio:.3g}")])
    exp.state["probe"] = {"table": table, "lr": chosen["lr"], "grid": lrs, "on_edge": on_edge}
    exp.finish("probe", time.perf_counter() - t0, lr=chosen["lr"])


def stage_runs(exp: Experiment, **_) -> None:
    """Every method × final seed at the probe's lr, evaluated on the test prompts at every checkpoint."""
    if exp.done("runs"):
        return
    if "probe" not in exp.state:
        raise ValueError("stage runs needs the probe stage's learning rate: run --stages probe first")
    cfg = exp.cfg
    if cfg.probe_seed in cfg.seeds:
        raise ValueError(f"the final seeds {cfg.seeds} must not include the probe's seed {cfg.probe_seed}")
    t0 = time.perf_counter()
    lr = exp.state["probe"]["lr"]
    # seed-major: a cut run leaves whole seeds of every method, which the report can already pair
    specs = [_spec(exp, m, lr, seed, "test", cfg.n_test, cfg.checkpoint_steps) for seed in cfg.seeds
             for m in cfg.methods]
    run_all(exp, specs, "runs")
    exp.finish("runs", time.perf_counter() - t0)


def stage_report(exp: Experiment, *, results_dir: Path, figures_dir: Path, scale: str) -> None:
    from nca_lab.llm.online_study.report import write_report

    write_report(exp, results_dir=results_dir, figures_dir=figures_dir, scale=scale)

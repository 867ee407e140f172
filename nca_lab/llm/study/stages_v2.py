"""The v2 study's stages (recipes with ``version: 2``, see :mod:`nca_lab.llm.study.recipe_v2`), each resumable at
the grain of one **unit of work**, recorded in ``state.json`` as soon as it finishes:

``task``    the task level, its fixed disjoint splits and the tokenizer;
``base``    one μ per μ seed (unit: a μ), trained from scratch and evaluated on the full test split (per-prompt
            outcomes kept: μ is the baseline of every paired comparison); its learnability is recorded (greedy
            accuracy, sampled-reward spread);
``sample``  one K = 4 sample set per (μ, sampling seed) needed (unit: a sample set): the sweep seed's on the first
            μ, and one per final seed (each final seed draws its own samples); K = 2 = the first 2 of the same 4;
``sweep``   per (method, K in ``sweep.ks``) a coordinate search over ``sweep.order`` on the first μ with the sweep
            seed, extending a grid while its chosen value is on an edge (unit: a run, evaluated on validation);
``seeds``   every final run (unit: a training run, then each of its ``n_checkpoints`` checkpoint evaluations on the
            test split: accuracy, reward, KL(π‖μ), per-prompt outcomes, Δ log π of the best/worst training response),
            then the recipe's ``displacement`` runs (fixed settings, evaluated the same way);
``report``  :func:`nca_lab.llm.study.report_v2.write_report`, on whatever is finished (the rest listed as pending).

Every unit records its wall time and the process CPU time it used (``wall_s``, ``cpu_s``).  A unit cut mid-way
(process killed) is redone from its start by ``--resume``; finished units are never redone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import time
from pathlib import Path

from nca_lab.llm.study.evaluation import data_statistics, logp_change, read_rows
from nca_lab.llm.study.recipe import METHODS, train_argv
from nca_lab.llm.study.recipe_v2 import GRID_KEYS, displacement_units, final_units, run_steps
from nca_lab.llm.study.shared_state import locked_save
from nca_lab.llm.study.state import Study, write_json
from nca_lab.llm.study.stats import mean, select_best

__all__ = ["StudyV2", "StopStudy", "setting_key", "run_key", "sample_keys", "STAGE_FUNCS"]


class StopStudy(Exception):
    """Raised when the study must stop between two units (time budget or ``stop_after_units``)."""


def setting_key(setting: dict) -> str:
    """Short stable name of a v2 setting, the learning rate included, e.g. ``lr0.0003_beta1_alpha0.1``."""
    return "_".join(f"{k}{setting[k]:g}" for k in GRID_KEYS if k in setting)


def run_key(method: str, k: int, setting: dict, mu_seed: int, seed: int) -> str:
    """The name of a v2 run, e.g. ``nca_k4_lr0.0003_beta1_alpha0.1_mu0_seed1``."""
    return f"{method}_k{k}_{setting_key(setting)}_mu{mu_seed}_seed{seed}"


class StudyV2(Study):
    """State of a v2 study: μs per μ seed, sample sets, sweep, final runs with checkpoint evaluations."""

    def __init__(self, cfg, out: Path, *, time_budget_s=None, stop_after_units=None, methods=None, **kw):
        super().__init__(cfg, out, time_budget_s=None, **kw)
        # the methods this process trains (sweep and final runs); other processes may train the rest on the same
        # state (saves are merged under a lock: nca_lab.llm.study.shared_state)
        self.methods = [m for m in cfg.methods if methods is None or m in methods]
        self.budgets = {}
        self.deadline = None if time_budget_s is None else time.monotonic() + float(time_budget_s)
        self.stop_after_units = stop_after_units
        self.units_done = 0
        self.state.update(version=2, level=cfg.level, mus={}, samples={}, sweep={}, unit_log=[])
        self.state.pop("base_policy", None)
        self._mu_seed = cfg.mu_seeds[0]
        self._mu_cache: dict = {}
        self._synced_timings: dict = {}
        # this process's key in state["stopped_by"] (its stop reason, kept when other processes save)
        self.process_key = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()}"

    def load(self) -> None:
        saved = json.loads(self.state_path.read_text())
        commands = saved.get("commands", [saved.get("command")]) + [self.state["command"]]
        self.state.update({k: v for k, v in saved.items() if k not in ("config", "budgets_s", "methods")})
        self.state["commands"] = commands
        self._synced_timings = dict(self.state.get("timings", {}))

    def save(self) -> None:
        """Merge this process's state into ``state.json`` under a lock and adopt the merged state (other
        processes of the same study, on other methods, may have recorded units since the last save)."""
        self.state = locked_save(self.state_path, self.state, write_json, self._synced_timings)
        self._synced_timings = dict(self.state.get("timings", {}))

    # -- budget
    def check_time(self, estimate: float = 0.0) -> None:
        """Raise :class:`StopStudy` if the next unit (``estimate`` seconds) would pass the deadline."""
        if self.deadline is not None and time.monotonic() + estimate > self.deadline:
            raise StopStudy("time budget")

    def unit_finished(self, kind: str, name: str, wall_s: float, cpu_s: float) -> None:
        """Log a finished unit, save the state, and stop if ``stop_after_units`` units have finished."""
        self.state["unit_log"].append({"kind": kind, "name": name, "wall_s": round(wall_s, 2),
                                       "cpu_s": round(cpu_s, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.save()
        self.units_done += 1
        if self.stop_after_units is not None and self.units_done >= self.stop_after_units:
            raise StopStudy(f"stop_after_units={self.stop_after_units}")

    def estimate(self, kind: str) -> float:
        """Mean wall time of the finished units of ``kind`` (0 before the first)."""
        xs = [u["wall_s"] for u in self.state["unit_log"] if u["kind"] == kind]
        return mean(xs) if xs else 0.0

    # -- μ and the task
    def use_mu(self, mu_seed: int) -> None:
        self._mu_seed = mu_seed

    @property
    def mu(self):
        if self._mu_seed not in self._mu_cache:
            self._mu_cache = {self._mu_seed: self.load_model(self.state["mus"][str(self._mu_seed)]["path"])}
        return self._mu_cache[self._mu_seed]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from nca_lab.llm.study.task import build_task_tokenizer

            self._tokenizer = build_task_tokenizer()
        return self._tokenizer

    def forget_mu(self) -> None:
        self._mu_cache = {}

    def problems(self, split: str, n: int):
        from nca_lab.llm.study.task import load_splits

        n_train = self.cfg.data["n_prompts"] if split == "train" else 0
        return load_splits(n_train, level=self.cfg.level)[split][:n]


@contextlib.contextmanager
def _timed():
    t = {"wall0": time.monotonic(), "cpu0": time.process_time()}
    yield t
    t["wall_s"] = time.monotonic() - t["wall0"]
    t["cpu_s"] = time.process_time() - t["cpu0"]


def stage_task(study: StudyV2) -> None:
    from nca_lab.llm.study.task import LEVELS, SPLITS

    lv = LEVELS[study.cfg.level]
    sizes = {s: len(study.problems(s, 10**9)) for s in ("train", "validation", "test")}
    ids = {s: {p.id for p in study.problems(s, 10**9)} for s in sizes}
    study.state["task"] = {
        "module": "nca_lab.llm.study.task", "level": study.cfg.level, "difficulty_ops": list(lv.difficulty),
        "max_operand": lv.max_operand, "splits": {k: {"seed": v.seed, "size": v.size} for k, v in SPLITS.items()},
        "used": {"train_prompts": sizes["train"], "validation_prompts": study.cfg.eval.get("n_validation"),
                 "test_prompts": study.cfg.eval.get("n_test")},
        "disjoint": not (ids["train"] & ids["validation"] or ids["train"] & ids["test"]
                         or ids["validation"] & ids["test"]),
        "vocab_size": len(study.tokenizer),
    }
    study.save()


def stage_base(study: StudyV2) -> None:
    from nca_lab.llm.study.base_policy import train_base_policy

    for mu_seed in study.cfg.mu_seeds:
        if str(mu_seed) in study.state["mus"]:
            continue
        study.check_time(study.estimate("mu"))
        path = study.out / f"mu_seed{mu_seed}"
        with _timed() as t:
            result = train_base_policy(str(path), level=study.cfg.level, seed=mu_seed, device=study.device,
                                       progress=study.progress, **study.cfg.base)
            result.pop("model")
            rec = {**{k: v for k, v in result.items() if k != "eval"}, "path": str(path), "seed": mu_seed,
                   "size": study.cfg.base.get("size"), "validation": result["eval"]}
            study.state["mus"][str(mu_seed)] = rec
            study.use_mu(mu_seed)
            study.forget_mu()
            rec["test"] = study.evaluate(study.mu, "test", reference=False)
        ev = rec["test"]
        spread = rec["validation"].get("prompts_with_spread", float("nan"))
        rec["learnability"] = {"test_greedy_accuracy": ev["accuracy"], "test_sampled_reward": ev["reward"],
                               "test_reward_std": ev["reward_std"], "validation_prompts_with_spread": spread,
                               "learnable_not_solved": bool(0.05 <= ev["accuracy"] <= 0.9 and spread >= 0.3)}
        rec.update(wall_s=round(t["wall_s"], 1), cpu_s=round(t["cpu_s"], 1),
                   seconds_per_step=result["train_seconds"] / max(1, result["steps_done"]))
        study.unit_finished("mu", f"mu{mu_seed}", t["wall_s"], t["cpu_s"])


def sample_keys(cfg) -> list[tuple[int, int]]:
    """The (μ seed, sampling seed) sample sets the study needs, in the order they are drawn."""
    keys = [(cfg.mu_seeds[0], cfg.sweep.get("seed", 0))]
    for _, _, mu, s in final_units(cfg):
        if (mu, s) not in keys:
            keys.append((mu, s))
    return keys


def stage_sample(study: StudyV2) -> None:
    from nca_lab.llm.study.sampling import sample_responses, write_scored_jsonl

    d = study.cfg.data
    for mu_seed, seed in sample_keys(study.cfg):
        name = f"mu{mu_seed}_s{seed}"
        if name in study.state["samples"] or str(mu_seed) not in study.state["mus"]:
            continue
        study.check_time(study.estimate("sample"))
        study.use_mu(mu_seed)
        with _timed() as t:
            problems = study.problems("train", d["n_prompts"])
            chunk = d.get("batch_size", 64)
            responses: list[list[str]] = []
            for start in range(0, len(problems), chunk):
                responses += sample_responses(study.mu, study.tokenizer,
                                              [p.prompt for p in problems[start:start + chunk]], k=4,
                                              max_new_tokens=d.get("max_new_tokens", 64),
                                              temperature=d.get("temperature", 1.0), batch_size=chunk,
                                              seed=1_000_003 * seed + 10_000 * (start // chunk),
                                              device=study.device)
            paths, stats = {}, {}
            for k in (4, 2):
                path = study.out / "data" / f"{name}_k{k}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                write = write_scored_jsonl(str(path), problems, [rs[:k] for rs in responses])
                paths[str(k)] = str(path)
                stats[f"k{k}"] = {**data_statistics(read_rows(path)), "write": write}
        study.state["samples"][name] = {"mu_seed": mu_seed, "sampling_seed": seed, "paths": paths, "stats": stats,
                                        "wall_s": round(t["wall_s"], 1), "cpu_s": round(t["cpu_s"], 1)}
        study.unit_finished("sample", name, t["wall_s"], t["cpu_s"])


def _train(study: StudyV2, method: str, k: int, setting: dict, mu_seed: int, seed: int, stage: str,
           checkpoints: bool) -> dict:
    """One alignment run through the trainer's in-process entry point; returns its record (not yet evaluated)."""
    from nca_lab.llm.config import config_from_args
    from nca_lab.llm.train import run

    rid = run_key(method, k, setting, mu_seed, seed)
    run_dir = study.out / "runs" / rid
    steps = run_steps(study.cfg)
    align = {**study.cfg.align, "max_steps": steps}
    align.pop("epochs", None)
    argv = train_argv(model=study.state["mus"][str(mu_seed)]["path"],
                      data=study.state["samples"][f"mu{mu_seed}_s{seed}"]["paths"][str(k)], method=method,
                      setting=setting, seed=seed, output_dir=str(run_dir), ref_cache_dir=str(study.out / "ref_cache"),
                      align=align)
    if checkpoints:
        argv += ["--save-strategy", "steps", "--save-steps", str(steps // study.cfg.n_checkpoints)]
    cfg = config_from_args(argv)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{rid}.log", "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        summary = run(cfg, command="python -m nca_lab.llm.train " + shlex.join(argv))
    history = [h for h in summary["log_history"] if "loss" in h]
    beta_metric = summary["loss"]["metric_beta"]
    hp = summary["loss"]["hparams"]
    return {
        "run_id": rid, "stage": stage, "method": method, "loss": METHODS[method].loss, "k": k, "mu_seed": mu_seed,
        "seed": seed, "sampling_seed": seed, "setting": setting, "lr": setting["lr"], "beta": hp.get("beta"),
        "alpha": hp.get("alpha"), "hparams": hp, "steps": summary["throughput"]["steps"],
        "device": study.state["device"], "output_dir": str(run_dir),
        "train_command": "python -m nca_lab.llm.train " + shlex.join(argv),
        "trajectory": {"step": [h["step"] for h in history], "loss": [h["loss"] for h in history],
                       "logratio/best": [h["rewards/chosen"] / beta_metric if "rewards/chosen" in h else None
                                         for h in history],
                       "logratio/worst": [h["rewards/rejected"] / beta_metric if "rewards/rejected" in h else None
                                          for h in history]},
        "accuracy": None, "reward": None, "kl": None, "validation": None, "test": None, "checkpoint_evals": {},
    }


# What a diverged run (the trainer's TrainingDiverged: NaN/inf loss or weights) counts as in the sweep's choice:
# below every real run (rewards and accuracies lie in [0, 1]), so a diverging grid point is never chosen.
DIVERGED_VALIDATION = {"accuracy": -1.0, "reward": -1.0, "kl": 1e9, "diverged": True}


def _train_or_diverged(study: StudyV2, method: str, k: int, setting: dict, mu_seed: int, seed: int, stage: str,
                       checkpoints: bool) -> dict:
    """:func:`_train`, or, if the run diverges, a record of the divergence (``diverged``: the trainer's message)
    that counts as finished: a resumed study does not retry it."""
    from nca_lab.llm.train import TrainingDiverged

    try:
        return _train(study, method, k, setting, mu_seed, seed, stage, checkpoints)
    except TrainingDiverged as e:
        rid = run_key(method, k, setting, mu_seed, seed)
        return {"run_id": rid, "stage": stage, "method": method, "loss": METHODS[method].loss, "k": k,
                "mu_seed": mu_seed, "seed": seed, "sampling_seed": seed, "setting": setting, "lr": setting["lr"],
                "beta": setting.get("beta"), "alpha": setting.get("alpha"), "diverged": str(e),
                "device": study.state["device"], "output_dir": str(study.out / "runs" / rid), "accuracy": None,
                "reward": None, "kl": None, "validation": None, "test": None, "checkpoint_evals": {}}


def _sweep_run(study: StudyV2, method: str, k: int, setting: dict) -> dict:
    """The sweep run of ``setting`` (trained and validated now unless already recorded)."""
    mu_seed, seed = study.cfg.mu_seeds[0], study.cfg.sweep.get("seed", 0)
    rid = run_key(method, k, setting, mu_seed, seed)
    rec = study.find_run(rid)
    if rec is not None and rec.get("validation") is not None:
        return rec
    study.check_time(study.estimate("sweep_run"))
    study.use_mu(mu_seed)
    with _timed() as t:
        rec = _train_or_diverged(study, method, k, setting, mu_seed, seed, "sweep", checkpoints=False)
        if rec.get("diverged"):
            rec["validation"] = dict(DIVERGED_VALIDATION)
        else:
            ev = study.evaluate(study.load_model(rec["output_dir"]), "validation")
            rec.update(validation=ev, accuracy=ev["accuracy"], reward=ev["reward"], kl=ev["kl"],
                       eval_split="validation")
    rec.update(wall_s=round(t["wall_s"], 1), cpu_s=round(t["cpu_s"], 1))
    study.record(rec)
    study.unit_finished("sweep_run", rid, t["wall_s"], t["cpu_s"])
    return rec


def _extend(values: list[float], low: bool) -> float:
    ratio = values[1] / values[0] if low else values[-1] / values[-2]
    return float(f"{(values[0] / ratio if low else values[-1] * ratio):.3g}")


def stage_sweep(study: StudyV2) -> None:
    cfg = study.cfg
    sw = cfg.sweep
    for k in sw.get("ks", cfg.ks):
        for method in study.methods:
            key = f"{method}_k{k}"
            if study.state["selection"].get(key, {}).get("complete"):
                continue
            grid = {p: sorted(float(v) for v in vals) for p, vals in cfg.grids[method].items()}
            order = [p for p in sw.get("order", ["lr", "beta", "alpha"]) if p in grid]
            order += [p for p in grid if p not in order]
            current = {p: grid[p][(len(grid[p]) - 1) // 2] for p in grid}
            log = []
            for p in order:
                values, extensions = list(grid[p]), 0
                while True:
                    recs = [_sweep_run(study, method, k, {**METHODS[method].fixed, **current, p: v}) for v in values]
                    chosen = select_best(recs, sw.get("selection", "reward"))["setting"][p]
                    low, high = chosen == values[0], chosen == values[-1]
                    edge = len(values) > 1 and (low or high)
                    if edge and extensions < sw.get("max_extend", 2):
                        values = sorted(values + [_extend(values, low)])
                        extensions += 1
                        continue
                    break
                current[p] = chosen
                log.append({"param": p, "values": values, "chosen": chosen, "extensions": extensions,
                            "on_edge": edge,
                            "validation": [{"value": r["setting"][p], "reward": r["validation"]["reward"],
                                            "accuracy": r["validation"]["accuracy"], "kl": r["validation"]["kl"]}
                                           for r in recs]})
            study.state["selection"][key] = {"setting": {**METHODS[method].fixed, **current}, "complete": True,
                                             "on_edge": [e["param"] for e in log if e["on_edge"]],
                                             "coordinate_log": log, "metric": f"validation {sw.get('selection', 'reward')}"}
            study.save()
    _inherit_selections(study)
    study.save()


def _inherit_selections(study: StudyV2) -> None:
    """K values without a sweep of their own use the first swept K's completed choice (also done by the seeds
    stage, so that a process started with ``--stages seeds`` after the sweep has finished runs them too)."""
    cfg, sel = study.cfg, study.state["selection"]
    swept = cfg.sweep.get("ks", cfg.ks)[0]
    for k in cfg.ks:
        for method in study.methods:
            src = f"{method}_k{swept}"
            if f"{method}_k{k}" not in sel and sel.get(src, {}).get("complete"):
                sel[f"{method}_k{k}"] = {**sel[src], "inherited_from": src}


def _checkpoint_dir(rec: dict, step: int, total: int) -> str:
    return rec["output_dir"] if step == total else os.path.join(rec["output_dir"], f"checkpoint-{step}")


def _evaluate_checkpoint(study: StudyV2, rec: dict, step: int) -> dict:
    total = run_steps(study.cfg)
    policy = study.load_model(_checkpoint_dir(rec, step, total))
    ev = study.evaluate(policy, "test")
    e = study.cfg.eval
    rows = read_rows(Path(study.state["samples"][f"mu{rec['mu_seed']}_s{rec['seed']}"]["paths"][str(rec["k"])]))
    change = logp_change(policy, study.mu, study.tokenizer, rows[:e.get("n_logp_prompts", 128)],
                         batch_size=e.get("batch_size", 64), max_length=study.cfg.align.get("max_length", 1024),
                         device=study.device)
    return {**ev, "step": step, "logp_best_change": change["best"], "logp_worst_change": change["worst"],
            "logp_change": change}


def stage_seeds(study: StudyV2) -> None:
    """The final runs (each method at its chosen setting, every final seed) and the recipe's displacement runs
    (fixed settings on the first μ, after the first K's final runs on the first μ); each trained with
    checkpoints, then every checkpoint evaluated."""
    cfg = study.cfg
    _inherit_selections(study)
    finals = final_units(cfg)
    # the displacement runs come right after the first K's final runs on the first μ, before the other μs and K
    n_first = sum(1 for _, k, mu, _ in finals if (k, mu) == (cfg.ks[0], cfg.mu_seeds[0]))
    units = ([("final", m, k, None, mu, s) for m, k, mu, s in finals[:n_first]]
             + [("displacement", *u) for u in displacement_units(cfg)]
             + [("final", m, k, None, mu, s) for m, k, mu, s in finals[n_first:]])
    for stage, method, k, setting, mu_seed, seed in units:
        if method not in study.methods or f"mu{mu_seed}_s{seed}" not in study.state["samples"]:
            continue
        if stage == "final":
            sel = study.state["selection"].get(f"{method}_k{k}")
            if not (sel and sel.get("complete")):
                continue
            setting = sel["setting"]
        _evaluated_run(study, method, k, setting, mu_seed, seed, stage)


def _evaluated_run(study: StudyV2, method: str, k: int, setting: dict, mu_seed: int, seed: int, stage: str) -> None:
    """Train the run (unless recorded: a displacement setting equal to a final run's is that run) with
    ``n_checkpoints`` checkpoints, then evaluate each checkpoint not yet evaluated, saving after each unit."""
    total = run_steps(study.cfg)
    ckpt_steps = [total // study.cfg.n_checkpoints * (i + 1) for i in range(study.cfg.n_checkpoints)]
    rid = run_key(method, k, setting, mu_seed, seed)
    rec = study.find_run(rid)
    study.use_mu(mu_seed)
    if rec is None:
        study.check_time(study.estimate("final_train"))
        with _timed() as t:
            rec = _train_or_diverged(study, method, k, setting, mu_seed, seed, stage, checkpoints=True)
        rec.update(train_wall_s=round(t["wall_s"], 1), train_cpu_s=round(t["cpu_s"], 1))
        study.record(rec)
        study.unit_finished("final_train", rid, t["wall_s"], t["cpu_s"])
    if rec.get("diverged"):  # recorded as diverged (listed by the report); nothing to evaluate
        return
    for step in ckpt_steps:
        if str(step) in rec["checkpoint_evals"]:
            continue
        study.check_time(study.estimate("checkpoint_eval"))
        with _timed() as t:
            ev = _evaluate_checkpoint(study, rec, step)
        ev.update(wall_s=round(t["wall_s"], 1), cpu_s=round(t["cpu_s"], 1))
        rec["checkpoint_evals"][str(step)] = ev
        if step == total:
            rec.update(test=ev, accuracy=ev["accuracy"], reward=ev["reward"], kl=ev["kl"], kl_se=ev["kl_se"],
                       logp_best_change=ev["logp_best_change"], logp_worst_change=ev["logp_worst_change"],
                       eval_split="test")
        study.record(rec)
        if step != total:  # the checkpoint's weights are no longer needed once its evaluation is saved
            shutil.rmtree(_checkpoint_dir(rec, step, total), ignore_errors=True)
        study.unit_finished("checkpoint_eval", f"{rid}@{step}", t["wall_s"], t["cpu_s"])
    shutil.rmtree(os.path.join(rec["output_dir"], f"checkpoint-{total}"), ignore_errors=True)


STAGE_FUNCS = {"task": stage_task, "base": stage_base, "sample": stage_sample, "sweep": stage_sweep,
               "seeds": stage_seeds}

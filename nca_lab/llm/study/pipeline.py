"""``python -m nca_lab.llm.study``: the verifiable-reasoning study of the NCA paper's four claims (issue 5).

One driver process runs the whole pipeline; every alignment run calls the trainer's in-process entry point
:func:`nca_lab.llm.train.run` (what ``python -m nca_lab.llm.train`` runs), with a config built by the CLI's own
parser from the equivalent command line, which is recorded with the run.

Stages (``--stages``; each has a time budget, see the recipe's ``budgets_s``):

``task``    the fixed splits and the character tokenizer of :mod:`nca_lab.llm.study.task`;
``base``    train μ from scratch (:func:`nca_lab.llm.study.base_policy.train_base_policy`) and evaluate it on the test
            split (the baseline every aligned policy is compared with);
``sample``  K = 4 responses per training prompt from μ (temperature 1, no truncation), scored by the exact
            verifier, written as generic JSONL (``data_k4.jsonl``).  The K = 2 dataset (``data_k2.jsonl``) is
            the **first 2 of the same 4 samples**, so K = 2 and K = 4 differ only by the two extra responses;
``sweep``   one seed (``sweep_seed``) per grid point of each (method, K); each run is evaluated on the
            validation split; the setting with the highest validation **mean sampled reward** (the quantity the
            alignment optimises; ties: higher greedy accuracy, then lower KL, then grid order) is chosen;
``seeds``   the chosen setting with every seed of ``seeds`` (the sweep's run is reused for ``sweep_seed``); each
            run evaluated on the test split (greedy accuracy, mean sampled reward, KL(π‖μ) from samples) and on
            a fixed set of training prompts (change of log π of the best and the worst response);
``report``  summary table (mean ± std over seeds), claim-by-claim comparisons, figures, results JSON + Markdown.

Methods (:data:`METHODS`): ``dpo`` (best vs worst), ``dpo_all`` (DPO averaged over every ordered pair with a
reward gap), ``infonca``, ``nca``, ``nca_pair`` (best vs worst), ``ipo`` (best vs worst), ``clha``.  On the
K = 2 data the reward losses still see the two scalar rewards.

Evaluation of a policy π on a split (:func:`evaluate_policy_vs_reference`): greedy accuracy (fraction of greedy
responses with verifier reward 1); ``n_samples`` responses per prompt sampled from π at temperature 1: their
mean verifier reward, and KL(π‖μ) = mean over the same samples of Σ_t [log π − log μ] (a Monte-Carlo estimate of
the sequence-level KL, with its standard error).  The evaluation seed is the same for every run (common random
numbers), so differences between runs are not sampling noise of the evaluation.

Outputs: ``<out>/state.json`` (rewritten after every run, so an interrupted study can ``--resume``), and in the
report stage ``<results-dir>/study_<scale>.json`` + ``.md`` and ``<figures-dir>/llm_<scale>_*.png`` + ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "METHODS", "STAGES", "RECORD_KEYS", "StudyConfig", "load_study_config", "recipe_path", "grid_settings",
    "train_argv", "evaluate_policy_vs_reference", "logp_change", "select_best",
    "summarise", "compare", "claims", "run_study", "main",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
RECIPES_DIR = REPO_ROOT / "llm" / "study"
STAGES = ("task", "base", "sample", "sweep", "seeds", "report")
# Keys every alignment-run record carries (the contract for llm/results/*.json).
RECORD_KEYS = ("method", "k", "seed", "beta", "alpha", "accuracy", "reward", "kl", "device")


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
    """The ``python -m nca_lab.llm.train`` arguments of one alignment run (what :func:`run_study` parses with
    the CLI's own parser and runs in-process)."""
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


# ------------------------------------------------------------------------------------------------- data


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def data_statistics(rows: Sequence[dict]) -> dict:
    """Reward statistics of scored rows: what a contrastive loss has to work with."""
    usable = [r for r in rows if len(r["responses"]) >= 2]
    rewards = [x for r in usable for x in r["rewards"]]
    spread = [r for r in usable if max(r["rewards"]) > min(r["rewards"])]
    return {
        "rows": len(rows), "rows_with_2_or_more_responses": len(usable), "responses": len(rewards),
        "mean_reward": _mean(rewards), "fraction_correct": _mean([x == 1.0 for x in rewards]),
        "mean_best_reward": _mean([max(r["rewards"]) for r in usable]),
        "mean_worst_reward": _mean([min(r["rewards"]) for r in usable]),
        "fraction_rows_with_reward_spread": len(spread) / len(usable) if usable else float("nan"),
    }


# ------------------------------------------------------------------------------------------- evaluation


def _decode(tokenizer, ids: list[int]) -> str:
    # As nca_lab.llm.study.sampling: EOS dropped, other special tokens kept so that they make the text malformed.
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def evaluate_policy_vs_reference(policy, reference, tokenizer, problems: Sequence, *, n_samples: int,
                                 max_new_tokens: int, batch_size: int, seed: int, device=None) -> dict:
    """Greedy accuracy, mean sampled reward and KL(π‖μ) of ``policy`` on ``problems``.

    ``accuracy`` = fraction of greedy responses with verifier reward 1; ``reward`` = mean verifier reward of
    ``n_samples`` samples per prompt (temperature 1, no top-k/top-p); ``kl`` = mean over the same samples of
    Σ_t [log π(y_t|·) − log μ(y_t|·)] (sequence-level, responses cut at EOS or ``max_new_tokens``), ``kl_se`` its
    standard error.  ``reference=None`` means π = μ, so KL = 0 exactly and is not estimated."""
    from nca_lab.llm.study.sampling import generate_response_ids, greedy_answers, response_logps
    from nca_lab.llm.study.task import parse_response, verify

    prompts = [p.prompt for p in problems]
    greedy = greedy_answers(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            device=device)
    greedy_rewards = [verify(p, r) for p, r in zip(problems, greedy)]
    ids = generate_response_ids(policy, tokenizer, prompts, k=n_samples, max_new_tokens=max_new_tokens,
                                do_sample=True, batch_size=batch_size, seed=seed, device=device)
    texts = [[_decode(tokenizer, r) for r in rs] for rs in ids]
    rewards = [[verify(p, t) for t in ts] for p, ts in zip(problems, texts)]
    flat = [x for rs in rewards for x in rs]
    out = {
        "n_prompts": len(problems), "n_samples": n_samples,
        "accuracy": _mean([r == 1.0 for r in greedy_rewards]),
        "greedy_reward": _mean(greedy_rewards),
        "reward": _mean(flat), "reward_std": _std(flat),
        "sample_accuracy": _mean([x == 1.0 for x in flat]),
        "well_formed": _mean([parse_response(t) is not None for ts in texts for t in ts]),
        "mean_response_tokens": _mean([len(r) for rs in ids for r in rs]),
        "example_greedy": greedy[:2],
    }
    if reference is None:
        out.update(kl=0.0, kl_se=0.0)
        return out
    prompt_ids = tokenizer(prompts)["input_ids"]  # BOS + prompt, as generation saw it
    flat_prompts = [p for p, rs in zip(prompt_ids, ids) for _ in rs]
    flat_responses = [r for rs in ids for r in rs]
    lp_pi = response_logps(policy, flat_prompts, flat_responses, pad_id=tokenizer.pad_token_id,
                           batch_size=batch_size, device=device)
    lp_mu = response_logps(reference, flat_prompts, flat_responses, pad_id=tokenizer.pad_token_id,
                           batch_size=batch_size, device=device)
    diff = (lp_pi - lp_mu).double().tolist()
    out.update(kl=_mean(diff), kl_se=_std(diff) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0)
    return out


def logp_change(policy, reference, tokenizer, rows: Sequence[dict], *, batch_size: int, max_length: int,
                device=None) -> dict:
    """Mean change Δ = log π(y) − log μ(y) (summed over the response tokens, EOS included, tokenised as the
    trainer tokenises) of the best and of the worst response of training rows, over the rows whose rewards
    are not all tied (best/worst as in the losses: highest/lowest reward, lowest index on ties).

    This is the exact end-of-training value of the quantity whose batch means the trainer logs as
    ``logps/chosen`` / ``logps/rejected`` (claim 4: does the best response's likelihood fall?)."""
    from nca_lab.llm.study.sampling import response_logps
    from nca_lab.llm.tokenization import tokenize_record

    prompts, best, worst = [], [], []
    for row in rows:
        R = row["rewards"]
        if len(R) < 2 or max(R) == min(R):
            continue
        tok = tokenize_record({"prompt": row["prompt"], "responses": row["responses"], "rewards": R}, tokenizer,
                              max_length=max_length)
        b = max(range(len(R)), key=lambda i: (R[i], -i))
        w = min(range(len(R)), key=lambda i: (R[i], i))
        prompts.append(tok["prompt_ids"])
        best.append(tok["response_ids"][b])
        worst.append(tok["response_ids"][w])
    if not prompts:
        return {"n_rows": 0, "best": float("nan"), "worst": float("nan")}
    pad = tokenizer.pad_token_id
    out = {"n_rows": len(prompts)}
    for name, responses in (("best", best), ("worst", worst)):
        lp_pi = response_logps(policy, prompts, responses, pad_id=pad, batch_size=batch_size, device=device)
        lp_mu = response_logps(reference, prompts, responses, pad_id=pad, batch_size=batch_size, device=device)
        out[name] = (lp_pi - lp_mu).double().mean().item()
        out[f"{name}_mu_logp"] = lp_mu.double().mean().item()
    return out


# ---------------------------------------------------------------------------------------------- statistics


def _mean(xs: Sequence[float]) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n − 1); 0 for fewer than two values."""
    xs = [float(x) for x in xs]
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def select_best(candidates: Sequence[dict], metric: str = "reward") -> dict:
    """The candidate (a sweep record with ``validation`` metrics) with the highest validation ``metric``;
    ties broken by the other of reward/accuracy, then the lower KL, then the earlier candidate."""
    if not candidates:
        raise ValueError("candidates: nothing to select from")
    if metric not in ("reward", "accuracy"):
        raise ValueError(f"metric: expected 'reward' or 'accuracy', got {metric!r}")
    other = "accuracy" if metric == "reward" else "reward"

    def key(item):
        i, rec = item
        v = rec["validation"]
        return (-v[metric], -v[other], v["kl"], i)

    return min(enumerate(candidates), key=key)[1]


SUMMARY_METRICS = ("accuracy", "reward", "kl", "logp_best_change", "logp_worst_change")


def summarise(records: Sequence[dict]) -> list[dict]:
    """Mean ± std over seeds of the test metrics, one row per (method, K)."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        if rec.get("test") is None:
            continue
        groups.setdefault((rec["method"], rec["k"]), []).append(rec)
    rows = []
    for (method, k), recs in groups.items():
        row = {"method": method, "k": k, "n_seeds": len(recs), "seeds": sorted(r["seed"] for r in recs),
               "beta": recs[0]["beta"], "alpha": recs[0]["alpha"], "setting": recs[0]["setting"]}
        for m in SUMMARY_METRICS:
            values = [r[m] for r in recs if r.get(m) is not None and math.isfinite(r[m])]
            row[m] = {"mean": _mean(values), "std": _std(values), "n": len(values), "values": values}
        rows.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (order.get(r["method"], 99), r["k"]))


def compare(a: dict, b: dict, metric: str) -> dict:
    """Difference of means ``a − b`` of a summary metric with its standard error √(s_a²/n_a + s_b²/n_b) and a
    verdict: ``"higher"``/``"lower"`` when |Δ| > 2 SE (and SE > 0 or Δ ≠ 0 with n ≥ 2 each), else
    ``"not separated"``.  With fewer than 2 seeds on a side there is no spread: ``"n < 2"``."""
    ma, mb = a[metric], b[metric]
    delta = ma["mean"] - mb["mean"]
    if ma["n"] < 2 or mb["n"] < 2:
        return {"delta": delta, "se": None, "verdict": "n < 2"}
    se = math.sqrt(ma["std"] ** 2 / ma["n"] + mb["std"] ** 2 / mb["n"])
    if (se > 0 and abs(delta) > 2 * se) or (se == 0 and delta != 0):
        verdict = "higher" if delta > 0 else "lower"
    else:
        verdict = "not separated"
    return {"delta": delta, "se": se, "verdict": verdict}


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat is None or stat.get("n", 0) == 0 or stat["mean"] is None or math.isnan(stat["mean"]):
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _num(x, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def claims(summary: Sequence[dict], base_eval: dict | None) -> dict:
    """The four claims, each with the comparisons that test it (numbers and verdicts).

    (1) reward data helps: InfoNCA / NCA on the K scored responses vs DPO on the binarised pair (best vs worst)
        and vs DPO over all pairs, same K, on test accuracy and mean sampled reward;
    (2) suboptimal responses help: K = 4 vs K = 2 for every method;
    (3) NCA vs DPO on the reasoning task, each relative to μ (does DPO fall below μ, does NCA?);
    (4) chosen likelihood: the change of log π(best) on training prompts for NCA / pairwise NCA vs DPO."""
    by = {(r["method"], r["k"]): r for r in summary}
    out: dict[str, list[dict]] = {"1_reward_data": [], "2_suboptimal_responses": [], "3_reasoning": [],
                                  "4_chosen_likelihood": []}
    for k in (4, 2):
        for ours in ("infonca", "nca"):
            for theirs in ("dpo", "dpo_all"):
                if (ours, k) in by and (theirs, k) in by:
                    for metric in ("accuracy", "reward"):
                        out["1_reward_data"].append({"a": f"{ours} K={k}", "b": f"{theirs} K={k}", "metric": metric,
                                                     **compare(by[ours, k], by[theirs, k], metric)})
    for method in METHODS:
        if (method, 4) in by and (method, 2) in by:
            for metric in ("accuracy", "reward"):
                out["2_suboptimal_responses"].append({"a": f"{method} K=4", "b": f"{method} K=2", "metric": metric,
                                                      **compare(by[method, 4], by[method, 2], metric)})
    for k in (4, 2):
        for method in ("dpo", "dpo_all", "nca", "nca_pair", "infonca"):
            if (method, k) in by and base_eval is not None:
                s = by[method, k]
                for metric in ("accuracy", "reward"):
                    st = s[metric]
                    delta = st["mean"] - base_eval[metric]
                    se = st["std"] / math.sqrt(st["n"]) if st["n"] >= 2 else None
                    verdict = ("n < 2" if se is None else "higher" if delta > 2 * se and delta > 0 else
                               "lower" if delta < -2 * se and delta < 0 else "not separated")
                    out["3_reasoning"].append({"a": f"{method} K={k}", "b": "μ", "metric": metric, "delta": delta,
                                               "se": se, "verdict": verdict})
        if ("nca", k) in by and ("dpo", k) in by:
            for metric in ("accuracy", "reward"):
                out["3_reasoning"].append({"a": f"nca K={k}", "b": f"dpo K={k}", "metric": metric,
                                           **compare(by["nca", k], by["dpo", k], metric)})
    for k in (4, 2):
        for method in ("nca", "nca_pair", "infonca", "dpo", "dpo_all", "ipo", "clha"):
            if (method, k) in by:
                st = by[method, k]["logp_best_change"]
                if st["n"] == 0:
                    continue
                se = st["std"] / math.sqrt(st["n"]) if st["n"] >= 2 else None
                verdict = ("n < 2" if se is None else "rises" if st["mean"] > 2 * se and st["mean"] > 0 else
                           "falls" if st["mean"] < -2 * se and st["mean"] < 0 else "not separated from 0")
                out["4_chosen_likelihood"].append({"a": f"{method} K={k}", "metric": "logp_best_change",
                                                   "mean": st["mean"], "std": st["std"], "n": st["n"], "se": se,
                                                   "verdict": verdict})
        for ours in ("nca", "nca_pair"):
            if (ours, k) in by and ("dpo", k) in by and by[ours, k]["logp_best_change"]["n"] and \
                    by["dpo", k]["logp_best_change"]["n"]:
                out["4_chosen_likelihood"].append({"a": f"{ours} K={k}", "b": f"dpo K={k}", "metric": "logp_best_change",
                                                   **compare(by[ours, k], by["dpo", k], "logp_best_change")})
    return out


# ----------------------------------------------------------------------------------------------- markdown


def markdown_report(result: dict) -> str:
    """The study's Markdown summary: setup, μ, data, the summary table and the claim-by-claim comparisons."""
    lines = [f"# Verifiable-reasoning study — scale `{result['scale']}` ({result['device']})", ""]
    later = [c for c in result.get("commands", [])[1:] if c]
    lines += [f"Command: `{result['command']}`" + (f" (then: {', '.join(f'`{c}`' for c in later)})" if later else "")
              + "  ", f"Versions: " + ", ".join(f"{k} {v}" for k, v in
                                                                          result["versions"].items()) + "  ",
              f"Wall time: {result['timings'].get('total_s', float('nan')):.0f} s "
              f"(stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["timings"].items()
                                       if k != "total_s") + ")", ""]
    base = result.get("base_policy") or {}
    if base:
        t = base.get("test", {})
        lines += [f"μ: Llama `{base.get('size')}` ({base.get('n_params')} parameters), {base.get('steps_done')} steps "
                  f"on demonstrations with error rate {base.get('error_rate')}; test: greedy accuracy "
                  f"{_num(t.get('accuracy'))}, mean sampled reward {_num(t.get('reward'))}.", ""]
    for name, stats in (result.get("data") or {}).items():
        lines.append(f"Data `{name}`: {stats['rows_with_2_or_more_responses']} prompts, mean reward "
                     f"{_num(stats['mean_reward'])}, best {_num(stats['mean_best_reward'])}, worst "
                     f"{_num(stats['mean_worst_reward'])}, prompts with a reward spread "
                     f"{_num(stats['fraction_rows_with_reward_spread'], 2)}.")
    lines.append("")
    if result.get("skipped"):
        lines += ["Skipped (time budget): " + "; ".join(result["skipped"]), ""]
    lines += ["## Test split, chosen setting, mean ± std over seeds", "",
              "| method | K | setting | seeds | accuracy | reward | KL(π‖μ) | Δ log π(best) | Δ log π(worst) |",
              "|---|---|---|---|---|---|---|---|---|"]
    if base:
        t = base.get("test", {})
        lines.append(f"| μ | – | – | – | {_num(t.get('accuracy'))} | {_num(t.get('reward'))} | 0 | 0 | 0 |")
    for row in result.get("summary", []):
        lines.append(f"| {row['method']} | {row['k']} | {setting_id(row['setting'])} | {row['n_seeds']} | "
                     f"{_fmt(row['accuracy'])} | {_fmt(row['reward'])} | {_fmt(row['kl'], 2)} | "
                     f"{_fmt(row['logp_best_change'], 2)} | {_fmt(row['logp_worst_change'], 2)} |")
    lines += ["", "## Claims (Δ = difference of means; verdict 'higher'/'lower' when |Δ| > 2 SE over seeds)", ""]
    titles = {"1_reward_data": "(1) reward data helps: InfoNCA/NCA on K scored responses vs DPO",
              "2_suboptimal_responses": "(2) suboptimal responses help: K = 4 vs K = 2",
              "3_reasoning": "(3) reasoning: aligned policy vs μ, and NCA vs DPO",
              "4_chosen_likelihood": "(4) chosen likelihood: Δ log π(best response) on training prompts"}
    for key, title in titles.items():
        lines += [f"### {title}", ""]
        entries = result.get("claims", {}).get(key, [])
        if not entries:
            lines += ["(no runs to compare)", ""]
            continue
        for e in entries:
            if "delta" not in e:
                lines.append(f"- {e['a']}: {e['mean']:+.2f} ± {e['std']:.2f} nats (n = {e['n']}) → {e['verdict']}")
            else:
                se = "" if e["se"] is None else f" (SE {e['se']:.3f})"
                metric = "Δ log π(best)" if e["metric"] == "logp_best_change" else e["metric"]
                lines.append(f"- {metric}: {e['a']} − {e['b']} = {e['delta']:+.3f}{se} → {e['verdict']}")
        lines.append("")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ driver


def _versions() -> dict:
    import accelerate
    import datasets
    import torch
    import transformers

    import nca_lab

    return {"python": platform.python_version(), "nca_lab": nca_lab.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__}


def _device_string(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (cuda, torch {torch.__version__})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, " \
           f"{torch.get_num_threads()} torch threads; no GPU)"


def json_safe(obj):
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN: a metric that could
    not be measured, e.g. a mean over no rows, is written as null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=1, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _quiet_libraries() -> None:
    """The driver's own progress bars are the ones to read: silence the per-run bars and info logs."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class _Budget:
    """Wall-clock budget of one stage."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def allows(self, estimate: float = 0.0) -> bool:
        return self.seconds is None or self.elapsed + estimate <= self.seconds


class Study:
    """State and stages of one study (see the module docstring).  ``state`` is what ``state.json`` holds."""

    def __init__(self, cfg: StudyConfig, out: Path, *, command: str, time_budget_s: float | None,
                 results_dir: Path, figures_dir: Path, progress: bool):
        import torch

        self.cfg, self.out, self.progress = cfg, out, progress
        self.results_dir, self.figures_dir = results_dir, figures_dir
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        if cfg.torch_threads and self.device == "cpu":
            # With other processes on the same cores, one thread per process avoids oversubscription (measured:
            # 4x faster per step than 2 threads on the 2-core development machine under load).
            torch.set_num_threads(cfg.torch_threads)
        budgets = {k: float(v) for k, v in cfg.budgets_s.items()}
        if time_budget_s is not None and budgets:
            scale = time_budget_s / sum(budgets.values())
            budgets = {k: v * scale for k, v in budgets.items()}
        self.budgets = budgets
        self.state_path = out / "state.json"
        self.state: dict[str, Any] = {
            "study": "verifiable-reasoning study of the NCA paper's four claims (issue 5)",
            "scale": cfg.scale, "command": command, "device": _device_string(self.device),
            "versions": _versions(), "config": dataclasses.asdict(cfg), "budgets_s": budgets,
            "methods": {m: {"loss": METHODS[m].loss, "fixed": METHODS[m].fixed,
                            "description": METHODS[m].description} for m in cfg.methods},
            "timings": {}, "skipped": [], "runs": [], "selection": {},
        }
        self._mu = None
        self._tokenizer = None

    # -- persistence
    def save(self) -> None:
        _atomic_write_json(self.state_path, self.state)

    def load(self) -> None:
        saved = json.loads(self.state_path.read_text())
        # Everything measured comes from the file, and so do the command, device and versions that measured it
        # (records carry their own device); every later invocation is appended to "commands".
        commands = saved.get("commands", [saved.get("command")]) + [self.state["command"]]
        for key in ("command", "device", "versions", "task", "base_policy", "data", "data_paths", "runs",
                    "selection", "timings", "skipped"):
            if key in saved:
                self.state[key] = saved[key]
        self.state["commands"] = commands

    def _stage_done(self, name: str, seconds: float) -> None:
        self.state["timings"][f"{name}_s"] = round(self.state["timings"].get(f"{name}_s", 0.0) + seconds, 1)
        self.save()

    # -- shared objects
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.state["base_policy"]["path"])
        return self._tokenizer

    @property
    def mu(self):
        if self._mu is None:
            self._mu = self._load_model(self.state["base_policy"]["path"])
        return self._mu

    def _load_model(self, path: str):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path).to(self.device)
        model.eval()
        return model

    def _problems(self, split: str, n: int):
        from nca_lab.llm.study.task import load_splits

        n_train = self.cfg.data.get("n_prompts", 0) if split == "train" else 0
        return load_splits(n_train)[split][:n]

    def _eval(self, policy, split: str, reference=True) -> dict:
        e = self.cfg.eval
        n = e.get("n_validation", 100) if split == "validation" else e.get("n_test", 200)
        return evaluate_policy_vs_reference(
            policy, self.mu if reference else None, self.tokenizer, self._problems(split, n),
            n_samples=e.get("n_samples", 4), max_new_tokens=e.get("max_new_tokens", 64),
            batch_size=e.get("batch_size", 64), seed=e.get("seed", 1234), device=self.device)

    # -- stages
    def stage_task(self) -> None:
        from nca_lab.llm.study.task import DIFFICULTY, SPLITS, build_task_tokenizer

        t0 = time.monotonic()
        tokenizer = build_task_tokenizer()
        self.state["task"] = {
            "module": "nca_lab.llm.task", "difficulty_ops": list(DIFFICULTY),
            "splits": {k: {"seed": v.seed, "size": v.size} for k, v in SPLITS.items()},
            "used": {"train_prompts": self.cfg.data.get("n_prompts"),
                     "validation_prompts": self.cfg.eval.get("n_validation", 100),
                     "test_prompts": self.cfg.eval.get("n_test", 200)},
            "vocab_size": len(tokenizer),
        }
        self._stage_done("task", time.monotonic() - t0)

    def stage_base(self) -> None:
        from nca_lab.llm.study.base_policy import train_base_policy

        t0 = time.monotonic()
        path = self.out / "mu"
        kwargs = dict(self.cfg.base)
        budget = self.budgets.get("base")
        # The budget covers training and evaluation; train_base_policy's own budget covers its training loop.
        result = train_base_policy(str(path), device=self.device, progress=self.progress,
                                   time_budget_s=0.8 * budget if budget else None, **kwargs)
        result.pop("model")
        self._mu = None
        self.state["base_policy"] = {**{k: v for k, v in result.items() if k != "eval"}, "path": str(path),
                                     "validation": result["eval"]}
        if result.get("stopped_by_time_budget"):
            self.state["skipped"].append(f"base: μ stopped by the time budget after {result['steps_done']} of "
                                         f"{result['steps']} steps")
        self.state["base_policy"]["test"] = self._eval(self.mu, "test", reference=False)
        self._stage_done("base", time.monotonic() - t0)

    def stage_sample(self) -> None:
        from tqdm.auto import tqdm

        from nca_lab.llm.study.sampling import sample_responses, write_scored_jsonl

        t0 = time.monotonic()
        budget = _Budget(self.budgets.get("sample"))
        d = self.cfg.data
        problems = self._problems("train", d["n_prompts"])
        chunk = d.get("batch_size", 64)
        responses: list[list[str]] = []
        for start in tqdm(range(0, len(problems), chunk), desc="sample K=4 from μ", disable=not self.progress):
            if not budget.allows():
                self.state["skipped"].append(f"sample: stopped by the time budget after {len(responses)} of "
                                             f"{len(problems)} prompts")
                break
            # Seed per chunk (the sampler seeds batch i with seed + i inside a chunk): distinct seeds per chunk.
            responses += sample_responses(self.mu, self.tokenizer, [p.prompt for p in problems[start:start + chunk]],
                                          k=4, max_new_tokens=d.get("max_new_tokens", 64),
                                          temperature=d.get("temperature", 1.0), batch_size=chunk,
                                          seed=d.get("seed", 0) + 10_000 * (start // chunk), device=self.device)
        problems = problems[:len(responses)]
        path4 = self.out / "data_k4.jsonl"
        report4 = write_scored_jsonl(str(path4), problems, responses)
        rows4 = _read_rows(path4)
        # K = 2: the first two of the same samples (rows re-scored identically: the verifier is deterministic).
        path2 = self.out / "data_k2.jsonl"
        report2 = write_scored_jsonl(str(path2), problems, [rs[:2] for rs in responses])
        rows2 = _read_rows(path2)
        self.state["data_paths"] = {"4": str(path4), "2": str(path2)}
        self.state["data"] = {"k4": {**data_statistics(rows4), "write": report4},
                              "k2": {**data_statistics(rows2), "write": report2}}
        self._stage_done("sample", time.monotonic() - t0)

    def _align(self, method: str, k: int, setting: dict, seed: int, stage: str) -> dict:
        """One alignment run via the trainer's in-process entry point; returns its record (no evaluation)."""
        from nca_lab.llm.config import config_from_args
        from nca_lab.llm.train import run

        rid = run_id(method, k, setting, seed)
        run_dir = self.out / "runs" / rid
        argv = train_argv(model=self.state["base_policy"]["path"], data=self.state["data_paths"][str(k)],
                          method=method, setting=setting, seed=seed, output_dir=str(run_dir),
                          ref_cache_dir=str(self.out / "ref_cache"), align=self.cfg.align)
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
            "device": self.state["device"], "steps": summary["throughput"]["steps"],
            "train_seconds": round(train_s, 2), "train_runtime_s": summary["throughput"]["train_runtime_s"],
            "train_command": "python -m nca_lab.llm.train " + shlex.join(argv),
            "output_dir": str(run_dir), "trajectory": trajectory,
        }

    def _evaluate_record(self, rec: dict, split: str) -> None:
        t0 = time.monotonic()
        policy = self._load_model(rec["output_dir"])
        ev = self._eval(policy, split)
        rec[split] = ev
        rec.update(accuracy=ev["accuracy"], reward=ev["reward"], kl=ev["kl"], kl_se=ev["kl_se"], eval_split=split)
        if split == "test":
            e = self.cfg.eval
            rows = _read_rows(Path(self.state["data_paths"][str(rec["k"])]))[:e.get("n_logp_prompts", 128)]
            change = logp_change(policy, self.mu, self.tokenizer, rows, batch_size=e.get("batch_size", 64),
                                 max_length=self.cfg.align.get("max_length", 1024), device=self.device)
            rec.update(logp_best_change=change["best"], logp_worst_change=change["worst"], logp_change=change)
        rec[f"{split}_eval_seconds"] = round(time.monotonic() - t0, 2)

    def _record(self, rec: dict) -> None:
        runs = [r for r in self.state["runs"] if r["run_id"] != rec["run_id"]]
        self.state["runs"] = runs + [rec]
        self.save()

    def _find(self, rid: str) -> dict | None:
        return next((r for r in self.state["runs"] if r["run_id"] == rid), None)

    def _pairs(self) -> list[tuple[str, int]]:
        return [(m, k) for k in sorted(self.cfg.ks, reverse=True) for m in self.cfg.methods]

    def stage_sweep(self) -> None:
        from tqdm.auto import tqdm

        t0 = time.monotonic()
        budget = _Budget(self.budgets.get("sweep"))
        grids = {m: grid_settings(m, self.cfg.grids[m]) for m in self.cfg.methods}
        # Round-robin over (method, K) by grid position: if the budget runs out, every method has its first
        # grid points (the recipe lists the registry-like default first).
        todo = [(m, k, s) for i in range(max(len(g) for g in grids.values()))
                for (m, k) in self._pairs() for s in grids[m][i:i + 1]]
        seed = self.cfg.sweep_seed
        durations: list[float] = []
        bar = tqdm(todo, desc="sweep (1 seed, validation)", disable=not self.progress)
        for method, k, setting in bar:
            rid = run_id(method, k, setting, seed)
            if (rec := self._find(rid)) is not None and rec.get("validation") is not None:
                continue
            estimate = _mean(durations) if durations else 0.0
            if not budget.allows(estimate):
                self.state["skipped"].append(f"sweep: {rid} (time budget)")
                continue
            bar.set_postfix_str(rid)
            t = time.monotonic()
            rec = self._align(method, k, setting, seed, "sweep")
            self._evaluate_record(rec, "validation")
            self._record(rec)
            durations.append(time.monotonic() - t)
        self._select()
        self._stage_done("sweep", time.monotonic() - t0)

    def _select(self) -> None:
        for method, k in self._pairs():
            cands = [r for r in self.state["runs"] if r["method"] == method and r["k"] == k
                     and r["stage"] == "sweep" and r.get("validation") is not None]
            if not cands:
                continue
            best = select_best(cands, self.cfg.selection)
            self.state["selection"][f"{method}_k{k}"] = {
                "setting": best["setting"], "run_id": best["run_id"], "metric": f"validation {self.cfg.selection}",
                "candidates": [{"setting": c["setting"], "accuracy": c["validation"]["accuracy"],
                                "reward": c["validation"]["reward"], "kl": c["validation"]["kl"]} for c in cands],
            }
        self.save()

    def stage_seeds(self) -> None:
        from tqdm.auto import tqdm

        t0 = time.monotonic()
        budget = _Budget(self.budgets.get("seeds"))
        # Seed-major order: if the budget runs out, every (method, K) has the same number of seeds.
        seeds = [self.cfg.sweep_seed] + [s for s in self.cfg.seeds if s != self.cfg.sweep_seed]
        todo = [(m, k, s) for s in seeds for (m, k) in self._pairs() if f"{m}_k{k}" in self.state["selection"]]
        durations: list[float] = []
        bar = tqdm(todo, desc="seeds (test)", disable=not self.progress)
        for method, k, seed in bar:
            setting = self.state["selection"][f"{method}_k{k}"]["setting"]
            rid = run_id(method, k, setting, seed)
            rec = self._find(rid)
            if rec is not None and rec.get("test") is not None:
                continue
            estimate = _mean(durations) if durations else 0.0
            if not budget.allows(estimate):
                self.state["skipped"].append(f"seeds: {rid} (time budget)")
                continue
            bar.set_postfix_str(rid)
            t = time.monotonic()
            if rec is None:  # the sweep's run is reused for sweep_seed
                rec = self._align(method, k, setting, seed, "seeds")
            self._evaluate_record(rec, "test")
            self._record(rec)
            durations.append(time.monotonic() - t)
        self._prune_models()
        self._stage_done("seeds", time.monotonic() - t0)

    def _forget_skips_done_later(self) -> None:
        """Drop "skipped" entries of runs that a later ``--resume`` completed (so the list says what is missing)."""
        done = {("sweep", r["run_id"]) for r in self.state["runs"] if r.get("validation") is not None}
        done |= {("seeds", r["run_id"]) for r in self.state["runs"] if r.get("test") is not None}
        kept = []
        for entry in self.state["skipped"]:
            stage, _, rest = entry.partition(": ")
            if (stage, rest.split(" ")[0]) not in done:
                kept.append(entry)
        self.state["skipped"] = kept

    def _prune_models(self) -> None:
        """Delete the weights of sweep runs that were not chosen (their records and metrics stay)."""
        keep = {r["run_id"] for r in self.state["runs"] if r.get("test") is not None}
        keep |= {sel["run_id"] for sel in self.state["selection"].values()}  # a chosen run still to be tested
        for r in self.state["runs"]:
            if r["run_id"] not in keep and os.path.isdir(r["output_dir"]):
                for name in os.listdir(r["output_dir"]):
                    if name.endswith(".safetensors") or name.endswith(".bin"):
                        os.remove(os.path.join(r["output_dir"], name))

    def stage_report(self) -> dict:
        from nca_lab.llm.study.plots import write_figures

        t0 = time.monotonic()
        self._forget_skips_done_later()
        summary = summarise(self.state["runs"])
        base_test = (self.state.get("base_policy") or {}).get("test")
        result = {**self.state, "summary": summary, "claims": claims(summary, base_test)}
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        result["figures"] = write_figures(result, self.figures_dir, prefix=f"llm_{self.cfg.scale}")
        self.state["timings"]["report_s"] = round(time.monotonic() - t0, 1)
        self.state["timings"]["total_s"] = round(sum(v for k, v in self.state["timings"].items()
                                                     if k != "total_s"), 1)
        result["timings"] = self.state["timings"]
        self.results_dir.mkdir(parents=True, exist_ok=True)
        json_path = self.results_dir / f"study_{self.cfg.scale}.json"
        md_path = self.results_dir / f"study_{self.cfg.scale}.md"
        result["results_files"] = {"json": str(json_path), "markdown": str(md_path)}
        result = json_safe(result)
        _atomic_write_json(json_path, result)
        md_path.write_text(markdown_report(result))
        self.save()
        return result


def run_study(scale: str | None = None, *, config: str | None = None, out: str | None = None,
              stages: Sequence[str] = STAGES, time_budget_s: float | None = None, resume: bool = False,
              overwrite: bool = False, results_dir: str | None = None, figures_dir: str | None = None,
              progress: bool = True, command: str | None = None) -> dict:
    """Run the study's ``stages`` (in pipeline order) for the recipe of ``scale`` (or the file ``config``).

    ``out`` (default ``runs/llm_study_<scale>``) holds μ, the data, the runs and ``state.json``.  The report goes
    to ``results_dir`` / ``figures_dir`` (defaults: ``llm/results`` and ``figures`` for the ``cpu`` and ``gpu``
    scales, ``<out>`` and ``<out>/figures`` otherwise).  A subset of stages, or ``resume``, continues the study
    in ``out`` (runs already recorded are not repeated); a fresh study refuses a non-empty ``out`` unless
    ``overwrite``.  Returns the result written to ``study_<scale>.json`` (or the state, without ``report``)."""
    if (scale is None) == (config is None):
        raise ValueError("give exactly one of scale (a recipe under llm/study/) or config (a recipe file)")
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
    if not continuing and out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"out: {str(out_dir)!r} is not empty; pass --resume to continue its study or "
                             "--overwrite to start over")
        if not state_file.is_file():
            raise ValueError(f"out: {str(out_dir)!r} holds no study (no state.json); refusing to delete it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
            return study.stage_report()
        getattr(study, f"stage_{stage}")()
    return study.state


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m nca_lab.llm.study --scale tiny|cpu|gpu [--out DIR] [--time-budget-s N] [--stages ...]``."""
    parser = argparse.ArgumentParser(prog="python -m nca_lab.llm.study", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--scale", help="recipe llm/study/<scale>.yaml (tiny, cpu, gpu)")
    which.add_argument("--config", help="a recipe file instead of --scale")
    parser.add_argument("--out", help="work directory (default runs/llm_study_<scale>)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                        help="stages to run (a subset continues the study in --out)")
    parser.add_argument("--time-budget-s", type=float, help="total budget; the recipe's stage budgets are scaled to it")
    parser.add_argument("--resume", action="store_true", help="continue the study in --out")
    parser.add_argument("--overwrite", action="store_true", help="delete the study in --out and start over")
    parser.add_argument("--results-dir", help="where study_<scale>.json/.md go")
    parser.add_argument("--figures-dir", help="where llm_<scale>_*.png/.json go")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m nca_lab.llm.study " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        run_study(args.scale, config=args.config, out=args.out, stages=args.stages, time_budget_s=args.time_budget_s,
                  resume=args.resume, overwrite=args.overwrite, results_dir=args.results_dir,
                  figures_dir=args.figures_dir, progress=not args.no_progress, command=command)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

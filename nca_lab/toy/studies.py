"""Empirical toy studies of Propositions 16–18 of ``proofs/README.md`` (finite data, training dynamics).

Each study is a function ``config -> dict``: the config (seeds, sizes, training schedule, losses
and hyperparameters) goes in, a JSON-serialisable dict comes out with the config echoed and every
number rounded to :data:`SIGNIFICANT_DIGITS` significant digits, so a rerun at the same config
reproduces the file exactly. Recipes (configs) live in ``toy/configs/<study>.json`` as
``{"full": {...}, "quick": {...}}``; results in ``toy/results/<study>.json`` (full) and
``toy/results/<study>_quick.json``. Command line::

    python -m nca_lab.toy.studies prop16 [--quick] [--out toy/results] [--configs toy/configs]

These are measurements, not theorems: the rates are whatever the runs give.

- ``prop16`` (chosen-likelihood displacement): per policy class and loss, the fraction of
  (seed, context) pairs whose dataset-best response ends with log π(y_best) − log μ(y_best) < 0.
- ``prop17`` (more responses help): per loss, the fraction of seeds where K = 4 data beats K = 2
  data (same bandit, same number of prompts and tuples per prompt) in expected reward at matched
  KL(π‖μ), comparing reward–KL envelopes.
- ``prop18`` (reward–KL frontier): per loss, final (KL, E_π r) as β (or CPL's α) varies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from nca_lab.toy.dynamics import Problem, Trajectory, make_problems, train

__all__ = [
    "SIGNIFICANT_DIGITS",
    "STUDIES",
    "round_sig",
    "single_thread",
    "reward_envelope",
    "pareto_front",
    "prop16_displacement",
    "prop17_more_responses",
    "prop18_frontier",
    "load_config",
    "run_study",
    "main",
]

SIGNIFICANT_DIGITS = 6
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "toy" / "configs"
RESULTS_DIR = REPO_ROOT / "toy" / "results"


def round_sig(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (recursively through
    dicts, lists, tuples and numpy arrays); ints, bools, strings and None pass through."""
    if isinstance(value, Mapping):
        return {str(k): round_sig(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_sig(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return round_sig(value.tolist(), digits)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"cannot record a non-finite number ({v}) in a study result")
        return float(f"{v:.{digits}g}") + 0.0  # + 0.0 turns -0.0 into 0.0
    return value


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (restored afterwards): the reduction order of
    a multi-threaded kernel can depend on the thread count, and recorded numbers must not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seeds(config: Mapping[str, Any]) -> list[int]:
    n, offset = config.get("n_seeds"), config.get("seed_offset", 0)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"config 'n_seeds' must be a positive integer, got {n!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"config 'seed_offset' must be an integer >= 0, got {offset!r}")
    return list(range(offset, offset + n))


def _require(config: Mapping[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"study config is missing {', '.join(repr(k) for k in missing)}")


def _train_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"optimizer", "lr", "steps", "record_every", "hidden", "mlp_input", "init_seed"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"config 'train' has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(cfg)


# --------------------------------------------------------------------------------------------
# PROP 16: chosen-likelihood displacement
# --------------------------------------------------------------------------------------------


def prop16_displacement(config: Mapping[str, Any], progress: Callable[[str], None] | None = None) -> dict:
    """Fraction of (seed, context) where the dataset-best response ends below the reference.

    Config: ``n_seeds``, ``seed_offset``; ``problem`` (kwargs of :func:`make_problems` except
    seeds/features_dim); ``policies``: list of ``{"name", "policy", ["features_dim"], ["hidden"],
    ["mlp_input"]}``; ``losses``: ``{label: {"loss": registry name, "hparams": {...}}}``; ``train``
    (kwargs of :func:`train`). The same seeds (so the same bandits and data) serve every policy and
    loss. Per (policy, loss): ``rate_end_below_zero`` — fraction of (seed, context) with
    log π(y_best) − log μ(y_best) < 0 after the last step; ``rate_ever_below_zero`` — below zero at
    some recorded step; ``seed_rate_sd`` — standard deviation over seeds of the per-seed rate;
    means over (seed, context) of the final best/worst log-ratios; mean final KL and E_π r
    (and E_μ r, the reward at the start).
    """
    _require(config, "n_seeds", "problem", "policies", "losses", "train")
    seeds = _seeds(config)
    results: dict[str, dict] = {}
    with single_thread():
        for pol in config["policies"]:
            pol = dict(pol)
            name, kind = pol.pop("name"), pol.pop("policy")
            d = pol.pop("features_dim", 8)
            problem = make_problems(seeds, features_dim=d, **config["problem"])
            results[name] = {}
            for label, spec in config["losses"].items():
                if progress:
                    progress(f"prop16 {name} {label}")
                traj = train(problem, spec["loss"], hparams=spec.get("hparams", {}), policy=kind,
                             **_train_kwargs(config["train"]), **pol)
                end = traj.logratio_best[-1]  # [G, X]
                per_seed = (end < 0).mean(axis=1)
                results[name][label] = {
                    "rate_end_below_zero": float((end < 0).mean()),
                    "rate_ever_below_zero": float((traj.logratio_best < 0).any(axis=0).mean()),
                    "seed_rate_sd": float(per_seed.std()),
                    "mean_logratio_best": float(end.mean()),
                    "mean_logratio_worst": float(traj.logratio_worst[-1].mean()),
                    "mean_kl": float(traj.kl[-1].mean()),
                    "mean_reward": float(traj.reward[-1].mean()),
                    "mean_reference_reward": float(traj.reference_reward.mean()),
                    "n_cases": int(end.size),
                }
    return round_sig({"study": "prop16", "config": dict(config), "results": results})


# --------------------------------------------------------------------------------------------
# Reward–KL envelopes (PROP 17, 18)
# --------------------------------------------------------------------------------------------


def reward_envelope(kl: np.ndarray, reward: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Best reward reachable within each KL budget: max{reward_i : kl_i ≤ b} for each b (−inf if
    no point fits). ``kl``, ``reward``: the points (any shape, flattened); ``budgets``: ``[M]``.
    A step function, monotone in b: it takes the best training time and hyperparameter for each
    budget (the frontier an early-stopping sweep would trace)."""
    kl, reward = np.ravel(kl), np.ravel(reward)
    fits = kl[None, :] <= np.asarray(budgets)[:, None]
    return np.where(fits, reward[None, :], -np.inf).max(axis=1)


def pareto_front(kl: np.ndarray, reward: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (no other point has KL ≤ and reward ≥ with one strict),
    sorted by KL."""
    kl, reward = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    order = np.lexsort((-reward, kl))  # by KL, then highest reward first
    keep, best = [], -np.inf
    for i in order:
        if reward[i] > best:
            keep.append(int(i))
            best = reward[i]
    return np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# PROP 17: K = 4 vs K = 2 at matched KL
# --------------------------------------------------------------------------------------------


def _sweep_points(problem: Problem, spec: Mapping[str, Any], sweep: Mapping[str, Any], train_cfg: Mapping[str, Any],
                  policy: str, progress: Callable[[str], None] | None, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """All recorded (KL, reward) points of a hyperparameter sweep: arrays ``[V, T, G]``."""
    kls, rews = [], []
    for v in sweep["values"]:
        if progress:
            progress(f"{tag} {sweep['name']}={v}")
        hp = dict(spec.get("hparams", {}), **{sweep["name"]: v})
        traj = train(problem, spec["loss"], hparams=hp, policy=policy, **_train_kwargs(train_cfg))
        kls.append(traj.kl)
        rews.append(traj.reward)
    return np.stack(kls), np.stack(rews)


def prop17_more_responses(config: Mapping[str, Any], progress: Callable[[str], None] | None = None) -> dict:
    """K = 4 vs K = 2 at a fixed number of prompts, compared at matched KL(π‖μ).

    Config: ``n_seeds``, ``seed_offset``; ``problem`` (kwargs of :func:`make_problems` except K and
    seeds); ``Ks`` (two values, smaller first); ``policy``; ``losses``: ``{label: {"loss",
    "hparams", "sweep": {"name", "values"}}}``; ``train``; ``n_budgets``.
    Per seed, K and loss, the points are every recorded (KL, E_π r) over the sweep and training
    time; the envelope (:func:`reward_envelope`) is compared at ``n_budgets`` KL budgets evenly
    spaced on (0, B], B = the smaller of the two runs' largest KL. A seed is a win for the larger K
    when the mean envelope difference over the budgets is > 0. Records the win rate, the mean and
    per-seed advantages, and the mean envelopes.
    """
    _require(config, "n_seeds", "problem", "Ks", "policy", "losses", "train", "n_budgets")
    seeds = _seeds(config)
    k_small, k_large = config["Ks"]
    n_budgets = int(config["n_budgets"])
    results: dict[str, dict] = {}
    with single_thread():
        problems = {K: make_problems(seeds, K=K, **config["problem"]) for K in (k_small, k_large)}
        for label, spec in config["losses"].items():
            pts = {K: _sweep_points(problems[K], spec, spec["sweep"], config["train"], config["policy"], progress,
                                    f"prop17 {label} K={K}") for K in (k_small, k_large)}
            adv, env_s, env_l, top = [], [], [], []
            for g in range(len(seeds)):
                kl_s, rw_s = pts[k_small][0][..., g], pts[k_small][1][..., g]
                kl_l, rw_l = pts[k_large][0][..., g], pts[k_large][1][..., g]
                B = min(kl_s.max(), kl_l.max())
                budgets = B * np.arange(1, n_budgets + 1) / n_budgets
                es, el = reward_envelope(kl_s, rw_s, budgets), reward_envelope(kl_l, rw_l, budgets)
                adv.append(float((el - es).mean()))
                env_s.append(es), env_l.append(el), top.append(B)
            adv = np.asarray(adv)
            results[label] = {
                "win_rate": float((adv > 0).mean()),
                "mean_advantage": float(adv.mean()),
                "advantage_per_seed": adv,
                "max_common_kl_per_seed": np.asarray(top),
                f"mean_envelope_K{k_small}": np.mean(env_s, axis=0),
                f"mean_envelope_K{k_large}": np.mean(env_l, axis=0),
            }
    return round_sig({"study": "prop17", "config": dict(config), "results": results})


# --------------------------------------------------------------------------------------------
# PROP 18: reward–KL frontier per loss
# --------------------------------------------------------------------------------------------


def prop18_frontier(config: Mapping[str, Any], progress: Callable[[str], None] | None = None) -> dict:
    """Final (KL(π‖μ), E_π r) per loss as one hyperparameter sweeps.

    Config: ``n_seeds``, ``seed_offset``; ``problem`` (kwargs of :func:`make_problems`); ``policy``;
    ``losses``: ``{label: {"loss", "hparams", "sweep": {"name", "values"}}}``; ``train``.
    Per loss and sweep value: mean and standard deviation over seeds of the final KL and E_π r;
    ``pareto``: the sweep values whose mean point is not dominated within that loss. Also the
    reference reward E_μ r (mean over seeds) and the best achievable reward (mean over seeds of
    the average over contexts of max_y r), for scale.
    """
    _require(config, "n_seeds", "problem", "policy", "losses", "train")
    seeds = _seeds(config)
    results: dict[str, dict] = {}
    with single_thread():
        problem = make_problems(seeds, **config["problem"])
        for label, spec in config["losses"].items():
            sweep = spec["sweep"]
            kl, rw = _sweep_points(problem, spec, sweep, config["train"], config["policy"], progress, f"prop18 {label}")
            kl_end, rw_end = kl[:, -1, :], rw[:, -1, :]  # [V, G]
            mk, mr = kl_end.mean(1), rw_end.mean(1)
            results[label] = {
                "loss": spec["loss"],
                "sweep": sweep["name"],
                "values": list(sweep["values"]),
                "kl_mean": mk,
                "kl_sd": kl_end.std(1),
                "reward_mean": mr,
                "reward_sd": rw_end.std(1),
                "pareto": [sweep["values"][i] for i in pareto_front(mk, mr)],
            }
    scale = {
        "reference_reward": float((problem.mu * problem.r).sum(-1).mean()),
        "max_reward": float(problem.r.max(-1).mean()),
    }
    return round_sig({"study": "prop18", "config": dict(config), "scale": scale, "results": results})


# --------------------------------------------------------------------------------------------
# Registry and command line
# --------------------------------------------------------------------------------------------

STUDIES: dict[str, Callable[..., dict]] = {
    "prop16": prop16_displacement,
    "prop17": prop17_more_responses,
    "prop18": prop18_frontier,
}


def load_config(study: str, which: str = "full", config_dir: Path | str = CONFIG_DIR) -> dict:
    """The recorded config ``which`` (``"full"`` or ``"quick"``) of ``study`` from ``<config_dir>/<study>.json``."""
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")
    if which not in ("full", "quick"):
        raise ValueError(f'which must be "full" or "quick", got {which!r}')
    path = Path(config_dir) / f"{study}.json"
    with open(path) as f:
        configs = json.load(f)
    if which not in configs:
        raise ValueError(f"{path} has no {which!r} config")
    return configs[which]


def result_path(study: str, which: str = "full", results_dir: Path | str = RESULTS_DIR) -> Path:
    """``<results_dir>/<study>.json`` (full) or ``<study>_quick.json``."""
    return Path(results_dir) / (f"{study}.json" if which == "full" else f"{study}_quick.json")


def run_study(study: str, config: Mapping[str, Any], progress: Callable[[str], None] | None = None) -> dict:
    """Run ``study`` (a key of :data:`STUDIES`) at ``config``; returns the rounded result dict."""
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; known: {', '.join(STUDIES)}")
    return STUDIES[study](config, progress=progress)


def dumps(result: Mapping[str, Any]) -> str:
    """The canonical JSON text of a result (what the results files hold)."""
    return json.dumps(result, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nca_lab.toy.studies", description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="*", default=list(STUDIES), help=f"which studies (default: all of {', '.join(STUDIES)})")
    parser.add_argument("--quick", action="store_true", help="run the recorded quick config (writes <study>_quick.json)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder (default: toy/results)")
    parser.add_argument("--configs", default=str(CONFIG_DIR), help="config folder (default: toy/configs)")
    args = parser.parse_args(argv)
    which = "quick" if args.quick else "full"
    from tqdm import tqdm

    for study in args.studies:
        config = load_config(study, which, args.configs)
        bar = tqdm(desc=study, unit="run", file=sys.stderr)

        def progress(msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update(1)

        t0 = time.perf_counter()
        result = run_study(study, config, progress)
        bar.close()
        path = result_path(study, which, args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(result))
        print(f"{study} ({which}): wrote {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The stages of :mod:`nca_lab.llm.real_model.pipeline`, one function each, in the order they run."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from nca_lab.llm.real_model.generation import adapters_off, generate, prompt_ids, response_logps
from nca_lab.llm.real_model.pipeline import METHODS, Experiment, elapsed
from nca_lab.llm.real_model.prompts import chat_prompt, follows_format, score_text


def evaluate(exp: Experiment, policy, split: str, n: int, *, kl: bool, greedy: bool = True) -> dict:
    """Greedy accuracy (``greedy``) and one temperature-1 sample per prompt (mean reward, KL(π‖μ) from the
    samples) on the first ``n`` prompts of ``split``, with per-prompt outcomes; the same seed for every policy."""
    cfg, tok = exp.cfg, exp.tokenizer
    problems = exp.problems(split, n)
    prompts = prompt_ids(tok, [chat_prompt(p) for p in problems])
    greedy_texts = generate(policy, tok, prompts, sample=False, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.gen_batch_size, seed=cfg.eval_seed, desc=f"greedy {split}")[1] \
        if greedy else None
    ids, sampled = generate(policy, tok, prompts, sample=True, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.gen_batch_size, seed=cfg.eval_seed, desc=f"samples {split}")
    rewards = [score_text(p, t) for p, t in zip(problems, sampled)]
    out = {"split": split, "n": n, "reward": statistics.mean(rewards),
           "format": statistics.mean(map(follows_format, sampled)),
           "per_prompt": {"id": [p.id for p in problems], "reward": rewards},
           "examples": [{"problem": p.id, "answer": p.answer, "sample": s} for p, s in list(zip(problems, sampled))[:5]]}
    if greedy:
        correct = [score_text(p, t) == 1.0 for p, t in zip(problems, greedy_texts)]
        out["accuracy"] = statistics.mean(correct)
        out["per_prompt"]["correct"] = [int(c) for c in correct]
        for example, text in zip(out["examples"], greedy_texts):
            example["greedy"] = text
    if kl:
        keep = [i for i, r in enumerate(ids) if r]
        pad = tok.pad_token_id
        lp = response_logps(policy, [prompts[i] for i in keep], [[ids[i]] for i in keep], pad_token_id=pad)[:, 0]
        with adapters_off(policy):
            lm = response_logps(policy, [prompts[i] for i in keep], [[ids[i]] for i in keep], pad_token_id=pad)[:, 0]
        diffs = (lp - lm).tolist()
        out["kl"] = statistics.mean(diffs)
        out["kl_se"] = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return out


def k_samples(exp: Experiment, split: str, n: int, *, seed: int, desc: str):
    """K temperature-1 samples of μ for each of the first ``n`` prompts of ``split``: (problems, ids, texts),
    responses in prompt-major order."""
    cfg, tok = exp.cfg, exp.tokenizer
    problems = exp.problems(split, n)
    prompts = prompt_ids(tok, [chat_prompt(p) for p in problems])
    ids, texts = generate(exp.mu, tok, prompts, n=cfg.k, sample=True, max_new_tokens=cfg.max_new_tokens,
                          batch_size=cfg.gen_batch_size, seed=seed, desc=desc)
    return problems, ids, texts


def stage_base(exp: Experiment, **_) -> None:
    """μ as shipped: format compliance and reward spread of K samples (validation); greedy/sampled on test."""
    if exp.done("base"):
        return
    t0 = time.perf_counter()
    cfg = exp.cfg
    problems, _, texts = k_samples(exp, "validation", cfg.n_validation_base, seed=cfg.sample_seed + 1,
                                   desc="base: K samples")
    rewards = [[score_text(p, texts[i * cfg.k + j]) for j in range(cfg.k)] for i, p in enumerate(problems)]
    validation = {
        "n_prompts": len(problems), "k": cfg.k,
        "format_compliance": statistics.mean(map(follows_format, texts)),
        "mean_reward": statistics.mean(r for rs in rewards for r in rs),
        "reward_counts": {str(v): sum(r == v for rs in rewards for r in rs) for v in (0.0, 0.5, 1.0)},
        "prompts_with_reward_spread": statistics.mean(len(set(rs)) > 1 for rs in rewards),
        "examples": [{"problem": p.id, "answer": p.answer, "samples": texts[i * cfg.k:(i + 1) * cfg.k],
                      "rewards": rewards[i]} for i, p in enumerate(problems[:4])],
    }
    test = evaluate(exp, exp.mu, "test", cfg.n_test, kl=False)
    exp.state["base"] = {"validation_samples": validation, "test": test}
    exp.finish("base", elapsed(t0))
    print(f"base: format {validation['format_compliance']:.3f}, spread {validation['prompts_with_reward_spread']:.3f}"
          f", test accuracy {test['accuracy']:.3f}, reward {test['reward']:.3f}", flush=True)


def data_path(exp: Experiment) -> Path:
    return exp.out / f"data_k{exp.cfg.k}.jsonl"


def stage_sample(exp: Experiment, **_) -> None:
    """K samples per training prompt from μ, scored; empty responses dropped (rows keep ≥ 2 responses)."""
    if exp.done("sample"):
        return
    t0 = time.perf_counter()
    cfg, tok = exp.cfg, exp.tokenizer
    problems, ids, texts = k_samples(exp, "train", cfg.n_train, seed=cfg.sample_seed, desc="sample: K per prompt")
    rows, dropped, truncated = [], 0, 0
    for i, p in enumerate(problems):
        items = [(texts[i * cfg.k + j], ids[i * cfg.k + j]) for j in range(cfg.k)]
        truncated += sum(1 for _, r in items if tok.eos_token_id not in r)
        kept = [t for t, _ in items if t.strip()]
        dropped += cfg.k - len(kept)
        if len(kept) >= 2:
            rows.append({"prompt": chat_prompt(p), "responses": kept, "rewards": [score_text(p, t) for t in kept],
                         "problem": p.id})
    data_path(exp).write_text("".join(json.dumps(r) + "\n" for r in rows))
    flat = [r for row in rows for r in row["rewards"]]
    exp.finish("sample", elapsed(t0), rows=len(rows), empty_responses_dropped=dropped,
               responses_cut_at_max_new_tokens=truncated, mean_reward=statistics.mean(flat),
               prompts_with_reward_spread=statistics.mean(len(set(r["rewards"])) > 1 for r in rows))
    print(f"sample: {len(rows)} rows, mean reward {statistics.mean(flat):.3f}", flush=True)


def train_argv(exp: Experiment, method: str, beta: float, seed: int, run_dir: Path) -> list[str]:
    argv = ["--model", exp.cfg.model, "--data", str(data_path(exp)), "--loss", METHODS[method],
            "--beta", str(beta), "--seed", str(seed), "--output-dir", str(run_dir), "--overwrite",
            "--ref-cache-dir", str(exp.out / "ref_cache"), "--save-strategy", "no"]
    for name, value in exp.cfg.train_flags.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [] if value is False else [flag, str(value)]
    return argv


def align(exp: Experiment, method: str, beta: float, seed: int, stage: str) -> dict:
    """One LoRA run (in-process ``python -m nca_lab.llm.train``), evaluated; cached in ``state.json``."""
    rid = f"{stage}-{method}-b{beta:g}-s{seed}"
    if rid in exp.state["runs"]:
        return exp.state["runs"][rid]
    from nca_lab.llm.config import config_from_args
    from nca_lab.llm.train import run

    run_dir = exp.out / "runs" / rid
    argv = train_argv(exp, method, beta, seed, run_dir)
    t0 = time.perf_counter()
    summary = run(config_from_args(argv), command=["python", "-m", "nca_lab.llm.train", *argv])
    train_s = elapsed(t0)
    t1 = time.perf_counter()
    policy = exp.policy(str(run_dir))
    cfg = exp.cfg
    if stage == "probe":
        ev = evaluate(exp, policy, "validation", cfg.n_validation, kl=True, greedy=False)
        ev.update({"accuracy": None, "logp_best_change": None, "logp_worst_change": None})  # not measured
    else:
        ev = evaluate(exp, policy, "test", cfg.n_test, kl=True)
        ev.update(logp_changes(exp, policy))
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    rec = {"run": rid, "stage": stage, "method": method, "loss": METHODS[method], "k": cfg.k, "seed": seed,
           "beta": beta, "alpha": summary["loss"]["hparams"].get("alpha"), "lr": cfg.train_flags["lr"],
           **{k: v for k, v in ev.items()}, "first_loss": losses[0], "last_loss": losses[-1],
           "train_steps": summary["throughput"]["steps"], "train_seconds": round(train_s, 1),
           "eval_seconds": round(elapsed(t1), 1), "model": cfg.model,
           "model_provenance": (summary.get("model") or {}).get("packaged"),
           "device": summary["throughput"]["device"],
           "command": summary["command"]}
    exp.state["runs"][rid] = rec
    exp.save()
    print(f"{rid}: accuracy {rec['accuracy'] if rec['accuracy'] is not None else '-'} reward {rec['reward']:.3f} "
          f"kl {rec['kl']:.3f} "
          f"({train_s:.0f} s train, {rec['eval_seconds']:.0f} s eval)", flush=True)
    return rec


def logp_changes(exp: Experiment, policy) -> dict:
    """Mean change of log π (policy − μ, summed over response tokens) of the best and of the worst response
    (by reward; lowest index on ties) of the first ``n_logp`` training rows whose rewards are not all tied."""
    import torch

    from nca_lab.llm.tokenization import tokenize_record
    from nca_lab.losses import best_worst_indices

    rows = [json.loads(line) for line in data_path(exp).read_text().splitlines()]
    rows = [r for r in rows if len(set(r["rewards"])) > 1][:exp.cfg.n_logp]
    if not rows:
        return {"logp_best_change": float("nan"), "logp_worst_change": float("nan"), "n_logp": 0}
    tok = exp.tokenizer
    toks = [tokenize_record(r, tok, max_length=exp.cfg.train_flags["max_length"]) for r in rows]
    best, worst = [], []
    for t in toks:
        b, w = best_worst_indices(torch.tensor([t["rewards"]]))
        best.append(int(b[0]))
        worst.append(int(w[0]))
    pairs = [[t["response_ids"][b], t["response_ids"][w]] for t, b, w in zip(toks, best, worst)]
    prompts = [t["prompt_ids"] for t in toks]
    lp = response_logps(policy, prompts, pairs, pad_token_id=tok.pad_token_id)
    with adapters_off(policy):
        lm = response_logps(policy, prompts, pairs, pad_token_id=tok.pad_token_id)
    change = lp - lm
    return {"logp_best_change": change[:, 0].mean().item(), "logp_worst_change": change[:, 1].mean().item(),
            "n_logp": len(rows)}


def chosen_beta(exp: Experiment, method: str) -> float:
    ids = [f"probe-{method}-b{b:g}-s{exp.cfg.probe_seed}" for b in exp.cfg.betas]
    missing = [i for i in ids if i not in exp.state["runs"]]
    if missing:
        raise ValueError(f"the seeds stage needs the probe's runs first ({', '.join(missing)} missing): "
                         "run --stages probe (or all stages) with --resume")
    probes = [exp.state["runs"][i] for i in ids]
    return max(probes, key=lambda r: (r["reward"], -r["kl"]))["beta"]  # ties: the smaller move from μ


def stage_probe(exp: Experiment, **_) -> None:
    if exp.done("probe"):
        return
    t0 = time.perf_counter()
    for method in METHODS:
        for beta in exp.cfg.betas:
            align(exp, method, beta, exp.cfg.probe_seed, "probe")
    exp.finish("probe", elapsed(t0), chosen={m: chosen_beta(exp, m) for m in METHODS})


def stage_seeds(exp: Experiment, **_) -> None:
    if exp.done("seeds"):
        return
    t0 = time.perf_counter()
    for seed in exp.cfg.seeds:  # seed-major: a cut run still has every method at the first seeds
        for method in METHODS:
            align(exp, method, chosen_beta(exp, method), seed, "seeds")
    exp.finish("seeds", elapsed(t0))


def stage_report(exp: Experiment, *, results_dir: Path, figures_dir: Path, scale: str) -> None:
    from nca_lab.llm.real_model.report import write_report

    write_report(exp, results_dir=results_dir, figures_dir=figures_dir, scale=scale)

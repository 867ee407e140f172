"""TRL's ``GRPOTrainer`` on the study's μ, prompts and sample budget: the peer, called as TRL ships it.

What is set, and why each matches our ``--online`` run of the same spec:

* ``num_generations = k``, ``per_device_train_batch_size = batch_size × k`` (TRL counts completions, we count
  prompts), ``max_steps``, one generation per optimizer step (``steps_per_generation = 1``, ``num_iterations = 1``:
  every sample is used once, as ours);
* sampling: ``temperature``, ``top_p = 1``, ``top_k = 0`` (no truncation), ``max_completion_length =
  max_new_tokens``, transformers' ``generate`` with the KV cache; a completion ends after its first EOS;
* prompts: the plain-text prompt, tokenised by TRL (BOS + text, as μ was trained and as our trainer tokenises:
  checked by the study's tests);
* reward: the task's verifier on the completion *ids*, decoded as our trainer decodes them (EOS dropped, other
  special tokens kept), so both score a completion identically;
* optimiser: AdamW, the same lr, schedule, warm-up, weight decay 0 and gradient clipping 1.0; ``beta = 0``
  (TRL's default: no KL term, no reference model); ``loss_type`` and ``scale_rewards`` from the method.

Timing: TRL's loop calls ``model.generate`` for sampling; the wrapper below times those calls and counts the
sampled tokens, so generation and the rest of the step are reported apart as for our trainer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _timed_generate(model, counter: dict, eos_id: int):
    original = model.generate

    def generate(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        counter["seconds"] += time.perf_counter() - t0
        prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        new = out[:, prompt_len:]
        # sampled tokens up to and including the first EOS (what TRL keeps; padding after it is not sampled work
        # the loss uses, but generate did produce it, so count the kept part as ours does)
        for row in new.tolist():
            counter["tokens"] += (row.index(eos_id) + 1) if eos_id in row else len(row)
        return out

    model.generate = generate


def arithmetic_reward_on_ids(tokenizer):
    """The task verifier as a TRL reward function, on the completion ids decoded as our trainer decodes them."""
    from nca_lab.llm.study.online_reward import problem_from_expression
    from nca_lab.llm.study.task import verify

    eos = tokenizer.eos_token_id

    def decode(ids: list[int]) -> str:
        if ids and ids[-1] == eos:
            ids = ids[:-1]
        return tokenizer.decode(ids, skip_special_tokens=False)

    def arithmetic(prompts, completions, completion_ids, problem_id, **_):
        return [verify(problem_from_expression(p), decode(list(c))) for p, c in zip(problem_id, completion_ids)]

    return arithmetic


def build_trainer(*, mu_dir: str, rows: list[dict], output_dir: str, loss_type: str, scale_rewards: str, lr: float,
                  seed: int, steps: int, batch_size: int, k: int, max_new_tokens: int, temperature: float,
                  lr_scheduler: str, warmup_ratio: float, save_steps: int, logging_steps: int):
    """TRL's ``GRPOTrainer`` for one run of the study (the settings of the module docstring)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(mu_dir)
    model = AutoModelForCausalLM.from_pretrained(mu_dir, dtype=torch.float32)
    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "problem_id": r["problem_id"]} for r in rows])
    args = GRPOConfig(
        output_dir=output_dir, report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
        per_device_train_batch_size=batch_size * k, num_generations=k, steps_per_generation=1, num_iterations=1,
        max_completion_length=max_new_tokens, temperature=temperature, top_p=1.0, top_k=0,
        loss_type=loss_type, scale_rewards=scale_rewards, beta=0.0,
        # warmup_steps: a float in [0, 1) is a ratio of the total steps (transformers 5)
        learning_rate=lr, lr_scheduler_type=lr_scheduler, warmup_steps=warmup_ratio, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=steps, seed=seed, data_seed=seed,
        save_strategy="steps", save_steps=save_steps, logging_steps=logging_steps,
        gradient_checkpointing=False, disable_dropout=True, log_completions=False,
    )
    return GRPOTrainer(model=model, reward_funcs=arithmetic_reward_on_ids(tokenizer), args=args,
                       processing_class=tokenizer, train_dataset=dataset)


def train_grpo(*, output_dir: str, **settings) -> dict:
    """Train μ with TRL's GRPO (:func:`build_trainer`'s settings); checkpoints ``checkpoint-N`` every
    ``save_steps`` in ``output_dir``; returns the run's measured throughput and TRL's training metrics (also
    written to ``output_dir/metrics.json``)."""
    trainer = build_trainer(output_dir=output_dir, **settings)
    tokenizer = trainer.processing_class
    counter = {"seconds": 0.0, "tokens": 0}
    _timed_generate(trainer.model, counter, tokenizer.eos_token_id)
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    rest = wall - counter["seconds"]
    summary = {
        "train": out.metrics,
        "log_history": trainer.state.log_history,
        "throughput": {
            "steps": trainer.state.global_step,
            "train_runtime_s": out.metrics.get("train_runtime"),
            "generation_tokens": counter["tokens"],
            "generation_seconds": round(counter["seconds"], 3),
            "generation_tokens_per_second": round(counter["tokens"] / counter["seconds"], 1)
            if counter["seconds"] > 0 else None,
            # TRL's step outside generate: reward, advantages, the log-prob forward, backward, optimiser
            "other_seconds": round(rest, 3),
        },
        "config": {**{key: v for key, v in settings.items() if key != "rows"}, "beta": 0.0, "top_k": 0, "top_p": 1.0},
    }
    Path(output_dir, "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary

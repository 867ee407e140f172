"""On-policy training: ``python -m nca_lab.llm.train --online --reward SPEC`` (prompts only, verifier reward).

Each optimizer step, for each micro-batch of B prompts (``--batch-size``):

1. **sample** K = ``--num-generations`` responses per prompt from the current policy: ``model.generate`` with the
   KV cache, left padding, ``do_sample=True`` at ``--temperature`` with no top-k/top-p truncation, at most
   ``--max-new-tokens`` tokens, the model in eval mode (no dropout); a response is its tokens up to and including
   the first EOS (one cut by the length limit has none). The random stream is a pure function of
   (``--seed``, optimizer step, micro-batch, process): each draw runs in a forked RNG seeded from them, so a
   resumed run draws exactly what the uninterrupted run drew, and the global RNG (restored by the Trainer's
   checkpoints) is never touched;
2. **score** them with the reward function (:mod:`nca_lab.llm.rewards`): ``(prompts, responses, rows)`` →
   B·K numbers, checked (a raise, a wrong length or a non-finite value stops training with one line naming it);
3. **reference** log-probs of the fresh samples, without gradient: ``--online-ref initial`` — μ, the starting
   model, fixed (with ``--lora`` the same weights with the adapters disabled, otherwise a frozen copy): the
   KL-regularised objective; ``--online-ref sampler`` — the policy that drew the samples (the current weights,
   eval mode), so every fresh batch starts at r_θ = β(log π_θ − log π_sampler) = 0 and the first gradient of
   InfoNCA is the group-baseline (Dr. GRPO / RLOO) policy gradient (Proposition 20,
   ``proofs/20_infonca_policy_gradient.md``); its first-step value is the closed form (ln K for ``infonca``);
4. **train**: the B prompts × K responses go through :class:`nca_lab.llm.trainer.ContrastiveTrainer`'s step
   unchanged (one forward, the registry loss or combination, the data rewards being the verifier's).

The prompts are tokenised once, before training (the chat template with ``add_generation_prompt=True`` when the
tokenizer has one, else the plain-concatenation ids of :mod:`nca_lab.llm.tokenization`), and the dataset the
Trainer iterates holds these ids and the row index: its seeded sampler, gradient accumulation, checkpoints and
resume are the Trainer's own (as in TRL's ``GRPOTrainer``, generation happens inside the training step).

Logged per logging interval (means over its steps; TRL's GRPO names where TRL has one): ``reward`` and
``reward_std`` (all sampled responses), ``reward_group_std`` (mean within-prompt std), ``frac_reward_zero_std``
(fraction of prompts whose K rewards are all equal: no learning signal for a contrastive loss), ``accuracy``
(fraction of responses reaching the reward function's ``max_reward``, default 1.0), ``kl`` (mean over the samples
of log π_sampler(y) − log μ(y), a Monte-Carlo estimate of the sequence-level KL(π‖μ) of the sampling policy to the
starting model), ``completions/mean_length``, ``completions/clipped_ratio`` (no EOS within ``--max-new-tokens``),
``timing/generation_s`` (sampling), ``timing/scoring_s`` (reward and reference log-probs), ``timing/training_s``
(forward + backward), ``throughput/generation_tokens_per_s`` (sampled tokens / generation seconds) and
``throughput/training_tokens_per_s`` (prompt + response tokens of the trained sequences / training seconds).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nca_lab.llm.config import TrainConfig, loss_hparams, resolved_hparams
from nca_lab.llm.collate import cut_at_eos, left_pad
from nca_lab.llm.logps import batch_logps
from nca_lab.llm.metrics import MetricAccumulator
from nca_lab.llm.rewards import max_reward, resolve_reward, score_responses
from nca_lab.llm.trainer import ContrastiveTrainer

__all__ = ["OnlineTrainer", "PromptCollator", "load_prompt_rows", "tokenize_prompts", "run_online"]

ONLINE_DEFINING = ("online", "num_generations", "temperature", "max_new_tokens", "reward", "online_ref")


# ----------------------------------------------------------------------------------------- prompts


def load_prompt_rows(source: str, split: str = "train") -> tuple[list[dict], list[str]]:
    """The rows of a prompt file and where each is (``"<file>: line N"``). A row needs ``prompt`` (a string or a
    message list ending in a user turn; ``instruction`` for UltraFeedback rows); every other field is kept for the
    reward function. A bad row is a :class:`~nca_lab.llm.data.DataError` naming file, line and field."""
    from nca_lab.llm.data import DataError, _iter_rows, _local_files, _prompt, _select_split, load_raw_dataset, \
        read_json_rows

    if os.path.exists(source) and _local_files(source)[0] == "json":
        rows, where = [], []
        for f in _local_files(source)[1]:
            file_rows, file_where = read_json_rows(f)
            rows += file_rows
            where += file_where
        keep = _select_split(len(rows), split)
        rows, where = [rows[i] for i in keep], [where[i] for i in keep]
    else:
        rows = list(_iter_rows(load_raw_dataset(source, split)))
        where = [f"{source}: row {i}" for i in range(len(rows))]
    if not rows:
        raise DataError(f"{source}: split {split!r} holds no rows", reason="no usable rows")
    out = []
    for i, (row, name) in enumerate(zip(rows, where)):
        key = "prompt" if "prompt" in row or "instruction" not in row else "instruction"
        try:
            prompt = _prompt(row.get(key), i, key)
        except DataError as e:
            raise DataError(f"{name}: {str(e).split(': ', 1)[1]} (--online reads a prompt per row)", row=i,
                            field=key, reason=e.reason) from None
        out.append(dict(row, prompt=prompt))
    return out, where


def tokenize_prompts(rows: list[dict], tokenizer, *, max_prompt_length: int | None) -> list[dict]:
    """``[{"prompt_ids", "row"}]`` once for the run: the chat template's generation prompt when the tokenizer has
    one, else the trainer's plain ids (special tokens such as BOS, no trailing EOS); truncated from the left to
    ``max_prompt_length`` (a leading BOS kept)."""
    from nca_lab.llm.tokenization import _appends_eos

    prompts = [r["prompt"] for r in rows]
    if getattr(tokenizer, "chat_template", None) is not None:
        messages = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        texts = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    else:
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"row {i}: prompt is a message list but the tokenizer has no chat template")
        ids = list(tokenizer(prompts, add_special_tokens=True)["input_ids"])
        if _appends_eos(tokenizer):
            ids = [x[:-1] if x and x[-1] == tokenizer.eos_token_id else x for x in ids]
    bos = tokenizer.bos_token_id
    out = []
    for i, x in enumerate(ids):
        x = list(x)
        if max_prompt_length is not None and len(x) > max_prompt_length:
            keep_bos = bos is not None and x[0] == bos and max_prompt_length >= 2
            x = ([bos] if keep_bos else []) + x[len(x) - max_prompt_length + int(keep_bos):]
        if not x:
            raise ValueError(f"row {i}: the prompt has no tokens")
        out.append({"prompt_ids": x, "row": i})
    return out


class PromptCollator:
    """A micro-batch of prompts as lists (generation happens in the training step)."""

    def __call__(self, features):
        return {"prompt_ids": [list(f["prompt_ids"]) for f in features], "row": [int(f["row"]) for f in features]}


# ----------------------------------------------------------------------------------------- the trainer


def _scalar(value: float, device) -> Tensor:
    return torch.tensor(float(value), dtype=torch.float32, device=device)


class OnlineTrainer(ContrastiveTrainer):
    """:class:`ContrastiveTrainer` whose batches are sampled from the policy inside the training step.

    Args (besides the parent's; ``train_dataset`` holds ``{"prompt_ids", "row"}``, ``data_collator`` a
    :class:`PromptCollator`): ``rows`` the prompt rows (the reward function's ``rows``), ``reward_fn`` /
    ``reward_name``, ``num_generations`` K, ``temperature``, ``max_new_tokens``, ``online_ref`` (``initial`` |
    ``sampler``), ``mu_model`` a frozen copy of the starting model or None (``mu_adapters_off``: μ is the peft
    policy with its adapters disabled), ``response_collator`` the :class:`~nca_lab.llm.collate.ResponseCollator` of
    the training forward, ``online_kl`` whether to estimate KL(π‖μ).
    """

    def __init__(self, *args, rows: list[dict], reward_fn, reward_name: str, num_generations: int,
                 temperature: float, max_new_tokens: int, online_ref: str, response_collator,
                 mu_model: nn.Module | None = None, mu_adapters_off: bool = False, online_kl: bool = True,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if online_ref not in ("initial", "sampler"):
            raise ValueError(f"online_ref: expected initial or sampler, got {online_ref!r}")
        self.rows = rows
        self.reward_fn, self.reward_name = reward_fn, reward_name
        self.max_reward = max_reward(reward_fn)
        self.num_generations = num_generations
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.online_ref = online_ref
        self.response_collator = response_collator
        self.mu_model = mu_model
        self.mu_adapters_off = mu_adapters_off
        self.online_kl = online_kl
        if mu_model is not None:
            mu_model.to(self.args.device).eval().requires_grad_(False)
        needs_mu = online_ref == "initial" or online_kl
        if needs_mu and mu_model is None and not mu_adapters_off:
            raise ValueError("OnlineTrainer: the starting model mu is needed (online_ref='initial' or online_kl): "
                             "give mu_model or a peft model with mu_adapters_off=True")
        self._online_metrics = MetricAccumulator()
        self._micro = (-1, 0)  # (optimizer step, micro-batch index within it)
        self.generation_tokens = 0
        self.generation_seconds = 0.0
        self.training_tokens = 0
        self.training_seconds = 0.0

    # ------------------------------------------------------------------------------------- sampling

    def _generation_seed(self) -> int:
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        index = (step * self.args.gradient_accumulation_steps + micro) * self.args.world_size + self.args.process_index
        return (self.args.seed * 1_000_003 + index) % (2**63 - 1)

    def _sync(self) -> None:
        if self.args.device.type == "cuda":
            torch.cuda.synchronize(self.args.device)

    def _autocast(self):
        return torch.autocast(self.args.device.type, dtype=torch.bfloat16, enabled=self.args.bf16)

    @torch.no_grad()
    def generate(self, model: nn.Module, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        """K sampled responses per prompt (prompt-major), each cut after its first EOS."""
        from transformers import GenerationConfig

        tokenizer = self.processing_class
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        k = self.num_generations
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature,
                                  top_k=0, top_p=1.0, pad_token_id=pad, eos_token_id=eos,
                                  bos_token_id=tokenizer.bos_token_id, use_cache=True)
        flat = [p for p in prompt_ids for _ in range(k)]
        input_ids, attention_mask = left_pad(flat, pad, self.args.device)
        devices = [self.args.device] if self.args.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._autocast():
            torch.manual_seed(seed)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        new = out[:, input_ids.shape[1]:].tolist()
        return [cut_at_eos(row, eos) for row in new]

    def _decode(self, ids: list[int]) -> str:
        tokenizer = self.processing_class
        if ids and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        return tokenizer.decode(ids, skip_special_tokens=False)

    @torch.no_grad()
    def _logps(self, model: nn.Module, batch: dict, adapters_off: bool = False) -> Tensor:
        import contextlib

        inputs = {k: v.to(self.args.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        off = model.disable_adapter() if adapters_off else contextlib.nullcontext()
        with off, self._autocast():
            logps, _ = batch_logps(model, inputs, chunk_size=self.chunk_size, full_logits=self.full_logits)
        return logps.float()

    def rollout(self, model: nn.Module, inputs: dict) -> dict:
        """Sample, score and compute the reference log-probs of one micro-batch of prompts; returns the collated
        training batch (``ref_logps`` attached) and records the step's online metrics."""
        policy = self.accelerator.unwrap_model(model)
        seed = self._generation_seed()
        step = self.state.global_step + 1
        prompt_ids, row_index = inputs["prompt_ids"], inputs["row"]
        k = self.num_generations
        was_training = policy.training
        policy.eval()
        try:
            self._sync()
            t0 = time.perf_counter()
            responses = self.generate(policy, prompt_ids, seed)
            self._sync()
            t1 = time.perf_counter()
            texts = [self._decode(r) for r in responses]
            rows = [self.rows[i] for i in row_index for _ in range(k)]
            rewards = score_responses(self.reward_fn, self.reward_name, [r["prompt"] for r in rows], texts, rows,
                                      step=step)
            features = [{"prompt_ids": p, "response_ids": responses[b * k:(b + 1) * k],
                         "rewards": rewards[b * k:(b + 1) * k]} for b, p in enumerate(prompt_ids)]
            batch = self.response_collator(features)
            sampler = mu = None
            if self.online_ref == "sampler" or self.online_kl:
                sampler = self._logps(policy, batch)  # the policy that drew the samples, before any update
            if self.online_ref == "initial" or self.online_kl:
                mu = (self._logps(policy, batch, adapters_off=True) if self.mu_adapters_off
                      else self._logps(self.mu_model, batch))
            self._sync()
            t2 = time.perf_counter()
        finally:
            policy.train(was_training)
        batch["ref_logps"] = (sampler if self.online_ref == "sampler" else mu).cpu()
        gen_tokens = sum(len(r) for r in responses)
        eos = self.processing_class.eos_token_id
        r = torch.tensor(rewards, dtype=torch.float64).reshape(len(prompt_ids), k)
        dev = self.args.device
        n, b = float(r.numel()), float(len(prompt_ids))
        metrics = {
            "reward": (_scalar(r.sum(), dev), _scalar(n, dev)),
            "reward_sq": (_scalar((r ** 2).sum(), dev), _scalar(n, dev)),
            "reward_group_std": (_scalar(r.std(dim=1, unbiased=False).sum(), dev), _scalar(b, dev)),
            "frac_reward_zero_std": (_scalar((r == r[:, :1]).all(dim=1).sum(), dev), _scalar(b, dev)),
            "accuracy": (_scalar((r >= self.max_reward).sum(), dev), _scalar(n, dev)),
            "completions/mean_length": (_scalar(gen_tokens, dev), _scalar(n, dev)),
            "completions/clipped_ratio": (_scalar(sum(eos not in x for x in responses), dev), _scalar(n, dev)),
            "timing/generation_s": (_scalar(t1 - t0, dev), _scalar(1, dev)),
            "timing/scoring_s": (_scalar(t2 - t1, dev), _scalar(1, dev)),
            "throughput/generation_tokens_per_s": (_scalar(gen_tokens, dev), _scalar(t1 - t0, dev)),
        }
        if sampler is not None and mu is not None:
            metrics["kl"] = ((sampler - mu).sum().to(dev), _scalar(n, dev))
        self._online_metrics.add(metrics)
        self.generation_tokens += gen_tokens
        self.generation_seconds += t1 - t0
        return batch

    # ------------------------------------------------------------------------------------- the step

    def training_step(self, model, inputs, num_items_in_batch=None):
        batch = self.rollout(model, inputs)
        self._sync()
        t0 = time.perf_counter()
        loss = super().training_step(model, batch, num_items_in_batch)
        self._sync()
        seconds = time.perf_counter() - t0
        dev = self.args.device
        self._online_metrics.add({
            "timing/training_s": (_scalar(seconds, dev), _scalar(1, dev)),
            "throughput/training_tokens_per_s": (_scalar(batch["num_tokens"], dev), _scalar(seconds, dev)),
        })
        self.training_tokens += int(batch["num_tokens"])
        self.training_seconds += seconds
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            means = self._online_metrics.reduce_and_reset(lambda t: self.accelerator.reduce(t, "sum"))
            if "reward" in means:
                means["reward_std"] = math.sqrt(max(means.pop("reward_sq") - means["reward"] ** 2, 0.0))
            logs.update(means)
        super().log(logs, start_time)


# ----------------------------------------------------------------------------------------- the run


def run_online(cfg: TrainConfig, command: list[str] | str | None = None) -> dict[str, Any]:
    """``python -m nca_lab.llm.train --online ...``: train on-policy; returns what ``metrics.json`` holds."""
    from accelerate import PartialState
    from transformers import set_seed

    from nca_lab.llm.callbacks import DivergenceCallback, InterruptCallback, use_log_lines
    from nca_lab.llm.collate import ResponseCollator
    from nca_lab.llm.reference import model_fingerprint
    from nca_lab.llm.run_dir import check_model_path, check_resume, claim_output_dir, latest_complete_checkpoint, \
        prepare_output_dir, run_definition
    from nca_lab.llm.train import _check_extras, _check_finished, _ensure_pad_token, _metric_beta, _say, _versions, \
        _wrap_lora, _device_description, load_model, load_tokenizer, model_path, training_arguments
    from nca_lab.llm.trainer import StopAfterStepsCallback, disable_dropout
    from nca_lab.losses import get_loss

    loss = get_loss(cfg.loss)
    hparams = loss_hparams(cfg)
    reward_fn, reward_name = resolve_reward(cfg.reward)  # ValueError (exit 2) before anything is loaded
    _check_extras(cfg)
    check_model_path(cfg)
    output_dir = prepare_output_dir(cfg)
    args = training_arguments(cfg, output_dir)
    state = PartialState()
    set_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg)
    rows, _ = load_prompt_rows(cfg.data, cfg.split)
    pad_token_id = _ensure_pad_token(tokenizer)
    if tokenizer.eos_token_id is None:
        raise ValueError("--model: the tokenizer has no eos_token (generation stops at it)")
    prompt_budget = cfg.max_length - cfg.max_new_tokens
    if prompt_budget < 1:
        raise ValueError(f"--max-length ({cfg.max_length}) must exceed --max-new-tokens ({cfg.max_new_tokens})")
    max_prompt = min(prompt_budget, cfg.max_prompt_length or prompt_budget)
    train_ds = tokenize_prompts(rows, tokenizer, max_prompt_length=max_prompt)
    _say(args, f"online: {len(rows)} prompts from {cfg.data}; K = {cfg.num_generations} samples per prompt and "
               f"step, reward {reward_name}, reference {cfg.online_ref}")
    model = load_model(cfg)
    if not cfg.dropout:
        disable_dropout(model)

    definition = run_definition(cfg, model_sha256=model_fingerprint(model), max_responses=cfg.num_generations)
    definition.update({name: getattr(cfg, name) for name in ONLINE_DEFINING})
    checkpoint = None
    if cfg.resume:
        note = check_resume(output_dir, definition, cfg.resume_force)
        checkpoint, skipped = latest_complete_checkpoint(output_dir)
        for line in ([note] if note else []) + [f"resuming from {checkpoint}" + (
                f" (skipped incomplete: {', '.join(skipped)})" if skipped else "")]:
            _say(args, line)
    if cfg.shared_prompt:
        from nca_lab.llm.logps import check_shared_prompt_layout

        model.to(args.device)
        check_shared_prompt_layout(model)

    needs_mu = cfg.online_ref == "initial" or cfg.online_kl
    mu_model = copy.deepcopy(model) if needs_mu and not cfg.lora else None  # LoRA: adapters off instead
    if cfg.lora:
        model = _wrap_lora(model, cfg)

    claim_output_dir(output_dir, cfg, definition, state=state, is_main=args.process_index == 0)

    import datasets

    divergence, interrupt = DivergenceCallback(), InterruptCallback()
    callbacks = [divergence, interrupt] + ([StopAfterStepsCallback(cfg.stop_after_steps)] if cfg.stop_after_steps
                                           else [])
    trainer = OnlineTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(train_ds), data_collator=PromptCollator(),
        processing_class=tokenizer, callbacks=callbacks,
        loss=loss, loss_hparams=hparams, metric_beta=_metric_beta(loss, hparams), chunk_size=cfg.chunk_size,
        full_logits=cfg.full_logits, sync_checks=cfg.sync_checks,
        rows=rows, reward_fn=reward_fn, reward_name=reward_name, num_generations=cfg.num_generations,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, online_ref=cfg.online_ref,
        response_collator=ResponseCollator(pad_token_id, shared_prompt=cfg.shared_prompt),
        mu_model=mu_model, mu_adapters_off=needs_mu and cfg.lora, online_kl=cfg.online_kl,
    )
    _say(args, f"loss {loss.name} {resolved_hparams(cfg)}; {args.world_size} process(es); output: {output_dir}")
    use_log_lines(trainer)
    with interrupt.installed(enabled=args.world_size == 1):
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
    _check_finished(trainer, cfg, output_dir, divergence, interrupt)
    trainer.save_model(output_dir)

    rate = lambda tokens, seconds: round(tokens / seconds, 1) if seconds > 0 else None  # noqa: E731
    summary = {
        "output_dir": output_dir,
        "command": sys.argv if command is None else command,
        "config": dataclasses.asdict(cfg),
        "model": {"given": cfg.model, "path": model_path(cfg)},
        "loss": {"name": loss.name, "hparams": resolved_hparams(cfg), "needs_ref": loss.needs_ref,
                 "metric_beta": _metric_beta(loss, hparams)},
        "online": {"prompts": len(rows), "num_generations": cfg.num_generations, "reward": reward_name,
                   "max_reward": trainer.max_reward, "online_ref": cfg.online_ref, "temperature": cfg.temperature,
                   "max_new_tokens": cfg.max_new_tokens},
        "log_history": trainer.state.log_history,
        "train": train_output.metrics,
        "throughput": {
            "device": _device_description(args),
            "world_size": args.world_size,
            "steps": trainer.state.global_step,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            # this process, this session: sampled tokens per second of generation; trained tokens (prompt +
            # response per sequence) per second of forward + backward
            "generation_tokens": trainer.generation_tokens,
            "generation_seconds": round(trainer.generation_seconds, 3),
            "generation_tokens_per_second": rate(trainer.generation_tokens, trainer.generation_seconds),
            "training_tokens": trainer.training_tokens,
            "training_seconds": round(trainer.training_seconds, 3),
            "training_tokens_per_second": rate(trainer.training_tokens, trainer.training_seconds),
        },
        "versions": _versions(),
    }
    if args.process_index == 0:
        Path(output_dir, "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        _say(args, f"saved model, tokenizer and metrics.json to {output_dir}")
    state.wait_for_everyone()
    return summary

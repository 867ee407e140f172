"""What the benchmark runs: its settings (:class:`BenchConfig`), nca_lab's base configuration (:func:`base_flags`)
and the ablations that flip one of its speed features each, and the constants its numbers are judged by."""

from __future__ import annotations

import dataclasses

__all__ = ["PEAK_FLOPS", "LOSS_TOLERANCE", "OURS_ABLATIONS", "BenchConfig", "base_flags"]


# bf16 dense tensor-core peaks (FLOP/s), from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {"H100 SXM": 989.4e12, "H100 NVL": 835.0e12, "H100 PCIe": 756.0e12, "H100": 989.4e12,
              "H200": 989.4e12, "A100": 312.0e12, "L40S": 362.0e12}

# Loss at step 2 (after one AdamW step), float32, same data order: the two implementations differ only in
# reduction order (padded vs packed attention, fused vs chunked head), ~1e-6 relative on each log-prob sum.
LOSS_TOLERANCE = 1e-4

# name -> flags that flip one of nca_lab's speed features relative to the base configuration (compile: on).
# "packing flipped" turns the base's layout packed <-> padded (see base_flags); "precision flipped" turns bf16 mixed
# precision off on a GPU (fp32) and on on a CPU (where the base is fp32).
OURS_ABLATIONS: dict[str, tuple[str, ...]] = {
    "packing flipped": (),
    "full logits (chunked head off)": ("--full-logits",),
    "online reference (precompute off)": ("--ref-mode", "online"),
    "precision flipped": (),
    "shared prompt (prompt once per K responses)": ("--no-packed", "--shared-prompt"),
    "sync checks in the step (sync-free off)": ("--sync-checks",),
    "torch.compile on": ("--torch-compile",),
}


@dataclasses.dataclass
class BenchConfig:
    size: str = "0.5b"
    model: str | None = None  # a pretrained model (packaged name or local folder) instead of a generated size
    steps: int = 20
    batch_size: int = 8  # prompts per step (K = 2: pairs per step)
    seq_len: int = 512
    k4_prompts: int | None = None  # None: steps * batch_size
    lr: float = 1e-6
    beta: float = 0.1
    seed: int = 0
    ablations: tuple[str, ...] = tuple(OURS_ABLATIONS)
    packed: bool | None = None  # nca_lab's base layout; None: packed on a GPU, padded on a CPU (see base_flags)
    trl: bool = True
    agreement_steps: int = 2
    profile_steps: int = 0  # > 0: profile nca_lab's base dpo configuration for this many steps (torch.profiler)


def base_flags(packed: bool, gpu: bool) -> tuple[str, ...]:
    """The layout flags of nca_lab's base configuration. Packed (padding-free) batches only pay with an attention
    kernel that skips the masked blocks of the block-diagonal mask: flex_attention on a GPU. sdpa computes the
    whole [L, L] score matrix of the packed row (L = every token of the batch): in the recorded CPU benchmark
    runs (llm/bench/cpu_small*.json) packed batches with sdpa ran at 0.42-0.52x the tokens/s of padded ones; on a
    CPU flex_attention has no backward (torch 2.13), so packed CPU runs use sdpa."""
    if not packed:
        return ("--no-packed",)
    return ("--packed", "--attn-implementation", "flex_attention") if gpu else ("--packed",)

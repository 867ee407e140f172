"""``--profile-steps``: nca_lab's base ``dpo`` configuration under ``torch.profiler``, its operators' self time
grouped by what bounds the step."""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILE_GROUPS", "profile_group", "profile_run"]


# Operator-name fragments -> what bounds the step; the first match wins (order matters: "log_softmax" before
# attention's "_softmax", attention's "flash" kernels before "mm", "addmm" before the elementwise "add").
PROFILE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("log-softmax / gather (loss head)", ("log_softmax", "logsumexp", "gather", "cross_entropy", "nll")),
    ("attention", ("attention", "flash", "flex", "sdpa", "_softmax", "fmha")),
    ("optimizer", ("adam", "foreach", "_fused")),
    ("matmul (linear layers, LM head)", ("mm", "matmul", "linear", "gemm", "cublas", "cutlass", "sm90", "xmma")),
    ("copies, casts, views", ("copy", "cast", "memcpy", "memset", "cat", "contiguous", "index", "as_strided",
                              "view", "reshape", "transpose", "slice", "select", "empty", "expand")),
    ("normalisation and elementwise", ("norm", "mul", "add", "silu", "sigmoid", "rsqrt", "pow", "mean", "exp",
                                       "neg", "div", "sub", "where", "fill", "sum", "elementwise", "vectorized",
                                       "reduce")),
    ("data loading", ("dataloader", "collate")),
)


def profile_group(name: str) -> str:
    low = name.lower()
    for group, fragments in PROFILE_GROUPS:
        if any(f in low for f in fragments):
            return group
    return "other"


def profile_run(job, *, gpu: bool, top: int = 20) -> tuple[dict[str, Any], str]:
    """Run ``job()`` under ``torch.profiler``; the operators' self time (CUDA kernels on a GPU, CPU ops on a CPU),
    the top ``top`` operators with their share, and the shares per :data:`PROFILE_GROUPS` group. Returns (record,
    the profiler's own table as text)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        job()
    if gpu:
        torch.cuda.synchronize()
    averages = prof.key_averages()
    attr = "self_device_time_total" if gpu else "self_cpu_time_total"
    rows = [(e.key, float(getattr(e, attr, 0.0) or 0.0), int(e.count)) for e in averages]
    rows = [r for r in rows if r[1] > 0 and not r[0].startswith("ProfilerStep")]
    total = sum(t for _, t, _ in rows) or 1.0
    groups: dict[str, float] = {}
    for name, t, _ in rows:
        group = profile_group(name)
        groups[group] = groups.get(group, 0.0) + t
    rows.sort(key=lambda r: -r[1])
    record = {
        "time": "self CUDA time of kernels" if gpu else "self CPU time of operators",
        "total_ms": round(total / 1e3, 3),
        "groups": {g: round(t / total, 4) for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top": [{"name": n, "self_ms": round(t / 1e3, 3), "share": round(t / total, 4), "calls": c}
                for n, t, c in rows[:top]],
    }
    table = averages.table(sort_by="self_device_time_total" if gpu else "self_cpu_time_total", row_limit=top)
    return record, table

"""``python -m nca_lab.llm.bench``: nca_lab's trainer against TRL's ``DPOTrainer``, side by side in one process.

One command builds a ``LlamaForCausalLM`` from a config (random weights, seeded; sizes in
:data:`nca_lab.llm.scale_run.run.SIZES`, ``0.5b`` on a GPU), saves it with the offline tokenizer, generates
scored data with varied lengths (:func:`nca_lab.llm.scale_run.run.generate_rows`) and trains the *same* saved
model on the *same* data, batch and sequence lengths for a fixed number of steps with:

* nca_lab (``python -m nca_lab.llm.train``'s in-process entry point ``config_from_args`` + ``run``), losses
  ``dpo`` and ``nca_pair``, in its base configuration — response-only chunked log-softmax, precomputed
  reference, no host-device synchronisation inside the step; on a GPU also padding-free packing
  (``flex_attention``) and bf16 mixed precision — and with each of these flipped in turn, plus the
  shared-prompt layout and ``torch.compile`` switched on;
* TRL ``DPOTrainer`` with ``loss_type="sigmoid"`` and ``"nca_pair"``, ``precompute_ref_log_probs`` off and on;
* the K = 4 dataset: nca_lab's ``nca`` and ``infonca`` over the K = 4 rows (``nca`` also with the shared
  prompt) against TRL (its fastest K = 2 configuration) over the same rows expanded to best-vs-rest pairs,
  one pass each.

Definitions (also written into the JSON):

* tokens = dataset tokens: per sequence, prompt + response tokens (BOS/EOS included, no padding; the prompt is
  counted once per response, as TRL sees it). tokens/s = tokens / (reference precompute + ``train_runtime``),
  both measured in the run: TRL's precompute runs in its constructor and is timed there.
* pairs/s = preference pairs per second: one per prompt at K = 2; K − 1 (best vs rest) per prompt at K = 4.
* peak memory = ``torch.cuda.max_memory_allocated`` from the trainer's construction to the end of training
  (reset before each configuration). On a CPU it is not measured (``null``): the process's RSS peak cannot be
  attributed to one configuration.
* MFU = (6·N·tokens for the policy's forward and backward + 2·N·tokens for the reference forward) / seconds /
  peak bf16 dense FLOP/s of the GPU (:data:`PEAK_FLOPS`; ``null`` on CPU or an unknown GPU). N = parameters
  without the input embedding (a lookup); attention's T² term is left out, as in the usual 6N rule.
* loss agreement: separate 2-step float32 runs of nca_lab ``dpo``/``nca_pair`` and TRL ``sigmoid``/``nca_pair``
  (precomputed reference, ``logging_steps=1``, same seed hence the same sampler order): the loss logged at
  step 2 — after the first optimizer step — must agree within :data:`LOSS_TOLERANCE`; the token sequences each
  trainer built are compared too (``token_sequences_identical``).

* profile (``--profile-steps N``): nca_lab's base ``dpo`` configuration run again for N steps under
  ``torch.profiler``, outside the timed runs; operators' self time (CUDA kernels on a GPU) grouped into matmul,
  attention, loss head, optimizer, copies, elementwise, data loading and other — what bounds the step where a
  target is missed.

Results: ``OUT/bench.json`` (every number, the command, device, versions) and ``OUT/bench.md`` (tables);
``OUT/bench_partial.json`` after every configuration, so a run cut off by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["PEAK_FLOPS", "LOSS_TOLERANCE", "OURS_ABLATIONS", "BenchConfig", "run_bench", "main"]

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


# ----------------------------------------------------------------------------------------------- helpers


def _versions() -> dict[str, str | None]:
    import accelerate
    import datasets
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__, "datasets": datasets.__version__, "trl": None}
    try:
        import trl

        out["trl"] = trl.__version__
    except ImportError:
        pass
    return out


def _peak_flops(device_name: str) -> float | None:
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_FLOPS[key]
    return None


def _reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def sequence_tokens(tokenizer, rows: list[dict]) -> int:
    """Dataset tokens of generic rows as nca_lab tokenises them (prompt once per response + response + EOS)."""
    from nca_lab.llm.data import records_from_list
    from nca_lab.llm.tokenization import tokenize_dataset

    records, _ = records_from_list(rows, schema="generic")
    ds, _ = tokenize_dataset(records, tokenizer, max_length=10**9)
    return sum(len(r["prompt_ids"]) * len(r["response_ids"]) + sum(map(len, r["response_ids"])) for r in ds)


def best_rest_pairs(rows: list[dict]) -> list[dict]:
    """TRL's view of K-response rows: the best response against every other one with a lower reward."""
    pairs = []
    for row in rows:
        rewards = row["rewards"]
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        for j, r in enumerate(rewards):
            if j != best and r < rewards[best]:
                pairs.append({"prompt": row["prompt"], "chosen": row["responses"][best],
                              "rejected": row["responses"][j]})
    return pairs


def untied_rows(tokenizer, n: int, k: int, seq_len: int, seed: int) -> list[dict]:
    """``n`` generated rows whose K rewards are all distinct (a tie carries no preference: TRL would still
    train on an arbitrary order, nca_lab would skip it, and the comparison would not be like for like)."""
    from nca_lab.llm.scale_run.run import generate_rows

    rows, attempt = [], 0
    while len(rows) < n:
        batch = generate_rows(tokenizer, 2 * (n - len(rows)) + 4, k, seq_len, seed=seed + 1000 * attempt)
        rows += [r for r in batch if len(set(r["rewards"])) == k]
        attempt += 1
        if attempt > 50:
            raise RuntimeError("could not generate enough rows with distinct rewards")
    return rows[:n]


def _write_jsonl(rows: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------------------------------- one run each


def base_flags(packed: bool, gpu: bool) -> tuple[str, ...]:
    """The layout flags of nca_lab's base configuration. Packed (padding-free) batches only pay with an attention
    kernel that skips the masked blocks of the block-diagonal mask: flex_attention on a GPU. sdpa computes the
    whole [L, L] score matrix of the packed row (L = every token of the batch): in the recorded CPU benchmark
    runs (llm/bench/cpu_small*.json) packed batches with sdpa ran at 0.42-0.52x the tokens/s of padded ones; on a
    CPU flex_attention has no backward (torch 2.13), so packed CPU runs use sdpa."""
    if not packed:
        return ("--no-packed",)
    return ("--packed", "--attn-implementation", "flex_attention") if gpu else ("--packed",)


def run_ours(model_dir: str, data: str, out: Path, *, loss: str, steps: int, batch_size: int, seq_len: int,
             lr: float, beta: float, seed: int, bf16: bool, flags: tuple[str, ...] = (), logging_steps: int | None = None
             ) -> dict[str, Any]:
    """One nca_lab training run through the CLI's in-process entry point; seconds, memory, losses."""
    from nca_lab.llm.config import config_from_args
    from nca_lab.llm.train import run

    argv = ["--model", model_dir, "--data", data, "--schema", "generic", "--output-dir", str(out), "--overwrite",
            "--loss", loss, "--beta", repr(beta), "--max-steps", str(steps), "--batch-size", str(batch_size),
            "--max-length", str(seq_len), "--lr", repr(lr), "--lr-scheduler", "constant", "--warmup-ratio", "0",
            "--logging-steps", str(logging_steps or steps), "--save-strategy", "no", "--seed", str(seed),
            "--bf16" if bf16 else "--no-bf16", *flags]
    cfg = config_from_args(argv)
    # A fresh output folder per run: the reference cache lives in it, and a cache left by an earlier
    # configuration would let this one skip its reference precompute.
    shutil.rmtree(out, ignore_errors=True)
    _reset_memory()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run(cfg, command="python -m nca_lab.llm.train " + shlex.join(argv))
    tp = summary["throughput"]
    return {
        "train_command": "python -m nca_lab.llm.train " + shlex.join(argv),
        "reference_s": float(tp["reference_seconds"]), "train_s": float(tp["train_runtime_s"]),
        "steps": int(tp["steps"]), "peak_memory_bytes": _peak_memory(),
        "losses": [h["loss"] for h in summary["log_history"] if "loss" in h],
        "tokens_seen": tp["tokens"],
    }


def _trl_tokens(trainer) -> list[tuple[list[int], list[int], list[int]]]:
    ds = trainer.train_dataset
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in ds]


def run_trl(model_dir: str, pairs: list[dict], out: Path, *, loss_type: str, precompute: bool, steps: int,
            batch_size: int, seq_len: int, lr: float, beta: float, seed: int, bf16: bool,
            logging_steps: int | None = None, return_tokens: bool = False) -> dict[str, Any]:
    """One TRL ``DPOTrainer`` run on (prompt, chosen, rejected) strings; same quantities as :func:`run_ours`."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from nca_lab.llm.train import _has_accelerator

    timer = {"s": 0.0}

    class TimedDPOTrainer(DPOTrainer):
        # TRL computes the reference log-probs in its constructor: time exactly that part.
        def _precompute_ref_logps(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                timer["s"] += time.perf_counter() - t0

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=bf16,
        gradient_checkpointing=False, logging_steps=logging_steps or steps, save_strategy="no", report_to=[],
        seed=seed, data_seed=seed, beta=beta, loss_type=[loss_type], precompute_ref_log_probs=precompute,
        max_length=seq_len, dataloader_num_workers=0, use_cpu=not _has_accelerator(), disable_tqdm=True,
    )
    _reset_memory()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = TimedDPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                                  processing_class=tokenizer)
        output = trainer.train()
    result = {
        "trl_config": {"loss_type": loss_type, "precompute_ref_log_probs": precompute, "beta": beta, "bf16": bf16,
                       "batch_size": batch_size, "max_length": seq_len, "gradient_checkpointing": False},
        "reference_s": timer["s"], "train_s": float(output.metrics["train_runtime"]),
        "steps": int(trainer.state.global_step), "peak_memory_bytes": _peak_memory(),
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }
    if return_tokens:
        result["token_sequences"] = _trl_tokens(trainer)
    del trainer, model
    _reset_memory()
    return result


# --------------------------------------------------------------------------------------------- the profile

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


# ------------------------------------------------------------------------------------------------ the bench


def _rates(run: dict, tokens: int, pairs: int, flops_per_token: float, peak: float | None) -> dict:
    seconds = run["reference_s"] + run["train_s"]
    out = {"seconds": round(seconds, 3), "reference_s": round(run["reference_s"], 3),
           "train_s": round(run["train_s"], 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
           "pairs_per_s": round(pairs / seconds, 3), "peak_memory_bytes": run["peak_memory_bytes"],
           "mfu": round(flops_per_token * tokens / seconds / peak, 4) if peak else None,
           "steps": run["steps"], "first_loss": run["losses"][0] if run["losses"] else None}
    for key in ("train_command", "trl_config"):
        if key in run:
            out[key] = run[key]
    return out


def _our_tokens(model_dir: str, data: str, seq_len: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, best, worst) token ids per row as nca_lab's trainer builds them (K = 2 rows)."""
    from transformers import AutoTokenizer

    from nca_lab.llm.data import load_records
    from nca_lab.llm.tokenization import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records, _ = load_records(data, schema="generic")
    ds, _ = tokenize_dataset(records, tokenizer, max_length=seq_len)
    out = []
    for r in ds:
        best = max(range(len(r["rewards"])), key=lambda i: (r["rewards"][i], -i))
        out.append((list(r["prompt_ids"]), list(r["response_ids"][best]), list(r["response_ids"][1 - best])))
    return out


def check_loss_agreement(model_dir: str, data: str, pairs: list[dict], out: Path, *, steps: int, batch_size: int,
                         seq_len: int, lr: float, beta: float, seed: int, flags: tuple[str, ...] = (),
                         trl_beta: float | None = None) -> dict[str, Any]:
    """nca_lab ``dpo``/``nca_pair`` against TRL ``sigmoid``/``nca_pair``: float32, precomputed reference, the
    loss logged at every one of ``steps`` steps (step 2 is computed after the first optimizer step). Agreement:
    every |difference| <= :data:`LOSS_TOLERANCE` and the token sequences both trainers built are identical.
    ``trl_beta`` (tests only) gives TRL a different beta, which must break the agreement."""
    common = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed)
    ours_tokens = [tuple(t) for t in _our_tokens(model_dir, data, seq_len)]
    result: dict[str, Any] = {"tolerance": LOSS_TOLERANCE, "dtype": "float32", "steps": steps, "pairs": []}
    for ours_loss, trl_loss in (("dpo", "sigmoid"), ("nca_pair", "nca_pair")):
        a = run_ours(model_dir, data, out / "agree", loss=ours_loss, bf16=False, logging_steps=1, flags=flags,
                     beta=beta, **common)
        b = run_trl(model_dir, pairs, out / "agree_trl", loss_type=trl_loss, precompute=True, bf16=False,
                    logging_steps=1, return_tokens=True, beta=beta if trl_beta is None else trl_beta, **common)
        same_length = len(a["losses"]) == len(b["losses"]) == steps
        diff = max((abs(x - y) for x, y in zip(a["losses"], b["losses"])), default=math.inf)
        result["pairs"].append({"nca_lab": ours_loss, "trl": trl_loss, "nca_lab_losses": a["losses"],
                                "trl_losses": b["losses"], "max_abs_diff": diff,
                                "agree": bool(same_length and diff <= LOSS_TOLERANCE)})
        result["token_sequences_identical"] = [tuple(t) for t in b["token_sequences"]] == ours_tokens
    result["agree"] = all(p["agree"] for p in result["pairs"]) and result["token_sequences_identical"]
    return result


def run_bench(cfg: BenchConfig, out_dir: str | Path, *, command: str | None = None, progress: bool = True) -> dict:
    """Run every configuration; write ``bench.json`` and ``bench.md`` into ``out_dir``; return the record."""
    import torch
    from tqdm.auto import tqdm

    from nca_lab.llm.scale_run import run as sr

    if cfg.trl:
        try:
            import trl  # noqa: F401
        except ImportError as e:
            raise ImportError("the benchmark compares with TRL: pip install 'nca_lab[bench]' (or trl==1.16.0), "
                              "or pass --no-trl") from e
    unknown = [a for a in cfg.ablations if a not in OURS_ABLATIONS]
    if unknown:
        raise ValueError(f"ablations: unknown {unknown}; known: {list(OURS_ABLATIONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    device_kind, device = sr._device()
    peak = _peak_flops(device) if gpu else None
    bf16 = gpu  # bf16 mixed precision where it pays; the CPU run stays float32

    model, tokenizer = sr.build_model_and_tokenizer(cfg.size, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    n_flop_params = n_params - model.get_input_embeddings().weight.numel()
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    n2 = cfg.steps * cfg.batch_size
    rows2 = untied_rows(tokenizer, n2, 2, cfg.seq_len, cfg.seed)
    data2 = _write_jsonl(rows2, out / "data_k2.jsonl")
    pairs2 = best_rest_pairs(rows2)
    tokens2 = sequence_tokens(tokenizer, rows2)
    n4 = cfg.k4_prompts or n2
    rows4 = untied_rows(tokenizer, n4, 4, cfg.seq_len, cfg.seed + 1)
    data4 = _write_jsonl(rows4, out / "data_k4.jsonl")
    pairs4 = best_rest_pairs(rows4)
    tokens4_ours = sequence_tokens(tokenizer, rows4)
    tokens4_trl = sequence_tokens(tokenizer, [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]],
                                               "rewards": [1.0, 0.0]} for p in pairs4])
    policy_ref = 8.0 * n_flop_params  # 6N policy forward + backward, 2N reference forward, per token
    policy_only = 6.0 * n_flop_params
    common = dict(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr, beta=cfg.beta,
                  seed=cfg.seed)
    packed = gpu if cfg.packed is None else cfg.packed
    base = base_flags(packed, gpu)

    # Untimed warm-up of both trainers (lazy imports, kernel selection, the one-time head check): whichever
    # configuration ran first would otherwise pay for it.
    run_ours(str(model_dir), data2, out / "runs" / "warmup", loss="dpo", bf16=bf16, flags=base,
             **{**common, "steps": 1})
    if cfg.trl:
        run_trl(str(model_dir), pairs2, out / "runs" / "warmup_trl", loss_type="sigmoid", precompute=False,
                bf16=bf16, **{**common, "steps": 1})

    # Order: the head-to-head runs first (nca_lab's base, then TRL's four), the ablations after them, so a run cut
    # off by a time limit keeps the comparison in bench_partial.json.
    jobs: list[tuple[str, Any]] = []
    for loss in ("dpo", "nca_pair"):
        jobs.append((f"nca_lab {loss}", lambda loss=loss: run_ours(str(model_dir), data2, out / "runs" / "ours",
                                                                    loss=loss, bf16=bf16, flags=base, **common)))
    if cfg.trl:
        for loss_type in ("sigmoid", "nca_pair"):
            for precompute in (False, True):
                jobs.append((f"TRL {loss_type}, precompute_ref_log_probs={precompute}",
                             lambda lt=loss_type, pc=precompute: run_trl(
                                 str(model_dir), pairs2, out / "runs" / "trl", loss_type=lt, precompute=pc,
                                 bf16=bf16, **common)))
    for name in cfg.ablations:
        flags, precision, label = base + OURS_ABLATIONS[name], bf16, name
        if name == "packing flipped":
            flags = base_flags(not packed, gpu)
            label = "padded (packing off)" if packed else "packed (packing on)"
        elif name == "precision flipped":
            precision = not bf16
            label = "bf16 mixed precision on" if precision else "fp32 (bf16 off)"
        jobs.append((f"nca_lab dpo, {label}", lambda flags=flags, precision=precision: run_ours(
            str(model_dir), data2, out / "runs" / "ours", loss="dpo", bf16=precision, flags=flags, **common)))

    results: dict[str, dict] = {}
    k4: dict[str, dict] = {}
    t_start = time.perf_counter()

    def save_partial() -> None:
        # After every configuration: a run cut off by a time limit still leaves what it measured.
        (out / "bench_partial.json").write_text(json.dumps(
            {"device": device, "command": command, "config": dataclasses.asdict(cfg), "k2": results, "k4": k4,
             "elapsed_s": round(time.perf_counter() - t_start, 1)}, indent=2, default=str) + "\n")

    for name, job in tqdm(jobs, desc="benchmark (K = 2)", disable=not progress):
        results[name] = _rates(job(), tokens2, n2, policy_ref, peak)
        save_partial()

    # K = 4: one pass over the data. nca_lab takes B prompts x 4 responses per step; TRL 2B pairs per step,
    # i.e. the same 4B sequences per step, and 1.5x the steps (3 pairs per prompt).
    k4_steps_ours = math.ceil(n4 / cfg.batch_size)
    for label, loss, flags in (("nca", "nca", base), ("infonca", "infonca", base),
                               ("nca, shared prompt", "nca", ("--no-packed", "--shared-prompt"))):
        run = run_ours(str(model_dir), data4, out / "runs" / "ours", loss=loss, bf16=bf16, flags=flags,
                       **{**common, "steps": k4_steps_ours})
        k4[f"nca_lab {label} (K = 4)"] = _rates(run, tokens4_ours, 3 * n4, policy_ref, peak)
        save_partial()
    trl_best = None
    if cfg.trl:
        trl_k2 = {k: v for k, v in results.items() if k.startswith("TRL ")}
        trl_best = max(trl_k2, key=lambda k: trl_k2[k]["tokens_per_s"])
        precompute = trl_k2[trl_best]["trl_config"]["precompute_ref_log_probs"]
        b_pairs = 2 * cfg.batch_size
        run = run_trl(str(model_dir), pairs4, out / "runs" / "trl", loss_type="sigmoid", precompute=precompute,
                      bf16=bf16, **{**common, "batch_size": b_pairs, "steps": math.ceil(len(pairs4) / b_pairs)})
        k4[f"TRL sigmoid, best-vs-rest pairs, precompute_ref_log_probs={precompute}"] = _rates(
            run, tokens4_trl, len(pairs4), policy_ref, peak)
        save_partial()

    # Loss agreement: float32, precomputed reference, logging every step.
    agreement: dict[str, Any] = {"tolerance": LOSS_TOLERANCE, "dtype": "float32", "steps": cfg.agreement_steps}
    if cfg.trl:
        agreement = check_loss_agreement(str(model_dir), data2, pairs2, out / "runs", flags=base,
                                         **{**common, "steps": cfg.agreement_steps})

    profile_record = None
    if cfg.profile_steps > 0:
        # What bounds nca_lab's step: its base dpo configuration, profiled separately (the profiler's overhead
        # stays out of the timed runs above).
        profile_record, table = profile_run(lambda: run_ours(
            str(model_dir), data2, out / "runs" / "profile", loss="dpo", bf16=bf16, flags=base,
            **{**common, "steps": cfg.profile_steps}), gpu=gpu)
        profile_record = {"configuration": f"nca_lab dpo (base flags {' '.join(base)})",
                          "steps": cfg.profile_steps, **profile_record}
        (out / "profile.txt").write_text(table + "\n")

    # nca_lab's best `dpo` configuration at TRL's precision (every other switch leaves the numbers unchanged,
    # tested): on a GPU, say, packed + flex_attention may or may not beat padded; the record keeps all of them.
    same_precision = {k: v for k, v in results.items()
                      if (k == "nca_lab dpo" or k.startswith("nca_lab dpo, ")) and "bf16" not in k}
    ours_best = max(same_precision, key=lambda k: same_precision[k]["tokens_per_s"])
    ours_main = results[ours_best]
    record: dict[str, Any] = {
        "device": device, "device_kind": device_kind, "command": command, "versions": _versions(),
        "config": dataclasses.asdict(cfg),
        "nca_lab_base_flags": list(base),
        "model": {"size": cfg.size, "parameters": n_params, "flop_parameters_N": n_flop_params,
                  "config": sr.SIZES[cfg.size], "dtype": "bf16 mixed precision (fp32 weights)" if bf16 else "float32"},
        "data": {"k2_prompts": n2, "k2_tokens": tokens2, "k4_prompts": n4, "k4_tokens_nca_lab": tokens4_ours,
                 "k4_pairs_trl": len(pairs4), "k4_tokens_trl": tokens4_trl},
        "definitions": {
            "tokens": "dataset tokens: per sequence prompt + response (BOS/EOS included, no padding), the prompt "
                      "counted once per response",
            "tokens_per_s": "tokens / (reference precompute + Trainer train_runtime)",
            "speedup_tokens_per_s_vs_trl": "nca_lab's best dpo configuration at TRL's precision / TRL's best "
                                           "configuration (tokens/s)",
            "pairs_per_s": "preference pairs / the same seconds (K = 4: K - 1 best-vs-rest pairs per prompt)",
            "mfu": "(6 N tokens policy + 2 N tokens reference) / seconds / peak bf16 dense FLOP/s; N = parameters "
                   "without the input embedding",
            "peak_flops": peak,
            "peak_memory": "torch.cuda.max_memory_allocated over the configuration (null on CPU)",
        },
        "nca_lab_best_k2": ours_best,
        "k2": results, "k4": k4, "loss_agreement": agreement, "profile": profile_record,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    if cfg.trl:
        trl_k2 = {k: v for k, v in results.items() if k.startswith("TRL ")}
        trl_mem = [v["peak_memory_bytes"] for v in trl_k2.values() if v["peak_memory_bytes"]]
        ours_k4 = max(v["tokens_per_s"] for k, v in k4.items() if k.startswith("nca_lab"))
        trl_k4 = next(v for k, v in k4.items() if k.startswith("TRL"))
        record.update({
            "trl_best_k2": trl_best,
            "speedup_tokens_per_s_vs_trl": round(ours_main["tokens_per_s"] / trl_k2[trl_best]["tokens_per_s"], 3),
            "speedup_nca_pair_vs_trl_nca_pair": round(
                results["nca_lab nca_pair"]["tokens_per_s"] / max(v["tokens_per_s"] for k, v in trl_k2.items()
                                                                  if "nca_pair" in k), 3),
            # one pass over the K = 4 data: TRL's seconds / ours (its pairs repeat each prompt 3 times)
            "speedup_k4_pass_vs_trl": round(trl_k4["seconds"] / min(v["seconds"] for k, v in k4.items()
                                                                  if k.startswith("nca_lab")), 3),
            "speedup_k4_tokens_per_s_vs_trl": round(ours_k4 / trl_k4["tokens_per_s"], 3),
            "memory_ratio_vs_trl": (round(ours_main["peak_memory_bytes"] / min(trl_mem), 3)
                                    if trl_mem and ours_main["peak_memory_bytes"] else None),
        })
    record["mfu"] = ours_main["mfu"]
    record["loss_agreement"] = agreement
    record = json.loads(json.dumps(record))  # what the file holds (tuples become lists)
    (out / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "bench.md").write_text(markdown_report(record))
    return record


def _fmt_mem(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def markdown_report(rec: dict) -> str:
    """The tables of ``bench.md`` from a ``bench.json`` record."""
    lines = [f"# Benchmark: nca_lab vs TRL ({rec['device_kind'].upper()} run)", "",
             f"Device: {rec['device']}. Versions: " + ", ".join(f"{k} {v}" for k, v in rec["versions"].items()) + ".",
             f"Model: {rec['model']['size']}, {rec['model']['parameters']:,} parameters, {rec['model']['dtype']}.",
             f"Command: `{rec['command']}`", ""]
    for key in ("nca_lab_best_k2", "trl_best_k2", "speedup_tokens_per_s_vs_trl", "speedup_nca_pair_vs_trl_nca_pair", "speedup_k4_pass_vs_trl",
                "speedup_k4_tokens_per_s_vs_trl", "memory_ratio_vs_trl", "mfu"):
        if key in rec:
            lines.append(f"- `{key}`: {rec[key]}")
    ag = rec["loss_agreement"]
    if "pairs" in ag:
        lines.append(f"- loss agreement (float32, loss at steps 1..{ag['steps']}, tolerance {ag['tolerance']}): "
                     + "; ".join(f"{p['nca_lab']} vs TRL {p['trl']}: max |diff| {p['max_abs_diff']:.2e}"
                                 for p in ag["pairs"])
                     + f"; identical token sequences: {ag['token_sequences_identical']}")
    lines += ["", "## K = 2 (pairs)", "", "| configuration | tokens/s | pairs/s | seconds (ref + train) | peak memory | MFU |",
              "|---|---|---|---|---|---|"]
    for name, r in rec["k2"].items():
        lines.append(f"| {name} | {r['tokens_per_s']} | {r['pairs_per_s']} | {r['reference_s']} + {r['train_s']} | "
                     f"{_fmt_mem(r['peak_memory_bytes'])} | {r['mfu'] if r['mfu'] is not None else 'n/a'} |")
    prof = rec.get("profile")
    if prof:
        lines += ["", f"## Profile: {prof['configuration']}, {prof['steps']} steps ({prof['time']}, "
                      f"{prof['total_ms']} ms in all)", "", "| group | share |", "|---|---|"]
        lines += [f"| {g} | {share:.1%} |" for g, share in prof["groups"].items()]
        lines += ["", "| operator | self ms | share | calls |", "|---|---|---|---|"]
        lines += [f"| `{t['name']}` | {t['self_ms']} | {t['share']:.1%} | {t['calls']} |" for t in prof["top"][:10]]
    lines += ["", "## K = 4 (one pass over the scored data)", "",
              "| configuration | seconds | tokens | tokens/s | pairs/s | peak memory |", "|---|---|---|---|---|---|"]
    for name, r in rec["k4"].items():
        lines.append(f"| {name} | {r['seconds']} | {r['tokens']} | {r['tokens_per_s']} | {r['pairs_per_s']} | "
                     f"{_fmt_mem(r['peak_memory_bytes'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nca_lab.llm.bench", description=__doc__.split("\n")[0])
    d = BenchConfig()
    p.add_argument("--out", required=True, help="folder for the model, data, runs, bench.json and bench.md")
    p.add_argument("--size", default=d.size, help="model size from nca_lab.llm.scale_run.run.SIZES")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--k4-prompts", type=int, default=None)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--ablations", default=",".join(d.ablations),
                   help="comma-separated subset of: " + "; ".join(OURS_ABLATIONS) + " (empty: none)")
    p.add_argument("--packed", action=argparse.BooleanOptionalAction, default=None,
                   help="nca_lab's base layout (default: packed + flex_attention on a GPU, padded on a CPU)")
    p.add_argument("--no-trl", action="store_true", help="nca_lab only (no ratios)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="profile nca_lab's base dpo configuration for N steps with torch.profiler (0: off); "
                        "writes the record's 'profile' and OUT/profile.txt")
    a = p.parse_args(argv)
    ablations = tuple(x.strip() for x in a.ablations.split(",") if x.strip())
    cfg = BenchConfig(size=a.size, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, k4_prompts=a.k4_prompts,
                      lr=a.lr, seed=a.seed, ablations=ablations, packed=a.packed, trl=not a.no_trl,
                      profile_steps=a.profile_steps)
    command = "python -m nca_lab.llm.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        rec = run_bench(cfg, a.out, command=command)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_report(rec))
    return 0 if rec["loss_agreement"].get("agree", True) else 1


if __name__ == "__main__":
    sys.exit(main())

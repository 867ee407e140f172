"""``python -m nca_lab.llm.scale_run``: the trainer at model scale, on generated data, with its cost recorded.

One command builds a ``LlamaForCausalLM`` of a named size from a config (random weights, seeded), saves it and
a tokenizer with ``save_pretrained``, writes a generated K-response dataset in the generic JSONL schema
(``{"prompt", "responses": [...], "rewards": [...]}``), and trains it in-process with the trainer's
``config_from_args`` + ``run`` (:mod:`nca_lab.llm.train`) — exactly what

    python -m nca_lab.llm.train --model DIR/model --data DIR/data.jsonl --output-dir DIR/train ...

does — for a fixed number of steps. It then writes ``DIR/scale_run.json``: the command, the device, versions,
parameter count, dtype, the dataset's tokens per step, the wall time of the reference precompute and of the
training loop (separately), tokens/s with and without the reference precompute, peak memory and the loss log.

Sizes (:data:`SIZES`): ``100m`` is a Llama with hidden 768, 12 layers, 12 heads (no GQA), intermediate 2048 and
vocab 32,000, untied embeddings: 134,105,856 parameters (:func:`llama_parameter_count`). ``tiny`` is the test size (hidden 32, 2 layers). The tokenizer is the offline byte-level BPE of
:func:`nca_lab.llm.tokenization.build_tiny_tokenizer` (384 tokens); for ``100m`` the model's embedding and LM
head have 32,000 rows regardless, so the compute per token (embedding lookup, the LM-head matmul over 32,000
classes, the log-softmax) is that of a realistic vocabulary, while token ids only ever use the first 384 rows.
Text is tokenised more finely than by a 32k tokenizer, which does not matter for tokens/s: we count tokens.

Data: ``steps × batch_size`` prompts (one epoch, every step sees new prompts), each with K responses. Token
lengths are drawn per row around ``--seq-len`` (prompt 15–35 % of it, each prompt + response 60–100 % of it,
special tokens included), so sequences vary in length as real data does and none exceeds ``--seq-len``
(which is the trainer's ``--max-length``). Words come from a fixed list; a response's reward is the fraction of
its words that occur in its prompt (a relevance score in [0, 1]; responses copy prompt words with different
probabilities, so rewards differ within a prompt).

Token accounting: tokens per step = Σ over the step's B·K sequences of (prompt tokens + response tokens), i.e.
the prompt is counted once per response and padding is not counted. That is exactly the attention-mask sum the
Trainer counts (``num_input_tokens_seen``, non-padding) when every prompt has K responses; both are recorded
(``tests/test_llm_scale_run.py`` checks that they agree).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["SIZES", "model_config", "llama_parameter_count", "build_model_and_tokenizer", "generate_rows",
           "train_argv", "scale_run", "main"]

# Model shapes. "vocab_size": None means the tokenizer's own size.
SIZES: dict[str, dict[str, Any]] = {
    # Llama-2's vocabulary size (32,000) with GPT-2-small's width and depth.
    "100m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
             "intermediate_size": 2048, "vocab_size": 32000, "max_position_embeddings": 2048},
    # the benchmark's GPU size (nca_lab.llm.bench): ~0.5B parameters, GQA 16/8 heads, vocab 64,000
    "0.5b": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
             "intermediate_size": 4096, "vocab_size": 64000, "max_position_embeddings": 2048},
    # the largest the benchmark's CPU run finishes in minutes on 2 cores
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
              "intermediate_size": 688, "vocab_size": 8192, "max_position_embeddings": 1024},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 64, "vocab_size": None, "max_position_embeddings": 512},
}

# Step-0 loss at pi_theta = pi_ref (implicit rewards all 0) for losses whose value there is a closed form
# independent of the model; K = the number of responses of every prompt. Source: llm/README.md's table.
_STEP0_CLOSED_FORM = {
    "nca": lambda k: 2 * math.log(2),
    "nca_pair": lambda k: 2 * math.log(2),
    "dpo": lambda k: math.log(2),
    "infonca": lambda k: math.log(k),
}

_WORDS = (
    "the model reads each prompt and writes an answer that a reward model scores higher answers are better "
    "noise contrastive alignment compares several responses per prompt and learns from their rewards a policy "
    "moves probability mass toward the best response while the reference keeps it close to where it started "
    "paris france capital river bridge museum city train station morning evening coffee market garden school "
    "number two three five seven eleven plus minus times equals sum product question step reason because "
    "therefore first second finally code function return value list string token sequence length batch"
).split()


# ----------------------------------------------------------------------------------------------- the model


def model_config(size: str, tokenizer, vocab_size: int | None = None):
    """The ``LlamaConfig`` of ``size`` (a key of :data:`SIZES`), with the tokenizer's special token ids;
    ``vocab_size`` overrides the size's vocabulary (it must cover the tokenizer's ids)."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}; got {size!r}")
    shape = dict(SIZES[size])
    size_vocab = shape.pop("vocab_size")
    vocab = vocab_size or size_vocab or len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"--vocab-size {vocab} is smaller than the tokenizer's vocabulary ({len(tokenizer)})")
    return LlamaConfig(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **shape)


def llama_parameter_count(config) -> int:
    """Parameters of a bias-free ``LlamaForCausalLM`` from its config (no model needed).

    V·H (embedding) + L·[H·H (q) + 2·H·(n_kv·H/n_heads) (k, v) + H·H (o) + 3·H·I (gate, up, down)
    + 2·H (norms)] + H (final norm) + V·H (LM head, untied). With H = 768, L = 12, I = 2048,
    n_kv = n_heads = 12: 134,105,856 for V = 32000 (the ``100m`` size).
    """
    v, h, n_layers, inter = config.vocab_size, config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv_dim = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * inter + 2 * h
    head = 0 if config.tie_word_embeddings else v * h
    return v * h + n_layers * per_layer + h + head


def build_model_and_tokenizer(size: str, seed: int = 0, vocab_size: int | None = None):
    """``(model, tokenizer)``: a randomly initialised Llama of ``size`` (float32, weights seeded by ``seed``
    without touching the global RNG) and the offline byte-level BPE tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    from nca_lab.llm.tokenization import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = model_config(size, tokenizer, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------- the data


class _WordTokens:
    """Token count of each space-prefixed word. The byte-level pre-tokenizer splits on spaces before BPE, so a
    text's token count is the sum of its words' counts (checked on every generated text in generate_rows)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.counts = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in _WORDS}

    def text(self, words_from, n_tokens: int) -> tuple[str, int]:
        """Words drawn from ``words_from()`` until the next would exceed ``n_tokens`` tokens (at least one)."""
        words, total = [], 0
        while True:
            w = words_from()
            if words and total + self.counts[w] > n_tokens:
                break
            words.append(w)
            total += self.counts[w]
        return " " + " ".join(words), total

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def generate_rows(tokenizer, n_prompts: int, k: int, seq_len: int, seed: int = 0) -> list[dict]:
    """Generic-schema rows with K scored responses and token lengths around ``seq_len`` (see the module doc).

    Per row: prompt tokens P ~ U[0.15, 0.35]·seq_len; per response, prompt + response tokens ~
    U[0.6, 1.0]·seq_len, minus 2 for the BOS the tokenizer prepends and the EOS the trainer appends, so every
    sequence fits ``--max-length seq_len``. Response k copies a prompt word with probability p_k (drawn per
    response), else a random word; reward = fraction of its words that occur in the prompt.
    """
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if k < 2:
        raise ValueError(f"--k must be >= 2 (a contrastive loss compares responses), got {k}")
    if seq_len < 32:
        raise ValueError(f"--seq-len must be >= 32 (room for a prompt and K responses), got {seq_len}")
    rng = random.Random(seed)
    wt = _WordTokens(tokenizer)
    special = 2  # BOS before the prompt, EOS after the response
    rows = []
    for _ in range(n_prompts):
        prompt, p_tokens = wt.text(lambda: rng.choice(_WORDS), int(rng.uniform(0.15, 0.35) * seq_len))
        prompt_words = prompt.split()
        prompt_set = set(prompt_words)
        responses, rewards = [], []
        for _ in range(k):
            budget = int(rng.uniform(0.6, 1.0) * seq_len) - p_tokens - special
            copy = rng.random()
            text, _ = wt.text(lambda: rng.choice(prompt_words) if rng.random() < copy else rng.choice(_WORDS),
                              max(budget, 1))
            words = text.split()
            responses.append(text)
            rewards.append(round(sum(w in prompt_set for w in words) / len(words), 6))
        for text in [prompt, *responses]:
            if wt.count(text) != sum(wt.counts[w] for w in text.split()):  # the additivity _WordTokens relies on
                raise AssertionError(f"token count of generated text is not additive over words: {text[:60]!r}")
        rows.append({"prompt": prompt, "responses": responses, "rewards": rewards})
    return rows


def _write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def _dataset_tokens(model_dir: str, data_path: str, seq_len: int) -> dict[str, Any]:
    """Tokens of the generated data as the trainer tokenises it (same tokenizer and function): per row
    Σ_k (prompt + response_k) tokens, the prompt counted once per response, no padding."""
    from transformers import AutoTokenizer

    from nca_lab.llm.data import load_records
    from nca_lab.llm.tokenization import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records, _ = load_records(data_path, schema="generic")
    ds, report = tokenize_dataset(records, tokenizer, max_length=seq_len)
    per_row = [len(r["response_ids"]) * len(r["prompt_ids"]) + sum(len(x) for x in r["response_ids"]) for r in ds]
    seq_lengths = [len(r["prompt_ids"]) + len(x) for r in ds for x in r["response_ids"]]
    return {"total": int(sum(per_row)), "per_row": per_row, "sequence_length_min": min(seq_lengths),
            "sequence_length_mean": round(sum(seq_lengths) / len(seq_lengths), 1),
            "sequence_length_max": max(seq_lengths), "tokenization_report": report.summary()}


# ----------------------------------------------------------------------------------------------- the run


def train_argv(out: Path, *, steps: int, batch_size: int, seq_len: int, bf16: bool, loss: str, lr: float,
               seed: int) -> list[str]:
    """The ``python -m nca_lab.llm.train`` arguments of the run: one epoch of ``steps`` steps, every step
    logged, no checkpoint inside the timed loop (``--save-steps steps + 1``), constant learning rate."""
    argv = ["--model", str(out / "model"), "--data", str(out / "data.jsonl"), "--output-dir", str(out / "train"),
            "--loss", loss, "--max-steps", str(steps), "--batch-size", str(batch_size), "--max-length", str(seq_len),
            "--lr", repr(lr), "--lr-scheduler", "constant", "--warmup-ratio", "0", "--logging-steps", "1",
            "--save-steps", str(steps + 1), "--seed", str(seed), "--schema", "generic"]
    if bf16:
        argv.append("--bf16")
    return argv


def _device() -> tuple[str, str]:
    """``(device_kind, description)``: the GPU's name, or the CPU model with core and thread counts."""
    import torch

    if torch.cuda.is_available():
        return "gpu", f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    model = platform.processor() or "unknown processor"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return "cpu", f"cpu: {model}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads"


def _peak_memory(kind: str) -> dict[str, Any]:
    import torch

    if kind == "gpu":
        return {"kind": "torch.cuda.max_memory_allocated (reset before the trainer call: covers model load, "
                        "reference precompute and training)",
                "bytes": int(torch.cuda.max_memory_allocated()),
                "reserved_bytes": int(torch.cuda.max_memory_reserved())}
    # ru_maxrss is in KiB on Linux: the peak resident set of this whole process (model build and save, data,
    # reference precompute, training), not just the training loop.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": "CPU peak RSS of the whole process (resource.getrusage ru_maxrss), not GPU memory",
            "bytes": int(rss)}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {str(out)!r} is not empty; pass --overwrite to replace its contents")


def scale_run(size: str, out: str | os.PathLike, *, steps: int = 10, batch_size: int = 2, k: int = 4,
              seq_len: int = 256, bf16: bool = False, loss: str = "nca", lr: float = 1e-5, seed: int = 0,
              vocab_size: int | None = None, overwrite: bool = False,
              command: list[str] | None = None) -> dict[str, Any]:
    """Build, save, generate, train (see the module doc); writes and returns the ``scale_run.json`` record."""
    import torch
    import transformers

    from nca_lab.llm import train as train_cli

    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}; got {size!r}")
    out = Path(out)
    _check_out(out, overwrite)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    device_kind, device = _device()

    model, tokenizer = build_model_and_tokenizer(size, seed=seed, vocab_size=vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    config = model.config
    (out / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    del model
    rows = generate_rows(tokenizer, steps * batch_size, k, seq_len, seed=seed)
    _write_jsonl(rows, out / "data.jsonl")
    tokens = _dataset_tokens(str(out / "model"), str(out / "data.jsonl"), seq_len)
    setup_s = time.perf_counter() - t_start

    argv = train_argv(out, steps=steps, batch_size=batch_size, seq_len=seq_len, bf16=bf16, loss=loss, lr=lr,
                      seed=seed)
    if device_kind == "gpu":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if (train_overwrite := (out / "train").is_dir() and any((out / "train").iterdir())):
        argv.append("--overwrite")  # only reached with --overwrite (checked above)
    cfg = train_cli.config_from_args(argv)
    summary = train_cli.run(cfg)
    run_s = time.perf_counter() - t0
    peak = _peak_memory(device_kind)
    load_end = os.getloadavg()

    history = summary["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    seen = [h["num_input_tokens_seen"] for h in history if "loss" in h and "num_input_tokens_seen" in h]
    per_step_tokens = [b - a for a, b in zip([0] + seen[:-1], seen)] if len(seen) == len(losses) else None
    train_s = float(summary["train"]["train_runtime"])
    ref_s = float(summary["throughput"]["reference_seconds"])
    steps_done = int(summary["throughput"]["steps"])
    closed = _STEP0_CLOSED_FORM.get(loss)
    record = {
        "device_kind": device_kind,
        "device": device,
        "started_utc": started,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in load_end],
        "command": shlex.join(command) if command is not None else None,
        "train_command": shlex.join([sys.executable.rsplit("/", 1)[-1], "-m", "nca_lab.llm.train", *argv]),
        "train_command_note": "run in-process through nca_lab.llm.train.config_from_args + run"
                              + (" (--overwrite added: DIR/train was not empty)" if train_overwrite else ""),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     **summary.get("versions", {})},
        "model": {"size": size, "architecture": "LlamaForCausalLM", "parameter_count": int(n_params),
                  "parameter_count_formula": llama_parameter_count(config),
                  "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
                  "num_attention_heads": config.num_attention_heads,
                  "num_key_value_heads": config.num_key_value_heads, "intermediate_size": config.intermediate_size,
                  "vocab_size": config.vocab_size, "tokenizer_vocab_size": len(tokenizer),
                  "tie_word_embeddings": False,
                  "vocab_note": ("model vocab larger than the tokenizer's: compute per token is that of a "
                                 f"{config.vocab_size}-token vocabulary, ids use only the first {len(tokenizer)}")
                                if config.vocab_size > len(tokenizer) else "model vocab = tokenizer vocab"},
        "dtype": "float32 weights + bf16 autocast (policy and reference)" if bf16 else "float32",
        "loss": {"name": loss, "hparams": summary["loss"]["hparams"], "lr": lr, "lr_scheduler": "constant"},
        "steps": steps_done,
        "steps_requested": steps,
        "k": k,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "n_prompts": len(rows),
        "tokens": {
            "definition": "per sequence prompt + response tokens (prompt counted once per response; BOS and EOS "
                          "included; no padding)",
            "total": tokens["total"],
            "per_step_mean": round(tokens["total"] / steps_done, 1) if steps_done else None,
            "per_step_from_trainer": per_step_tokens,
            "trainer_num_input_tokens_seen": seen[-1] if seen else None,
            "sequence_length_min": tokens["sequence_length_min"],
            "sequence_length_mean": tokens["sequence_length_mean"],
            "sequence_length_max": tokens["sequence_length_max"],
            "tokenization_report": tokens["tokenization_report"],
        },
        "seconds": {
            "setup_build_save_generate": round(setup_s, 3),
            "reference_precompute": round(ref_s, 3),
            "training_loop": round(train_s, 3),
            "train_run_total": round(run_s, 3),
            "training_loop_note": "Trainer train_runtime: the optimizer steps, no checkpoint inside (save-steps > "
                                  "steps); train_run_total adds loading, tokenisation, the reference precompute "
                                  "and the final save",
        },
        "throughput": {
            "tokens_per_s_training_loop": round(tokens["total"] / train_s, 1) if train_s else None,
            "tokens_per_s_including_reference": round(tokens["total"] / (train_s + ref_s), 1)
            if train_s + ref_s else None,
            "definition": "training tokens (above) / training-loop seconds; and / (reference-precompute + "
                          "training-loop seconds). The reference precompute is a forward over the same tokens.",
            "seconds_per_step": round(train_s / steps_done, 2) if steps_done else None,
        },
        "peak_memory": peak,
        "loss_log": {
            "first": losses[0] if losses else None,
            "last": losses[-1] if losses else None,
            "step0_closed_form": closed(k) if closed else None,
            "per_step": losses,
            "log_history": history,
        },
        "total_wall_s": round(time.perf_counter() - t_start, 2),
    }
    (out / "scale_run.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nca_lab.llm.scale_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", required=True, choices=sorted(SIZES),
                   help="model size (required; choices: %(choices)s): 100m = 134M parameters, vocab 32,000; "
                        "0.5b = 509M, the benchmark's GPU size; small = 7.4M; tiny = hidden 32, 2 layers, for tests")
    p.add_argument("--out", default=None,
                   help="output directory: model/, data.jsonl, train/, scale_run.json (default: runs/scale_run_<size>, "
                        "relative to the current directory)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps = prompts / batch size (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2,
                   help="prompts per step, each with K responses (default: %(default)s)")
    p.add_argument("--k", type=int, default=4, help="responses per prompt (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=256,
                   help="max tokens per prompt + response (default: %(default)s)")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 mixed precision, the trainer's --bf16 (default: off, float32)")
    p.add_argument("--loss", default="nca",
                   help="registry loss or combination, e.g. dpo or nca+0.1*sft (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-5, help="constant learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="model init, data and data order (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="model vocabulary (default: the size's; the tokenizer's own for tiny)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out (default: off)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; bad input prints one ``error: ...`` line and returns 2."""
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = f"runs/scale_run_{args.size}"
    command = [sys.executable.rsplit("/", 1)[-1], "-m", "nca_lab.llm.scale_run",
               *(sys.argv[1:] if argv is None else argv)]
    try:
        record = scale_run(args.size, args.out, steps=args.steps, batch_size=args.batch_size, k=args.k,
                           seq_len=args.seq_len, bf16=args.bf16, loss=args.loss, lr=args.lr, seed=args.seed,
                           vocab_size=args.vocab_size,
                           overwrite=args.overwrite, command=command)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tp, sec = record["throughput"], record["seconds"]
    print(f"scale run ({record['device_kind']}: {record['device']}): {record['model']['parameter_count']:,} "
          f"parameters, {record['dtype']}, {record['steps']} steps x {record['batch_size']} prompts x K={record['k']}, "
          f"{record['tokens']['per_step_mean']} tokens/step; reference {sec['reference_precompute']} s, training "
          f"{sec['training_loop']} s; {tp['tokens_per_s_training_loop']} tokens/s (training loop), "
          f"{tp['tokens_per_s_including_reference']} tokens/s (incl. reference); peak memory "
          f"{record['peak_memory']['bytes'] / 2**30:.2f} GiB ({record['peak_memory']['kind']}); loss "
          f"{record['loss_log']['first']} -> {record['loss_log']['last']}", flush=True)
    print(f"wrote {Path(args.out) / 'scale_run.json'}", flush=True)
    return 0

"""The embedded default: what ``python -m nca_lab.llm.train`` trains when given neither ``--model`` nor ``--data``.

Needs no network. The model is a tiny ``LlamaForCausalLM`` built from a config (random weights, seeded) with
the offline byte-level BPE tokenizer of :func:`nca_lab.llm.tokenization.build_tiny_tokenizer`. The data is a
verifiable toy with K = 4 scored responses per prompt: the prompt ``"a+b="`` (a, b ∈ 0..9) and four candidate
answers — the sum and three wrong numbers — with reward R = −|answer − (a + b)|, so the data reward is a
closeness score, as in a scored (UltraFeedback-like) dataset, not just an order.

The hook for a later task is :func:`demo_inputs`: it returns the model, the tokenizer and the records; the
trainer does the rest exactly as for user data. :data:`DEMO_DEFAULTS` are the recipe values the demo uses
for options not given on the command line or in a config file.

``python -m nca_lab.llm.demo --save-model DIR`` saves the tiny Llama of :func:`save_demo_model` (random weights,
seed 0) and its tokenizer into ``DIR``, a folder ``--model DIR`` loads like any hub model.
"""

from __future__ import annotations

import random

__all__ = ["DEMO_DEFAULTS", "demo_rows", "build_demo_model", "save_demo_model", "busy_cores_threads", "demo_inputs"]

# Recipe of the demo (each can be overridden by a flag or a config file). A random-init model far from any
# data needs a larger β and learning rate than the NCA recipe's β = 0.01 / lr 5e-6 for a fine-tune (with
# β = 0.1 the mean loss of the first/last logging interval went 1.388 → 1.365 in 20 steps; with β = 1,
# 1.397 → 1.125 in 40); α = 1 makes
# the soft labels softmax(R) depend on the closeness scores (α = 1e-4 would make them one-hot).
DEMO_DEFAULTS = {
    "loss": "nca",
    "beta": 1.0,
    "alpha": 1.0,
    "lr": 1e-3,
    "batch_size": 8,
    "max_steps": 40,
    "logging_steps": 5,
    "save_steps": 1000,
    "warmup_ratio": 0.0,
    "lr_scheduler": "constant",
    "max_length": 64,
}
# Loss hyperparameters among the defaults: applied only when the chosen loss accepts them.
DEMO_HPARAMS = ("beta", "alpha")

DEMO_SIZE = {"n_prompts": 64, "k": 4}


def demo_rows(n_prompts: int = 64, k: int = 4, seed: int = 0) -> list[dict]:
    """Generic-schema rows ``{"prompt": "a+b=", "responses": [K answers], "rewards": [K closeness scores]}``.

    Candidates: the correct sum and k − 1 distinct wrong numbers in [0, 18], shuffled (so the best response is
    not always first); R = −|answer − (a + b)|.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n_prompts):
        a, b = rng.randrange(10), rng.randrange(10)
        s = a + b
        wrong = rng.sample([v for v in range(19) if v != s], k - 1)
        answers = [s] + wrong
        rng.shuffle(answers)
        rows.append({"prompt": f"{a}+{b}=", "responses": [str(v) for v in answers],
                     "rewards": [-float(abs(v - s)) for v in answers]})
    return rows


def build_demo_model(tokenizer, seed: int = 0, *, hidden_size: int = 64, num_hidden_layers: int = 2):
    """A tiny randomly initialised ``LlamaForCausalLM`` matching ``tokenizer`` (weights seeded by ``seed``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    # A private generator state: building the demo model must not depend on, or change, the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def save_demo_model(save_dir, seed: int = 0, *, hidden_size: int = 32, chat_template: bool = False) -> str:
    """Save a tiny Llama (hidden 32, intermediate 64, 2 layers, 4 heads, 2 KV heads by default) and the tiny
    tokenizer with ``save_pretrained`` into ``save_dir``, so that ``--model save_dir`` goes through
    ``from_pretrained`` exactly as a hub id does. Returns ``str(save_dir)``."""
    from nca_lab.llm.tokenization import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(chat_template=chat_template)
    model = build_demo_model(tokenizer, seed=seed, hidden_size=hidden_size)
    model.save_pretrained(str(save_dir))
    tokenizer.save_pretrained(str(save_dir))
    return str(save_dir)


def busy_cores_threads() -> int | None:
    """The torch thread count the demo should use, or ``None`` to leave torch's default.

    The demo's model is tiny (123,200 parameters): its matmuls are too small to gain from a second thread, and
    when the cores are busy the threads wait on each other. Measured on 2 cores at load average 7–9 (other jobs
    running): 40 demo steps took train_runtime 33.3 s with torch's default 2 threads and 2.3 s with 1 thread.
    So: 1 thread when the 1-minute load average is at least the number of usable cores, unless
    ``OMP_NUM_THREADS`` is set (the user's choice wins); otherwise torch's default."""
    import os

    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    return 1 if cores > 1 and load >= cores else None


def demo_inputs(seed: int = 0):
    """``(model, tokenizer, records, report, description)`` of the demo; records as from ``load_records``.

    Sets torch to one thread when the cores are busy (:func:`busy_cores_threads`); the description says so."""
    import torch

    from nca_lab.llm.data import records_from_list
    from nca_lab.llm.tokenization import build_tiny_tokenizer

    threads = busy_cores_threads()
    if threads is not None:
        torch.set_num_threads(threads)

    tokenizer = build_tiny_tokenizer()
    model = build_demo_model(tokenizer, seed=seed)
    records, report = records_from_list(demo_rows(seed=seed, **DEMO_SIZE), schema="generic",
                                        source="<demo: a+b= with K=4 scored answers>")
    description = (f"built-in demo: tiny LlamaForCausalLM ({sum(p.numel() for p in model.parameters())} parameters, "
                   f"random init) on {DEMO_SIZE['n_prompts']} prompts 'a+b=' with K={DEMO_SIZE['k']} answers, "
                   "R = -|answer - (a+b)|; "
                   + (f"{threads} torch thread (cores busy: load average at least the core count)" if threads
                      else f"{torch.get_num_threads()} torch threads"))
    return model, tokenizer, records, report, description


def main(argv=None) -> int:
    """``python -m nca_lab.llm.demo --save-model DIR [--seed N] [--hidden-size H] [--chat-template]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m nca_lab.llm.demo",
                                description="Save the tiny Llama (random weights) and its offline tokenizer into a "
                                            "folder that --model loads like a hub model.")
    p.add_argument("--save-model", required=True, metavar="DIR", help="folder to write (required)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    p.add_argument("--hidden-size", type=int, default=32, help="hidden size; 2 layers, 4 heads (default: %(default)s)")
    p.add_argument("--chat-template", action="store_true", help="give the tokenizer a chat template (default: off)")
    a = p.parse_args(argv)
    path = save_demo_model(a.save_model, seed=a.seed, hidden_size=a.hidden_size, chat_template=a.chat_template)
    print(f"saved the tiny Llama and its tokenizer to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

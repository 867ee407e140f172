"""The loss-agreement check: nca_lab and TRL on the same pairs, float32, the loss at every step compared, and the
token sequences each trainer built."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nca_lab.llm.bench.configs import LOSS_TOLERANCE
from nca_lab.llm.bench.trainers import run_ours, run_trl

__all__ = ["check_loss_agreement"]


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

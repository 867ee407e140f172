"""The benchmark's data: generated scored rows whose K rewards are distinct, TRL's best-vs-rest pairs of them,
and their tokens as nca_lab counts them."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["sequence_tokens", "best_rest_pairs", "untied_rows", "write_jsonl"]


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


def write_jsonl(rows: list[dict], path: Path) -> str:
    """Write ``rows`` to ``path`` as JSONL; returns the path as a string."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)

"""Chat generation and scoring for the real-model experiment: batched KV-cache sampling, exact log-probs.

* :func:`generate` — responses to chat prompts with ``model.generate`` (KV cache, left padding, batches of
  ``batch_size`` sequences); greedy or temperature-1 sampling with no truncation (``top_k=0``, ``top_p=1``);
  seeded per batch, so a run's evaluation is reproducible and every policy's batch b starts from the same
  random state (common random numbers: two policies that put the same probabilities on a prompt's tokens draw
  the same sample; where they differ, so do the samples). Each response is kept as the generated token ids up to and including the first EOS (a response cut
  by ``max_new_tokens`` has no EOS) and as decoded text without special tokens.
* :func:`response_logps` — Σ_t log π(y_t | x, y_<t) of given token ids under a model, through the trainer's own
  code path (:func:`nca_lab.llm.collate.collate_responses` + :func:`nca_lab.llm.logps.batch_logps`), so the
  experiment measures exactly the quantity the losses see.
* :func:`adapters_off` — a LoRA policy's reference μ is the same weights with the adapters disabled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


def prompt_ids(tokenizer, conversations: Sequence[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation rendered with ``add_generation_prompt=True`` (what the trainer uses)."""
    texts = tokenizer.apply_chat_template(list(conversations), add_generation_prompt=True, tokenize=False)
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[list[int]], *, n: int = 1, sample: bool, max_new_tokens: int,
             batch_size: int, seed: int, desc: str = "generating") -> tuple[list[list[int]], list[str]]:
    """``n`` responses per prompt (prompt-major order: prompt i's responses at ``i*n .. i*n+n-1``).

    Returns (token ids per response, up to and including the first EOS; decoded texts without special tokens).
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    flat = [p for p in prompts for _ in range(n)]
    ids_out: list[list[int]] = []
    texts: list[str] = []
    model.eval()
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
    for start in tqdm(range(0, len(flat), batch_size), desc=desc, leave=False):
        # Reseeded per batch: batch b of every policy starts from the same random state, whatever earlier
        # batches consumed (generate stops a batch when all its sequences are done, at a policy-dependent step).
        torch.manual_seed(seed + start)
        batch = flat[start:start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, p in enumerate(batch):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention[i, width - len(p):] = 1
        out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **kwargs)
        for row in out[:, width:].tolist():
            cut = row.index(eos) + 1 if eos in row else len(row)
            ids_out.append(row[:cut])
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return ids_out, texts


@torch.no_grad()
def response_logps(model, prompts: Sequence[list[int]], responses: Sequence[Sequence[list[int]]], *,
                   pad_token_id: int, batch_size: int = 16) -> torch.Tensor:
    """Summed log-probs ``[P, K]`` (float32, CPU) of ``responses[i][k]`` after ``prompts[i]``."""
    from nca_lab.llm.collate import collate_responses
    from nca_lab.llm.logps import batch_logps

    model.eval()
    rows = []
    for start in range(0, len(prompts), batch_size):
        features = [{"prompt_ids": list(p), "response_ids": [list(r) for r in rs], "rewards": [0.0] * len(rs)}
                    for p, rs in zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
        batch = collate_responses(features, pad_token_id=pad_token_id)
        batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logps, _ = batch_logps(model, batch)
        rows.append(logps.float().cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def adapters_off(model):
    """Context in which a peft policy computes its reference μ (adapters disabled); a plain model is μ."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()

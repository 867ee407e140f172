"""Batch collation: B prompts x K responses -> one forward over B*K sequences.

A tokenised row (see :mod:`nca_lab.llm.tokenization`) is::

    {"prompt_ids": list[int], "response_ids": list[list[int]] (K responses, each ending with EOS),
     "rewards": list[float] (K), "row": int, optional "ref_logps": list[float] (K)}

K may differ between rows. Each (prompt, response_k) pair becomes one sequence
``prompt_ids + response_ids[k]``; the loss needs, per prompt, the summed log-probability of every
response, so all B*Kmax sequences go through the model in a single forward.

Two layouts, both consumed by :func:`nca_lab.llm.logps.batch_logps`:

* padded (default): sequence ``b*Kmax + k`` is row ``b*Kmax + k`` of ``input_ids [B*Kmax, T]``, right-padded
  to the longest sequence of the batch. A prompt with fewer than Kmax responses gets *dummy* sequences
  (one pad token with attention 1, so every row attends to something, and no response token) and
  ``mask[b, k] = False``.
* packed (``packed=True``, padding-free): the valid sequences are concatenated into one row
  ``input_ids [1, L]`` with ``position_ids`` restarting at 0 for every sequence and no ``attention_mask``.
  transformers (>= 4.5x, ``masking_utils.find_packed_sequence_indices``) detects the restarts and builds a
  block-diagonal causal mask for the eager/sdpa/flex attentions, and flash-attention derives
  ``cu_seqlens`` from them. ``sequence_ids [1, L]`` says which of the B*Kmax sequences a token belongs to
  (-1 on tail padding); missing responses simply have no tokens. Only use it with a model whose
  attention honours packed ``position_ids``: :func:`nca_lab.llm.logps.check_packing_isolates_sequences`
  checks that once.
* shared prompt (``shared_prompt=True``): one row per prompt, ``prompt + response_1 + ... + response_K``, so
  the prompt's tokens go through the model once instead of K times. ``position_ids`` continue from the prompt
  in every response (response k's tokens sit at positions P, P+1, ... as in its own sequence), and a 4D
  boolean ``attention_mask [B, 1, T, T]`` lets a response token see the prompt and the earlier tokens of its
  own response only (a padding token sees itself). transformers passes a 4D mask to the attention as it is:
  sdpa honours a boolean one; :func:`nca_lab.llm.logps.check_shared_prompt_layout` checks a model once. The
  first token of response k is predicted from the prompt's last position, not from the token before it in
  the row: ``response_predictors`` says which column predicts each response token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["collate_responses", "ResponseCollator"]


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple:
        return n
    return -(-n // multiple) * multiple


def _validate_feature(i: int, feature: dict[str, Any], has_ref: bool) -> int:
    """Check one tokenised row; return its number of responses K. Raises ValueError naming the row."""
    name = f"feature {i} (row {feature.get('row', '?')})"
    for field in ("prompt_ids", "response_ids", "rewards"):
        if field not in feature:
            raise ValueError(f"{name}: missing field {field!r}")
    if len(feature["prompt_ids"]) == 0:
        # The first response token must be predicted from something: position t-1 predicts token t.
        raise ValueError(f"{name}: 'prompt_ids' is empty; the first response token would have no predictor")
    responses = feature["response_ids"]
    k = len(responses)
    if k == 0:
        raise ValueError(f"{name}: 'response_ids' is empty (a prompt needs at least one response)")
    for j, resp in enumerate(responses):
        if len(resp) == 0:
            raise ValueError(f"{name}: response {j} in 'response_ids' is empty (responses end with EOS)")
    if len(feature["rewards"]) != k:
        raise ValueError(f"{name}: 'rewards' has {len(feature['rewards'])} entries but 'response_ids' has {k}")
    if ("ref_logps" in feature) != has_ref:
        raise ValueError(f"{name}: 'ref_logps' must be present in all features of a batch or in none")
    if has_ref and len(feature["ref_logps"]) != k:
        raise ValueError(f"{name}: 'ref_logps' has {len(feature['ref_logps'])} entries but 'response_ids' has {k}")
    return k


def collate_responses(
    features: Sequence[dict[str, Any]],
    *,
    pad_token_id: int,
    k_max: int | None = None,
    pad_to_multiple_of: int | None = None,
    packed: bool = False,
    shared_prompt: bool = False,
) -> dict[str, Tensor]:
    """Collate B tokenised rows into one batch of B*Kmax sequences.

    Args:
        features: B tokenised rows (see module docstring).
        pad_token_id: token used for padding and for dummy sequences.
        k_max: number of response slots per prompt; default = the largest K in the batch. A row with more
            than ``k_max`` responses is a ValueError (never silently truncated).
        pad_to_multiple_of: round the padded length T (packed: L) up to a multiple of this.
        packed: padding-free layout (see module docstring).
        shared_prompt: one row per prompt with the prompt once (see module docstring).

    Returns (N = B*Kmax, sequence ``n = b*Kmax + k``):
        padded: ``input_ids [N, T]`` int64, ``attention_mask [N, T]`` int64,
        ``response_mask [N, T]`` bool (True where the *token* is a response token, EOS included);
        packed: ``input_ids [1, L]``, ``position_ids [1, L]``, ``response_mask [1, L]``,
        ``sequence_ids [1, L]`` (sequence index n, -1 on tail padding), no attention_mask;
        shared prompt: ``input_ids [B, T]``, ``position_ids [B, T]``, ``attention_mask [B, 1, T, T]`` bool,
        ``response_mask [B, T]``, ``sequence_ids [B, T]`` (n on response tokens, -1 elsewhere),
        ``response_predictors [P]`` (the column that predicts each response token);
        both: ``response_positions [2, P]`` int64 (row, column) of the P response tokens and
        ``response_sequence [P]`` int64 (their sequence index n), computed here on the host so that the
        training step needs no ``nonzero`` (a host-device synchronisation); ``num_tokens`` (a Python int: the
        sequences' prompt + response tokens, no padding, the prompt counted once per response);
        ``rewards [B, Kmax]`` float32 (0 where missing), ``mask [B, Kmax]`` bool,
        ``lengths [B, Kmax]`` int64 response token counts (0 where missing), ``row [B]`` int64 if every
        feature has ``row``, ``ref_logps [B, Kmax]`` float32 (0 where missing) if features carry them.
    """
    if len(features) == 0:
        raise ValueError("features: empty batch")
    if packed and shared_prompt:
        raise ValueError("packed and shared_prompt: choose one layout")
    has_ref = "ref_logps" in features[0]
    ks = [_validate_feature(i, f, has_ref) for i, f in enumerate(features)]
    if k_max is None:
        k_max = max(ks)
    elif k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    for i, k in enumerate(ks):
        if k > k_max:
            raise ValueError(f"feature {i} (row {features[i].get('row', '?')}): has {k} responses > k_max={k_max}")

    b = len(features)
    mask = torch.zeros(b, k_max, dtype=torch.bool)
    rewards = torch.zeros(b, k_max, dtype=torch.float32)
    lengths = torch.zeros(b, k_max, dtype=torch.int64)
    ref_logps = torch.zeros(b, k_max, dtype=torch.float32) if has_ref else None

    # One entry per sequence slot n = b*Kmax + k: (token ids, number of leading prompt tokens) or None.
    sequences: list[tuple[list[int], int] | None] = []
    for i, (feature, k) in enumerate(zip(features, ks)):
        prompt = list(feature["prompt_ids"])
        mask[i, :k] = True
        rewards[i, :k] = torch.tensor([float(r) for r in feature["rewards"]], dtype=torch.float32)
        if ref_logps is not None:
            ref_logps[i, :k] = torch.tensor([float(r) for r in feature["ref_logps"]], dtype=torch.float32)
        for j in range(k_max):
            if j < k:
                response = list(feature["response_ids"][j])
                lengths[i, j] = len(response)
                sequences.append((prompt + response, len(prompt)))
            else:
                sequences.append(None)

    if not torch.isfinite(rewards).all():
        raise ValueError("rewards: non-finite value in the batch")

    if shared_prompt:
        batch = _share_prompts(features, ks, k_max, pad_token_id, pad_to_multiple_of)
    elif packed:
        batch = _pack(sequences, pad_token_id, pad_to_multiple_of)
    else:
        batch = _pad(sequences, pad_token_id, pad_to_multiple_of)
    rows, cols = batch["response_mask"].nonzero(as_tuple=True)
    batch["response_positions"] = torch.stack([rows, cols])
    batch["response_sequence"] = batch["sequence_ids"][rows, cols] if (packed or shared_prompt) else rows.clone()
    batch["num_tokens"] = sum(len(s[0]) for s in sequences if s is not None)
    batch.update(rewards=rewards, mask=mask, lengths=lengths)
    if ref_logps is not None:
        batch["ref_logps"] = ref_logps
    if all("row" in f for f in features):
        batch["row"] = torch.tensor([int(f["row"]) for f in features], dtype=torch.int64)
    return batch


def _pad(sequences: list[tuple[list[int], int] | None], pad_token_id: int, multiple: int | None) -> dict[str, Tensor]:
    # A dummy sequence is a single pad token that is attended to: every row then has a valid softmax
    # (an all-masked attention row gives NaN in some kernels) and costs one position.
    t = _round_up(max(1 if s is None else len(s[0]) for s in sequences), multiple)
    n = len(sequences)
    input_ids = torch.full((n, t), pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros(n, t, dtype=torch.int64)
    response_mask = torch.zeros(n, t, dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if seq is None:
            attention_mask[row, 0] = 1
            continue
        ids, n_prompt = seq
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        attention_mask[row, : len(ids)] = 1
        response_mask[row, n_prompt : len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def _pack(sequences: list[tuple[list[int], int] | None], pad_token_id: int, multiple: int | None) -> dict[str, Tensor]:
    ids_parts, pos_parts, resp_parts, seq_parts = [], [], [], []
    for n, seq in enumerate(sequences):
        if seq is None:
            continue  # a missing response simply has no tokens
        ids, n_prompt = seq
        length = len(ids)
        ids_parts.append(torch.tensor(ids, dtype=torch.int64))
        pos_parts.append(torch.arange(length, dtype=torch.int64))
        r = torch.zeros(length, dtype=torch.bool)
        r[n_prompt:] = True
        resp_parts.append(r)
        seq_parts.append(torch.full((length,), n, dtype=torch.int64))
    total = sum(len(p) for p in ids_parts)
    tail = _round_up(total, multiple) - total
    if tail:
        # Tail padding is its own sequence (positions restart at 0), so no real token attends to it.
        ids_parts.append(torch.full((tail,), pad_token_id, dtype=torch.int64))
        pos_parts.append(torch.arange(tail, dtype=torch.int64))
        resp_parts.append(torch.zeros(tail, dtype=torch.bool))
        seq_parts.append(torch.full((tail,), -1, dtype=torch.int64))
    return {
        "input_ids": torch.cat(ids_parts)[None],
        "position_ids": torch.cat(pos_parts)[None],
        "response_mask": torch.cat(resp_parts)[None],
        "sequence_ids": torch.cat(seq_parts)[None],
    }


def _share_prompts(features, ks: list[int], k_max: int, pad_token_id: int, multiple: int | None) -> dict[str, Tensor]:
    lengths = [len(f["prompt_ids"]) + sum(len(r) for r in f["response_ids"]) for f in features]
    b, t = len(features), _round_up(max(lengths), multiple)
    input_ids = torch.full((b, t), pad_token_id, dtype=torch.int64)
    position_ids = torch.zeros(b, t, dtype=torch.int64)
    response_mask = torch.zeros(b, t, dtype=torch.bool)
    sequence_ids = torch.full((b, t), -1, dtype=torch.int64)
    predictors = torch.zeros(b, t, dtype=torch.int64)  # column predicting the token at (row, column)
    segment = torch.full((b, t), -2, dtype=torch.int64)  # -1 prompt, k response k, -2 padding
    for i, (feature, k) in enumerate(zip(features, ks)):
        prompt = list(feature["prompt_ids"])
        n_prompt = len(prompt)
        input_ids[i, :n_prompt] = torch.tensor(prompt, dtype=torch.int64)
        position_ids[i, :n_prompt] = torch.arange(n_prompt)
        segment[i, :n_prompt] = -1
        start = n_prompt
        for j, response in enumerate(feature["response_ids"][:k]):
            end = start + len(response)
            input_ids[i, start:end] = torch.tensor(list(response), dtype=torch.int64)
            position_ids[i, start:end] = torch.arange(n_prompt, n_prompt + len(response))
            response_mask[i, start:end] = True
            sequence_ids[i, start:end] = i * k_max + j
            segment[i, start:end] = j
            predictors[i, start] = n_prompt - 1  # the first response token is predicted from the prompt's end
            predictors[i, start + 1:end] = torch.arange(start, end - 1)
            start = end
    # query q sees key c iff c <= q and (c is a prompt token, or c is in q's own segment); padding sees itself
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    to_prompt = (segment[:, None, :] == -1) & (segment[:, :, None] != -2)
    attention = causal[None] & (same | to_prompt)
    pad = segment == -2
    attention &= ~(pad[:, :, None] & ~torch.eye(t, dtype=torch.bool)[None])
    rows, cols = response_mask.nonzero(as_tuple=True)
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention[:, None],
            "response_mask": response_mask, "sequence_ids": sequence_ids, "response_predictors": predictors[rows, cols]}


class ResponseCollator:
    """Picklable ``data_collator`` for ``transformers.Trainer``: ``collate_responses`` with fixed options.

    Extra keys a feature may carry (e.g. raw text) are ignored; ``Trainer`` should be run with
    ``remove_unused_columns=False`` so that ``prompt_ids``/``response_ids`` reach the collator.
    """

    def __init__(self, pad_token_id: int, *, k_max: int | None = None, pad_to_multiple_of: int | None = None,
                 packed: bool = False, shared_prompt: bool = False):
        self.pad_token_id = pad_token_id
        self.k_max = k_max
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packed = packed
        self.shared_prompt = shared_prompt

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        return collate_responses(features, pad_token_id=self.pad_token_id, k_max=self.k_max,
                                 pad_to_multiple_of=self.pad_to_multiple_of, packed=self.packed,
                                 shared_prompt=self.shared_prompt)


# ----------------------------------------------------------------------------------------- generation batches


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Prompts ``seqs`` left-padded to one ``[B, T]`` tensor of ids and its attention mask (``generate``
    continues every row from the right end, so prompts end at the same column)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(ids: list[int], eos: int) -> list[int]:
    """Generated ids up to and including the first EOS.  ``generate`` pads only rows that already emitted EOS,
    so a row without EOS is all sampled tokens (a sampled pad id among them is kept: it was drawn from π)."""
    return ids[:ids.index(eos) + 1] if eos in ids else ids

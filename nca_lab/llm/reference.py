"""Reference log-probabilities log μ(y_k | x_b), computed once before training and cached on disk.

Every reference-based loss needs ``ref_logps [B, K]`` (the loss contract, :mod:`nca_lab.losses`). Instead of
keeping a second model in memory during training, :func:`compute_reference_logps` runs the reference model over the
tokenised dataset once — in eval mode, without gradients, through the *same* collation
(:func:`nca_lab.llm.collate.collate_responses`) and the *same* log-prob code
(:func:`nca_lab.llm.logps.batch_logps`) as the policy forward — and :func:`attach_ref_logps` stores the result as a
``ref_logps`` column, which the collator turns into ``ref_logps [B, Kmax]``. With identical weights, dtype and
batches the policy then reproduces the reference numbers, so the first loss is the closed-form value at π_θ = π_ref
(ln 2 for DPO).

The cache file is ``cache_dir/<key>.pt`` where ``key`` (:func:`reference_cache_key`) hashes what the numbers
depend on: the model (:func:`model_fingerprint`), the token ids (:func:`dataset_fingerprint`), the
tokenisation settings, the dtype and an active autocast.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .collate import collate_responses
from .logps import batch_logps, unwrap_causal_lm

__all__ = [
    "reference_cache_key",
    "model_fingerprint",
    "dataset_fingerprint",
    "compute_reference_logps",
    "reference_logps_with_adapters_disabled",
    "attach_ref_logps",
]

_CACHE_FORMAT = 1  # bump when the stored layout or the log-prob computation changes meaning
_HASH_CHUNK = 1 << 24  # parameter entries copied to the host at a time by the model fingerprint
# Config entries that do not change the function the model computes.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "_commit_hash"}


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    name = str(dtype).removeprefix("torch.")
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"dtype: unknown torch dtype {dtype!r}")
    return name


def reference_cache_key(
    model_name_or_path: str,
    model_fingerprint: str,
    dataset_fingerprint: str,
    tokenization_config: dict,
    dtype: torch.dtype | str,
    extra: dict | None = None,
) -> str:
    """Stable hex key (sha256 of the canonical JSON of all arguments and the cache format version).

    ``extra`` (optional) holds any other setting the caller wants a separate cache for, e.g. an active
    autocast (which :func:`compute_reference_logps` adds itself) or batching settings.
    """
    for name, value in (("model_name_or_path", model_name_or_path), ("model_fingerprint", model_fingerprint),
                        ("dataset_fingerprint", dataset_fingerprint)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    if not isinstance(tokenization_config, dict):
        raise ValueError(f"tokenization_config: expected a dict, got {type(tokenization_config).__name__}")
    return _sha256_json({
        "format": _CACHE_FORMAT,
        "model": model_name_or_path,
        "model_fingerprint": model_fingerprint,
        "dataset_fingerprint": dataset_fingerprint,
        "tokenization": tokenization_config,
        "dtype": _dtype_name(dtype),
        "extra": extra or {},
    })[:32]


def _reference_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters that define the reference function: PEFT adapter weights excluded, names as in the base model.

    For a ``PeftModel`` the reference is the base model with adapters disabled, so its fingerprint must equal the
    plain base model's: we drop parameters living under an adapter name (``lora_A.default``...) and the
    ``base_layer`` segment LoRA inserts into names.
    """
    adapter_names = set(getattr(model, "peft_config", {}) or {})
    out = []
    for name, p in unwrap_causal_lm(model).named_parameters():
        parts = name.split(".")
        if adapter_names & set(parts):
            continue
        out.append((".".join(x for x in parts if x != "base_layer"), p))
    return out


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a model: config + every weight's name, shape, dtype and bytes (hex sha256).

    Hashed: the config (minus volatile entries such as ``transformers_version``/``_name_or_path``/``dtype``), the
    attention implementation, and for every parameter (PEFT adapters excluded, :func:`_reference_parameters`) its
    name, shape, dtype and raw bytes, streamed to the host in chunks of ``2^24`` entries. Any change of any weight,
    however local (an in-place edit of one entry), changes the key, so a cache is never reused for another model.
    Cost: one pass over the weights, at sha256's speed (~1 GB/s per core, i.e. seconds for a 1B model in
    bfloat16), once per run before the reference pass. Parameters sharded away (e.g. DeepSpeed ZeRO-3) must be
    gathered first.
    """
    causal_lm = unwrap_causal_lm(model)
    config = causal_lm.config.to_dict()
    config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    h = hashlib.sha256()
    h.update(_sha256_json(config).encode())
    h.update(str(getattr(causal_lm.config, "_attn_implementation", None)).encode())
    for name, p in _reference_parameters(model):
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        flat = p.detach().reshape(-1)
        for start in range(0, flat.numel(), _HASH_CHUNK):
            # Raw bytes whatever the dtype (numpy has no bfloat16): reinterpret as uint8 on the host.
            chunk = flat[start : start + _HASH_CHUNK].cpu().contiguous()
            h.update(chunk.view(torch.uint8).numpy())
    return h.hexdigest()


def dataset_fingerprint(tokenized_dataset: Sequence[dict]) -> str:
    """sha256 of the token ids, in row order: every row's ``prompt_ids`` and each of its ``response_ids``.

    These are exactly what the reference log-probs depend on, so any change of data, tokenizer or chat template
    that alters a token changes the fingerprint. Cost: one pass over the ids (no model).
    """
    h = hashlib.sha256()
    n = len(tokenized_dataset)
    h.update(f"rows={n};".encode())
    for start in range(0, n, 1000):
        for row in _rows(tokenized_dataset, start, min(start + 1000, n)):
            prompt = np.asarray(row["prompt_ids"], dtype=np.int64)
            h.update(f"p{prompt.size};".encode())
            h.update(prompt.tobytes())
            h.update(f"k{len(row['response_ids'])};".encode())
            for resp in row["response_ids"]:
                resp = np.asarray(resp, dtype=np.int64)
                h.update(f"r{resp.size};".encode())
                h.update(resp.tobytes())
    return h.hexdigest()


def _rows(dataset: Sequence[dict], start: int, stop: int) -> list[dict]:
    """Rows ``start:stop`` as a list of dicts, for a list of dicts or a ``datasets.Dataset``."""
    chunk = dataset[start:stop]
    if isinstance(chunk, dict):  # datasets.Dataset slicing returns columns
        keys = list(chunk)
        return [dict(zip(keys, values)) for values in zip(*(chunk[k] for k in keys))]
    return list(chunk)


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in unwrap_causal_lm(model).parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    raise ValueError("model: has no floating-point parameters")


def _autocast_state(device: torch.device) -> dict:
    """The autocast in effect for ``device`` (it changes the numbers as much as the dtype does)."""
    if torch.is_autocast_enabled(device.type):
        return {"autocast": _dtype_name(torch.get_autocast_dtype(device.type))}
    return {}


def _cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    if not key or any(c in key for c in "/\\") or key.startswith("."):
        raise ValueError(f"key: not usable as a file name: {key!r}")
    return Path(cache_dir) / f"{key}.pt"


def _load_cache(path: Path, key: str, ks: list[int]) -> list[list[float]]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("key") != key or blob.get("format") != _CACHE_FORMAT:
        raise ValueError(f"cache file {path}: key/format does not match {key!r}; delete it")
    counts = blob["counts"].tolist()
    if counts != ks:
        raise ValueError(f"cache file {path}: holds {len(counts)} rows whose response counts do not match the "
                         f"dataset ({len(ks)} rows); delete it or use a different key")
    values = blob["values"].tolist()
    out, pos = [], 0
    for k in counts:
        out.append(values[pos : pos + k])
        pos += k
    return out


def _save_cache(path: Path, key: str, logps: list[list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": _CACHE_FORMAT,
        "key": key,
        "counts": torch.tensor([len(r) for r in logps], dtype=torch.int64),
        "values": torch.tensor([v for r in logps for v in r], dtype=torch.float32),
    }
    # Write-then-rename: a concurrent reader (another rank) sees either no file or a complete one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def compute_reference_logps(
    model: nn.Module,
    tokenized_dataset: Sequence[dict],
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    key: str | None = None,
    show_progress: bool = True,
    chunk_size: int = 1024,
    pad_to_multiple_of: int | None = None,
    packed: bool = False,
    shared_prompt: bool = False,
) -> list[list[float]]:
    """Summed reference log-probs of every response: ``out[i][k] = log μ(y_{i,k} | x_i)`` (float32 values).

    Args:
        model: the reference model (or the policy before training; see also
            :func:`reference_logps_with_adapters_disabled`). Put in eval mode for the pass, then restored.
        tokenized_dataset: list of tokenised rows or a ``datasets.Dataset`` (see :mod:`nca_lab.llm.collate`).
        batch_size, pad_token_id, chunk_size, pad_to_multiple_of, packed, shared_prompt: batching of the pass (consecutive
            rows in dataset order). With the policy's settings *and* its batches the step-0 agreement is exact;
            other batch compositions change the float32 sums only by rounding (measured on CPU with a tiny
            Llama: <= 2e-6 on sums of magnitude <= 40 for batch sizes 1, 3, 5, 24 and reversed order), so
            they are not part of the default key.
        device: where the inputs go; the model must already be there (default: the model's device).
        dtype: the model's parameter dtype, checked (ValueError on mismatch; we never cast the caller's model).
        cache_dir: if given, load ``cache_dir/<key>.pt`` when it exists, else compute and save it.
        key: cache key; default ``reference_cache_key(config._name_or_path, model_fingerprint(model),
            dataset_fingerprint(data), {}, dtype, extra={"autocast": <dtype>} if autocast is on)`` (the token ids
            already reflect the tokenisation). Run under the same ``torch.autocast`` as the training forward.
        show_progress: tqdm progress bar over batches.

    Returns:
        One list of K_i floats per dataset row, in row order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_dtype = _model_dtype(model)
    if dtype is not None and _dtype_name(dtype) != _dtype_name(model_dtype):
        raise ValueError(f"dtype: requested {_dtype_name(dtype)} but the model's parameters are "
                         f"{_dtype_name(model_dtype)}; load/cast the reference model in that dtype")
    model_device = next(unwrap_causal_lm(model).parameters()).device
    if device is not None and torch.device(device) != model_device:
        # torch.device("cuda") != torch.device("cuda:0"): compare types and explicit indices only.
        dev = torch.device(device)
        if dev.type != model_device.type or (dev.index is not None and dev.index != model_device.index):
            raise ValueError(f"device: {dev} but the model is on {model_device}; move the model first")
    n_rows = len(tokenized_dataset)
    ks = [len(r["response_ids"]) for s in range(0, n_rows, 1000) for r in _rows(tokenized_dataset, s, s + 1000)]

    path = None
    if cache_dir is not None:
        if key is None:
            key = reference_cache_key(
                str(getattr(unwrap_causal_lm(model).config, "_name_or_path", "") or "unnamed"),
                model_fingerprint(model), dataset_fingerprint(tokenized_dataset), {}, model_dtype,
                extra=_autocast_state(model_device),
            )
        path = _cache_path(cache_dir, key)
        if path.exists():
            return _load_cache(path, key, ks)

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    try:
        with torch.no_grad():
            for start in tqdm(range(0, n_rows, batch_size), desc="reference log-probs", disable=not show_progress):
                rows = _rows(tokenized_dataset, start, min(start + batch_size, n_rows))
                features = [{k: r[k] for k in ("prompt_ids", "response_ids", "rewards")} for r in rows]
                batch = collate_responses(features, pad_token_id=pad_token_id,
                                          pad_to_multiple_of=pad_to_multiple_of, packed=packed,
                                          shared_prompt=shared_prompt)
                logps, _ = batch_logps(model, batch, chunk_size=chunk_size)
                values = logps.float().cpu().tolist()
                for i, r in enumerate(rows):
                    out.append(values[i][: len(r["response_ids"])])
    finally:
        model.train(was_training)
    bad = [i for i, r in enumerate(out) if not all(np.isfinite(r))]
    if bad:
        raise ValueError(f"reference log-probs: non-finite values in rows {bad[:10]}")
    if path is not None:
        _save_cache(path, key, out)
    return out


def reference_logps_with_adapters_disabled(
    model: nn.Module, tokenized_dataset: Sequence[dict], **kwargs
) -> list[list[float]]:
    """:func:`compute_reference_logps` for a PEFT model with its adapters switched off (= the base model).

    The LoRA policy and its reference then share one copy of the base weights. The default cache key uses
    :func:`model_fingerprint`, which ignores adapter weights, so it equals the plain base model's key.
    """
    if not hasattr(model, "disable_adapter") or not hasattr(model, "peft_config"):
        raise ValueError(f"model: expected a peft.PeftModel, got {type(model).__name__}")
    with model.disable_adapter():
        return compute_reference_logps(model, tokenized_dataset, **kwargs)


def attach_ref_logps(tokenized_dataset, ref_logps: Sequence[Sequence[float]]):
    """Return the dataset with a ``ref_logps`` column (replacing any existing one).

    Works for a ``datasets.Dataset`` (returns a new Dataset) and for a list of dicts (returns a new list of new
    dicts). Raises ValueError if the number of rows or any row's number of responses does not match.
    """
    n = len(tokenized_dataset)
    if len(ref_logps) != n:
        raise ValueError(f"ref_logps: {len(ref_logps)} rows for a dataset of {n} rows")
    rows_k = [len(r["response_ids"]) for s in range(0, n, 1000) for r in _rows(tokenized_dataset, s, s + 1000)]
    for i, (k, values) in enumerate(zip(rows_k, ref_logps)):
        if len(values) != k:
            raise ValueError(f"ref_logps: row {i} has {len(values)} values but {k} responses")
    values = [[float(v) for v in r] for r in ref_logps]
    if hasattr(tokenized_dataset, "add_column"):
        ds = tokenized_dataset
        if "ref_logps" in ds.column_names:
            ds = ds.remove_columns("ref_logps")
        return ds.add_column("ref_logps", values)
    return [dict(row, ref_logps=v) for row, v in zip(tokenized_dataset, values)]

"""Sequence log-probabilities of responses under a causal LM, without full-vocabulary fp32 logits.

For a sequence x_1..x_T with response tokens R ⊂ {2..T} (``response_mask``), the summed log-probability is

    log π(y | x) = Σ_{t ∈ R} log softmax(W h_{t-1})[x_t]

where h_{t-1} is the final hidden state at position t-1 (position t-1 predicts token t) and W the LM head.
These sums are the ``policy_logps`` / ``ref_logps`` [B, K] of the loss contract (stated in :mod:`nca_lab.losses`).

:func:`sequence_logps` runs the model once, keeps the final hidden states only at the P positions that
predict response tokens, and applies head + float32 log-softmax in chunks of ``chunk_size`` positions. Each
chunk is wrapped in activation checkpointing when gradients are on, so neither the forward nor the
autograd graph ever holds more than one chunk's ``[chunk_size, V]`` float32 logits (the memory trick of
chunked/fused cross-entropy, e.g. Liger-Kernel's fused linear cross-entropy; here in plain PyTorch).
:func:`naive_sequence_logps` is the straightforward full-logits computation used as the reference in tests.

How the model is driven: the *top-level* module is called (so DDP gradient sync, accelerate's autocast
wrapper and DeepSpeed hooks all run) with ``logits_to_keep=1`` (the model computes logits for one position
only) while a forward hook on ``get_decoder()`` captures the final hidden states. The head is then applied
by us: ``get_output_embeddings()`` followed by the logit post-processing the model's forward applies
(Gemma's ``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``logits_scaling``). Because an
unknown post-processing would silently change the numbers, the first call for each model object compares
our head on the last position with the logits the model itself returned there and raises ValueError if
they differ beyond rounding. Under FSDP2 the head is called outside the root forward, so its parameters must
stay gathered after it: ``--fsdp`` (:mod:`nca_lab.llm.sharding`) keeps the head in the root unit, which FSDP2
does not reshard until the end of the backward (tested with two gloo CPU processes against one process, tied and
untied embeddings). DDP works: gradients were checked to be synchronised (equal to the mean of the per-process
gradients) with two gloo CPU processes. DeepSpeed ZeRO-3 gathers parameters per submodule call and should work
the same way, but has not been run.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "sequence_logps",
    "naive_sequence_logps",
    "batch_logps",
    "reshape_to_bk",
    "unwrap_causal_lm",
    "check_packing_isolates_sequences",
    "check_shared_prompt_layout",
]

# Models whose head we have already compared against the model's own logits (see module docstring).
_HEAD_VERIFIED: weakref.WeakSet = weakref.WeakSet()


# --------------------------------------------------------------------------------------------------- helpers


def reshape_to_bk(values: Tensor, b: int, k: int) -> Tensor:
    """``[B*K] -> [B, K]`` with sequence ``n = b*K + k`` (the order :func:`collate_responses` produces)."""
    if values.dim() != 1 or values.shape[0] != b * k:
        raise ValueError(f"values: expected shape [{b * k}] (B={b} x K={k}), got {list(values.shape)}")
    return values.reshape(b, k)


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel, ``torch.compile`` and PEFT wrappers; return the ``*ForCausalLM`` inside.

    LoRA-style PEFT adapters are injected into the base model's modules, so the returned model still applies
    them (and ``PeftModel.disable_adapter()`` still switches them off). Prompt-learning PEFT methods
    (prefix/prompt tuning) change the forward itself and are rejected.
    """
    m = model
    for _ in range(8):
        if isinstance(getattr(m, "module", None), nn.Module) and not hasattr(m, "config"):
            m = m.module  # DDP, DataParallel, FSDP, DeepSpeedEngine
        elif hasattr(m, "_orig_mod"):  # torch.compile's OptimizedModule
            m = m._orig_mod
        elif hasattr(m, "get_base_model") and hasattr(m, "peft_config"):
            active = getattr(m, "active_peft_config", None)
            if active is not None and getattr(active, "is_prompt_learning", False):
                raise ValueError("model: prompt-learning PEFT adapters (prefix/prompt tuning) are not supported")
            m = m.get_base_model()
        else:
            return m
    raise ValueError("model: could not unwrap to a causal LM (too many wrapper levels)")


def _postprocess_fn(causal_lm: nn.Module) -> Callable[[Tensor], Tensor]:
    """The logit transform the model's forward applies after ``lm_head`` (on float32 logits)."""
    config = causal_lm.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = {}
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(text_config, name, None)
        if value is None:
            value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    if len(found) > 1:
        raise ValueError(f"model config: unsupported combination of logit transforms {sorted(found)}")
    if "final_logit_softcapping" in found:
        cap = found["final_logit_softcapping"]
        return lambda z: torch.tanh(z / cap) * cap
    if "logit_scale" in found:
        scale = found["logit_scale"]
        return lambda z: z * scale
    if "logits_scaling" in found:
        scaling = found["logits_scaling"]
        return lambda z: z / scaling
    return lambda z: z


def _head_logits_fp32(head: nn.Module, post: Callable[[Tensor], Tensor], hidden: Tensor) -> Tensor:
    # The head runs in the model's dtype exactly as in the model's forward; only then do we upcast.
    return post(head(hidden).float())


def _chunk_token_logps(head: nn.Module, post: Callable, hidden: Tensor, targets: Tensor) -> Tensor:
    """log softmax(post(head(hidden)))[targets] for one chunk: ``[c, d], [c] -> [c]`` float32."""
    logits = _head_logits_fp32(head, post, hidden)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _chunked_token_logps(head, post, hidden: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """Token log-probs ``[P]`` (float32) for hidden states ``[P, d]``, ``chunk_size`` positions at a time."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    recompute = torch.is_grad_enabled()  # also when only the head is trainable (frozen body)
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if recompute:
            # Save only the chunk's hidden states; the [c, V] logits are rebuilt during backward
            # (non-reentrant checkpointing restores the autocast state for the recomputation).
            out.append(checkpoint(_chunk_token_logps, head, post, h, y, use_reentrant=False))
        else:
            out.append(_chunk_token_logps(head, post, h, y))
    return torch.cat(out)


def _autocast_like(state: tuple[str, bool, torch.dtype]):
    """Re-enter the autocast state the model's forward ran under (see :func:`_final_hidden_states`)."""
    device_type, enabled, dtype = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def _accepts_kwarg(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _final_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None
) -> tuple[Tensor, Tensor, nn.Module, tuple]:
    """Run ``model`` once; return (final hidden states [R, L, d], model logits at the last position [R, V],
    the unwrapped causal LM, the autocast state inside the model's forward)."""
    causal_lm = unwrap_causal_lm(model)
    decoder = causal_lm.get_decoder()
    captured: list[Tensor] = []
    autocast_state: list[tuple] = []

    def grab(_module, _inputs, output):
        hs = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", None)
        if hs is None:
            hs = output[0]
        captured.append(hs)
        # accelerate (hence Trainer with bf16/fp16) wraps model.forward in autocast; the head we apply after
        # the forward must run under the same autocast to give the model's own logits.
        device_type = hs.device.type
        autocast_state.append((device_type, torch.is_autocast_enabled(device_type),
                               torch.get_autocast_dtype(device_type)))

    kwargs = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if _accepts_kwarg(causal_lm.forward, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1  # the model's own head runs on one position only
    handle = decoder.register_forward_hook(grab)
    try:
        out = model(**kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(f"model: expected the decoder to run once, it ran {len(captured)} times")
    hidden = captured[0]
    logits = out.logits if hasattr(out, "logits") else out[0]
    if hidden.shape[:2] != input_ids.shape:
        raise ValueError(f"model: decoder output {list(hidden.shape)} does not match input_ids {list(input_ids.shape)}")
    return hidden, logits[:, -1, :], causal_lm, autocast_state[0]


def _verify_head(causal_lm: nn.Module, head: nn.Module, post: Callable, hidden_last: Tensor, model_last: Tensor,
                 autocast_state: tuple):
    """Compare our head on the last position with the model's own logits there (once per model object)."""
    if causal_lm in _HEAD_VERIFIED:
        return
    with torch.no_grad(), _autocast_like(autocast_state):
        ours = _head_logits_fp32(head, post, hidden_last)
        theirs = model_last.float()
        if ours.shape != theirs.shape:
            raise ValueError(f"model: head gives logits {list(ours.shape)}, the model {list(theirs.shape)}; "
                             "unsupported output head")
        # Same ops up to kernel/accumulation order and where the upcast happens: a few ulps of the lowest
        # precision involved (hidden states, head weight, autocast dtype: one rounding of the result), plus
        # a float32 accumulation term that grows like sqrt(d), because each logit is a length-d dot product
        # whose summation order differs between kernels (2-D vs 3-D matmul blocking; seen: 2.3e-5 in float32
        # on SmolLM2, d = 576, |logit| <= 36, under a peft wrapper). An unsupported transform (soft-capping,
        # scaling) moves logits by O(1), above this in float32 and in bf16 alike.
        dtypes = [hidden_last.dtype, model_last.dtype] + [p.dtype for p in head.parameters()][:1]
        if autocast_state[1]:
            dtypes.append(autocast_state[2])
        eps = max(torch.finfo(d).eps for d in dtypes if d.is_floating_point)
        scale = 1.0 + theirs.abs().max().item()
        tol = 4 * eps * scale + 4 * torch.finfo(torch.float32).eps * hidden_last.shape[-1] ** 0.5 * scale
        err = (ours - theirs).abs().max().item()
    if not err <= tol:
        raise ValueError(
            f"model: the LM head + known logit transforms differ from model(...).logits by {err:.3g} "
            f"(> {tol:.3g}); {type(causal_lm).__name__} applies an unsupported logit post-processing"
        )
    _HEAD_VERIFIED.add(causal_lm)


def _check_masks(input_ids: Tensor, attention_mask: Tensor | None, response_mask: Tensor) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected [N, T], got {list(input_ids.shape)}")
    if response_mask.shape != input_ids.shape:
        raise ValueError(f"response_mask: shape {list(response_mask.shape)} != input_ids {list(input_ids.shape)}")
    four_d = attention_mask is not None and attention_mask.dim() == 4
    if four_d and tuple(attention_mask.shape) != (input_ids.shape[0], 1, input_ids.shape[1], input_ids.shape[1]):
        raise ValueError(f"attention_mask: 4D shape {list(attention_mask.shape)} is not [N, 1, T, T] for input_ids "
                         f"{list(input_ids.shape)}")
    if attention_mask is not None and not four_d and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: shape {list(attention_mask.shape)} != input_ids {list(input_ids.shape)}")
    if response_mask.dtype != torch.bool:
        raise ValueError(f"response_mask: expected a bool tensor, got {response_mask.dtype}")
    if response_mask[:, 0].any():
        raise ValueError("response_mask: a response token at position 0 has no predicting position")
    if attention_mask is not None and not four_d and (response_mask & (attention_mask == 0)).any():
        raise ValueError("response_mask: marks a position whose attention_mask is 0 (padding)")


def _response_positions(response_mask: Tensor, sequence_ids: Tensor | None, num_sequences: int | None):
    """(rows, predicting columns, target columns, sequence index per response token, N)."""
    rows, cols = response_mask.nonzero(as_tuple=True)
    if sequence_ids is None:
        seq, n = rows, response_mask.shape[0]
    else:
        if num_sequences is None:
            raise ValueError("num_sequences: required with sequence_ids (packed layout)")
        if sequence_ids.shape != response_mask.shape:
            raise ValueError(f"sequence_ids: shape {list(sequence_ids.shape)} != {list(response_mask.shape)}")
        seq, n = sequence_ids[rows, cols], num_sequences
        # In packed rows the predicting position must belong to the same sequence as the target token.
        if (seq < 0).any() or (seq >= n).any() or (sequence_ids[rows, cols - 1] != seq).any():
            raise ValueError("sequence_ids: response tokens must have valid ids and follow a token of their sequence")
    return rows, cols - 1, cols, seq, n


def _sum_per_sequence(token_logps: Tensor, seq: Tensor, n: int, normalize: bool) -> tuple[Tensor, Tensor]:
    sums = torch.zeros(n, dtype=torch.float32, device=token_logps.device).index_add(0, seq, token_logps)
    counts = torch.zeros(n, dtype=torch.int64, device=seq.device).index_add(0, seq, torch.ones_like(seq))
    if normalize:
        sums = sums / counts.clamp(min=1).to(sums.dtype)
    return sums, counts


# ------------------------------------------------------------------------------------------------ public API


def sequence_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    response_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    sequence_ids: Tensor | None = None,
    num_sequences: int | None = None,
    chunk_size: int = 1024,
    normalize: bool = False,
    response_positions: Tensor | None = None,
    response_sequence: Tensor | None = None,
    response_predictors: Tensor | None = None,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Summed response log-probs and response token counts per sequence, chunked over the vocabulary head.

    Args:
        model: any ``AutoModelForCausalLM`` (optionally wrapped in PEFT-LoRA / DDP / ``torch.compile``).
        input_ids: ``[R, L]``; padded layout: one sequence per row (R = N); packed: ``R = 1``.
        attention_mask: ``[R, L]`` (0 on padding) or None (packed layout: must be None so that transformers
            detects packing from ``position_ids``).
        response_mask: ``[R, L]`` bool, True where the token is a response token.
        position_ids: ``[R, L]`` (packed layout: restarting at 0 per sequence) or None.
        sequence_ids, num_sequences: packed layout only: sequence index of each token, and N.
        chunk_size: number of response positions whose ``[chunk, V]`` float32 logits exist at any time.
        normalize: divide each sum by its token count (0/0 -> 0 for sequences without response tokens).
        response_positions, response_sequence: ``[2, P]`` (row, column) of the response tokens and ``[P]``
            their sequence index, as :func:`nca_lab.llm.collate.collate_responses` computes them on the host
            (``num_sequences`` required). Given, the step needs no ``nonzero`` on the device.
        response_predictors: ``[P]`` the column whose hidden state predicts each response token (shared-prompt
            layout: the prompt's last column for a response's first token); default: the column before it.
        validate: check the masks (and the given positions against ``response_mask``). Each check reads a
            device value on the host, i.e. synchronises; the trainer turns them off (its collator builds
            the batch from checked data).

    Returns:
        ``(logps [N] float32, counts [N] int64)``, differentiable w.r.t. the model parameters.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if validate:
        _check_masks(input_ids, attention_mask, response_mask)
    hidden, model_last_logits, causal_lm, autocast_state = _final_hidden_states(
        model, input_ids, attention_mask, position_ids)
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"model: {type(causal_lm).__name__} has no output embeddings (LM head)")
    post = _postprocess_fn(causal_lm)
    _verify_head(causal_lm, head, post, hidden[:, -1, :], model_last_logits, autocast_state)

    if response_positions is None:
        if response_predictors is not None:
            raise ValueError("response_predictors: needs response_positions and response_sequence")
        rows, pred_cols, target_cols, seq, n = _response_positions(response_mask, sequence_ids, num_sequences)
    else:
        if num_sequences is None or response_sequence is None:
            raise ValueError("response_positions: needs response_sequence and num_sequences")
        rows, target_cols = response_positions[0], response_positions[1]
        pred_cols = target_cols - 1 if response_predictors is None else response_predictors
        seq, n = response_sequence, num_sequences
        if validate:
            r, c = response_mask.nonzero(as_tuple=True)
            expected_seq = r if sequence_ids is None else sequence_ids[r, c]
            if not (torch.equal(rows, r) and torch.equal(target_cols, c) and torch.equal(seq, expected_seq)):
                raise ValueError("response_positions/response_sequence: disagree with response_mask/sequence_ids")
            if (pred_cols >= target_cols).any() or (pred_cols < 0).any():
                raise ValueError("response_predictors: every predicting column must precede its target")
    with _autocast_like(autocast_state):
        token_logps = _chunked_token_logps(head, post, hidden[rows, pred_cols], input_ids[rows, target_cols],
                                           chunk_size)
    return _sum_per_sequence(token_logps, seq, n, normalize)


def naive_sequence_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    response_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    sequence_ids: Tensor | None = None,
    num_sequences: int | None = None,
    normalize: bool = False,
    response_predictors: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference implementation: ``model(...).logits.float().log_softmax(-1)`` over all positions, gathered.

    Same arguments and returns as :func:`sequence_logps`; materialises ``[R, L, V]`` float32 logits. With
    ``response_predictors`` (shared-prompt layout) each response token is read at its predicting column.
    """
    _check_masks(input_ids, attention_mask, response_mask)
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    logprobs = model(**kwargs).logits.float().log_softmax(-1)  # [R, L, V]
    if response_predictors is not None:
        if sequence_ids is None or num_sequences is None:
            raise ValueError("response_predictors: needs sequence_ids and num_sequences")
        rows, cols = response_mask.nonzero(as_tuple=True)
        token_logps = logprobs[rows, response_predictors].gather(-1, input_ids[rows, cols][:, None]).squeeze(-1)
        seq = sequence_ids[rows, cols]
        sums = torch.zeros(num_sequences, dtype=torch.float32, device=seq.device).index_add(0, seq, token_logps)
        counts = torch.zeros(num_sequences, dtype=torch.int64, device=seq.device).index_add(0, seq, torch.ones_like(seq))
        if normalize:
            sums = sums / counts.clamp(min=1).to(sums.dtype)
        return sums, counts
    # Written independently of the chunked path's indexing: shift by one, gather every token, mask.
    token_logps = logprobs[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [R, L-1]
    is_response = response_mask[:, 1:]
    token_logps = torch.where(is_response, token_logps, torch.zeros_like(token_logps))
    if sequence_ids is None:
        sums, counts = token_logps.sum(-1), is_response.sum(-1)
    else:
        if num_sequences is None:
            raise ValueError("num_sequences: required with sequence_ids (packed layout)")
        seq = torch.where(is_response, sequence_ids[:, 1:], torch.zeros_like(sequence_ids[:, 1:])).reshape(-1)
        sums = torch.zeros(num_sequences, dtype=torch.float32, device=seq.device).index_add(
            0, seq, token_logps.reshape(-1))
        counts = torch.zeros(num_sequences, dtype=torch.int64, device=seq.device).index_add(
            0, seq, is_response.reshape(-1).long())
    if normalize:
        sums = sums / counts.clamp(min=1).to(sums.dtype)
    return sums, counts


def batch_logps(model: nn.Module, batch: dict[str, Tensor], *, chunk_size: int = 1024,
                normalize: bool = False, validate: bool = True, full_logits: bool = False) -> tuple[Tensor, Tensor]:
    """``sequence_logps`` on a batch from :func:`nca_lab.llm.collate.collate_responses` (either layout).

    Returns ``(logps [B, Kmax] float32, lengths [B, Kmax] int64)``; entries where ``batch["mask"]`` is False
    are 0. The policy forward (trainer) and the reference pass both go through this function, so they
    compute the same numbers for the same weights. ``validate=False`` skips every check that reads a device
    value on the host (see :func:`sequence_logps`), including the comparison of the counted response tokens
    with ``batch["lengths"]``. ``full_logits=True`` takes :func:`naive_sequence_logps` instead (float32 logits
    over the whole vocabulary at every position: the benchmark's "off" switch for the chunked head).
    """
    b, k = batch["mask"].shape
    device = next((p.device for p in unwrap_causal_lm(model).parameters()), torch.device("cpu"))
    to = lambda name: batch[name].to(device) if batch.get(name) is not None else None  # noqa: E731
    common = dict(position_ids=to("position_ids"), sequence_ids=to("sequence_ids"),
                  num_sequences=b * k if "sequence_ids" in batch else None, normalize=normalize)
    if full_logits:
        logps, counts = naive_sequence_logps(model, to("input_ids"), to("attention_mask"), to("response_mask"),
                                             response_predictors=to("response_predictors"), **common)
    else:
        if batch.get("response_positions") is not None:
            common["num_sequences"] = b * k
        logps, counts = sequence_logps(
            model, to("input_ids"), to("attention_mask"), to("response_mask"), chunk_size=chunk_size,
            response_positions=to("response_positions"), response_sequence=to("response_sequence"),
            response_predictors=to("response_predictors"), validate=validate, **common)
    logps, counts = reshape_to_bk(logps, b, k), reshape_to_bk(counts, b, k)
    if validate and not torch.equal(counts.cpu(), batch["lengths"].cpu()):
        raise ValueError("batch: response token counts from response_mask disagree with batch['lengths']")
    return logps, counts


@torch.no_grad()
def check_packing_isolates_sequences(model: nn.Module, *, atol: float | None = None) -> float:
    """Check that ``model`` keeps packed sequences apart (block-diagonal attention from ``position_ids``).

    Runs two short sequences alone and packed into one row (model temporarily in eval mode) and compares
    the logits. Returns the max abs difference; raises ValueError if it exceeds ``atol`` (default: 1e-4
    for float32 models, 5e-2 for 16-bit ones: the two layouts reduce in different orders). A model that
    ignores packing leaks the first sequence into the second and differs by O(1).
    """
    causal_lm = unwrap_causal_lm(model)
    param = next(causal_lm.parameters())
    if atol is None:
        atol = 1e-4 if param.dtype == torch.float32 else 5e-2
    vocab = causal_lm.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab, (5,), generator=gen)
    b = torch.randint(0, vocab, (7,), generator=gen)
    was_training = model.training
    model.eval()
    try:
        alone = [model(input_ids=s[None].to(param.device), use_cache=False).logits[0].float() for s in (a, b)]
        packed_ids = torch.cat([a, b])[None].to(param.device)
        positions = torch.cat([torch.arange(5), torch.arange(7)])[None].to(param.device)
        packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    err = max((packed[:5] - alone[0]).abs().max().item(), (packed[5:] - alone[1]).abs().max().item())
    if not err <= atol:
        raise ValueError(f"model: packed sequences are not isolated (max logit difference {err:.3g} > {atol:.3g}); "
                         "use the padded layout (packed=False)")
    return err


@torch.no_grad()
def check_shared_prompt_layout(model: nn.Module, *, atol: float | None = None) -> float:
    """Check that ``model`` honours the shared-prompt layout's 4D attention mask and continued positions.

    Scores two responses to one prompt in the shared-prompt layout and in the padded layout (model temporarily
    in eval mode) and compares the summed log-probs. Returns the max abs difference; raises ValueError beyond
    ``atol`` (default 1e-3 for float32 models, 0.5 for 16-bit ones: sums over 6 tokens in different layouts).
    An attention that ignores a boolean 4D mask (eager adds it as a number) differs by O(1) or more.
    """
    from nca_lab.llm.collate import collate_responses

    causal_lm = unwrap_causal_lm(model)
    param = next(causal_lm.parameters())
    if atol is None:
        atol = 1e-3 if param.dtype == torch.float32 else 0.5
    vocab = causal_lm.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    feature = {"prompt_ids": torch.randint(0, vocab, (5,), generator=gen).tolist(),
               "response_ids": [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (4, 6)],
               "rewards": [1.0, 0.0]}
    was_training = model.training
    model.eval()
    try:
        shared, _ = batch_logps(model, collate_responses([feature], pad_token_id=0, shared_prompt=True))
        padded, _ = batch_logps(model, collate_responses([feature], pad_token_id=0))
    finally:
        model.train(was_training)
    err = (shared - padded).abs().max().item()
    if not err <= atol:
        raise ValueError(f"model: the shared-prompt layout changes the log-probs by {err:.3g} (> {atol:.3g}): its "
                         "attention does not honour a boolean 4D mask (use --attn-implementation sdpa, or no "
                         "--shared-prompt)")
    return err

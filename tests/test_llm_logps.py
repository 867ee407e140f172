"""Chunked sequence log-probs (nca_lab.llm.logps) and response collation (nca_lab.llm.collate).

The reference for every numeric check is ``naive_sequence_logps``: ``model(...).logits.float().log_softmax(-1)``
over all positions, gathered at the response tokens. Models are tiny random Llamas built from a config.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from nca_lab.llm.collate import ResponseCollator, collate_responses
from nca_lab.llm.logps import (
    batch_logps,
    check_packing_isolates_sequences,
    check_shared_prompt_layout,
    naive_sequence_logps,
    reshape_to_bk,
    sequence_logps,
)

VOCAB = 211  # prime, so no other dimension of the test (hidden 32, T < 40, chunks) equals it
PAD = 0


def tiny_llama(seed: int = 0, attn: str = "sdpa", dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation=attn)
    # Default init (std 0.02) gives near-uniform predictions; a larger scale makes log-probs vary per token,
    # so that a wrong gather or a leaked pad token shows up as an O(1) difference.
    config.initializer_range = 0.3
    return LlamaForCausalLM(config).to(dtype)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def random_features(seed: int, b: int, k_max: int) -> list[dict]:
    """B rows with 1..k_max responses each, prompts 1..8 and responses 1..6 tokens (last one EOS=2)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    toks = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    feats = []
    for i in range(b):
        k = rand(1, k_max)
        feats.append({
            "prompt_ids": toks(rand(1, 8)),
            "response_ids": [toks(rand(0, 5)) + [2] for _ in range(k)],
            "rewards": torch.randn(k, generator=g).tolist(),
            "row": 100 + i,
        })
    return feats


# Float32 tolerance for chunked vs naive: the same float32 operations on the same hidden states; only the
# head matmul's shape (chunk rows vs all rows) may change the accumulation order, ~1e-7 relative per logit.
# Observed: max |chunked - naive| = 7.6e-6 over 20 random batches (sums down to -38); 1e-4 leaves a 10x margin
# and is far below the O(1) error of any indexing mistake.
ATOL_F32 = 1e-4


# ------------------------------------------------------------------------------------------------- collation


def test_collate_layout_exact():
    feats = [
        {"prompt_ids": [5, 6], "response_ids": [[7, 2], [8, 9, 2]], "rewards": [1.0, 0.0], "row": 3},
        {"prompt_ids": [10], "response_ids": [[11, 2]], "rewards": [0.5], "row": 4},
    ]
    b = collate_responses(feats, pad_token_id=PAD, pad_to_multiple_of=8)
    assert b["input_ids"].tolist() == [
        [5, 6, 7, 2, 0, 0, 0, 0],
        [5, 6, 8, 9, 2, 0, 0, 0],
        [10, 11, 2, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],  # dummy for the missing second response of row 4
    ]
    assert b["attention_mask"].tolist() == [
        [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    assert b["response_mask"].int().tolist() == [
        [0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
    assert b["mask"].tolist() == [[True, True], [True, False]]
    assert b["lengths"].tolist() == [[2, 3], [2, 0]]
    assert b["rewards"].tolist() == [[1.0, 0.0], [0.5, 0.0]]
    assert b["rewards"].dtype == torch.float32 and b["lengths"].dtype == torch.int64
    assert b["row"].tolist() == [3, 4]
    assert "ref_logps" not in b

    p = collate_responses(feats, pad_token_id=PAD, packed=True, pad_to_multiple_of=8)
    assert "attention_mask" not in p
    assert p["input_ids"].tolist() == [[5, 6, 7, 2, 5, 6, 8, 9, 2, 10, 11, 2, 0, 0, 0, 0]]
    assert p["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]]
    assert p["sequence_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, -1, -1, -1, -1]]
    assert p["response_mask"].int().tolist() == [[0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0]]


def test_collate_ref_logps_and_k_max():
    feats = [
        {"prompt_ids": [5], "response_ids": [[7, 2]], "rewards": [1.0], "ref_logps": [-3.5]},
        {"prompt_ids": [6], "response_ids": [[8, 2], [9, 2]], "rewards": [0.0, 2.0], "ref_logps": [-1.0, -2.0]},
    ]
    b = ResponseCollator(PAD, k_max=3)(feats)
    assert b["ref_logps"].dtype == torch.float32
    assert b["ref_logps"].tolist() == [[-3.5, 0.0, 0.0], [-1.0, -2.0, 0.0]]
    assert b["mask"].tolist() == [[True, False, False], [True, True, False]]
    assert b["input_ids"].shape == (6, 3)
    assert "row" not in b  # only when every feature has one


@pytest.mark.parametrize(
    "feature, match",
    [
        ({"prompt_ids": [], "response_ids": [[1, 2]], "rewards": [0.0]}, "prompt_ids"),
        ({"prompt_ids": [1], "response_ids": [], "rewards": []}, "response_ids"),
        ({"prompt_ids": [1], "response_ids": [[]], "rewards": [0.0]}, "response 0"),
        ({"prompt_ids": [1], "response_ids": [[3, 2]], "rewards": [0.0, 1.0]}, "rewards"),
        ({"prompt_ids": [1], "response_ids": [[3, 2]], "rewards": [float("nan")]}, "rewards"),
        ({"prompt_ids": [1], "response_ids": [[3, 2]]}, "rewards"),
        ({"prompt_ids": [1], "response_ids": [[3, 2]] * 3, "rewards": [0.0] * 3}, "k_max"),
        ({"prompt_ids": [1], "response_ids": [[3, 2]], "rewards": [0.0], "ref_logps": [0.0]}, "ref_logps"),
    ],
)
def test_collate_rejects_bad_rows(feature, match):
    good = {"prompt_ids": [4], "response_ids": [[5, 2]], "rewards": [1.0]}
    with pytest.raises(ValueError, match=match):
        collate_responses([good, feature], pad_token_id=PAD, k_max=2)


def test_reshape_to_bk():
    values = torch.arange(6.0)
    assert reshape_to_bk(values, 2, 3).tolist() == [[0, 1, 2], [3, 4, 5]]  # sequence n = b*K + k
    with pytest.raises(ValueError, match="values"):
        reshape_to_bk(values, 4, 2)


# --------------------------------------------------------------------------------------- chunked == naive


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), k_max=st.integers(1, 4),
       chunk_size=st.sampled_from([1, 7, 10_000]))
def test_chunked_equals_naive(model, seed, b, k_max, chunk_size):
    batch = collate_responses(random_features(seed, b, k_max), pad_token_id=PAD)
    with torch.no_grad():
        ours, counts = batch_logps(model, batch, chunk_size=chunk_size)
        ref, ref_counts = naive_sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                                               batch["response_mask"])
    ref = reshape_to_bk(ref, *batch["mask"].shape)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=ATOL_F32, rtol=0)
    assert torch.equal(counts, batch["lengths"])
    assert (ours[~batch["mask"]] == 0).all()  # dummy sequences carry no response tokens
    assert (ours[batch["mask"]] < 0).all()


def test_normalize_divides_by_token_count(model):
    batch = collate_responses(random_features(1, 3, 3), pad_token_id=PAD)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        summed, counts = sequence_logps(model, *args, chunk_size=5)
        mean, _ = sequence_logps(model, *args, chunk_size=5, normalize=True)
        naive_mean, _ = naive_sequence_logps(model, *args, normalize=True)
    valid = counts > 0
    torch.testing.assert_close(mean[valid], summed[valid] / counts[valid], atol=1e-6, rtol=0)
    torch.testing.assert_close(mean, naive_mean, atol=ATOL_F32, rtol=0)
    assert (mean[~valid] == 0).all()


def test_gradients_equal_naive(model):
    batch = collate_responses(random_features(7, 3, 3), pad_token_id=PAD)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    weights = torch.randn(batch["input_ids"].shape[0], generator=torch.Generator().manual_seed(0))

    def grads(fn, **kw):
        model.zero_grad()
        values, _ = fn(model, *args, **kw)
        (values * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref = grads(naive_sequence_logps)
    for chunk_size in (1, 7, 10_000):
        ours = grads(sequence_logps, chunk_size=chunk_size)
        assert ours.keys() == ref.keys()
        for name in ref:
            # Same float32 graph up to accumulation order (see ATOL_F32); gradients are O(1)-O(10) here.
            torch.testing.assert_close(ours[name], ref[name], atol=1e-4, rtol=1e-4, msg=name)
    model.zero_grad()


def test_padding_does_not_leak(model):
    """Each sequence alone (no padding, no attention mask) gives the same log-prob as inside a padded batch."""
    feats = random_features(3, 4, 3)
    batch = collate_responses(feats, pad_token_id=PAD)
    with torch.no_grad():
        padded, _ = batch_logps(model, batch, chunk_size=4)
        for i, f in enumerate(feats):
            for k, resp in enumerate(f["response_ids"]):
                ids = torch.tensor([f["prompt_ids"] + resp])
                rmask = torch.zeros_like(ids, dtype=torch.bool)
                rmask[0, len(f["prompt_ids"]):] = True
                alone, count = sequence_logps(model, ids, None, rmask, chunk_size=4)
                # Masked vs unmasked attention kernels: float32 rounding only (~1e-6); a leak of a pad
                # token into attention would move log-probs by O(0.1-1) with this model's weight scale.
                assert abs(alone.item() - padded[i, k].item()) <= ATOL_F32
                assert count.item() == len(resp)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_padded(attn):
    m = tiny_llama(seed=1, attn=attn)
    assert check_packing_isolates_sequences(m) <= 1e-4
    feats = random_features(11, 4, 4)
    padded = collate_responses(feats, pad_token_id=PAD)
    packed = collate_responses(feats, pad_token_id=PAD, packed=True, pad_to_multiple_of=16)
    with torch.no_grad():
        lp_padded, n_padded = batch_logps(m, padded, chunk_size=6)
        lp_packed, n_packed = batch_logps(m, packed, chunk_size=6)
        naive_packed, _ = naive_sequence_logps(
            m, packed["input_ids"], None, packed["response_mask"], position_ids=packed["position_ids"],
            sequence_ids=packed["sequence_ids"], num_sequences=padded["input_ids"].shape[0])
    # Block-diagonal vs padding mask: float32 rounding only (see test_padding_does_not_leak).
    torch.testing.assert_close(lp_packed, lp_padded, atol=ATOL_F32, rtol=0)
    torch.testing.assert_close(lp_packed.reshape(-1), naive_packed, atol=ATOL_F32, rtol=0)
    assert torch.equal(n_packed, n_padded)


def test_shared_prompt_layout_exact():
    """Two prompts, K = 2 and 1 (k_max 2): positions continue from the prompt in every response, a response
    token sees the prompt and its own earlier tokens only, padding sees itself, and the first token of each
    response is predicted from the prompt's last column."""
    feats = [{"prompt_ids": [5, 6], "response_ids": [[7, 2], [8, 9, 2]], "rewards": [1.0, 0.0]},
             {"prompt_ids": [10], "response_ids": [[11, 2]], "rewards": [0.5]}]
    b = collate_responses(feats, pad_token_id=PAD, shared_prompt=True)
    assert b["input_ids"].tolist() == [[5, 6, 7, 2, 8, 9, 2], [10, 11, 2, 0, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4], [0, 1, 2, 0, 0, 0, 0]]
    assert b["sequence_ids"].tolist() == [[-1, -1, 0, 0, 1, 1, 1], [-1, 2, 2, -1, -1, -1, -1]]
    assert b["response_positions"].tolist() == [[0, 0, 0, 0, 0, 1, 1], [2, 3, 4, 5, 6, 1, 2]]
    assert b["response_sequence"].tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert b["response_predictors"].tolist() == [1, 2, 1, 4, 5, 0, 1]
    m = b["attention_mask"][0, 0].int().tolist()
    assert m[4] == [1, 1, 0, 0, 1, 0, 0]  # response 1's first token: the prompt and itself, not response 0
    assert m[6] == [1, 1, 0, 0, 1, 1, 1]
    assert m[3] == [1, 1, 1, 1, 0, 0, 0]
    pad = b["attention_mask"][1, 0].int().tolist()
    assert pad[2] == [1, 1, 1, 0, 0, 0, 0] and pad[5] == [0, 0, 0, 0, 0, 1, 0]
    assert b["num_tokens"] == (2 + 2) + (2 + 3) + (1 + 2)  # dataset tokens: the prompt once per response
    assert b["mask"].tolist() == [[True, True], [True, False]] and b["lengths"].tolist() == [[2, 3], [2, 0]]
    with pytest.raises(ValueError, match="choose one layout"):
        collate_responses(feats, pad_token_id=PAD, shared_prompt=True, packed=True)


def test_shared_prompt_equals_padded_values_and_gradients():
    """The shared-prompt layout (prompt once, 4D mask) gives the padded layout's log-probs and gradients; the
    naive full-logits path reads each response token at its predicting column too."""
    m = tiny_llama(seed=4)
    assert check_shared_prompt_layout(m) <= 1e-4
    feats = random_features(13, 4, 4)
    padded = collate_responses(feats, pad_token_id=PAD)
    shared = collate_responses(feats, pad_token_id=PAD, shared_prompt=True, pad_to_multiple_of=8)
    weights = torch.randn(padded["mask"].shape, generator=torch.Generator().manual_seed(1))

    def values_and_grads(batch, **kw):
        m.zero_grad()
        lp, n = batch_logps(m, batch, chunk_size=5, **kw)
        (lp * weights).sum().backward()
        return lp.detach(), n, {k: p.grad.clone() for k, p in m.named_parameters()}

    lp_p, n_p, g_p = values_and_grads(padded)
    for kw in ({}, {"full_logits": True}, {"validate": False}):
        lp_s, n_s, g_s = values_and_grads(shared, **kw)
        # masked attention over different row layouts: float32 rounding only (see ATOL_F32)
        torch.testing.assert_close(lp_s, lp_p, atol=ATOL_F32, rtol=0)
        assert torch.equal(n_s, n_p)
        for name in g_p:
            torch.testing.assert_close(g_s[name], g_p[name], atol=1e-4, rtol=1e-4, msg=name)
    m.zero_grad()


def test_shared_prompt_check_detects_an_ignored_mask():
    # eager attention adds the boolean 4D mask as numbers (0/1) instead of masking: the check must refuse it
    with pytest.raises(ValueError, match="4D mask"):
        check_shared_prompt_layout(tiny_llama(seed=5, attn="eager"))


def test_packing_check_detects_leaks(monkeypatch):
    """If the model stopped honouring packed position_ids, the check must fail (it is not vacuous)."""
    import transformers.masking_utils as mu

    m = tiny_llama(seed=2)
    monkeypatch.setattr(mu, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(ValueError, match="not isolated"):
        check_packing_isolates_sequences(m)


def test_bf16_model_gives_float32(model):
    m = tiny_llama(seed=0, dtype=torch.bfloat16)
    batch = collate_responses(random_features(5, 3, 3), pad_token_id=PAD)
    with torch.no_grad():
        ours, _ = batch_logps(m, batch, chunk_size=7)
        ref, _ = naive_sequence_logps(m, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        f32, _ = batch_logps(model, batch, chunk_size=7)
    assert ours.dtype == torch.float32
    # The head runs in bf16 in both paths (as in model(...).logits), then float32 log-softmax: the only
    # difference is the matmul's accumulation order, i.e. ~1 bf16 ulp (2^-8 relative) on a few logits
    # (observed on CPU: exactly 0; GPU kernels may pick shape-dependent reductions).
    torch.testing.assert_close(ours.reshape(-1), ref, atol=0.05, rtol=0.01)
    # Sanity: bf16 weights really changed the numbers relative to the float32 model (so the test is about bf16).
    assert not torch.allclose(ours, f32, atol=1e-4)


# ------------------------------------------------------------------------------------------ memory by design


class _LargestVocabTensor(TorchDispatchMode):
    """Records the largest number of rows of any newly computed float tensor whose last dimension is V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.max_rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:  # views allocate nothing
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2 and t.shape[-1] == self.vocab:
                    self.max_rows = max(self.max_rows, t.numel() // self.vocab)
        return out


def test_chunked_path_never_builds_full_vocab_logits(model):
    batch = collate_responses(random_features(2, 2, 2), pad_token_id=PAD)
    n, t = batch["input_ids"].shape
    chunk_size = 3
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    n_positions = int(batch["response_mask"].sum())
    assert n * t > max(chunk_size, n) and n_positions > chunk_size

    # Forward and backward: at most max(chunk, N) rows of V-wide tensors (the model's own head runs on the
    # last position of each of the N sequences, logits_to_keep=1); the naive path builds N*T rows.
    with _LargestVocabTensor(VOCAB) as rec:
        values, _ = sequence_logps(model, *args, chunk_size=chunk_size)
        values.sum().backward()
    assert rec.max_rows <= max(chunk_size, n)
    with _LargestVocabTensor(VOCAB) as naive_rec:
        naive_sequence_logps(model, *args)[0].sum().backward()
    assert naive_rec.max_rows == n * t  # the recorder does see full logits when they exist

    # Autograd saves no V-wide activations: chunks are recomputed in backward (activation checkpointing).
    # (The head weight itself, [V, d] seen through its transpose [d, V], is a parameter, not an activation.)
    weight_ptr = model.get_output_embeddings().weight.untyped_storage().data_ptr()
    saved = []

    def pack(x):
        if x.untyped_storage().data_ptr() != weight_ptr:
            saved.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        sequence_logps(model, *args, chunk_size=chunk_size)
    assert saved and not [s for s in saved if s and s[-1] == VOCAB], saved
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        naive_sequence_logps(model, *args)
    assert [s for s in saved if s and s[-1] == VOCAB]  # the naive path does save [N, T, V] activations
    model.zero_grad()


# ---------------------------------------------------------------------- logit transforms and bad input


def test_final_logit_softcapping_is_applied():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                          query_pre_attn_scalar=8, sliding_window=16, final_logit_softcapping=0.5,
                          attn_implementation="eager")
    m = Gemma2ForCausalLM(config)
    batch = collate_responses(random_features(4, 2, 3), pad_token_id=PAD)
    with torch.no_grad():
        ours, _ = batch_logps(m, batch, chunk_size=4)
        ref, _ = naive_sequence_logps(m, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        raw = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert raw.abs().max() <= 0.5 + 1e-6  # the cap really binds: logits live in (-0.5, 0.5)
    torch.testing.assert_close(ours.reshape(-1), ref, atol=ATOL_F32, rtol=0)


def test_unknown_logit_transform_raises():
    class ScaledLlama(LlamaForCausalLM):
        """A model whose forward post-processes logits in a way the head path cannot know about."""

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

    torch.manual_seed(0)
    m = ScaledLlama(tiny_llama().config)
    batch = collate_responses(random_features(0, 1, 2), pad_token_id=PAD)
    with pytest.raises(ValueError, match="post-processing"):
        batch_logps(m, batch)


def test_peft_lora_model_matches_naive():
    peft = pytest.importorskip("peft")
    base = tiny_llama(seed=4)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"],
                                                     init_lora_weights=False))
    batch = collate_responses(random_features(9, 2, 3), pad_token_id=PAD)
    ours, _ = batch_logps(lora, batch, chunk_size=5)
    ref, _ = naive_sequence_logps(lora, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    torch.testing.assert_close(ours.reshape(-1), ref, atol=ATOL_F32, rtol=0)
    ours.sum().backward()
    lora_grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_bad_masks_raise(model):
    ids = torch.tensor([[5, 6, 7, 0]])
    att = torch.tensor([[1, 1, 1, 0]])
    with pytest.raises(ValueError, match="position 0"):
        sequence_logps(model, ids, att, torch.tensor([[True, True, False, False]]))
    with pytest.raises(ValueError, match="padding"):
        sequence_logps(model, ids, att, torch.tensor([[False, True, True, True]]))
    with pytest.raises(ValueError, match="bool"):
        sequence_logps(model, ids, att, torch.tensor([[0, 1, 1, 0]]))
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps(model, ids, att, torch.tensor([[False, True, True, False]]), chunk_size=0)
    batch = collate_responses(random_features(0, 1, 2), pad_token_id=PAD)
    batch["lengths"] = batch["lengths"] + 1
    with pytest.raises(ValueError, match="lengths"):
        batch_logps(model, batch)


def test_log_probs_are_normalised(model):
    """Summing exp(log p) over every possible one-token response gives 1: the gather hits the right logits."""
    prompt = [5, 17, 33]
    feats = [{"prompt_ids": prompt, "response_ids": [[v] for v in range(VOCAB)], "rewards": [0.0] * VOCAB}]
    with torch.no_grad():
        values, _ = batch_logps(model, collate_responses(feats, pad_token_id=PAD), chunk_size=50)
    assert math.isclose(values.exp().sum().item(), 1.0, abs_tol=1e-5)  # float32 sum of 211 terms


def test_autocast_wrapped_forward():
    """accelerate (Trainer with bf16=True) wraps ``model.forward`` in autocast; the head we apply after the
    forward must run under the same autocast, or the policy would not match a reference computed entirely
    under autocast (observed 1.4e-2 apart before this was handled)."""
    m = tiny_llama(seed=6)
    batch = collate_responses(random_features(5, 3, 3), pad_token_id=PAD)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        everything_autocast, _ = batch_logps(m, batch, chunk_size=4)
    m.forward = torch.autocast("cpu", dtype=torch.bfloat16)(m.forward)  # what accelerate.prepare_model does
    wrapped, _ = batch_logps(m, batch, chunk_size=4)
    naive, _ = naive_sequence_logps(m, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    # Identical operations in both autocast set-ups (observed: exactly equal on CPU).
    torch.testing.assert_close(wrapped.detach(), everything_autocast, atol=1e-6, rtol=0)
    # Chunked vs full logits, both with the bf16 head: accumulation order only (see ATOL_F32).
    torch.testing.assert_close(wrapped.detach().reshape(-1), naive.detach(), atol=ATOL_F32, rtol=0)
    wrapped.sum().backward()  # the checkpointed chunks recompute under the same autocast
    assert all(p.grad is not None for p in m.parameters())

"""Reference log-prob cache (nca_lab.llm.reference): keys, reuse, agreement with the policy at step 0, PEFT."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nca_lab.llm.collate import collate_responses
from nca_lab.llm.logps import batch_logps
from nca_lab.llm.reference import (
    attach_ref_logps,
    compute_reference_logps,
    dataset_fingerprint,
    model_fingerprint,
    reference_cache_key,
    reference_logps_with_adapters_disabled,
)

VOCAB = 151
PAD = 0


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3)
    kw.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**kw))


def dataset(seed: int = 0, n: int = 7) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))  # K varies between rows
        rows.append({
            "prompt_ids": torch.randint(3, VOCAB, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist(),
            "response_ids": [torch.randint(3, VOCAB, (int(torch.randint(0, 4, (1,), generator=g)),),
                                           generator=g).tolist() + [2] for _ in range(k)],
            "rewards": torch.randn(k, generator=g).tolist(),
            "row": i,
        })
    return rows


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


# ------------------------------------------------------------------------------------------------- cache key


def test_cache_key_stable_and_sensitive():
    data = dataset()
    base = dict(model_name_or_path="tiny", model_fingerprint=model_fingerprint(tiny_llama()),
                dataset_fingerprint=dataset_fingerprint(data), tokenization_config={"max_length": 64, "template": "a"},
                dtype="float32")
    key = reference_cache_key(**base)
    # Stable: recomputed from scratch (fresh model object with the same seed, copied data, reordered dict keys).
    again = dict(base, model_fingerprint=model_fingerprint(tiny_llama()),
                 dataset_fingerprint=dataset_fingerprint([dict(r) for r in data]),
                 tokenization_config={"template": "a", "max_length": 64}, dtype=torch.float32)
    assert reference_cache_key(**again) == key

    # Sensitive: every ingredient changes the key.
    perturbed = tiny_llama()
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(1e-3 * torch.randn_like(p))  # a fine-tune moves all weights
    changed_data = [dict(r) for r in data]
    changed_data[3] = dict(changed_data[3], response_ids=[list(changed_data[3]["response_ids"][0][:-1]) + [1]]
                           + changed_data[3]["response_ids"][1:])
    variants = [
        dict(base, model_name_or_path="other"),
        dict(base, model_fingerprint=model_fingerprint(tiny_llama(seed=1))),
        dict(base, model_fingerprint=model_fingerprint(perturbed)),
        dict(base, model_fingerprint=model_fingerprint(tiny_llama(rms_norm_eps=1e-5))),  # config only
        dict(base, dataset_fingerprint=dataset_fingerprint(changed_data)),
        dict(base, dataset_fingerprint=dataset_fingerprint(data[:-1])),
        dict(base, dataset_fingerprint=dataset_fingerprint(data[::-1])),  # row order matters (alignment)
        dict(base, tokenization_config={"max_length": 32, "template": "a"}),
        dict(base, dtype="bfloat16"),
    ]
    keys = [reference_cache_key(**v) for v in variants]
    assert len(set(keys + [key])) == len(keys) + 1
    assert reference_cache_key(**base, extra={"autocast": "bfloat16"}) != key

    with pytest.raises(ValueError, match="dtype"):
        reference_cache_key(**dict(base, dtype="float33"))
    with pytest.raises(ValueError, match="model_fingerprint"):
        reference_cache_key(**dict(base, model_fingerprint=""))


def test_dataset_fingerprint_same_for_list_and_datasets():
    datasets = pytest.importorskip("datasets")
    data = dataset()
    ds = datasets.Dataset.from_list(data)
    assert dataset_fingerprint(ds) == dataset_fingerprint(data)
    # Rewards do not enter the reference log-probs, so they do not enter the fingerprint.
    assert dataset_fingerprint([dict(r, rewards=[0.0] * len(r["rewards"])) for r in data]) == dataset_fingerprint(data)


# ------------------------------------------------------------------------------------------ compute + cache


def test_compute_matches_batch_logps_and_reuses_cache(tmp_path):
    model = tiny_llama()
    data = dataset(n=7)
    counter = ForwardCounter(model)
    ref = compute_reference_logps(model, data, batch_size=3, pad_token_id=PAD, cache_dir=tmp_path,
                                  show_progress=False)
    # 3 batches, one forward each, plus none hidden elsewhere.
    assert counter.calls == 3
    assert [len(r) for r in ref] == [len(r["response_ids"]) for r in data]
    assert model.training  # mode restored after the eval-mode pass
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1

    # Same numbers as the log-prob function on the same batches.
    with torch.no_grad():
        for start in range(0, 7, 3):
            batch = collate_responses(data[start : start + 3], pad_token_id=PAD)
            lp, _ = batch_logps(model.eval(), batch)
            for i, row in enumerate(ref[start : start + 3]):
                assert row == lp[i, : len(row)].tolist()
    model.train()

    # Second call: read from disk, no forward.
    again = compute_reference_logps(model, data, batch_size=3, pad_token_id=PAD, cache_dir=tmp_path,
                                    show_progress=False)
    assert counter.calls == 3 + 3  # the 3 above come from the comparison loop
    assert again == ref

    # Different data -> different key -> recomputed into a second file.
    compute_reference_logps(model, dataset(seed=1, n=2), batch_size=3, pad_token_id=PAD, cache_dir=tmp_path,
                            show_progress=False)
    assert counter.calls == 7
    assert len(list(tmp_path.glob("*.pt"))) == 2

    # The same model under bf16 autocast computes different numbers: a separate cache entry.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compute_reference_logps(model, data, batch_size=3, pad_token_id=PAD, cache_dir=tmp_path,
                                show_progress=False)
    assert counter.calls == 7 + 3
    assert len(list(tmp_path.glob("*.pt"))) == 3

    # An explicit key pointing at a file for other rows is refused instead of returning misaligned numbers.
    with pytest.raises(ValueError, match="rows"):
        compute_reference_logps(model, dataset(seed=2, n=5), batch_size=3, pad_token_id=PAD, cache_dir=tmp_path,
                                key=files[0].stem, show_progress=False)


def test_policy_equals_reference_at_step_zero():
    """Same weights, dtype and batches: policy logps (training mode, grad on) reproduce the cached reference,
    so a DPO loss at step 0 is ln 2."""
    model = tiny_llama()
    model.config.attention_dropout = 0.0
    data = dataset(n=6)
    ref = compute_reference_logps(model, data, batch_size=3, pad_token_id=PAD, show_progress=False, chunk_size=4)
    with_ref = attach_ref_logps(data, ref)
    model.train()
    for start in range(0, 6, 3):
        batch = collate_responses(with_ref[start : start + 3], pad_token_id=PAD)
        policy, _ = batch_logps(model, batch, chunk_size=4)
        assert policy.requires_grad
        margin = (policy - batch["ref_logps"]).detach()
        assert (margin[~batch["mask"]] == 0).all()  # missing responses: 0 in both
        # Identical float32 operations in the same order (CPU): agreement to float32 rounding at worst.
        assert margin.abs().max().item() <= 1e-6
        dpo_first = -torch.nn.functional.logsigmoid(margin[:, 0] - margin[:, -1])
        assert torch.allclose(dpo_first, torch.full_like(dpo_first, math.log(2)), atol=1e-6)


def test_attach_ref_logps_list_and_datasets():
    data = dataset(n=4)
    values = [[-1.0 * (i + k) for k in range(len(r["response_ids"]))] for i, r in enumerate(data)]
    rows = attach_ref_logps(data, values)
    assert [r["ref_logps"] for r in rows] == values and "ref_logps" not in data[0]
    batch = collate_responses(rows, pad_token_id=PAD)
    k_max = batch["mask"].shape[1]
    assert batch["ref_logps"].tolist() == [v + [0.0] * (k_max - len(v)) for v in values]

    datasets = pytest.importorskip("datasets")
    ds = attach_ref_logps(datasets.Dataset.from_list(data), values)
    ds = attach_ref_logps(ds, [[x - 1 for x in v] for v in values])  # replaces the column
    assert ds["ref_logps"] == [[x - 1 for x in v] for v in values]
    from_ds = collate_responses([ds[i] for i in range(len(ds))], pad_token_id=PAD)
    assert torch.equal(from_ds["ref_logps"], batch["ref_logps"] - from_ds["mask"].float())

    with pytest.raises(ValueError, match="row 1"):
        attach_ref_logps(data, [values[0], values[1] + [0.0], values[2], values[3]])
    with pytest.raises(ValueError, match="rows"):
        attach_ref_logps(data, values[:-1])


def test_compute_on_datasets_dataset_and_dtype_check(tmp_path):
    datasets = pytest.importorskip("datasets")
    model = tiny_llama()
    data = dataset(n=5)
    from_list = compute_reference_logps(model, data, batch_size=2, pad_token_id=PAD, show_progress=False)
    from_ds = compute_reference_logps(model, datasets.Dataset.from_list(data), batch_size=2, pad_token_id=PAD,
                                      show_progress=False, dtype="float32")
    assert from_ds == from_list
    with pytest.raises(ValueError, match="dtype"):
        compute_reference_logps(model, data, batch_size=2, pad_token_id=PAD, dtype=torch.bfloat16,
                                show_progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        compute_reference_logps(model, data, batch_size=0, pad_token_id=PAD, show_progress=False)


# ---------------------------------------------------------------------------------------------------- PEFT


def test_reference_with_adapters_disabled(tmp_path):
    peft = pytest.importorskip("peft")
    data = dataset(n=5)
    base = tiny_llama(seed=3)
    base_ref = compute_reference_logps(base, data, batch_size=2, pad_token_id=PAD, show_progress=False)
    base_fp = model_fingerprint(base)

    # init_lora_weights=False: random non-zero adapters, so the adapted model really differs from the base.
    policy = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    adapted = compute_reference_logps(policy, data, batch_size=2, pad_token_id=PAD, show_progress=False)
    assert max(abs(a - b) for ra, rb in zip(adapted, base_ref) for a, b in zip(ra, rb)) > 1e-3

    ref = reference_logps_with_adapters_disabled(policy, data, batch_size=2, pad_token_id=PAD,
                                                 show_progress=False, cache_dir=tmp_path)
    assert ref == base_ref  # same base weights, same operations
    # Adapters are back on afterwards.
    assert compute_reference_logps(policy, data, batch_size=2, pad_token_id=PAD, show_progress=False) == adapted
    # The fingerprint ignores adapter weights and LoRA's renaming, so the cache is shared with the plain base model.
    assert model_fingerprint(policy) == base_fp

    with pytest.raises(ValueError, match="PeftModel"):
        reference_logps_with_adapters_disabled(tiny_llama(), data, batch_size=2, pad_token_id=PAD)


def test_model_fingerprint_of_a_tensor_above_2_to_the_24_entries():
    """An embedding of 32000 x 768 (> 2^24 entries, Llama-2's vocabulary) once crashed the fingerprint: a float32
    linspace rounded the last index up past the end. The last entry must be sampled (its change is seen)."""
    model = tiny_llama(vocab_size=2**24 // 32 + 1)  # embedding and head: 2^24 + 32 entries each
    before = model_fingerprint(model)
    with torch.no_grad():
        model.lm_head.weight.view(-1)[-1] += 1.0
    assert model_fingerprint(model) != before

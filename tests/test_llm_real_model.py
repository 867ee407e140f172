"""Training the real pretrained SmolLM2-135M-Instruct (dequantised Q4_1) by its registry name, on CPU.

``python -m nca_lab.llm.train --model smollm2-135m-instruct`` with LoRA and with full fine-tuning: the step-1 loss
is its closed form at π_θ = π_ref (ln 2 for ``dpo``, 2 ln 2 for ``nca`` at K = 2, ln K for ``infonca``), the loss
falls over a few steps on a fixed batch, the reference is the same weights with the adapters disabled (the
online reference equals the cached one), and the adapters save, reload and merge.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from nca_lab.llm.train import main

pytestmark = pytest.mark.slow  # a 135M model on 2 CPU cores: ~10 s per short run

SYSTEM = {"role": "system", "content": "You are a careful calculator. End with 'Answer: N'."}


def chat_rows(k: int) -> list[dict]:
    """Two conversational rows (system + user message list) with K scored responses as assistant messages."""
    rows = []
    for a, b in ((17, 25), (8, 9)):
        candidates = [f"{a} + {b} = {a + b}.\nAnswer: {a + b}", f"Answer: {a + b + 1}", f"{a + b}",
                      f"I think it is {a * b}."][:k]
        rows.append({"prompt": [SYSTEM, {"role": "user", "content": f"What is {a} + {b}?"}],
                     "responses": [{"role": "assistant", "content": c} for c in candidates],
                     "rewards": [1.0, 0.0, 0.5, 0.0][:k]})
    return rows


def run(tmp_path, name, loss, k, *flags, steps=3, lr="5e-3"):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(k)))
    out = tmp_path / name
    argv = ["--model", "smollm2-135m-instruct", "--data", str(data), "--output-dir", str(out), "--loss", loss,
            "--batch-size", "2", "--max-steps", str(steps), "--lr", lr, "--logging-steps", "1",
            "--warmup-ratio", "0", "--lr-scheduler", "constant", "--save-strategy", "no", "--beta", "0.1", *flags]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return out, metrics, [h["loss"] for h in metrics["log_history"] if "loss" in h]


# the closed forms at π_θ = π_ref; float32 log-probs of ~40-token responses from identical forward passes
CLOSED_FORM = {("dpo", 2): math.log(2), ("nca", 2): 2 * math.log(2), ("infonca", 4): math.log(4)}


@pytest.mark.parametrize("loss,k", list(CLOSED_FORM))
def test_lora_step_one_is_the_closed_form_and_the_loss_falls(real_model_dir, tmp_path, loss, k):
    out, metrics, losses = run(tmp_path, loss, loss, k, "--lora")
    # the first logged loss is computed before any update: policy = reference exactly (LoRA's B = 0)
    assert losses[0] == pytest.approx(CLOSED_FORM[(loss, k)], abs=1e-4)
    assert losses[-1] < losses[0] - 1e-3  # one fixed batch of 2 prompts: every step descends it
    assert metrics["model"]["given"] == "smollm2-135m-instruct"
    assert "dequantised Q4_1" in metrics["model"]["packaged"]["provenance"]


def test_online_reference_is_the_policy_with_adapters_disabled(real_model_dir, tmp_path):
    """--ref-mode online with --lora computes the reference in each step by the same weights with the adapters
    off (no copy): the loss trajectory equals the cached reference's."""
    _, _, cached = run(tmp_path, "cached", "dpo", 2, "--lora")
    _, _, online = run(tmp_path, "online", "dpo", 2, "--lora", "--ref-mode", "online")
    # same float32 forward passes, batch composition and order; only when the reference is computed differs
    assert online == pytest.approx(cached, abs=1e-5)


def test_adapters_save_reload_and_merge(real_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = run(tmp_path, "lora", "dpo", 2, "--lora")
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([SYSTEM, {"role": "user", "content": "What is 17 + 25?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
    adapted = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        adapted_logits = adapted(ids).logits
        merged_logits = adapted.merge_and_unload()(ids).logits
    assert (adapted_logits - base_logits).abs().max() > 1e-2  # three steps at lr 5e-3 moved the policy
    # merging folds B·A into the weights: the same function up to float32 summation order
    assert (merged_logits - adapted_logits).abs().max() < 1e-3


def test_full_fine_tuning(real_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out, metrics, losses = run(tmp_path, "full", "dpo", 2, steps=2, lr="1e-5")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert losses[1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), base.parameters()))
    assert moved > 0

"""The LLM trainer (nca_lab.llm.train / trainer / metrics): step-0 closed forms, every loss family learns,
resume ends where an uninterrupted run ends, metrics are what their names say.

Every run loads a tiny Llama (hidden 32, 2 layers) and the tiny tokenizer saved with ``save_pretrained`` and
passed by path (the code path a hub id takes), on CPU, with ``dataloader_num_workers=0``.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from nca_lab.llm.demo import save_demo_model
from nca_lab.llm.metrics import MetricAccumulator, batch_metric_sums
from nca_lab.llm.train import main
from nca_lab.llm.trainer import disable_dropout

WORDS = "the answer is five seven nine two plus three a reward model scores each response higher better".split()


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def scored_rows(n: int, ks=(4,), seed: int = 0) -> list[dict]:
    """Generic-schema rows with K drawn from ``ks`` and distinct rewards 4 apart (CLHA's min_gap = 3 passes)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = ks[i % len(ks)]
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(k)]
        rewards = [4.0 * j for j in range(k)]
        rng.shuffle(rewards)
        rows.append({"prompt": f"Question {i}: what is {i} plus {i}?", "responses": responses, "rewards": rewards})
    return rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_demo_model(tmp_path_factory.mktemp("tiny_llama"), seed=0)


def train(tmp_path, model_dir, data, *flags) -> dict:
    out = tmp_path / "run"
    argv = ["--model", model_dir, "--data", data, "--output-dir", str(out), "--logging-steps", "1",
            "--save-steps", "1000", "--warmup-ratio", "0", "--lr-scheduler", "constant", *flags]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def train_losses(metrics: dict) -> list[float]:
    return [h["loss"] for h in metrics["log_history"] if "loss" in h]


# ------------------------------------------------------------------------------------------- step 0


@pytest.mark.parametrize("loss, expected", [
    ("dpo", lambda ks: math.log(2)),
    ("nca", lambda ks: 2 * math.log(2)),
    ("nca_pair", lambda ks: 2 * math.log(2)),
    ("infonca", lambda ks: sum(math.log(k) for k in ks) / len(ks)),  # ln K per prompt, averaged
])
def test_first_loss_is_closed_form_at_policy_equal_reference(tmp_path, model_dir, loss, expected):
    # Ragged K (2, 3, 4, 4): masked response slots must not move the value. One batch holds all 4 prompts,
    # so the first logged loss (computed before the first update) is the batch mean of the closed form.
    ks = (2, 3, 4, 4)
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4, ks=ks))
    m = train(tmp_path, model_dir, data, "--loss", loss, "--batch-size", "4", "--max-steps", "1", "--beta", "0.5")
    first = m["log_history"][0]
    # Tolerance: the reference pass batches rows in dataset order, the training batch in shuffled order, so
    # padding differs; float32 log-probs of ~20-token sequences then agree to ~1e-6 nats, times beta = 0.5.
    assert first["loss"] == pytest.approx(expected(ks), abs=1e-5)
    # At pi_theta = pi_ref every implicit reward is 0 (up to the same rounding).
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logratio/mean"):
        assert abs(first[name]) < 1e-5, name
    assert first["rewards/accuracies"] == 0.0  # strict ">": ties at r = 0 are not accurate (as in TRL)


def test_bf16_mixed_precision_and_epochs(tmp_path, model_dir):
    # --bf16 on CPU: bf16 autocast for policy and reference alike, float32 master weights. --epochs 2 over 6
    # prompts at batch 4 is 2 optimizer steps per epoch (the last batch holds 2 prompts), 4 in all.
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(6, ks=(4, 3), seed=2))
    m = train(tmp_path, model_dir, data, "--loss", "dpo", "--batch-size", "4", "--epochs", "2", "--bf16",
              "--beta", "0.5")
    assert len(train_losses(m)) == 4 and m["log_history"][-1]["epoch"] == pytest.approx(2.0)
    # Step 0 under autocast: the reference pass ran under the same autocast, so the first loss is ln 2 up to
    # rounding (observed: 2e-9). The training batch is shuffled and padded differently from the reference pass,
    # and bf16 products carry ~3 significant digits, so the bound allows 1e-3 (accumulation stays float32).
    assert train_losses(m)[0] == pytest.approx(math.log(2), abs=1e-3)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())  # the saved (master) weights stay float32


# ------------------------------------------------------------------------------------------- learning

LOSS_FAMILIES = ["infonca", "nca", "nca_pair", "dpo", "cdpo", "rdpo", "hinge", "ipo", "cpl", "simpo", "pro", "rrhf",
                 "clha", "sft", "nca+0.1*sft"]


@pytest.mark.parametrize("loss", LOSS_FAMILIES)
def test_short_run_lowers_training_loss(tmp_path, model_dir, loss):
    # A fixed mini-batch (4 prompts, batch size 4: every step sees the same data) with a large learning rate:
    # the training loss must go down. Registry defaults for every hyperparameter, except beta = 0.5 for the
    # reference-based losses so that 6 steps move the implicit rewards visibly (beta = 0.01 would too, by ~1e-3).
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4, ks=(4, 3, 4, 2), seed=1))
    flags = ["--loss", loss, "--batch-size", "4", "--max-steps", "6", "--lr", "1e-2"]
    if loss in ("infonca", "nca", "nca_pair", "dpo", "cdpo", "rdpo", "hinge", "nca+0.1*sft"):
        flags += ["--beta", "0.5"]
    losses = train_losses(train(tmp_path, model_dir, data, *flags))
    assert len(losses) == 6
    assert all(math.isfinite(v) for v in losses)
    # Decrease by more than 1 % of the start: far above float noise, within reach of 6 Adam steps.
    assert losses[-1] < losses[0] - 0.01 * abs(losses[0]), losses


def test_reference_free_loss_logs_policy_metrics_only(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    m = train(tmp_path, model_dir, data, "--loss", "simpo", "--max-steps", "1")
    first = m["log_history"][0]
    assert "logps/chosen" in first and "logps/rejected" in first
    assert not any(k.startswith("rewards/") or k.startswith("logratio") for k in first)
    assert not (tmp_path / "run" / "ref_cache").exists()  # no reference pass for a reference-free loss


# ------------------------------------------------------------------------------------------- resume


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resume_after_interruption_ends_where_uninterrupted_run_ends(tmp_path, model_dir):
    # 16 prompts, batch 4: 4 steps per epoch; 6 steps cross an epoch boundary, and the interruption at step 3
    # falls mid-epoch, so resuming must skip the batches already seen and keep the shuffled order.
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(16, ks=(4, 3), seed=2))
    common = ["--model", model_dir, "--data", data, "--loss", "nca", "--beta", "0.5", "--lr", "5e-3",
              "--batch-size", "4", "--max-steps", "6", "--save-steps", "3", "--logging-steps", "1",
              "--warmup-ratio", "0.2", "--lr-scheduler", "cosine", "--seed", "3"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(common + ["--output-dir", str(full)]) == 0
    # Interrupted: configured for 6 steps (same schedule), stopped after 3 with checkpoint-3 written.
    assert main(common + ["--output-dir", str(part), "--stop-after-steps", "3"]) == 0
    assert (part / "checkpoint-3").is_dir()
    assert json.loads((part / "metrics.json").read_text())["throughput"]["steps"] == 3
    assert main(common + ["--output-dir", str(part), "--resume"]) == 0

    m_full = json.loads((full / "metrics.json").read_text())
    m_part = json.loads((part / "metrics.json").read_text())
    assert m_part["throughput"]["steps"] == 6
    resumed = {h["step"]: h["loss"] for h in m_part["log_history"] if "loss" in h}
    uninterrupted = {h["step"]: h["loss"] for h in m_full["log_history"] if "loss" in h}
    # The resumed run's history is the checkpoint's (steps 1-3) continued by the steps it ran (4-6).
    assert sorted(resumed) == sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]
    for step in resumed:
        # Same data order, RNG, optimizer and scheduler state: identical arithmetic on CPU up to rounding.
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-6)
    w_full, w_part = _weights(full), _weights(part)
    assert w_full.keys() == w_part.keys()
    for name in w_full:
        torch.testing.assert_close(w_part[name], w_full[name], rtol=0, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------- metrics


def test_batch_metric_sums_match_definitions():
    policy = torch.tensor([[-1.0, -2.0, -3.0], [-5.0, -1.0, 0.0]])
    ref = torch.tensor([[-2.0, -2.0, -2.0], [-1.0, -1.0, 7.0]])
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # row 1: the NaN-free masked slot has R = 9
    m = batch_metric_sums(policy, ref, rewards, mask, beta=0.5)
    mean = {k: float(s / c) for k, (s, c) in m.items()}
    # row 0: best = 0 (R 3), worst = 1 (R 1); r = 0.5*(1, 0, -1). row 1 (valid 0, 1): best = 1, worst = 0;
    # r = 0.5*(-4, 0).
    assert mean["rewards/chosen"] == pytest.approx((0.5 + 0.0) / 2)
    assert mean["rewards/rejected"] == pytest.approx((0.0 - 2.0) / 2)
    assert mean["rewards/margins"] == pytest.approx((0.5 + 2.0) / 2)
    assert mean["rewards/accuracies"] == pytest.approx(1.0)  # both bests beat every other valid response
    assert mean["logps/chosen"] == pytest.approx((-1.0 - 1.0) / 2)
    assert mean["logps/rejected"] == pytest.approx((-2.0 - 5.0) / 2)
    assert mean["logratio/mean"] == pytest.approx((1 + 0 - 1 - 4 + 0) / 5)  # over the 5 valid responses
    # Accuracy needs the best above *every* other response: make row 0's middle response win.
    m2 = batch_metric_sums(torch.tensor([[-1.0, -2.0, 0.0]]), ref[:1], rewards[:1], mask[:1], beta=0.5)
    assert float(m2["rewards/accuracies"][0]) == 0.0


def test_metric_accumulator_weights_by_count_and_resets():
    acc = MetricAccumulator()
    acc.add({"x": (torch.tensor(6.0), torch.tensor(3.0))})  # mean 2 over 3 prompts
    acc.add({"x": (torch.tensor(1.0), torch.tensor(1.0))})  # mean 1 over 1 prompt
    assert acc.reduce_and_reset() == {"x": pytest.approx(7.0 / 4.0)}
    assert acc.reduce_and_reset() == {}
    acc.add({"x": (torch.tensor(2.0), torch.tensor(1.0))})
    # reduce_sum is the cross-process all-reduce; doubling stands in for two identical processes.
    assert acc.reduce_and_reset(lambda t: 2 * t) == {"x": pytest.approx(2.0)}


def test_disable_dropout_makes_train_mode_deterministic():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5))
    ids = torch.randint(0, 50, (2, 7))
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)  # attention dropout 0.5 is active in train mode
    assert disable_dropout(model) > 0
    assert model.config.attention_dropout == 0.0
    model.train()
    a, b = model(ids).logits, model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.eval()
    torch.testing.assert_close(model(ids).logits, a, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- LoRA


def test_lora_reference_is_base_model_and_adapters_train(tmp_path, model_dir):
    pytest.importorskip("peft")
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4, ks=(2, 4), seed=4))
    m = train(tmp_path, model_dir, data, "--loss", "dpo", "--lora", "--lora-r", "4", "--gradient-checkpointing",
              "--batch-size", "4", "--max-steps", "6", "--lr", "1e-2", "--beta", "0.5")
    losses = train_losses(m)
    # LoRA's B = 0 at initialisation: the policy is the base model = the reference, so DPO starts at ln 2.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1] < losses[0] - 0.01
    out = tmp_path / "run"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()  # the base weights stay where --model points


# ------------------------------------------------------------------------------------------- speed switches


def test_speed_switches_do_not_change_the_numbers(tmp_path, model_dir):
    """Padding-free packing, the shared-prompt layout, the online reference (frozen copy, TRL's default),
    full-vocabulary logits and the in-step sync checks are speed/memory switches only: the loss trajectory of a 4-step run is the default's.
    Ragged K (2, 3, 4) and responses of different lengths, so padding and missing slots both occur."""
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(12, ks=(2, 3, 4)))
    common = ("--loss", "nca", "--batch-size", "3", "--max-steps", "4", "--beta", "0.5", "--lr", "1e-3",
              "--save-strategy", "no")
    runs = {}
    for name, flags in {"default": (), "packed": ("--packed",), "shared_prompt": ("--shared-prompt",),
                        "online": ("--ref-mode", "online"),
                        "full_logits": ("--full-logits",), "sync_checks": ("--sync-checks",)}.items():
        sub = tmp_path / name
        sub.mkdir()
        m = train(sub, model_dir, data, *common, *flags)
        runs[name] = (train_losses(m), m["throughput"]["tokens"])
    base, tokens = runs["default"]
    assert len(base) == 4 and len(set(base)) == 4  # the weights move (different batches: no monotonicity)
    for name, (losses, n_tokens) in runs.items():
        # float32 everywhere; the layouts differ only in reduction order (packed attention over one row,
        # full vs chunked head), ~1e-6 relative per log-prob, amplified mildly by 3 Adam steps at lr 1e-3.
        assert losses == pytest.approx(base, rel=1e-4, abs=1e-5), name
        # dataset tokens: prompt + response per sequence, counted from the collator whatever the layout
        assert n_tokens == tokens, name
    # the count is the data's: 4 steps x 3 prompts = all 12 rows, once
    from nca_lab.llm.tokenization import tokenize_dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    from nca_lab.llm.data import load_records

    records, _ = load_records(data)
    ds, _ = tokenize_dataset(records, tok, max_length=1024)
    assert tokens == sum(len(r["prompt_ids"]) * len(r["response_ids"]) + sum(map(len, r["response_ids"])) for r in ds)


def test_refused_combinations(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    base = ["--model", model_dir, "--data", data, "--output-dir", str(tmp_path / "o")]
    assert main(base + ["--resume", "--save-strategy", "no"]) == 2
    assert main(base + ["--packed", "--shared-prompt"]) == 2
    # eager attention adds a boolean 4D mask as numbers: the start-up check refuses the shared-prompt layout
    assert main(base + ["--shared-prompt", "--attn-implementation", "eager"]) == 2

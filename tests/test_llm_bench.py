"""The benchmark (``python -m nca_lab.llm.bench``) at tiny scale on CPU: every configuration runs, the record has
the keys the README quotes, its numbers are consistent with their definitions, and the loss-agreement check
passes for a like-for-like comparison and fails when TRL is given a different beta. Timings themselves are not
asserted (a unit test is no benchmark)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("trl")

from nca_lab.llm.bench.agreement import check_loss_agreement  # noqa: E402
from nca_lab.llm.bench.configs import LOSS_TOLERANCE, BenchConfig  # noqa: E402
from nca_lab.llm.bench.profiling import profile_group  # noqa: E402
from nca_lab.llm.bench.rows import best_rest_pairs, untied_rows  # noqa: E402
from nca_lab.llm.bench.run import main as bench_main, run_bench  # noqa: E402
from nca_lab.llm.scale_run.run import build_model_and_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(size="tiny", steps=3, batch_size=2, seq_len=64, ablations=(
        "packing flipped", "online reference (precompute off)", "full logits (chunked head off)",
        "sync checks in the step (sync-free off)", "precision flipped",
        "shared prompt (prompt once per K responses)"), profile_steps=2)
    rec = run_bench(cfg, out, command="pytest", progress=False)
    return out, rec


def test_record_has_every_configuration_and_the_quoted_keys(tiny_bench):
    out, rec = tiny_bench
    assert json.loads((out / "bench.json").read_text()) == rec
    for key in ("device", "speedup_tokens_per_s_vs_trl", "memory_ratio_vs_trl", "mfu", "loss_agreement",
                "speedup_k4_pass_vs_trl", "versions"):
        assert key in rec
    assert rec["versions"]["trl"] is not None and rec["device_kind"] == "cpu"
    # CPU: no GPU memory and no GPU peak, so these are honestly absent rather than invented
    assert rec["memory_ratio_vs_trl"] is None and rec["mfu"] is None
    names = set(rec["k2"])
    assert {"nca_lab dpo", "nca_lab nca_pair"} <= names
    assert sum(n.startswith("TRL ") for n in names) == 4  # sigmoid/nca_pair x precompute off/on
    assert sum(n.startswith("nca_lab dpo, ") for n in names) == 6  # the six ablations asked for
    assert "nca_lab dpo, bf16 mixed precision on" in names  # CPU base is fp32: the flip turns bf16 on
    assert len(rec["k4"]) == 4
    # the headline ratio: nca_lab's best dpo configuration at TRL's precision over TRL's best configuration
    best, trl_best = rec["nca_lab_best_k2"], rec["trl_best_k2"]
    assert best.startswith("nca_lab dpo") and "bf16" not in best and trl_best.startswith("TRL ")
    assert rec["k2"][best]["tokens_per_s"] == max(v["tokens_per_s"] for k, v in rec["k2"].items()
                                                  if k.startswith("nca_lab dpo") and "bf16" not in k)
    assert rec["speedup_tokens_per_s_vs_trl"] == pytest.approx(
        rec["k2"][best]["tokens_per_s"] / rec["k2"][trl_best]["tokens_per_s"], abs=1e-3)
    md = (out / "bench.md").read_text()
    for name in names:
        assert name in md


def test_rates_follow_their_definitions(tiny_bench):
    _, rec = tiny_bench
    tokens, prompts = rec["data"]["k2_tokens"], rec["data"]["k2_prompts"]
    for name, r in rec["k2"].items():
        assert r["tokens"] == tokens and r["steps"] == 3, name
        # rates come from the unrounded seconds, recorded to 3 decimals: bracket the rounding
        lo, hi = r["seconds"] + 5e-4, max(r["seconds"] - 5e-4, 1e-9)
        assert tokens / lo - 0.05 <= r["tokens_per_s"] <= tokens / hi + 0.05, name
        assert prompts / lo - 5e-4 <= r["pairs_per_s"] <= prompts / hi + 5e-4, name
        assert r["seconds"] == pytest.approx(r["reference_s"] + r["train_s"], abs=1.5e-3)
    # precomputing TRL runs spend reference time, the others none
    for name, r in rec["k2"].items():
        if name.startswith("TRL "):
            assert (r["reference_s"] > 0) == r["trl_config"]["precompute_ref_log_probs"], name
    assert rec["k2"]["nca_lab dpo, online reference (precompute off)"]["reference_s"] == 0
    # nca_lab's token counter (from its collator) equals the definition computed from the data
    assert rec["k2"]["nca_lab dpo"]["tokens"] == tokens
    # K = 4: 3 best-vs-rest pairs per prompt (rewards are untied), TRL sees each prompt 3 times
    d = rec["data"]
    assert d["k4_pairs_trl"] == 3 * d["k4_prompts"] and d["k4_tokens_trl"] > d["k4_tokens_nca_lab"]


def test_step0_losses_are_the_closed_forms(tiny_bench):
    _, rec = tiny_bench
    # the first logged loss of every run is its value at pi_theta = pi_ref (logging_steps = steps: the mean over
    # the run, so only the agreement runs, logged every step, pin the step-0 value)
    for p in rec["loss_agreement"]["pairs"]:
        closed = math.log(2) if p["nca_lab"] == "dpo" else 2 * math.log(2)
        assert p["nca_lab_losses"][0] == pytest.approx(closed, abs=1e-5)
        assert p["trl_losses"][0] == pytest.approx(closed, abs=1e-5)


def test_loss_agreement_passes_like_for_like_and_fails_otherwise(tiny_bench, tmp_path):
    out, rec = tiny_bench
    ag = rec["loss_agreement"]
    assert ag["agree"] and ag["token_sequences_identical"]
    assert all(p["max_abs_diff"] <= LOSS_TOLERANCE for p in ag["pairs"])
    # the same check with TRL at twice the beta must fail: the step-2 losses then differ
    rows = [json.loads(line) for line in (out / "data_k2.jsonl").read_text().splitlines()]
    bad = check_loss_agreement(str(out / "model"), str(out / "data_k2.jsonl"), best_rest_pairs(rows),
                               tmp_path, steps=2, batch_size=2, seq_len=64, lr=1e-3, beta=0.1, seed=0,
                               trl_beta=0.2)
    assert not bad["agree"] and bad["token_sequences_identical"]
    assert all(p["max_abs_diff"] > LOSS_TOLERANCE for p in bad["pairs"])


def test_best_rest_pairs_and_untied_rows():
    rows = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "rewards": [0.2, 0.9, 0.1, 0.5]}]
    assert best_rest_pairs(rows) == [{"prompt": "p", "chosen": "b", "rejected": r} for r in ("a", "c", "d")]
    _, tok = build_model_and_tokenizer("tiny")
    got = untied_rows(tok, 7, 4, 64, seed=3)
    assert len(got) == 7 and all(len(set(r["rewards"])) == 4 for r in got)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="ablations: unknown"):
        run_bench(BenchConfig(size="tiny", ablations=("warp drive",)), tmp_path)
    assert bench_main(["--out", str(tmp_path), "--size", "tiny", "--ablations", "warp drive"]) == 2


def test_partial_record_and_profile(tiny_bench):
    out, rec = tiny_bench
    partial = json.loads((out / "bench_partial.json").read_text())
    assert partial["k2"] == rec["k2"] and partial["k4"] == rec["k4"]  # the last partial write holds every run
    prof = rec["profile"]
    assert prof["steps"] == 2 and prof["configuration"].startswith("nca_lab dpo")
    assert prof["time"] == "self CPU time of operators" and prof["total_ms"] > 0
    assert sum(prof["groups"].values()) == pytest.approx(1.0, abs=1e-3)
    assert prof["groups"]["matmul (linear layers, LM head)"] > 0 and prof["groups"]["optimizer"] > 0
    shares = [t["share"] for t in prof["top"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-3
    assert "Self CPU" in (out / "profile.txt").read_text()
    assert "## Profile: nca_lab dpo" in (out / "bench.md").read_text()


@pytest.mark.parametrize("name,group", [
    ("aten::addmm", "matmul (linear layers, LM head)"), ("aten::mm", "matmul (linear layers, LM head)"),
    ("aten::_log_softmax_backward_data", "log-softmax / gather (loss head)"),
    ("aten::_scaled_dot_product_flash_attention", "attention"), ("aten::_softmax", "attention"),
    ("aten::_fused_adamw_", "optimizer"), ("Optimizer.step#AdamW.step", "optimizer"),
    ("aten::copy_", "copies, casts, views"), ("aten::as_strided", "copies, casts, views"),
    ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "data loading"), ("aten::sum", "normalisation and elementwise"),
    ("aten::mul", "normalisation and elementwise"), ("aten::embedding_dense_backward", "other"),
])
def test_profile_groups(name, group):
    assert profile_group(name) == group


def test_a_pretrained_model_instead_of_a_size(tmp_path):
    """``--model`` (a folder, hub id or packaged name) replaces ``--size``: the weights are linked, the tokenizer
    is saved without its chat template (plain-text rows keep their generated lengths), the record names it."""
    from nca_lab.llm.demo import save_demo_model
    from nca_lab.llm.tokenization import CHATML_TEMPLATE
    from transformers import AutoTokenizer

    folder = save_demo_model(tmp_path / "pretrained", seed=0)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHATML_TEMPLATE  # a chat model: the benchmark must not render its rows with it
    tok.save_pretrained(folder)
    out = tmp_path / "bench"
    assert bench_main(["--model", str(folder), "--out", str(out), "--steps", "1", "--batch-size", "2",
                       "--seq-len", "64", "--ablations", "", "--no-trl"]) == 0
    rec = json.loads((out / "bench.json").read_text())
    assert rec["model"]["pretrained"] == str(folder) and rec["model"]["size"] is None
    assert (out / "model" / "model.safetensors").is_symlink()
    assert AutoTokenizer.from_pretrained(out / "model").chat_template is None
    assert bench_main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "b2"), "--no-trl"]) == 2

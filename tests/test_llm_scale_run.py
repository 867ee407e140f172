"""``python -m nca_lab.llm.scale_run``: the tiny size end to end, the parameter-count formula, the generated data.

The 100m run itself is recorded in ``llm/scale/`` (minutes on CPU); here the same code path runs at the tiny
size: build + save the model, generate the data, train through ``nca_lab.llm.train``, write the record.
"""

import json
import math

import pytest

from nca_lab.llm.scale_run import run as sr

# Every key the record promises (llm/scale/README.md documents them).
TOP_KEYS = {"device_kind", "device", "started_utc", "load_average_start", "load_average_end", "command",
            "train_command", "train_command_note", "versions", "model", "dtype", "loss", "steps", "steps_requested",
            "k", "batch_size", "seq_len", "n_prompts", "tokens", "seconds", "throughput", "peak_memory", "loss_log",
            "total_wall_s"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "run"
    argv = ["--size", "tiny", "--out", str(out), "--steps", "3", "--batch-size", "2", "--k", "3", "--seq-len", "64"]
    assert sr.main(argv) == 0
    return out, json.loads((out / "scale_run.json").read_text())


def test_record_has_every_key_and_describes_this_run(tiny_run):
    _, rec = tiny_run
    assert set(rec) == TOP_KEYS
    assert rec["device_kind"] in ("cpu", "gpu")
    assert rec["device"].startswith("cpu: ") == (rec["device_kind"] == "cpu")
    assert rec["steps"] == rec["steps_requested"] == 3
    assert (rec["k"], rec["batch_size"], rec["seq_len"], rec["n_prompts"]) == (3, 2, 64, 6)
    assert rec["dtype"] == "float32"
    assert rec["command"].endswith("--size tiny --out " + rec["train_command"].split("--model ")[1].split("/model")[0]
                                   + " --steps 3 --batch-size 2 --k 3 --seq-len 64")
    for key in ("torch", "transformers"):
        assert rec["versions"][key]
    assert len(rec["load_average_start"]) == 3
    assert rec["peak_memory"]["bytes"] > 0 and rec["peak_memory"]["kind"]


def test_parameter_count_matches_saved_model_and_formula(tiny_run):
    from transformers import AutoModelForCausalLM

    out, rec = tiny_run
    saved = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    n = sum(p.numel() for p in saved.parameters())
    assert rec["model"]["parameter_count"] == n == rec["model"]["parameter_count_formula"]
    assert saved.config.hidden_size == sr.SIZES["tiny"]["hidden_size"] == rec["model"]["hidden_size"]


def test_losses_finite_and_step0_is_the_closed_form(tiny_run):
    _, rec = tiny_run
    log = rec["loss_log"]
    assert len(log["per_step"]) == 3 and all(math.isfinite(x) for x in log["per_step"])
    # NCA at pi_theta = pi_ref: every implicit reward is 0, loss = 2 ln 2; float32 forward passes agree to ~1e-7.
    assert log["step0_closed_form"] == pytest.approx(2 * math.log(2))
    assert log["first"] == pytest.approx(log["step0_closed_form"], abs=1e-5)


def test_token_accounting_agrees_with_the_trainer_and_timings_are_consistent(tiny_run):
    _, rec = tiny_run
    tok, sec, tp = rec["tokens"], rec["seconds"], rec["throughput"]
    # Every prompt has K responses, so the Trainer's attention-mask count equals prompt-per-response + responses.
    assert tok["trainer_num_input_tokens_seen"] == tok["total"] == sum(tok["per_step_from_trainer"])
    assert tok["sequence_length_max"] <= rec["seq_len"]
    assert tok["per_step_mean"] == pytest.approx(tok["total"] / 3, abs=0.05)
    assert sec["training_loop"] > 0 and sec["reference_precompute"] > 0
    # seconds are recorded to 3 decimals, tokens/s (from the unrounded seconds) to 1: bracket the rounding.
    lo, hi = tok["total"] / (sec["training_loop"] + 5e-4), tok["total"] / max(sec["training_loop"] - 5e-4, 1e-9)
    assert lo - 0.05 <= tp["tokens_per_s_training_loop"] <= hi + 0.05
    assert tp["tokens_per_s_including_reference"] < tp["tokens_per_s_training_loop"]


@pytest.mark.parametrize("vocab_size, expected", [(None, 134_105_856), (21760, 118_377_216)])
def test_parameter_count_formula_at_100m(vocab_size, expected):
    """The 100m shape without building it: the formula against a meta-device model (no memory)."""
    import torch
    from transformers import LlamaForCausalLM

    from nca_lab.llm.tokenization import build_tiny_tokenizer

    config = sr.model_config("100m", build_tiny_tokenizer(), vocab_size)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    assert n == sr.llama_parameter_count(config) == expected
    assert n >= 100_000_000


def test_generated_rows_fit_seq_len_and_rewards_score_prompt_overlap():
    from nca_lab.llm.tokenization import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rows = sr.generate_rows(tok, n_prompts=20, k=4, seq_len=128, seed=1)
    assert len(rows) == 20
    lengths = []
    for row in rows:
        assert len(row["responses"]) == len(row["rewards"]) == 4
        p = len(tok(row["prompt"])["input_ids"])  # with BOS
        prompt_words = set(row["prompt"].split())
        for text, reward in zip(row["responses"], row["rewards"]):
            n = p + len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            assert n <= 128
            lengths.append(n)
            words = text.split()
            assert reward == pytest.approx(sum(w in prompt_words for w in words) / len(words), abs=1e-6)
    # "around seq-len": the drawn targets lie in [0.6, 1.0]·seq_len; word granularity can undershoot a little.
    assert min(lengths) >= 0.5 * 128 and max(lengths) > 0.9 * 128
    assert sr.generate_rows(tok, 20, 4, 128, seed=1) == rows  # seeded


@pytest.mark.parametrize("argv, fragment", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--k", "1"], "--k must be >= 2"),
    (["--seq-len", "8"], "--seq-len must be >= 32"),
    (["--vocab-size", "100"], "--vocab-size 100 is smaller than the tokenizer's vocabulary"),
])
def test_bad_arguments_exit_2_naming_the_flag(tmp_path, capsys, argv, fragment):
    assert sr.main(["--size", "tiny", "--out", str(tmp_path / "x"), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_non_empty_out_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert sr.main(["--size", "tiny", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err

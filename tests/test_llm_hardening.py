"""Hardening of the trainer (``python -m nca_lab.llm.train``): bad input stops before anything is deleted, a run that
diverges stops and saves no final model, the base model is never overwritten, ``--resume`` refuses a different run
and skips a half-written checkpoint, the reference cache sees any weight change, Ctrl-C saves a checkpoint, and the
output and ``--help`` are readable.

Every run trains the tiny saved Llama of the demo (hidden 32, 2 layers) on a few generic-schema rows, on CPU, for
1-4 steps.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal

import pytest
import torch

from nca_lab.llm.config import build_parser
from nca_lab.llm.demo import save_demo_model
from nca_lab.llm.train import main
from test_llm_train import scored_rows, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_demo_model(tmp_path_factory.mktemp("tiny_llama"), seed=0)


def error_line(capsys) -> str:
    """The single ``error: ...`` line on stderr, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def base_args(model_dir, data, out, *flags) -> list[str]:
    return ["--model", str(model_dir), "--data", data, "--output-dir", str(out), "--loss", "dpo", "--beta", "0.5",
            "--batch-size", "2", "--logging-steps", "1", *flags]


def losses(out) -> list[float]:
    return [h["loss"] for h in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in h]


# ------------------------------------------------------------------------------------------- 5: reference cache key


def test_model_fingerprint_sees_an_edit_of_any_tensor():
    # The fingerprint once hashed 8 evenly spread tensors only: an in-place edit of another one went unnoticed.
    from transformers import LlamaConfig, LlamaForCausalLM

    from nca_lab.llm.reference import model_fingerprint

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2))
    params = list(model.parameters())
    n = len(params)
    old_picks = {round(i * (n - 1) / 7) for i in range(8)}
    unsampled = [i for i in range(n) if i not in old_picks]
    assert unsampled
    before = model_fingerprint(model)
    for i in unsampled:
        with torch.no_grad():
            params[i].view(-1)[0] += 1e-3
        after = model_fingerprint(model)
        assert after != before, i
        before = after


def test_reference_cache_is_not_reused_for_a_model_edited_in_place(tmp_path, model_dir):
    # Same model folder, same data, shared cache: after an in-place edit of one tensor the first DPO loss must still
    # be ln 2 (a stale cache gave 0.6388).
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(2))
    flags = ("--max-steps", "1", "--save-strategy", "no", "--ref-cache-dir", str(tmp_path / "cache"))
    assert main(base_args(folder, data, tmp_path / "a", *flags)) == 0
    weights = load_file(str(folder / "model.safetensors"))
    names = sorted(weights)
    name = next(n for n in names if "layers.0.mlp.down_proj" in n)  # a tensor the sampled fingerprint skipped
    weights[name] = weights[name] * 3.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert main(base_args(folder, data, tmp_path / "b", *flags)) == 0
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert losses(tmp_path / "b")[0] == pytest.approx(math.log(2), abs=1e-5)


# ------------------------------------------------------------------------------------------- 2, 9: arguments, --help


@pytest.mark.parametrize("flags, named", [
    (("--lr", "inf"), "--lr"), (("--lr", "nan"), "--lr"), (("--lr=-1e-3",), "--lr"),
    (("--max-grad-norm=-1",), "--max-grad-norm"), (("--weight-decay=-0.1",), "--weight-decay"),
])
def test_bad_optimiser_values_are_refused_at_parsing(tmp_path, capsys, model_dir, flags, named):
    out = tmp_path / "o"
    assert main(base_args(model_dir, str(tmp_path / "never_read.jsonl"), out, *flags)) == 2
    assert named in error_line(capsys)
    assert not out.exists()


def test_help_gives_every_flag_help_default_and_choices():
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "help" or action.help == "==SUPPRESS==":
            continue
        flag = action.option_strings[0]
        assert action.help and len(action.help) > 10, flag
        assert "default" in action.help.lower(), flag
        for choice in action.choices or ():
            assert choice in action.help, (flag, choice)
    text = parser.format_help()
    assert "(default: 5e-06)" in text and "(choices: precompute, online)" in text


# ------------------------------------------------------------------------------------------- 1: --overwrite


def _nan_reward_data(tmp_path) -> str:
    rows = scored_rows(4)
    rows[2]["rewards"][1] = math.nan
    return write_jsonl(tmp_path / "bad.jsonl", rows)


def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(tmp_path, capsys, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    out = tmp_path / "o"
    assert main(base_args(model_dir, data, out, "--max-steps", "1", "--save-steps", "1")) == 0
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    capsys.readouterr()
    # bad data (a NaN reward), then a model that cannot be loaded: refused, the old checkpoint stays
    assert main(base_args(model_dir, _nan_reward_data(tmp_path), out, "--max-steps", "1", "--overwrite")) == 2
    assert "rewards[1] is NaN" in error_line(capsys)
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "README").write_text("no weights here")
    assert main(base_args(not_a_model, data, out, "--max-steps", "1", "--overwrite")) == 2
    error_line(capsys)
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    # a valid run replaces it
    assert main(base_args(model_dir, data, out, "--max-steps", "2", "--save-steps", "2", "--overwrite")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


# ------------------------------------------------------------------------------------------- 2: divergence


def test_diverging_run_stops_with_an_error_and_saves_no_final_model(tmp_path, capsys, model_dir):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(8))
    out = tmp_path / "o"
    # lr 50: the loss or the gradient norm turns NaN/inf within a few steps
    rc = main(base_args(model_dir, data, out, "--lr", "50", "--max-steps", "8", "--save-steps", "1",
                        "--warmup-ratio", "0", "--lr-scheduler", "constant"))
    line = error_line(capsys)
    assert rc == 1
    assert "diverged" in line and "--lr" in line and "step" in line, line
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    checkpoints = list(out.glob("checkpoint-*"))
    assert len(checkpoints) < 8  # stopped early
    for ckpt in checkpoints:  # whatever was checkpointed is finite
        assert all(torch.isfinite(w).all() for w in load_file(str(ckpt / "model.safetensors")).values()), ckpt


# ------------------------------------------------------------------------------------------- 3, 7: --model checks


def test_output_dir_in_the_model_folder_is_refused(tmp_path, capsys, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    before = (folder / "model.safetensors").read_bytes()
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    for out in (folder, folder / "run"):
        assert main(base_args(folder, data, out, "--max-steps", "1", "--overwrite")) == 2
        line = error_line(capsys)
        assert "--output-dir" in line and "--model" in line, line
    assert (folder / "model.safetensors").read_bytes() == before
    assert not (folder / "run").exists()


def test_missing_local_model_path_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    import time

    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    t0 = time.monotonic()
    for model in (str(tmp_path / "nope"), "./nope", "../nope", "~/surely_not_a_model_dir", "runs/nope"):
        assert main(["--model", model, "--data", data, "--output-dir", str(tmp_path / "o")]) == 2
        line = error_line(capsys)
        assert line.startswith(f"error: --model {model!r}") and "no such" in line, line
    assert time.monotonic() - t0 < 10  # no hub retries
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- 4, 6: --resume


def test_resume_refuses_a_different_run_unless_forced(tmp_path, capsys, model_dir):
    data_path = tmp_path / "d.jsonl"
    data = write_jsonl(data_path, scored_rows(8))
    out = tmp_path / "o"
    common = base_args(model_dir, data, out, "--max-steps", "3", "--save-steps", "1")
    assert main(common + ["--stop-after-steps", "1"]) == 0
    recorded = json.loads((out / "run_config.json").read_text())
    assert recorded["loss"] == "dpo" and recorded["hparams"]["beta"] == 0.5 and recorded["max_responses"] == 4
    capsys.readouterr()
    for flags, named in ((["--beta", "0.3"], "--beta 0.5 -> 0.3"), (["--loss", "ipo"], "--loss 'dpo' -> 'ipo'")):
        assert main(common + ["--resume", *flags]) == 2
        line = error_line(capsys)
        assert named in line and "--resume-force" in line, line
    original = data_path.read_text()
    write_jsonl(data_path, scored_rows(8, seed=7))  # same file name, other content
    assert main(common + ["--resume"]) == 2
    assert "--data content" in error_line(capsys)
    data_path.write_text(original)
    assert main(common + ["--resume", "--beta", "0.3", "--resume-force"]) == 0
    assert "--resume-force: continuing although" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["throughput"]["steps"] == 3


def test_resume_skips_a_half_written_checkpoint(tmp_path, capsys, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(8))
    out = tmp_path / "o"
    common = base_args(model_dir, data, out, "--max-steps", "3", "--save-steps", "1")
    assert main(common + ["--stop-after-steps", "2"]) == 0
    # killed while writing checkpoint-2: the weights are there, the optimizer and trainer_state.json are not
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    capsys.readouterr()
    assert main(common + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-1'} (skipped incomplete: checkpoint-2 (no trainer_state.json))" in printed
    assert json.loads((out / "metrics.json").read_text())["throughput"]["steps"] == 3


def test_resume_with_no_complete_checkpoint_names_the_incomplete_ones(tmp_path, capsys, model_dir):
    out = tmp_path / "o"
    (out / "checkpoint-5").mkdir(parents=True)
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    assert main(base_args(model_dir, data, out, "--resume")) == 2
    line = error_line(capsys)
    assert "no complete checkpoint" in line and "checkpoint-5 (no trainer_state.json)" in line, line


# ------------------------------------------------------------------------------------------- 8: Ctrl-C


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, capsys, model_dir, monkeypatch):
    from nca_lab.llm.trainer import ContrastiveTrainer

    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(8))
    out = tmp_path / "o"
    common = base_args(model_dir, data, out, "--max-steps", "4", "--save-steps", "100")
    original, calls = ContrastiveTrainer.training_step, []

    def training_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 2
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ContrastiveTrainer, "training_step", training_step)
    try:
        rc = main(common)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a raw KeyboardInterrupt")
    assert rc == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted: checkpoint")]
    assert str(out / "checkpoint-2") in line and "--resume" in line, line
    from nca_lab.llm.run_dir import checkpoint_problem

    assert checkpoint_problem(out / "checkpoint-2") is None
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    assert main(common + ["--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["throughput"]["steps"] == 4


# ------------------------------------------------------------------------------------------- 9: output, warm-up


def test_each_log_is_printed_once_and_readably(tmp_path, capsys, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    assert main(base_args(model_dir, data, tmp_path / "o", "--max-steps", "2", "--save-strategy", "no")) == 0
    printed = capsys.readouterr().out
    steps = [line for line in printed.splitlines() if line.startswith("step ")]
    assert len(steps) == 2 and steps[0].startswith("step     1/2 (epoch "), printed
    assert printed.count("rewards/margins") == 2 and "{'loss'" not in printed, printed
    assert "loss 0.6931 | grad_norm " in steps[0]


def test_step_one_trains_with_the_default_warmup(tmp_path, model_dir):
    # Default warm-up (ratio 0.1 of 2 steps: W = 1) and scheduler: step 1 must not run at lr 0.
    data = write_jsonl(tmp_path / "d.jsonl", scored_rows(4))
    out = tmp_path / "o"
    assert main(base_args(model_dir, data, out, "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2",
                          "--save-strategy", "no")) == 0
    logs = [h for h in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in h]
    assert logs[0]["learning_rate"] == pytest.approx(1e-2 / 2)  # lr/(W+1)
    assert logs[1]["loss"] < logs[0]["loss"] - 1e-3  # same batch both steps: step 1 moved the weights


def test_resume_compares_contents_not_paths(tmp_path, model_dir):
    from nca_lab.llm.run_dir import _differences

    stored = {"model": "/old/place", "model_sha256": "a" * 64, "data": "/old/d.jsonl", "data_sha256": "b" * 64,
              "hparams": {"beta": 0.5}}
    moved = dict(stored, model="/new/place", data="/new/d.jsonl")
    assert _differences(stored, moved) == []
    assert _differences(stored, dict(moved, model_sha256="c" * 64)) == ["--model weights (sha256) 'aaaaaaaaaaaa' -> "
                                                                         "'cccccccccccc'"]
    hub = dict(stored, data="org/set", data_sha256=None)  # a hub dataset: no local content, its id decides
    assert _differences(hub, dict(hub, data="org/other")) == ["--data 'org/set' -> 'org/other'"]

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

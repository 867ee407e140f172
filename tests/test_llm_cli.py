"""The CLI ``python -m nca_lab.llm.train``: the demo with no arguments, config files and flags, the metrics log,
and bad input ending in a one-line error with exit code 2 (no traceback)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nca_lab.llm.config import config_from_args
from nca_lab.llm.demo import save_demo_model
from nca_lab.llm.train import main
from nca_lab.losses import LOSSES

REPO = Path(__file__).resolve().parents[1]
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected", "logratio/mean")


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def generic_rows(n=4):
    return [{"prompt": f"What is {i} plus {i}?", "responses": [f"It is {2 * i}.", f"It is {2 * i + 1}.", "No idea."],
             "rewards": [2.0, 1.0, 0.0]} for i in range(n)]


def pairwise_rows(n=4):
    return [{"prompt": f"Say hello {i}.", "chosen": "Hello there!", "rejected": "Go away."} for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_demo_model(tmp_path_factory.mktemp("tiny_llama"), seed=0)


def run_cli(args, tmp_path, timeout=300):
    env = dict(os.environ, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "nca_lab.llm.train", *args], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env, timeout=timeout)


def error_line(capsys) -> str:
    """The single ``error: ...`` line on stderr (progress bars of loading may precede it)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------- real entry point


def test_demo_runs_with_no_arguments(tmp_path):
    # The only flag keeps it short; the output directory then is a fresh temporary one (TMPDIR = tmp_path).
    proc = run_cli(["--max-steps", "10"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "built-in demo" in proc.stdout
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 2  # logging every 5 steps (the demo recipe)
    (metrics_path,) = Path(tmp_path).glob("nca_lab_demo_*/metrics.json")
    m = json.loads(metrics_path.read_text())
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert m["loss"]["name"] == "nca" and m["loss"]["hparams"]["beta"] == 1.0
    assert losses[-1] < losses[0]
    assert m["throughput"]["tokens_per_second"] > 0


def test_bad_data_row_is_one_line_exit_2_without_traceback(tmp_path, model_dir):
    rows = generic_rows(4)
    rows[2]["rewards"] = [1.0, "high", 0.0]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    proc = run_cli(["--model", model_dir, "--data", data, "--output-dir", str(tmp_path / "o")], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "line 3" in last and "rewards" in last, proc.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) == 1


# ------------------------------------------------------------------------------------------- in-process errors


def test_refuses_non_empty_output_dir(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    assert main(["--output-dir", str(out), "--max-steps", "1"]) == 2
    line = error_line(capsys)
    assert "not empty" in line and "--resume" in line and "--overwrite" in line
    assert (out / "something.txt").read_text() == "keep me"


def test_unknown_loss_lists_known_losses(tmp_path, capsys):
    assert main(["--loss", "ncaa", "--output-dir", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert "'ncaa'" in line
    assert all(name in line for name in LOSSES)


def test_unknown_loss_in_combination(tmp_path, capsys):
    assert main(["--loss", "nca+0.1*sftt", "--output-dir", str(tmp_path / "o")]) == 2
    assert "'sftt'" in error_line(capsys)


def test_hyperparameter_the_loss_does_not_take_is_named(tmp_path, capsys, model_dir):
    assert main(["--model", model_dir, "--data", "x.jsonl", "--loss", "dpo", "--alpha", "0.5",
                 "--output-dir", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert "--alpha" in line and "'dpo'" in line and "--beta" in line  # names the flag and what dpo accepts


def test_hyperparameter_out_of_range_is_named(tmp_path, capsys):
    # Range checks are the loss's own; they surface at the first step as a one-line error too.
    assert main(["--loss", "cdpo", "--eps", "0.7", "--max-steps", "1", "--output-dir", str(tmp_path / "o")]) == 2
    assert "eps" in error_line(capsys)


def test_model_without_data(tmp_path, capsys, model_dir):
    assert main(["--model", model_dir, "--output-dir", str(tmp_path / "o")]) == 2
    assert "--data" in error_line(capsys)


def test_missing_data_file(tmp_path, capsys, model_dir):
    assert main(["--model", model_dir, "--data", str(tmp_path / "nope.jsonl"), "--output-dir",
                 str(tmp_path / "o")]) == 2
    assert "nope.jsonl" in error_line(capsys)


def test_resume_without_checkpoint(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    assert main(["--resume", "--output-dir", str(tmp_path / "o")]) == 2
    assert "checkpoint" in error_line(capsys)


def test_bad_flag_value_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--beta", "abc"])
    assert e.value.code == 2
    line = error_line(capsys)
    assert "--beta" in line


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown loss"):
        main(["--loss", "ncaa", "--debug", "--output-dir", str(tmp_path / "o")])


# ------------------------------------------------------------------------------------------- config files


def test_config_file_and_flag_precedence(tmp_path):
    cfg_file = tmp_path / "recipe.yaml"
    cfg_file.write_text("loss: dpo\nbeta: 0.3\nlr: 1e-4\nbatch-size: 2\npairs: all\n")  # YAML reads 1e-4 as text
    cfg = config_from_args(["--config", str(cfg_file), "--beta", "0.05", "--model", "m", "--data", "d"])
    assert (cfg.loss, cfg.beta, cfg.lr, cfg.batch_size, cfg.pairs) == ("dpo", 0.05, 1e-4, 2, "all")
    json_file = tmp_path / "recipe.json"
    json_file.write_text(json.dumps({"loss": "infonca", "alpha": 2}))
    cfg = config_from_args(["--config", str(json_file), "--model", "m", "--data", "d"])
    assert (cfg.loss, cfg.alpha, cfg.beta) == ("infonca", 2.0, None)  # beta unset: registry default later


def test_config_file_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: nca\nbetta: 0.1\n")
    assert main(["--config", str(bad)]) == 2
    assert "'betta'" in error_line(capsys)
    bad.write_text("loss: nca\nbeta: high\n")
    assert main(["--config", str(bad)]) == 2
    assert "beta" in error_line(capsys)


def test_example_recipes_parse():
    recipes = sorted((REPO / "llm" / "configs").glob("*.yaml"))
    assert recipes, "llm/configs/*.yaml missing"
    for path in recipes:
        cfg = config_from_args(["--config", str(path)])
        assert cfg.loss  # parsed, keys known, loss and its hyperparameters consistent


# ------------------------------------------------------------------------------------------- outputs


def test_metrics_json_and_saved_model(tmp_path, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", pairwise_rows(4))
    out = tmp_path / "o"
    assert main(["--model", model_dir, "--data", data, "--eval-data", data, "--loss", "dpo", "--max-steps", "2",
                 "--batch-size", "2", "--logging-steps", "1", "--output-dir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    logs = [h for h in m["log_history"] if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert all(name in h for name in TRL_METRICS)
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # pairwise R = (1, 0): DPO starts at ln 2
    assert m["config"]["loss"] == "dpo" and m["loss"]["hparams"] == {"beta": 0.1, "pairs": "best_worst"}
    assert m["data"]["train"][0].startswith("data: ") and "schema pairwise" in m["data"]["train"][0]
    assert m["tokenization"]["train"][0].startswith("tokenised: ")
    assert {"torch", "transformers", "nca_lab"} <= set(m["versions"])
    assert m["throughput"]["steps"] == 2 and m["throughput"]["prompts_per_second"] > 0
    # --eval-data without --eval-steps: one evaluation at the end, metrics with TRL's eval_ prefix.
    assert all("eval_" + name in m["eval"] for name in TRL_METRICS)
    assert math.isfinite(m["eval"]["eval_loss"])
    # The final model and tokenizer reload with from_pretrained.
    AutoModelForCausalLM.from_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))


def test_overwrite_replaces_a_previous_run(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", generic_rows(4))
    out = tmp_path / "o"
    common = ["--model", model_dir, "--data", data, "--loss", "sft", "--batch-size", "4", "--output-dir", str(out)]
    assert main(common + ["--max-steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert main(common + ["--max-steps", "1"]) == 2  # non-empty now
    assert main(common + ["--max-steps", "1", "--overwrite"]) == 0
    assert not (out / "checkpoint-2").exists()  # a stale checkpoint would otherwise be picked by --resume
    assert json.loads((out / "metrics.json").read_text())["throughput"]["steps"] == 1


def test_missing_optional_package_is_a_clear_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed: nothing to report")
    assert main(["--report-to", "tensorboard", "--output-dir", str(tmp_path / "o")]) == 2
    assert "pip install tensorboard" in error_line(capsys)


# ------------------------------------------------------------------------------------------- bad data, end to end


def _generic_with(row2: dict) -> list[dict]:
    rows = generic_rows(4)
    rows[2] = {**rows[2], **row2}
    return rows


BAD_DATA = [
    # (rows, the error line must contain these)
    (_generic_with({"rewards": [1.0, math.nan, 0.0]}), ["line 3: rewards[1] is NaN"]),
    (_generic_with({"rewards": [1.0, 0.0]}), ['line 3: "rewards" has 2 entries but "responses" has 3']),
    (_generic_with({"responses": ["It is 4.", "", "No idea."]}), ["line 3: responses[1] is empty"]),
    (_generic_with({"prompt": None}), ["line 3: prompt is missing"]),
    ([{"instruction": f"q{i}", "completions": [{"response": "a", "overall_score": 3.0},
                                               {"overall_score": 1.0} if i == 2 else {"response": "b", "overall_score": 1.0}]}
      for i in range(4)], ['line 3: completions[1] has no "response"']),
]


@pytest.mark.parametrize("rows,expected", BAD_DATA, ids=["nan-reward", "k-mismatch", "empty-response",
                                                         "missing-prompt", "ultrafeedback-no-response"])
def test_bad_data_rows_name_file_row_and_field(tmp_path, capsys, model_dir, rows, expected):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert main(["--model", model_dir, "--data", data, "--output-dir", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {data}: ") and all(e in line for e in expected), line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing trained or written


def test_bad_eval_data_is_named_as_such(tmp_path, capsys, model_dir):
    good = write_jsonl(tmp_path / "train.jsonl", generic_rows(4))
    bad = write_jsonl(tmp_path / "eval.jsonl", _generic_with({"rewards": [1.0, math.inf, 0.0]}))
    assert main(["--model", model_dir, "--data", good, "--eval-data", bad, "--output-dir", str(tmp_path / "o")]) == 2
    assert error_line(capsys).startswith(f"error: {bad}: line 3: rewards[1] is inf")


def test_malformed_jsonl_is_one_line_not_a_traceback(tmp_path, capsys, model_dir):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(generic_rows(1)[0]) + '\n{"prompt": "p", "responses": [\n')
    assert main(["--model", model_dir, "--data", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert line == f"error: {path}: line 2: malformed JSON: Expecting value at column 31", line


def test_skip_invalid_rows_trains_on_the_rest_and_reports_why(tmp_path, capsys, model_dir):
    rows = generic_rows(6)
    rows[1]["rewards"] = [1.0, math.nan, 0.0]
    rows[4]["responses"] = ["a", " ", "b"]
    data = write_jsonl(tmp_path / "some_bad.jsonl", rows)
    out = tmp_path / "o"
    assert main(["--model", model_dir, "--data", data, "--skip-invalid-rows", "--max-steps", "1",
                 "--save-strategy", "no", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "invalid row: non-finite reward" in printed and "invalid row: empty response" in printed, printed
    report = json.loads((out / "metrics.json").read_text())["data"]["train"]
    assert "6 rows in, 4 rows out" in report[0], report
    assert "  dropped rows: 1 x invalid row: empty response" in report
    assert "  dropped rows: 1 x invalid row: non-finite reward" in report


def test_overlong_response_names_the_flags(tmp_path, capsys, model_dir):
    rows = generic_rows(4)
    rows[3]["responses"][0] = "word " * 400
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    assert main(["--model", model_dir, "--data", data, "--max-length", "64", "--output-dir", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert f"{data}: line 4: responses[0] is over-long" in line, line
    assert "--max-length" in line and "--drop-overlong" in line, line

"""Every bad data row or file ends in one line naming file, line (or row) and field; nothing is decoded loosely.

Location convention: a JSON Lines file names its rows ``<file>: line N`` (N counted from 1, the physical line,
blank lines included in the count); a JSON array file, a parquet file or a Hub dataset ``<source>: row i`` (i counted
from 0); in-memory rows (``records_from_list``/``convert_row``) ``row i``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nca_lab.llm.data import (
    DUPLICATE_SAME_REWARD, MAX_ABS_REWARD, DataError, convert_row, load_records, read_json_rows, records_from_list,
)

REPO = Path(__file__).resolve().parents[1]


def row(i: int, **fields) -> dict:
    return {"prompt": f"What is {i} plus {i}?", "responses": [f"It is {2 * i}.", f"It is {2 * i + 1}."],
            "rewards": [1.0, 0.0], **fields}


def jsonl(path: Path, lines: list) -> str:
    """Each entry a row dict (dumped) or a raw line string, one per line."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def load_error(path: str, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_records(path, **kwargs)
    assert "\n" not in str(info.value)  # one line
    return info.value


# ------------------------------------------------------------------ each row decoded as written (no typed columns)


@pytest.mark.parametrize("bad, message", [
    # a column typed by the rows around it would have turned "8.5" into 8.5 and accepted it
    ({"rewards": [1.0, "8.5"]}, "line 4: rewards[1] is not a number ('8.5')"),
    ({"rewards": [True, 0.0]}, "line 4: rewards[0] is not a number (True)"),
    ({"responses": ["It is 6.", 3]}, "line 4: responses[1] must be a string, got int"),
    ({"responses": ["It is 6.", ["a", "b"]]}, "line 4: responses[1] must be a string, got list"),
    ({"prompt": ["What is 3 plus 3?"]}, "line 4: prompt[0] must be a message dict, got str"),
    ({"rewards": [1.0, None]}, "line 4: rewards[1] is missing"),
])
def test_a_row_is_checked_as_written_and_named_by_its_line(tmp_path, bad, message):
    # the bad row is the 4th line, after a blank line: line numbers count physical lines from 1
    path = jsonl(tmp_path / "d.jsonl", [row(0), row(1), "", row(3, **bad), row(4)])
    assert str(load_error(path)) == f"{path}: {message}"


def test_nan_is_reported_as_nan_not_missing_under_skip(tmp_path):
    path = tmp_path / "nan.jsonl"
    path.write_text("\n".join([json.dumps(row(0)), json.dumps(row(1, rewards=[1.0, math.nan])),
                               json.dumps(row(2, rewards=[1.0, "high"])), json.dumps(row(3))]) + "\n")
    assert str(load_error(str(path))) == f"{path}: line 2: rewards[1] is NaN"
    dataset, report = load_records(str(path), skip_invalid_rows=True)
    assert [r["row"] for r in dataset] == [0, 3]
    assert report.dropped_rows == {"invalid row: non-finite reward": 1, "invalid row: non-numeric reward": 1}
    assert report.examples == [f"{path}: line 2: rewards[1] is NaN", f"{path}: line 3: rewards[1] is not a number ('high')"]


def test_a_late_bad_row_is_blamed_on_its_own_line(tmp_path):
    rows = [row(i) for i in range(6)]
    rows[5]["responses"] = ["It is 10.", 11]
    path = jsonl(tmp_path / "late.jsonl", rows)
    assert str(load_error(path)) == f"{path}: line 6: responses[1] must be a string, got int"


def test_json_array_file_names_row_index_from_0(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([row(0), row(1, rewards=[1.0, "x"])], indent=2))
    assert str(load_error(str(path))) == f"{path}: row 1: rewards[1] is not a number ('x')"
    path.write_text(json.dumps([row(0), "not a row"]))
    assert str(load_error(str(path))) == f"{path}: row 1: a row must be a JSON object, got a string"


def test_folder_errors_name_the_file_and_its_own_line(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    jsonl(folder / "a.jsonl", [row(0), row(1)])
    bad = jsonl(folder / "b.jsonl", [row(2), row(3, rewards=[1.0, math.inf])])
    assert str(load_error(str(folder))) == f"{bad}: line 2: rewards[1] is inf"


def test_split_slice_keeps_line_numbers(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [row(0), row(1), row(2, rewards=[1.0, "bad"])])
    dataset, _ = load_records(path, split="train[:2]")
    assert len(dataset) == 2
    assert str(load_error(path, split="train[2:]")) == f"{path}: line 3: rewards[1] is not a number ('bad')"


def test_mixed_prompt_forms_name_both_lines(tmp_path):
    path = jsonl(tmp_path / "mixed.jsonl", [row(0), row(1, prompt=[{"role": "user", "content": "hi"}])])
    assert str(load_error(path)) == (f"{path}: line 2: prompt is a message-list prompt but {path}: line 1 has a text "
                                     "prompt; a dataset must use one prompt form")


# ------------------------------------------------------------------ empty, blank, non-UTF-8, malformed files


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty (0 bytes); it holds no rows"),
    (b"\n  \n\n", "the file holds only blank lines; it holds no rows"),
    (b"[]", "the file holds an empty JSON array; it holds no rows"),
    (b'{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]}\n{"prompt": "p\xff", "responses": []}\n',
     "line 2: not valid UTF-8 (byte 0xff at column 14); data files must be UTF-8"),
    (b'{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]},\n',
     "line 1: malformed JSON: Extra data at column 60 (a trailing comma after the row?)"),
    (b'{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]}\n{"prompt": "p", "responses": ["a",]}\n',
     "line 2: malformed JSON: Expecting value at column 35"),
    (b'[{"prompt": "p"},\n {"prompt": "q"},\n]', "line 3: malformed JSON: Expecting value at column 1"),
    (b'{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]}\n["p", "a", "b"]\n',
     "line 2: a row must be a JSON object, got an array"),
    (b'{\n  "prompt": "p"\n}\n', "line 1: a JSON object spread over several lines; use JSON Lines (one row object "
                                "per line) or a JSON array of row objects"),
    # plain json.loads would silently keep the second "rewards"
    (b'{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]}\n'
     b'{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0], "rewards": [0, 1]}\n',
     "line 2: key 'rewards' appears twice in one object; which value is meant is ambiguous"),
    (b'[{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]},\n {"prompt": "p", "prompt": "q"}]',
     "key 'prompt' appears twice in one object; which value is meant is ambiguous"),
])
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    assert str(load_error(str(path))) == f"{path}: {message}"


def test_empty_parquet_file_is_named(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    assert str(load_error(str(path))) == f"{path}: the file is empty (0 bytes); it holds no rows"


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row(0)).encode() + b"\r\n" + json.dumps(row(1)).encode() + b"\r\n")
    rows, where = read_json_rows(str(path))
    assert rows == [row(0), row(1)] and where == [f"{path}: line 1", f"{path}: line 2"]


# ------------------------------------------------------------------ messages: roles and shape


@pytest.mark.parametrize("prompt, message", [
    ([{"role": "usr", "content": "hi"}], "prompt[0].role is 'usr'; expected one of system, user, assistant"),
    ([{"role": "system", "content": "s"}, {"role": "tool", "content": "{}"}, {"role": "user", "content": "q"}],
     "prompt[1].role is 'tool'; expected one of system, user, assistant"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     "prompt[1].role is 'assistant'; a prompt's last message must be the user turn the responses answer"),
    ([{"role": "user", "content": "q", "tool_calls": [{"name": "f"}]}],
     "prompt[0] has keys ['tool_calls'] besides \"role\" and \"content\"; only those two are supported"),
    ([{"role": "user", "content": ["q"]}], 'prompt[0] needs string "role" and "content"'),
])
def test_message_roles_and_shape(prompt, message):
    with pytest.raises(DataError) as info:
        convert_row(row(0, prompt=prompt), "generic", row_index=5)
    assert str(info.value) == f"row 5: {message}"


def test_conversation_roles_checked_in_pairwise_rows(tmp_path):
    chosen = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rejected = [{"role": "usr", "content": "q"}, {"role": "assistant", "content": "b"}]
    path = jsonl(tmp_path / "conv.jsonl", [{"chosen": chosen, "rejected": chosen[:1] + [rejected[1]]},
                                           {"chosen": chosen, "rejected": rejected}])
    assert str(load_error(path)) == f"{path}: line 2: rejected[0].role is 'usr'; expected one of system, user, assistant"


def test_arrow_null_struct_fields_are_not_extra_keys():
    record = convert_row(row(0, prompt=[{"role": "user", "content": "q", "name": None}]), "generic", row_index=0)
    assert record["prompt"] == [{"role": "user", "content": "q"}]


# ------------------------------------------------------------------ contradictory duplicates


def test_chosen_equal_to_rejected_is_refused_or_skipped(tmp_path):
    rows = [{"prompt": "p0", "chosen": "yes", "rejected": "no"}, {"prompt": "p1", "chosen": "same", "rejected": "same"},
            {"prompt": "p2", "chosen": "yes", "rejected": "no"}]
    path = jsonl(tmp_path / "pairs.jsonl", rows)
    assert str(load_error(path)) == (f"{path}: line 2: chosen/rejected are the same response; one text cannot be "
                                     "both preferred and rejected")
    dataset, report = load_records(path, skip_invalid_rows=True)
    assert [r["row"] for r in dataset] == [0, 2]
    assert report.dropped_rows == {"invalid row: identical chosen and rejected": 1}


def test_identical_hh_transcripts_are_refused():
    t = "\n\nHuman: q\n\nAssistant: a"
    with pytest.raises(DataError, match=r"^row 0: chosen/rejected are the same response"):
        convert_row({"chosen": t, "rejected": t}, "hh", row_index=0)


def test_duplicate_response_with_different_rewards_refused_same_reward_noted():
    with pytest.raises(DataError) as info:
        convert_row({"prompt": "p", "responses": ["a", "b", "a"], "rewards": [2, 1, 0]}, "generic", row_index=3)
    assert str(info.value) == ("row 3: responses[2] repeats responses[0] with a different reward (0 vs 2); one text "
                               "cannot carry two rewards")
    assert info.value.reason == "duplicate response, different rewards"
    with pytest.raises(DataError, match=r"^row 1: A2 repeats A0 with a different reward \(3 vs 1\)"):
        convert_row({"prompt": "p", "A0": "x", "A1": "y", "A2": "x", "A0_score": 1, "A1_score": 2, "A2_score": 3},
                    "nca", row_index=1)
    dataset, report = records_from_list([{"prompt": "p", "responses": ["a", "b", "a"], "rewards": [2, 1, 2]}])
    assert dataset[0]["responses"] == ["a", "b", "a"] and report.notes == {DUPLICATE_SAME_REWARD: 1}


# ------------------------------------------------------------------ reward magnitude


@pytest.mark.parametrize("value", [1e300, -1e31, 2 * MAX_ABS_REWARD])
def test_huge_rewards_refused_at_load_time(tmp_path, value):
    path = jsonl(tmp_path / "big.jsonl", [row(0), row(1, rewards=[value, 0.0])])
    message = str(load_error(path))
    assert message.startswith(f"{path}: line 2: rewards[0] is {value:g}, beyond the bound |reward| <= 1e+30"), message
    assert load_records(path, skip_invalid_rows=True)[1].dropped_rows == {"invalid row: reward out of range": 1}


def test_rewards_at_the_bound_are_accepted():
    dataset, _ = records_from_list([row(0, rewards=[MAX_ABS_REWARD, -MAX_ABS_REWARD])])
    assert dataset[0]["rewards"] == [1e30, -1e30]


def test_ultrafeedback_ratings_bounded_too():
    row_ = {"instruction": "q", "completions": [{"response": "a", "overall_score": 1e35},
                                                {"response": "b", "overall_score": 1}]}
    with pytest.raises(DataError, match=r"^row 0: completions\[0\].overall_score is 1e\+35, beyond the bound"):
        convert_row(row_, "ultrafeedback", row_index=0)


# ------------------------------------------------------------------ skip-invalid-rows counts every reason


def test_skip_invalid_rows_counts_per_reason(tmp_path):
    rows = [row(0), row(1, rewards=[1.0, "8.5"]), row(2, prompt=[{"role": "usr", "content": "q"}]),
            row(3, responses=["x", "x"]), row(4, rewards=[1e300, 0.0]), row(5), row(6, rewards=[1.0, math.nan])]
    path = jsonl(tmp_path / "mixed.jsonl", rows)
    dataset, report = load_records(path, skip_invalid_rows=True)
    assert [r["row"] for r in dataset] == [0, 5]
    assert report.dropped_rows == {
        "invalid row: non-numeric reward": 1, "invalid row: unknown role": 1,
        "invalid row: duplicate response, different rewards": 1, "invalid row: reward out of range": 1,
        "invalid row: non-finite reward": 1}
    assert report.examples[0] == f"{path}: line 2: rewards[1] is not a number ('8.5')"
    assert sum(report.dropped_rows.values()) == report.rows_in - report.rows_out


def test_skip_invalid_rows_drops_malformed_lines_and_counts_them(tmp_path):
    path = jsonl(tmp_path / "broken.jsonl", [row(0), '{"prompt": "p", "responses": [', row(2), "[1, 2]",
                                              row(4, rewards=[1.0, "x"]), '{"prompt": "cut off'])
    assert str(load_error(path)) == f"{path}: line 2: malformed JSON: Expecting value at column 31"
    dataset, report = load_records(path, skip_invalid_rows=True)
    assert [r["where"] for r in dataset] == [f"{path}: line 1", f"{path}: line 3"]
    assert report.dropped_rows == {"invalid row: malformed JSON": 2, "invalid row: wrong type": 1,
                                   "invalid row: non-numeric reward": 1}
    assert (report.rows_in, report.rows_out) == (6, 2)
    assert report.examples[0] == f"{path}: line 2: malformed JSON: Expecting value at column 31"


def test_no_usable_rows_is_one_line(tmp_path):
    path = jsonl(tmp_path / "none.jsonl", [row(0, rewards=[1.0, math.nan])])
    message = str(load_error(path, skip_invalid_rows=True))
    assert message == (f"{path}: no usable rows: 1 rows in, 0 out (1 x invalid row: non-finite reward) "
                       f"(first: {path}: line 1: rewards[1] is NaN)")


# ------------------------------------------------------------------ tokenisation: all rows dropped, names


def test_drop_overlong_dropping_every_row_is_refused(tmp_path):
    from nca_lab.llm.tokenization import build_tiny_tokenizer, tokenize_dataset

    tokenizer = build_tiny_tokenizer()
    path = jsonl(tmp_path / "long.jsonl", [row(i, responses=["word " * 50, "word " * 60]) for i in range(3)])
    records, _ = load_records(path)
    with pytest.raises(DataError) as info:
        tokenize_dataset(records, tokenizer, max_length=16, on_overlong="drop")
    assert str(info.value) == (f"{path}: every row was dropped: all 3 rows have fewer than 2 responses that fit "
                               "max_length=16 (6 over-long responses dropped, --drop-overlong); nothing to train on: "
                               "raise --max-length")


def test_tokenisation_errors_name_file_and_line(tmp_path):
    from nca_lab.llm.tokenization import build_tiny_tokenizer, tokenize_dataset

    path = jsonl(tmp_path / "long.jsonl", [row(0), "", row(2, responses=["word " * 50, "ok"])])
    records, _ = load_records(path)
    with pytest.raises(DataError, match=rf"^{re.escape(path)}: line 3: responses\[0\] is over-long"):
        tokenize_dataset(records, build_tiny_tokenizer(), max_length=16)


# ------------------------------------------------------------------ the CLI, end to end


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from nca_lab.llm.demo import save_demo_model

    return save_demo_model(tmp_path_factory.mktemp("tiny_llama"), seed=0)


def run_cli(args, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "nca_lab.llm.train", *args], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env, timeout=300)


def assert_one_error_line(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {expected}"], proc.stderr[-3000:]


def test_cli_empty_file(tmp_path, model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_cli(["--model", model_dir, "--data", str(empty), "--output-dir", str(tmp_path / "o")], tmp_path)
    assert_one_error_line(proc, f"{empty}: the file is empty (0 bytes); it holds no rows")


def test_cli_drop_overlong_dropping_every_row(tmp_path, model_dir):
    long = jsonl(tmp_path / "long.jsonl", [row(i, responses=["word " * 50, "word " * 60]) for i in range(2)])
    proc = run_cli(["--model", model_dir, "--data", long, "--max-length", "16", "--drop-overlong",
                    "--output-dir", str(tmp_path / "o2")], tmp_path)
    assert_one_error_line(proc, f"{long}: every row was dropped: all 2 rows have fewer than 2 responses that fit "
                                "max_length=16 (4 over-long responses dropped, --drop-overlong); nothing to train "
                                "on: raise --max-length")


def test_cli_unknown_role_line(tmp_path, model_dir, capsys):
    from nca_lab.llm.train import main

    bad = jsonl(tmp_path / "usr.jsonl", [row(0, prompt=[{"role": "user", "content": "q"}]),
                                         row(1, prompt=[{"role": "usr", "content": "q"}])])
    assert main(["--model", model_dir, "--data", bad, "--output-dir", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {bad}: line 2: prompt[0].role is 'usr'; expected one of system, user, assistant"]

"""Data adapters (nca_lab.llm.data): every schema → {prompt, responses, rewards}, with row-level errors.

Fixtures live in tests/fixtures/data/ (one small file per schema); error cases use in-memory rows so each
test states the exact bad value next to the message it expects.
"""

import math
import re
import shutil
from pathlib import Path

import datasets
import pytest

from nca_lab.llm.data import (
    ALL_TIE, FEWER_THAN_TWO, MISSING_COMPLETION, NO_NUMERIC_RATING, SCHEMAS, DataError, DataReport, convert_row,
    detect_schema, hh_to_messages, load_records, records_from_list, split_conversations, split_transcripts,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def as_list(dataset):
    return [dict(row) for row in dataset]


# ------------------------------------------------------------------------------------------ detection


@pytest.mark.parametrize("name, schema", [
    ("ultrafeedback.jsonl", "ultrafeedback"), ("nca_layout.jsonl", "nca"), ("pairwise_text.jsonl", "pairwise"),
    ("pairwise_messages.jsonl", "pairwise"), ("pairwise_implicit_messages.jsonl", "pairwise"),
    ("pairwise_implicit_text.jsonl", "hh"), ("hh.jsonl", "hh"), ("generic.jsonl", "generic"),
])
def test_schema_detected_from_each_fixture(name, schema):
    _, report = load_records(str(FIXTURES / name))
    assert report.schema == schema


def test_detect_schema_from_column_names():
    assert detect_schema(["prompt", "responses", "rewards", "extra"]) == "generic"
    assert detect_schema(["source", "instruction", "models", "completions"]) == "ultrafeedback"
    assert detect_schema(["prompt", "A0", "A1", "A0_score", "A1_score"]) == "nca"
    assert detect_schema(["prompt", "chosen", "rejected"]) == "pairwise"
    assert detect_schema(["chosen", "rejected"]) == "hh"
    # without a prompt column, message lists mean conversational implicit-prompt data, not HH transcripts
    assert detect_schema(["chosen", "rejected"], {"chosen": [{"role": "user", "content": "x"}]}) == "pairwise"


def test_unknown_schema_lists_known_schemas_and_columns():
    with pytest.raises(ValueError) as info:
        detect_schema(["question", "answer"])
    message = str(info.value)
    assert "['answer', 'question']" in message
    for schema in SCHEMAS:
        assert schema in message
    with pytest.raises(ValueError, match="unknown schema 'tsv'"):
        convert_row({"prompt": "p"}, "tsv", row_index=0)


# ------------------------------------------------------------------------------------------ adapters


def test_ultrafeedback_overall_score_default():
    dataset, report = load_records(str(FIXTURES / "ultrafeedback.jsonl"))
    rows = as_list(dataset)
    assert rows[0]["prompt"] == "Name a primary colour."
    assert rows[0]["responses"][:2] == ["Red is a primary colour.", "Blue."]
    assert rows[0]["rewards"] == [8.0, 6.5, 3.0, 2.0]
    assert [r["row"] for r in rows] == [0, 1, 2]
    assert report.rows_in == 3 and report.rows_out == 3 and report.dropped == {}
    assert report.notes == {ALL_TIE: 1}  # row 2: three completions scored 7.0, kept


def test_ultrafeedback_ratings_mean_ignores_na_and_drops_unrated():
    dataset, report = load_records(str(FIXTURES / "ultrafeedback.jsonl"), reward_field="ratings")
    rows = as_list(dataset)
    # row 0: ratings (5, 4, N/A, 5) → 14/3; (3, 3, 4, 3) → 13/4; (2, N/A, 2, 2) → 2; all N/A → dropped
    assert rows[0]["rewards"] == pytest.approx([14 / 3, 13 / 4, 2.0], abs=1e-12)
    assert rows[0]["responses"] == ["Red is a primary colour.", "Blue.", "Green is a primary colour."]
    # row 1 lost its unrated completion and with it the second response
    assert [r["row"] for r in rows] == [0, 2]
    assert report.dropped_responses == {NO_NUMERIC_RATING: 2}
    assert report.dropped_rows == {FEWER_THAN_TWO: 1}
    assert report.dropped == {NO_NUMERIC_RATING: 2, FEWER_THAN_TWO: 1}


def test_ultrafeedback_any_numeric_field_and_numeric_ratings():
    dataset, _ = load_records(str(FIXTURES / "ultrafeedback.jsonl"), reward_field="fine-grained_score")
    assert as_list(dataset)[0]["rewards"] == [4.5, 3.25, 2.0, 1.0]
    row = {"instruction": "q", "completions": [
        {"response": "a", "annotations": {"helpfulness": {"Rating": 4}, "honesty": {"Rating": "2"}}},
        {"response": "b", "annotations": {"helpfulness": {"Rating": 1.5}, "honesty": None}}]}
    record = convert_row(row, "ultrafeedback", reward_field="ratings", row_index=0)
    assert record["rewards"] == [3.0, 1.5]


def test_nca_layout_drops_na_fillers():
    dataset, report = load_records(str(FIXTURES / "nca_layout.jsonl"))
    rows = as_list(dataset)
    assert rows[0]["responses"] == ["Rain taps on the roof.", "Clouds weep softly.", "Wet streets shine."]
    assert rows[0]["rewards"] == [7.5, 6.0, 8.0]  # A2 ("N/A", score NaN) dropped, its NaN ignored
    assert [r["row"] for r in rows] == [0, 2]     # row 1 kept only A0
    assert report.dropped_responses == {MISSING_COMPLETION: 5}
    assert report.dropped_rows == {FEWER_THAN_TWO: 1}


def test_nca_layout_k_from_columns():
    row = {"prompt": "p", **{f"A{i}": f"r{i}" for i in range(6)}, **{f"A{i}_score": float(i) for i in range(6)}}
    assert convert_row(row, "nca", row_index=0)["rewards"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    del row["A3"]
    with pytest.raises(DataError, match=r"^row 4: A3 is missing"):
        convert_row(row, "nca", row_index=4)


def test_pairwise_text_and_messages():
    rows = as_list(load_records(str(FIXTURES / "pairwise_text.jsonl"))[0])
    assert rows[0] == {"prompt": "What is the boiling point of water at sea level?",
                       "responses": ["100 degrees Celsius.", "50 degrees Celsius."], "rewards": [1.0, 0.0],
                       "row": 0, "where": f"{FIXTURES / 'pairwise_text.jsonl'}: line 1"}
    rows = as_list(load_records(str(FIXTURES / "pairwise_messages.jsonl"))[0])
    assert rows[0]["prompt"] == [{"role": "system", "content": "You are terse."},
                                 {"role": "user", "content": "Capital of Italy?"}]
    assert rows[0]["responses"] == ["Rome.", "Milan."] and rows[0]["rewards"] == [1.0, 0.0]


def test_implicit_prompt_messages_split_at_message_boundary_not_shared_words():
    rows = as_list(load_records(str(FIXTURES / "pairwise_implicit_messages.jsonl"))[0])
    # the responses share "The answer is": a character-level prefix would move it into the prompt
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 6 * 7?"}]
    assert rows[0]["responses"] == ["The answer is 42.", "The answer is 36."]
    # multi-turn: the whole shared history is the prompt
    assert [m["role"] for m in rows[1]["prompt"]] == ["user", "assistant", "user"]
    assert rows[1]["responses"] == ["An apple.", "An onion."]


def test_implicit_prompt_transcripts_split_at_last_shared_assistant_marker():
    for name, schema in (("pairwise_implicit_text.jsonl", "pairwise"), ("pairwise_implicit_text.jsonl", None)):
        rows = as_list(load_records(str(FIXTURES / name), schema=schema)[0])
        assert rows[0]["prompt"] == "\n\nHuman: What is 6 * 7?\n\nAssistant:"
        assert rows[0]["responses"] == [" The answer is 42.", " The answer is 36."]


def test_split_transcripts_never_uses_character_prefix():
    chosen = "\n\nHuman: q\n\nAssistant: Sure, the capital is Paris."
    rejected = "\n\nHuman: q\n\nAssistant: Sure, the capital is Lyon."
    prompt, c, r = split_transcripts(chosen, rejected)
    assert prompt == "\n\nHuman: q\n\nAssistant:"
    assert (c, r) == (" Sure, the capital is Paris.", " Sure, the capital is Lyon.")
    assert prompt + c == chosen and prompt + r == rejected
    # identical transcripts still split at the final marker (not at their end)
    assert split_transcripts(chosen, chosen) == ("\n\nHuman: q\n\nAssistant:", c, c)
    # the shared prefix ends inside "\n\nAssis..." of one transcript: that marker is not shared
    with pytest.raises(ValueError, match="share no"):
        split_transcripts("\n\nHuman: q\n\nAssistant: a", "\n\nHuman: q\n\nAssistance needed")


def test_split_conversations_rules():
    u, a1, a2 = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "same words, one"},
                 {"role": "assistant", "content": "same words, two"})
    assert split_conversations([u, a1], [u, a2]) == ([u], a1, a2)
    assert split_conversations([u, a1], [u, a1]) == ([u], a1, a1)  # identical: the last message stays a response
    with pytest.raises(ValueError, match="before its final assistant turn"):
        split_conversations([u, a1, u, a1], [u, a2, u, a2])
    with pytest.raises(ValueError, match="share no prompt message"):
        split_conversations([a1], [a2])


def test_hh_transcripts_text_and_messages():
    rows = as_list(load_records(str(FIXTURES / "hh.jsonl"))[0])
    assert rows[1]["prompt"] == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a colour.\n\nAssistant:"
    assert rows[1]["responses"] == [" The sky is blue.", " The sky is falling."]
    rows = as_list(load_records(str(FIXTURES / "hh.jsonl"), hh_as_messages=True)[0])
    assert rows[1]["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                 {"role": "user", "content": "Tell me a colour."}]
    assert rows[1]["responses"] == ["The sky is blue.", "The sky is falling."]


def test_hh_to_messages():
    assert hh_to_messages("\n\nHuman: a b \n\nAssistant: c\n\nHuman: d\n\nAssistant:") == [
        {"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
    with pytest.raises(ValueError, match="must start with a turn marker"):
        hh_to_messages("preamble\n\nHuman: a")
    with pytest.raises(ValueError, match="no"):
        hh_to_messages("   ")


def test_hh_earlier_divergence_text_kept_messages_rejected():
    row = {"chosen": "\n\nHuman: a\n\nAssistant: b1\n\nHuman: c\n\nAssistant: d",
           "rejected": "\n\nHuman: a\n\nAssistant: b2\n\nHuman: c\n\nAssistant: d"}
    record = convert_row(row, "hh", row_index=0)
    assert record["prompt"] == "\n\nHuman: a\n\nAssistant:"
    assert record["responses"][0] == " b1\n\nHuman: c\n\nAssistant: d"
    with pytest.raises(DataError, match=r"^row 6: chosen differs .* final Assistant turn"):
        convert_row(row, "hh", row_index=6, hh_as_messages=True)


def test_ultrafeedback_binarized_style_conversations_with_prompt_column():
    rows = [{"prompt": "Capital of France?",
             "chosen": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
             "rejected": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Nice"}]}]
    dataset, _ = records_from_list(rows)
    assert as_list(dataset)[0]["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    assert as_list(dataset)[0]["responses"] == ["Paris", "Nice"]


def test_generic_jsonl_ties_kept_and_single_response_dropped():
    dataset, report = load_records(str(FIXTURES / "generic.jsonl"))
    rows = as_list(dataset)
    assert [r["row"] for r in rows] == [0, 1, 2]
    assert rows[0]["rewards"] == [0.5, 1.5, -1.0] and rows[1]["rewards"] == [1.0, 0.0]
    assert rows[2]["rewards"] == [2.0] * 4  # all tie: kept, noted
    assert report.notes == {ALL_TIE: 1}
    assert report.dropped_rows == {FEWER_THAN_TWO: 1}
    assert (report.rows_in, report.rows_out, report.responses_out) == (4, 3, 9)
    text = "\n".join(report.summary())
    assert "4 rows in, 3 rows out" in text and "1 x fewer than 2 usable responses" in text


def test_parquet_file_and_folder_inputs(tmp_path):
    rows = [{"prompt": f"p{i}", "responses": ["x", f"y{i}"], "rewards": [float(i), 0.5]} for i in range(5)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "data.parquet"))
    dataset, report = load_records(str(tmp_path / "data.parquet"))
    assert report.schema == "generic" and len(dataset) == 5 and as_list(dataset)[3]["rewards"] == [3.0, 0.5]

    folder = tmp_path / "shards"
    folder.mkdir()
    shutil.copy(FIXTURES / "pairwise_text.jsonl", folder / "part-0.jsonl")
    shutil.copy(FIXTURES / "pairwise_text.jsonl", folder / "part-1.jsonl")
    (folder / "README.md").write_text("not data")  # ignored: not a data file
    dataset, report = load_records(str(folder))
    assert report.schema == "pairwise" and len(dataset) == 4 and [r["row"] for r in as_list(dataset)] == [0, 1, 2, 3]

    shutil.copy(tmp_path / "data.parquet", folder / "part-2.parquet")
    with pytest.raises(ValueError, match="mixes json and parquet"):
        load_records(str(folder))
    with pytest.raises(FileNotFoundError):
        load_records(str(tmp_path / "missing.jsonl"))


def test_local_split_slicing():
    dataset, report = load_records(str(FIXTURES / "generic.jsonl"), split="train[:2]")
    assert report.rows_in == 2 and len(dataset) == 2


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("row, schema, message", [
    ({"instruction": "q", "completions": [{"response": "a", "overall_score": 1}, {"response": "b", "overall_score": 2},
                                          {"overall_score": 3}]},
     "ultrafeedback", 'row 17: completions[2] has no "response"'),
    ({"instruction": "q", "completions": [{"response": "a", "overall_score": 1}, {"response": "b"}]},
     "ultrafeedback", 'row 17: completions[1] has no "overall_score"'),
    ({"instruction": "q", "completions": [{"response": "a", "overall_score": 1},
                                          {"response": "b", "overall_score": "high"}]},
     "ultrafeedback", "row 17: completions[1].overall_score is not a number ('high')"),
    ({"prompt": "p", "A0": "a", "A1": "b", "A2": "c", "A0_score": 1.0, "A1_score": 2.0, "A2_score": math.nan},
     "nca", "row 17: A2_score is NaN"),
    ({"prompt": "p", "A0": "a", "A1": "b", "A0_score": 1.0, "A1_score": math.inf}, "nca", "row 17: A1_score is inf"),
    ({"prompt": "p", "A0": "a", "A1": "b", "A0_score": 1.0}, "nca", "row 17: A1_score is missing"),
    ({"prompt": "p", "responses": ["a", "b", "c", "d"], "rewards": [1, 2, 3]},
     "generic", 'row 17: "rewards" has 3 entries but "responses" has 4'),
    ({"prompt": "p", "responses": ["a", "  \n"], "rewards": [1, 2]}, "generic", "row 17: responses[1] is empty"),
    ({"prompt": "p", "responses": ["a", ""], "rewards": [1, 2]}, "generic", "row 17: responses[1] is empty"),
    ({"prompt": "p", "responses": ["a", 3], "rewards": [1, 2]}, "generic",
     "row 17: responses[1] must be a string, got int"),
    ({"prompt": "p", "responses": ["a", "b"], "rewards": [1, True]}, "generic",
     "row 17: rewards[1] is not a number (True)"),
    ({"prompt": "p", "responses": ["a", "b"]}, "generic", "row 17: rewards is missing"),
    ({"responses": ["a", "b"], "rewards": [1, 2]}, "generic", "row 17: prompt is missing"),
    ({"prompt": "", "responses": ["a", "b"], "rewards": [1, 2]}, "generic", "row 17: prompt is empty"),
    ({"prompt": [{"role": "user"}], "responses": ["a", "b"], "rewards": [1, 2]}, "generic",
     'row 17: prompt[0] needs string "role" and "content"'),
    ({"prompt": "p", "chosen": "a"}, "pairwise", "row 17: rejected is missing"),
    ({"prompt": "p", "chosen": "a", "rejected": " "}, "pairwise", "row 17: rejected is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "pairwise",
     "row 17: chosen/rejected must both be strings or both message lists, got str/list"),
    ({"chosen": "Human: q Assistant: a", "rejected": "Human: q Assistant: b"}, "hh",
     'row 17: chosen and rejected share no "\\n\\nAssistant:" turn boundary'),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other q"}, {"role": "assistant", "content": "a"}]}, "pairwise",
     "row 17: chosen and rejected share no prompt message"),
])
def test_invalid_rows_name_row_and_field(row, schema, message):
    with pytest.raises(DataError) as info:
        convert_row(row, schema, row_index=17)
    assert str(info.value) == message
    assert info.value.row == 17


def test_reward_field_only_for_ultrafeedback():
    with pytest.raises(ValueError, match="reward_field='score' applies to schema 'ultrafeedback' only"):
        convert_row({"prompt": "p", "responses": ["a", "b"], "rewards": [1, 2]}, "generic", reward_field="score",
                    row_index=0)


def test_error_row_number_is_the_dataset_index_from_a_file(tmp_path):
    rows = [{"prompt": "p", "A0": "a", "A1": "b", "A2": "c", "A0_score": 1.0, "A1_score": 2.0, "A2_score": 3.0}
            for _ in range(5)]
    rows[3]["A2_score"] = math.nan
    path = str(tmp_path / "nca.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    with pytest.raises(DataError, match=rf"^{re.escape(path)}: row 3: A2_score is NaN$") as info:
        load_records(path)
    assert (info.value.row, info.value.field) == (3, "A2_score")  # the attributes survive the source prefix


def test_malformed_file_is_a_value_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 2]}\n{"prompt": "p", "responses": [\n')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: line 2: malformed JSON: Expecting value"):
        load_records(str(path))


def test_skip_invalid_rows_counts_by_reason():
    rows = [
        {"prompt": "ok", "responses": ["a", "b"], "rewards": [1, 0]},
        {"prompt": "nan", "responses": ["a", "b"], "rewards": [1, math.nan]},
        {"prompt": "k", "responses": ["a", "b", "c"], "rewards": [1, 0]},
        {"prompt": "empty", "responses": ["a", ""], "rewards": [1, 0]},
        {"prompt": "one", "responses": ["a"], "rewards": [1]},
        {"prompt": "inf", "responses": ["a", "b"], "rewards": [math.inf, 0]},
        {"prompt": "ok2", "responses": ["a", "b"], "rewards": [0, 0]},
    ]
    with pytest.raises(DataError, match=r"^row 1: rewards\[1\] is NaN$"):
        records_from_list(rows)
    dataset, report = records_from_list(rows, skip_invalid_rows=True)
    assert [r["row"] for r in as_list(dataset)] == [0, 6]
    assert report.dropped_rows == {"invalid row: non-finite reward": 2, "invalid row: length mismatch": 1,
                                   "invalid row: empty response": 1, FEWER_THAN_TWO: 1}
    assert report.notes == {ALL_TIE: 1}
    assert report.rows_in == 7 and report.rows_out == 2
    assert report.examples[0] == "row 1: rewards[1] is NaN"
    assert sum(report.dropped_rows.values()) == report.rows_in - report.rows_out


def test_mixed_prompt_forms_rejected():
    rows = [{"prompt": "text", "responses": ["a", "b"], "rewards": [1, 0]},
            {"prompt": [{"role": "user", "content": "m"}], "responses": ["a", "b"], "rewards": [1, 0]}]
    with pytest.raises(DataError, match="row 1: prompt is a message-list prompt but row 0 has a text prompt"):
        records_from_list(rows)


def test_no_usable_rows_is_an_error():
    with pytest.raises(DataError, match="no usable rows"):
        records_from_list([{"prompt": "p", "responses": ["a"], "rewards": [1]}])


def test_report_counts_without_loader():
    report = DataReport()
    record = convert_row({"prompt": "p", "A0": "a", "A1": "N/A", "A2": "b", "A0_score": 1, "A1_score": None,
                          "A2_score": 1}, "nca", row_index=0, report=report)
    assert record == {"prompt": "p", "responses": ["a", "b"], "rewards": [1.0, 1.0]}
    assert report.dropped_responses == {MISSING_COMPLETION: 1} and report.notes == {ALL_TIE: 1}


def test_conversion_is_linear_and_keeps_row_indices_at_scale():
    # 20k rows: a quadratic step would take minutes here; the index of the last row must survive intact
    rows = [{"prompt": f"p{i}", "responses": ["a", "b"], "rewards": [i % 3, 1]} for i in range(20_000)]
    rows[19_998]["rewards"] = [1, math.nan]
    with pytest.raises(DataError, match=r"^row 19998: rewards\[1\] is NaN$"):
        records_from_list(rows)
    dataset, report = records_from_list(rows, skip_invalid_rows=True)
    assert len(dataset) == 19_999 and dataset[-1]["row"] == 19_999
    assert report.notes == {ALL_TIE: sum(1 for i in range(20_000) if i % 3 == 1 and i != 19_998)}

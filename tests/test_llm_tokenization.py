"""Tokenisation (nca_lab.llm.tokenization): exact prompt/response boundary, EOS, truncation, tiny tokenizer.

All tests use the in-process byte-level BPE tokenizer (build_tiny_tokenizer): real `tokenizers` + transformers
code paths, no network.  Byte-level means decode(encode(text)) == text, so decode checks are exact.
"""

from pathlib import Path

import pytest
from tokenizers import processors
from transformers import AutoTokenizer

from nca_lab.llm.data import DataError, load_records, records_from_list
from nca_lab.llm.tokenization import CHATML_TEMPLATE, build_tiny_tokenizer, tokenize_dataset, tokenize_record

FIXTURES = Path(__file__).parent / "fixtures" / "data"

# A template that closes assistant turns with no EOS of its own: EOS must be appended.
BRACKET_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                    "{% if add_generation_prompt %}[assistant]{% endif %}")
# A generation prompt ending in a space: byte-level BPE glues that space to the response's first word.
SPACE_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture(scope="module")
def plain():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def chatml():
    return build_tiny_tokenizer(chat_template=True)


def record(prompt, responses, rewards=None, row=None):
    rec = {"prompt": prompt, "responses": responses, "rewards": rewards or [float(-k) for k in range(len(responses))]}
    if row is not None:
        rec["row"] = row
    return rec


HH = record("\n\nHuman: What is 6 * 7?\n\nAssistant:", [" The answer is 42.", " The answer is 36."])


def test_plain_boundary_is_exact_and_eos_ends_each_response(plain):
    out = tokenize_record(HH, plain, max_length=128)
    assert out["prompt_ids"] == plain(HH["prompt"])["input_ids"]  # BOS + prompt, nothing else
    assert plain.decode(out["prompt_ids"]) == "<s>" + HH["prompt"]
    for ids, text in zip(out["response_ids"], HH["responses"]):
        assert ids[-1] == plain.eos_token_id
        assert ids[:-1] == plain(text, add_special_tokens=False)["input_ids"]
        assert plain.decode(ids) == text + "</s>"  # the shared words stay in the response
    assert out["prompt_truncated"] is False and out["rewards"] == HH["rewards"]


def test_chat_template_boundary_is_exact(chatml):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6 * 7?"}]
    rec = record(prompt, ["The answer is 42.", "The answer is 36."])
    out = tokenize_record(rec, chatml, max_length=128)
    assert chatml.decode(out["prompt_ids"]) == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n"
        "<|im_start|>assistant\n")
    for ids, text in zip(out["response_ids"], rec["responses"]):
        # the template's "\n" after <|im_end|> (= EOS) is cut: generation stops at EOS
        assert chatml.decode(ids) == text + "<|im_end|>"
        assert ids.count(chatml.eos_token_id) == 1 and ids[-1] == chatml.eos_token_id
        full = chatml.apply_chat_template(prompt + [{"role": "assistant", "content": text}], tokenize=False)
        full_ids = chatml(full, add_special_tokens=False)["input_ids"]
        assert out["prompt_ids"] + ids == full_ids[:-1]  # exactly the template's tokens, minus the trailing "\n"


def test_text_prompt_with_chat_template_is_one_user_message(chatml):
    out = tokenize_record(record("Hi there", ["Hello", "Go away"]), chatml, max_length=64)
    assert chatml.decode(out["prompt_ids"]) == "<s><|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_template_without_eos_gets_eos_appended():
    tok = build_tiny_tokenizer(chat_template=BRACKET_TEMPLATE)
    out = tokenize_record(record("Hi", ["The answer is 42.", "The answer"]), tok, max_length=64)
    assert tok.decode(out["prompt_ids"]) == "[user]Hi[assistant]"
    assert [tok.decode(ids) for ids in out["response_ids"]] == ["The answer is 42.</s>", "The answer</s>"]


def test_template_breaking_the_prefix_is_an_error():
    tok = build_tiny_tokenizer(chat_template=SPACE_TEMPLATE)
    with pytest.raises(DataError, match=r"^row 4: the chat template breaks the prompt/response boundary for "
                                        r"responses\[0\]"):
        tokenize_record(record("Hi", ["The answer", "The end"], row=4), tok, max_length=64)


def test_message_prompt_without_template_is_an_error(plain):
    with pytest.raises(DataError, match="^row 2: prompt is a message list but the tokenizer has no chat template"):
        tokenize_record(record([{"role": "user", "content": "q"}], ["a", "b"], row=2), plain, max_length=64)


def test_tokenizer_that_appends_eos_gets_no_eos_inside_the_prompt(plain):
    tok = build_tiny_tokenizer()
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    assert tok("Hi")["input_ids"][-1] == eos  # the modified tokenizer does append EOS
    out = tokenize_record(HH, tok, max_length=128)
    assert out["prompt_ids"] == tokenize_record(HH, plain, max_length=128)["prompt_ids"]
    assert eos not in out["prompt_ids"]


def test_left_truncation_keeps_prompt_end_bos_and_whole_responses(plain):
    long_prompt = "".join(f"word{i} " for i in range(60)) + "final question?"
    rec = record(long_prompt, ["short", "a somewhat longer response here"])
    full = tokenize_record(rec, plain, max_length=10_000)
    longest = max(len(ids) for ids in full["response_ids"])
    out = tokenize_record(rec, plain, max_length=longest + 12)
    assert out["response_ids"] == full["response_ids"]            # responses whole
    assert len(out["prompt_ids"]) + longest == longest + 12         # prompt fills the rest exactly
    assert out["prompt_ids"][0] == plain.bos_token_id               # BOS kept
    assert out["prompt_ids"][1:] == full["prompt_ids"][-11:]        # the END of the prompt kept
    assert plain.decode(out["prompt_ids"]).endswith("final question?")
    assert out["prompt_truncated"] and out["prompt_tokens_removed"] == len(full["prompt_ids"]) - 12
    capped = tokenize_record(rec, plain, max_length=10_000, max_prompt_length=5)
    assert capped["prompt_ids"] == [plain.bos_token_id] + full["prompt_ids"][-4:] and capped["prompt_truncated"]


def test_overlong_response_error_names_row_and_response(plain):
    rec = record("q", ["ok", "this response is far too long " * 5, "fine"], row=11)
    n = len(plain("this response is far too long " * 5, add_special_tokens=False)["input_ids"]) + 1
    with pytest.raises(DataError, match=rf"^row 11: responses\[1\] is over-long: {n} tokens \(EOS included\) plus at "
                                        r"least 1 prompt token exceed max_length=20"):
        tokenize_record(rec, plain, max_length=20)
    out = tokenize_record(rec, plain, max_length=20, on_overlong="drop")
    assert out["responses_dropped"] == 1 and out["rewards"] == [0.0, -2.0]
    assert [plain.decode(ids) for ids in out["response_ids"]] == ["ok</s>", "fine</s>"]
    with pytest.raises(ValueError, match="on_overlong must be one of"):
        tokenize_record(rec, plain, max_length=20, on_overlong="truncate")


def test_tokenize_dataset_reports_truncation_drops_and_lengths(plain):
    rows = [
        {"prompt": "p " * 40, "responses": ["a", "b"], "rewards": [1, 0]},                 # prompt truncated
        {"prompt": "q", "responses": ["x " * 40, "y"], "rewards": [1, 0]},                # one response dropped → row
        {"prompt": "r", "responses": ["x " * 40, "y", "z"], "rewards": [2, 1, 0]},        # one dropped, row kept
        {"prompt": "s", "responses": ["u", "v"], "rewards": [0, 1]},
    ]
    data, _ = records_from_list(rows)
    with pytest.raises(DataError, match=r"^row 1: responses\[0\] is over-long"):
        tokenize_dataset(data, plain, max_length=16)
    out, report = tokenize_dataset(data, plain, max_length=16, on_overlong="drop")
    assert out.column_names == ["prompt_ids", "response_ids", "rewards", "row"]
    assert out["row"] == [0, 2, 3]
    assert out[1]["rewards"] == [1.0, 0.0]
    assert (report.rows_in, report.rows_out, report.rows_dropped, report.responses_dropped) == (4, 3, 1, 2)
    assert report.prompts_truncated == 1
    singles = [tokenize_record(data[i], plain, max_length=16, on_overlong="drop") for i in (0, 2, 3)]
    assert [o["prompt_ids"] for o in singles] == out["prompt_ids"]
    assert [o["response_ids"] for o in singles] == out["response_ids"]
    prompt_lengths = [len(o["prompt_ids"]) for o in singles]
    response_lengths = [len(ids) for o in singles for ids in o["response_ids"]]
    assert report.prompt_length_max == max(prompt_lengths) == 16 - 2  # row 0: 16 minus "a"+EOS
    assert report.prompt_length_mean == pytest.approx(sum(prompt_lengths) / 3)
    assert report.response_length_max == max(response_lengths)
    assert report.response_length_mean == pytest.approx(sum(response_lengths) / len(response_lengths))
    assert report.sequence_length_max <= 16
    assert "rows dropped (< 2 responses left): 1" in "\n".join(report.summary())


def test_tokenize_dataset_from_fixtures_both_renderings(plain, chatml):
    data, _ = load_records(str(FIXTURES / "pairwise_messages.jsonl"))
    out, report = tokenize_dataset(data, chatml, max_length=64)
    assert report.rows_out == 2 and report.prompts_truncated == 0
    assert chatml.decode(out[0]["response_ids"][0]) == "Rome.<|im_end|>"
    data, _ = load_records(str(FIXTURES / "hh.jsonl"))
    out, _ = tokenize_dataset(data, plain, max_length=64)
    assert plain.decode(out[1]["prompt_ids"]) == "<s>" + data[1]["prompt"]
    assert plain.decode(out[1]["response_ids"][1]) == " The sky is falling.</s>"


def test_tokenize_dataset_multiprocess_matches_single(plain):
    data, _ = load_records(str(FIXTURES / "generic.jsonl"))
    single, _ = tokenize_dataset(data, plain, max_length=32)
    multi, _ = tokenize_dataset(data, plain, max_length=32, num_proc=2, batch_size=1)
    assert single.to_list() == multi.to_list()


@pytest.mark.parametrize("chat_template", [False, True])
def test_tiny_tokenizer_roundtrip_through_auto_tokenizer(tmp_path, chat_template):
    built = build_tiny_tokenizer(tmp_path / "tok", chat_template=chat_template)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert loaded.get_vocab() == built.get_vocab()
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (built.bos_token, built.eos_token, "<pad>")
    assert loaded.chat_template == (CHATML_TEMPLATE if chat_template else None)
    text = "Grüße, 世界! The answer is 42."
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: exact
    rec = record([{"role": "user", "content": "q"}] if chat_template else "q", ["a b", "c"])
    assert tokenize_record(rec, loaded, max_length=32) == tokenize_record(rec, built, max_length=32)


def test_tiny_tokenizer_is_deterministic():
    assert build_tiny_tokenizer().get_vocab() == build_tiny_tokenizer().get_vocab()

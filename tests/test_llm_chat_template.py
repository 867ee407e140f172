"""Conversational rows on the real 49,152-token SmolLM2 tokenizer: the prompt/response boundary is exact.

For generated conversations (an optional system message, one or more earlier user/assistant turns, a final user
turn) and a response, :func:`nca_lab.llm.tokenization.tokenize_record` must give prompt tokens equal to the chat
template's rendering with ``add_generation_prompt=True`` and response tokens equal to what the template produces
for the whole conversation after them, ending at ``<|im_end|>`` (the template's trailing newline after
``<|im_end|>`` is not part of the response: generation stops at EOS).  Where a response's first characters
would merge with the generation prompt's last token (two leading spaces, for instance), the boundary is not
exact and the row must be refused with a message naming it — never tokenised silently wrong.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nca_lab.llm.data import DataError, records_from_list
from nca_lab.llm.tokenization import tokenize_record

pytestmark = pytest.mark.slow  # needs the converted real model (session fixture)

# letters, digits, punctuation, spaces, newlines, accents, CJK, emoji: what real chat data holds
_ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"()+-*/=\n") +
                            ["é", "ü", "ß", "中", "文", "🙂", "—", "\t"])
_TEXT = st.text(_ALPHABET, min_size=1, max_size=40).filter(lambda s: s.strip())
# a response as a model writes one: starts with a visible character
_RESPONSE = st.tuples(st.sampled_from(list("AbZ7(\"é中🙂")), st.text(_ALPHABET, max_size=40)).map("".join)


@st.composite
def conversations(draw, response=_RESPONSE):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_TEXT)})
    for _ in range(draw(st.integers(0, 2))):  # earlier turns: multi-turn prompts
        messages += [{"role": "user", "content": draw(_TEXT)}, {"role": "assistant", "content": draw(_TEXT)}]
    messages.append({"role": "user", "content": draw(_TEXT)})
    return messages, draw(response)


def _ids(tokenizer, messages, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def tok(real_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_dir)


def _expected(tok, prompt, response) -> tuple[list[int], list[int]]:
    """Prompt tokens and response tokens as the template itself tokenises the conversation."""
    prompt_ids = _ids(tok, prompt, add_generation_prompt=True)
    full = _ids(tok, prompt + [{"role": "assistant", "content": response}])
    end = len(full) - 1 - full[::-1].index(tok.eos_token_id)  # the turn closes with <|im_end|>, then "\n"
    assert tok.decode(full[end + 1:]) == "\n"
    return prompt_ids, full[len(prompt_ids):end + 1]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=conversations())
def test_response_tokens_are_the_templates(tok, conv):
    prompt, response = conv
    record = {"prompt": prompt, "responses": [response, "other answer"], "rewards": [1.0, 0.0]}
    out = tokenize_record(record, tok, max_length=8192, row_index=0)
    prompt_ids, response_ids = _expected(tok, prompt, response)
    assert out["prompt_ids"] == prompt_ids
    assert out["response_ids"][0] == response_ids
    # independent of how the boundary is found: prompt + response is the template's whole conversation, minus
    # only the newline the template writes after <|im_end|>
    full = _ids(tok, prompt + [{"role": "assistant", "content": response}])
    assert out["prompt_ids"] + out["response_ids"][0] == full[:-1] and tok.decode(full[-1:]) == "\n"
    assert tok.decode(out["response_ids"][0]) == response + "<|im_end|>"
    assert out["response_ids"][0][-1] == tok.eos_token_id and tok.eos_token_id not in out["response_ids"][0][:-1]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=conversations(response=_TEXT))
def test_any_response_is_exact_or_refused(tok, conv):
    """Arbitrary responses (leading spaces, newlines, tabs): exact whenever the template's prompt tokens are a
    prefix of the conversation's, a DataError naming the row and response otherwise."""
    prompt, response = conv
    prompt_ids = _ids(tok, prompt, add_generation_prompt=True)
    full = _ids(tok, prompt + [{"role": "assistant", "content": response}])
    record = {"prompt": prompt, "responses": ["fine", response], "rewards": [1.0, 0.0]}
    if full[:len(prompt_ids)] == prompt_ids:
        out = tokenize_record(record, tok, max_length=8192, row_index=7)
        assert out["response_ids"][1] == _expected(tok, prompt, response)[1]
    else:
        with pytest.raises(DataError, match=r"row 7: .*responses\[1\]"):
            tokenize_record(record, tok, max_length=8192, row_index=7)


def test_a_merging_response_is_refused(tok):
    """Two leading spaces merge with the generation prompt's final newline on this tokenizer: refused."""
    record = {"prompt": "hi", "responses": ["  x", "y"], "rewards": [1.0, 0.0]}
    with pytest.raises(DataError, match="row 4: the chat template breaks the prompt/response boundary"):
        tokenize_record(record, tok, max_length=512, row_index=4)


def test_a_response_holding_the_end_of_turn_token_is_refused(tok):
    record = {"prompt": "hi", "responses": ["fine<|im_end|> and more", "y"], "rewards": [1.0, 0.0]}
    with pytest.raises(DataError, match=r"row 2: responses\[0\] contains the end-of-sequence token '<\|im_end\|>'"):
        tokenize_record(record, tok, max_length=512, row_index=2)


def test_text_prompt_on_a_chat_model_goes_through_the_template(tok):
    """The documented choice: a plain-string prompt becomes one user message, so the model sees the format it
    was tuned on (SmolLM2's template then adds its default system message)."""
    out = tokenize_record({"prompt": "What is 2 + 2?", "responses": ["4", "5"], "rewards": [1.0, 0.0]}, tok,
                          max_length=512)
    assert out["prompt_ids"] == _ids(tok, [{"role": "user", "content": "What is 2 + 2?"}],
                                     add_generation_prompt=True)
    text = tok.decode(out["prompt_ids"])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")


def test_assistant_message_responses_equal_string_responses(tok):
    """A response given as an assistant message (alone or in a one-element list) is its content."""
    prompt = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2 + 3?"}]
    rows = [{"prompt": prompt, "responses": ["5", "6"], "rewards": [1, 0]},
            {"prompt": prompt, "responses": [{"role": "assistant", "content": "5"},
                                             [{"role": "assistant", "content": "6"}]], "rewards": [1, 0]}]
    records, _ = records_from_list(rows)
    a, b = (tokenize_record(records[i], tok, max_length=512) for i in range(2))
    assert a["prompt_ids"] == b["prompt_ids"] and a["response_ids"] == b["response_ids"]
    with pytest.raises(DataError, match="row 0: responses"):
        records_from_list([{"prompt": prompt, "responses": [{"role": "user", "content": "5"}, "6"],
                            "rewards": [1, 0]}])

"""The free-text verifier of the real-model experiment (nca_lab.llm.real_model.prompts.score_text).

Scored on responses SmolLM2-135M-Instruct actually wrote (tests/fixtures/smollm2_outputs.json, each expected
score checked by hand against the rules) and on constructed edge cases of each rule: extra words, spacing,
markdown, a missing final line (partial credit), a wrong stated answer next to a right number, negatives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nca_lab.llm.real_model.prompts import chat_prompt, follows_format, score_text, spaced, stated_answer
from nca_lab.llm.study.task import Problem

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "smollm2_outputs.json").read_text())


def problem(expression: str) -> Problem:
    import re

    operands = tuple(int(x) for x in re.findall(r"\d+", expression))
    operators = tuple(re.findall(r"[+\-*]", expression))
    return Problem(operands, operators)


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=[c["why"][:40] for c in FIXTURE["cases"]])
def test_real_model_outputs(case):
    assert score_text(problem(case["expression"]), case["text"]) == case["score"]


def test_the_fixture_covers_every_score():
    assert {c["score"] for c in FIXTURE["cases"]} == {0.0, 0.5, 1.0}


@pytest.mark.parametrize("text,score", [
    ("Answer: 81", 1.0),
    ("answer:81", 1.0),                                # case and spacing
    ("  The result.\nANSWER :  81 ", 1.0),
    ("**Answer:** 81", 1.0),                           # markdown emphasis
    ("Answer: **81**.", 1.0),
    ("Answer = 81", 1.0),
    ("Answer: 80\nWait.\nAnswer: 81", 1.0),           # the last statement counts
    ("Answer: 81\nAnswer: 80", 0.0),
    ("10 * 7 = 70, 70 + 11 = 81.", 0.5),              # right number, no Answer line: partial credit
    ("The answer is 81", 0.5),
    ("It is 81. Answer: 80", 0.0),                    # a wrong stated answer is not rescued
    ("", 0.0),
    ("no numbers at all", 0.0),
    ("Answer: eighty-one", 0.0),
    ("Answer: 81, as computed.", 1.0),
    ("Answer: 70 + 11 = 81", 0.5),                    # no single N stated; the last number is right
    ("Answer: 81.5", 0.0),                            # not the integer 81 (last number 5)
    ("Answer: 81 * 1", 0.0),                          # an expression, not N; the last number 1 is wrong
])
def test_rules(text, score):
    assert score_text(problem("10*7+11"), text) == score


def test_negative_answers():
    p = problem("4-6-9")  # = -11
    assert p.answer == -11
    assert score_text(p, "4 - 6 = -2. -2 - 9 = -11.\nAnswer: -11") == 1.0
    assert score_text(p, "Answer: 11") == 0.0
    assert score_text(p, "so it is -11") == 0.5


def test_thousands_separators():
    p = problem("20*81")
    assert p.answer == 1620
    assert score_text(p, "20 * 81 = 1,620.\nAnswer: 1,620") == 1.0
    assert score_text(p, "it is 1,620") == 0.5


def test_format_and_prompt():
    assert follows_format("x\nAnswer: 3") and not follows_format("the answer is 3")
    assert stated_answer("Answer: 3 and Answer: -4") == -4
    assert spaced("9+8*6-1") == "9 + 8 * 6 - 1"
    messages = chat_prompt(problem("61+112"))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "Compute 61 + 112."
    # the worked example's own answer is right by the verifier (the example teaches the format)
    assert score_text(problem("47+38"), messages[2]["content"]) == 1.0


def test_the_chat_level_is_one_operation_and_its_splits_are_disjoint():
    from nca_lab.llm.study.task import load_splits

    splits = load_splits(level="chat")
    ids = {name: {p.id for p in ps} for name, ps in splits.items()}
    assert all(len(p.operators) == 1 and max(p.operands) <= 120 for ps in splits.values() for p in ps[:500])
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
    assert not (ids["validation"] & ids["test"])

"""The arithmetic task's verifier as an on-policy reward: ``python -m nca_lab.llm.train --online --reward arithmetic``.

:func:`arithmetic_reward` has the reward-function signature of :mod:`nca_lab.llm.rewards`
(``(prompts, responses, rows) -> list[float]``) and scores each response with :func:`nca_lab.llm.study.task.verify`
(1.0 correct, 0.5 × matched-steps fraction for a well-formed wrong answer, 0.0 malformed). The problem is read from
the row's ``problem_id`` (the expression, as :func:`nca_lab.llm.study.sampling.write_scored_jsonl` writes it) when
present, else from the prompt ``"Compute <expression>="``. A prompt-only data file of the task::

    {"prompt": "Compute 37+58-21*3=", "problem_id": "37+58-21*3", "answer": 32}
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nca_lab.llm.study.task import Problem, verify

__all__ = ["arithmetic_reward", "problem_from_expression", "problem_from_row"]

_EXPRESSION = re.compile(r"\d+(?:[+\-*]\d+)+")
_PROMPT = re.compile(r"Compute\s*(\d+(?:[+\-*]\d+)+)\s*=")


def problem_from_expression(expression: str) -> Problem:
    """``"37+58-21*3"`` -> the :class:`Problem`; ValueError if it is not such an expression."""
    if not isinstance(expression, str) or not _EXPRESSION.fullmatch(expression.strip()):
        raise ValueError(f"not an arithmetic expression of the task: {expression!r}")
    tokens = re.findall(r"\d+|[+\-*]", expression.strip())
    return Problem(tuple(int(t) for t in tokens[0::2]), tuple(tokens[1::2]))


def problem_from_row(prompt, row: dict | None) -> Problem:
    """The problem of a data row: ``row["problem_id"]`` if given, else parsed from a ``"Compute <expr>="`` prompt
    (a string, or the last user message of a message list)."""
    if row and isinstance(row.get("problem_id"), str):
        return problem_from_expression(row["problem_id"])
    text = prompt[-1]["content"] if isinstance(prompt, list) and prompt else prompt
    match = _PROMPT.search(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"prompt {text!r} holds no 'Compute <expression>=' and its row no problem_id")
    return problem_from_expression(match[1])


def arithmetic_reward(prompts: Sequence, responses: Sequence[str], rows: Sequence[dict]) -> list[float]:
    """The verifier's reward of each response (one problem per prompt, parsed once per distinct prompt)."""
    cache: dict[int, Problem] = {}
    out = []
    for prompt, response, row in zip(prompts, responses, rows):
        key = id(row)
        if key not in cache:
            cache[key] = problem_from_row(prompt, row)
        out.append(verify(cache[key], response))
    return out


arithmetic_reward.max_reward = 1.0

"""The arithmetic task phrased for an instruct model, and a verifier that scores free text.

**Problems** are the fixed splits of :mod:`nca_lab.llm.study.task` (level ``chat``: one operation on numbers up
to 120, e.g. ``61+112``, ``32*2``), so train, validation and test prompts are disjoint by construction.

**Prompt** (a chat conversation, rendered by the model's own chat template)::

    system:    You are a careful calculator. Work the problem out step by step, then write the final line
               exactly as 'Answer: N'.
    user:      Compute 47 + 38.                   (one worked example: the format and length of an answer)
    assistant: 47 + 38 = 85.\nAnswer: 85
    user:      Compute 61 + 112.

**Verifier** (:func:`score_text`), for free text, documented and tested on real SmolLM2 outputs:

* **1.0** — the response states the final answer in the requested form, ``Answer: N`` (case-insensitive;
  spaces, ``=`` instead of ``:``, markdown emphasis such as ``**Answer:** 11``, thousands separators and a
  trailing period allowed; N must end the statement — ``Answer: 70 + 11 = 81`` or ``Answer: 81.5`` state no
  integer N; the *last* such statement counts), and N is the true value;
* **0.5** — no ``Answer: N`` statement, but the last integer in the text is the true value (right result,
  format not followed: partial credit, so the K samples of a prompt differ in reward more often);
* **0.0** — an ``Answer: N`` statement with a wrong N (a clear wrong answer is not rescued by a correct
  number earlier in the text), no integer at all, or a last integer that is wrong.

:func:`follows_format` says whether a response contains an ``Answer: N`` statement (format compliance).
"""

from __future__ import annotations

import re

from nca_lab.llm.study.task import Problem

SYSTEM_PROMPT = ("You are a careful calculator. Work the problem out step by step, then write the final line "
                 "exactly as 'Answer: N'.")

# An integer as people write it: optional minus, digits, optional thousands separators ("1,620").
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)"
# "Answer: 11", "answer = -3", "**Answer:** 11", "Answer: **11**." — the last one in the text counts. N must end
# the statement: not followed by more digits, a decimal part or an operator ("Answer: 70 + 11 = 81" states no
# single N; "Answer: 81.5" is not the integer 81); "**" after N is markdown emphasis, not an operator.
_ANSWER = re.compile(r"answer\s*\**\s*[:=]\s*\**\s*(" + _NUMBER + r")(?!\d|,\d|\.\d|\s*(?:[-+/=×^]|\*(?!\*)))",
                     re.IGNORECASE)
_INTEGER = re.compile(_NUMBER)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def spaced(expression: str) -> str:
    """``9+8*6`` → ``9 + 8 * 6`` (how a person writes it to a chat model)."""
    return re.sub(r"([+\-*])", r" \1 ", expression)


# One worked example (few-shot): shows the format and the length of a good answer.
EXAMPLE = [{"role": "user", "content": "Compute 47 + 38."},
           {"role": "assistant", "content": "47 + 38 = 85.\nAnswer: 85"}]


def chat_prompt(problem: Problem) -> list[dict[str, str]]:
    """The conversation that asks ``problem``: system message, one worked example, the question."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, *EXAMPLE,
            {"role": "user", "content": f"Compute {spaced(problem.expression)}."}]


def stated_answer(text: str) -> int | None:
    """The N of the last ``Answer: N`` statement, or None."""
    found = _ANSWER.findall(text)
    return _int(found[-1]) if found else None


def follows_format(text: str) -> bool:
    return stated_answer(text) is not None


def score_text(problem: Problem, text: str) -> float:
    """The verifier reward of a free-text response (module docstring: 1.0, 0.5 or 0.0)."""
    stated = stated_answer(text)
    if stated is not None:
        return 1.0 if stated == problem.answer else 0.0
    numbers = _INTEGER.findall(text)
    return 0.5 if numbers and _int(numbers[-1]) == problem.answer else 0.0

"""One row's fields, checked as written: the error type, the skip report and the field parsers of
:mod:`nca_lab.llm.data` (which documents the row policy and re-exports every name here).

Every parser takes the value, the row index ``r`` and the field's name, and raises :class:`DataError` whose
message starts with ``row r: <field>`` (the loader renames ``row r`` to ``<file>: line N``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

# Reason strings used as report keys (one place, so tests and the trainer's logs agree).
FEWER_THAN_TWO = "fewer than 2 usable responses"
ALL_TIE = "all rewards tie"
NO_NUMERIC_RATING = "completion without numeric rating"
MISSING_COMPLETION = 'missing completion ("N/A" filler or null)'
DUPLICATE_SAME_REWARD = "a response repeated with the same reward"

# |R| above this is refused at load time: the trainer holds rewards as float32 (max 3.4e38) and the soft labels
# divide them by alpha (registry defaults down to 1e-4); up to 1e30, R / alpha and reward gaps stay finite in
# float32 for any alpha >= 1e-8, so an absurd reward fails here, naming its row, not at the first step.
MAX_ABS_REWARD = 1e30
# Chat roles a message may have: what every chat template renders. ("tool" messages are not supported: the
# records carry no tool calls for them to answer.)
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A row of preference data that cannot be used; the message names the row and the field.

    ``row`` (0-based index in the source), ``field`` and ``reason`` (a short category used to count skipped
    rows) are attributes; only the message travels through ``args``, so the error pickles across
    ``datasets.map(num_proc=...)`` workers.
    """

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None,
                 reason: str = "invalid row"):
        super().__init__(message)
        self.row = row
        self.field = field
        self.reason = reason


def _error(row: int, field_name: str, problem: str, reason: str) -> DataError:
    return DataError(f"row {row}: {field_name} {problem}", row=row, field=field_name, reason=reason)


@dataclass
class DataReport:
    """What loading did to the rows: counts by reason, for the trainer's log and for tests.

    ``dropped_rows`` / ``dropped_responses`` count what was removed; ``notes`` counts what was kept but is worth
    knowing (``"all rewards tie"``).  ``dropped`` merges both drop counters (their reason strings are distinct).
    """

    source: str = "<in-memory>"
    schema: str = ""
    rows_in: int = 0
    rows_out: int = 0
    responses_out: int = 0
    dropped_rows: dict[str, int] = field(default_factory=dict)
    dropped_responses: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # first messages of skipped invalid rows

    @property
    def dropped(self) -> dict[str, int]:
        return {**self.dropped_rows, **self.dropped_responses}

    def count_row_drop(self, reason: str) -> None:
        self.dropped_rows[reason] = self.dropped_rows.get(reason, 0) + 1

    def count_response_drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped_responses[reason] = self.dropped_responses.get(reason, 0) + n

    def count_note(self, note: str) -> None:
        self.notes[note] = self.notes.get(note, 0) + 1

    def summary(self) -> list[str]:
        """Human-readable lines (one fact each), e.g. for ``logger.info`` line by line."""
        lines = [f"data: {self.source} (schema {self.schema}): {self.rows_in} rows in, {self.rows_out} rows out, "
                 f"{self.responses_out} responses"]
        lines += [f"  dropped rows: {n} x {reason}" for reason, n in sorted(self.dropped_rows.items())]
        lines += [f"  dropped responses: {n} x {reason}" for reason, n in sorted(self.dropped_responses.items())]
        lines += [f"  kept, note: {n} x {note}" for note, n in sorted(self.notes.items())]
        lines += [f"  e.g. {message}" for message in self.examples]
        return lines

    def __str__(self) -> str:
        return "\n".join(self.summary())


# --------------------------------------------------------------------------------------------- field parsers


def _present(row: dict, key: str, r: int, where: str | None = None) -> Any:
    value = row.get(key)
    if value is None:
        raise _error(r, where or key, "is missing", "missing field")
    return value


def _reward(value: Any, r: int, field_name: str) -> float:
    """A finite float from a numeric reward; NaN/inf, strings and booleans are invalid."""
    if value is None:
        raise _error(r, field_name, "is missing", "missing field")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(r, field_name, f"is not a number ({value!r})", "non-numeric reward")
    value = float(value)
    if math.isnan(value):
        raise _error(r, field_name, "is NaN", "non-finite reward")
    if math.isinf(value):
        raise _error(r, field_name, f"is {value}", "non-finite reward")
    if abs(value) > MAX_ABS_REWARD:
        raise _error(r, field_name, f"is {value:g}, beyond the bound |reward| <= {MAX_ABS_REWARD:g} (rewards are "
                     "float32 in the trainer and divided by alpha in the soft labels; rescale them)",
                     "reward out of range")
    return value


def _rating(value: Any, r: int, field_name: str) -> float | None:
    """An UltraFeedback aspect rating: numbers or numeric strings; "N/A"/empty/null mean "not rated" (None)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text == "" or text.upper() == "N/A":
            return None
        try:
            value = float(text)
        except ValueError:
            raise _error(r, field_name, f"is not a number or \"N/A\" ({text!r})", "non-numeric reward") from None
    return _reward(value, r, field_name)


def _response(value: Any, r: int, field_name: str) -> str:
    """A response: a string, or one assistant message (``{"role": "assistant", "content": ...}``, alone or as
    a one-element list), whose content is the response text the chat template renders."""
    if value is None:
        raise _error(r, field_name, "is missing", "missing field")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if isinstance(value, dict):
        if value.get("role") != "assistant" or not isinstance(value.get("content"), str):
            raise _error(r, field_name, 'must be a string or one message {"role": "assistant", "content": str}',
                         "wrong type")
        value = value["content"]
    if not isinstance(value, str):
        raise _error(r, field_name, f"must be a string, got {type(value).__name__}", "wrong type")
    if not value.strip():
        raise _error(r, field_name, "is empty", "empty response")
    return value


def _messages(value: Any, r: int, field_name: str) -> list[dict[str, str]]:
    """A non-empty list of {"role": str, "content": str} messages, normalised to exactly those two keys."""
    if not isinstance(value, list) or not value:
        raise _error(r, field_name, "must be a non-empty list of messages", "wrong type")
    messages = []
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise _error(r, f"{field_name}[{j}]", f"must be a message dict, got {type(message).__name__}",
                         "wrong type")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise _error(r, f"{field_name}[{j}]", 'needs string "role" and "content"', "wrong type")
        if role not in ROLES:
            raise _error(r, f"{field_name}[{j}].role", f"is {role!r}; expected one of {', '.join(ROLES)}",
                         "unknown role")
        # e.g. "tool_calls" or "name": a template would render them, the records cannot keep them. (null values:
        # Arrow fills a struct field absent from this message with null.)
        extra = sorted(key for key, v in message.items() if key not in ("role", "content") and v is not None)
        if extra:
            raise _error(r, f"{field_name}[{j}]", f"has keys {extra} besides \"role\" and \"content\"; only "
                         "those two are supported", "wrong type")
        messages.append({"role": role, "content": content})
    return messages


def _prompt(value: Any, r: int, field_name: str = "prompt") -> str | list[dict[str, str]]:
    if value is None:
        raise _error(r, field_name, "is missing", "missing field")
    if isinstance(value, str):
        if not value.strip():
            raise _error(r, field_name, "is empty", "empty prompt")
        return value
    if isinstance(value, list):
        messages = _messages(value, r, field_name)
        if messages[-1]["role"] != "user":  # the response answers the last message
            raise _error(r, f"{field_name}[{len(messages) - 1}].role", f"is {messages[-1]['role']!r}; a prompt's "
                         "last message must be the user turn the responses answer", "prompt does not end in user")
        return messages
    raise _error(r, field_name, f"must be a string or a list of messages, got {type(value).__name__}",
                 "wrong type")

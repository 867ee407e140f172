"""Preference data: every supported schema converted to one record.

A *record* is one prompt with K ≥ 2 scored responses::

    {"prompt": str | list[{"role": str, "content": str}],
     "responses": list[str],     # K responses
     "rewards": list[float]}     # K data rewards R, higher is better

which is exactly what the loss contract consumes (``rewards`` becomes the ``[B, K]`` tensor R;
a pairwise preference is K = 2 with R = (1, 0)).

Supported schemas (``detect_schema`` picks one from the column names):

``ultrafeedback``  raw UltraFeedback (openbmb/UltraFeedback): ``instruction`` and ``completions[]`` with
                   ``response``; R = ``completions[i].<reward_field>``, default ``overall_score``; any
                   per-completion numeric field works (e.g. ``fine-grained_score``).  ``reward_field="ratings"``:
                   R = mean of the numeric ``annotations.<aspect>.Rating`` values (strings such as ``"4"`` or
                   numbers); ``"N/A"`` ratings are ignored and a completion left with no numeric rating is
                   dropped and counted.
``nca``            the NCA authors' layout: ``prompt``, ``A0..A{K-1}``, ``A{i}_score``; K is read from the
                   columns; the authors' filler ``"N/A"`` (or null) marks a missing completion, which is dropped
                   and counted.
``pairwise``       ``prompt``/``chosen``/``rejected`` as strings or message lists, R = (1, 0).  Without a
                   ``prompt`` field (or when ``chosen``/``rejected`` hold whole conversations) the prompt ends at
                   the last *turn boundary* the two share (see :func:`split_conversations`,
                   :func:`split_transcripts`), never at their character-level common prefix: that would move
                   shared response words ("The answer is ...") into the prompt and out of the loss.
``hh``             Anthropic HH transcripts (``chosen``/``rejected`` strings of ``\\n\\nHuman:`` /
                   ``\\n\\nAssistant:`` turns): prompt = the transcript up to and including the last shared
                   ``\\n\\nAssistant:``.  The prompt stays text by default; ``hh_as_messages=True`` turns it into
                   chat messages with :func:`hh_to_messages` (responses then lose their leading space).
                   **Trainer rule:** pass ``hh_as_messages=True`` when the tokenizer has a chat template (the
                   template then formats the turns as the model was tuned to see them), keep text otherwise (a
                   base model then sees the HH transcript format itself).
``generic``        JSONL ``{"prompt", "responses": [...], "rewards": [...]}``; the prompt is a string or a
                   message list (system, user and earlier assistant turns: a conversation), each response a
                   string or one assistant message (``{"role": "assistant", "content": ...}``, alone or in a
                   one-element list).

Row policy (``load_records`` / ``records_from_list``):

* An *invalid* row (missing field, NaN/inf/non-numeric/boolean reward, |reward| > ``MAX_ABS_REWARD`` = 1e30,
  K mismatch, empty or whitespace-only response, wrong type, a message role other than system/user/assistant, a
  message with keys besides role/content, a message-list prompt not ending in a user turn, chosen == rejected,
  one response text given two different rewards) stops loading with :class:`DataError` naming the row and the
  field.  With ``skip_invalid_rows=True`` it is dropped and counted by reason.  (An exact repeat of a response
  with the *same* reward is kept and noted.)
* How a row is named (one convention, in every message, tokenisation errors included): a JSON Lines file
  ``<file>: line N`` (the physical line, counted from 1); a JSON array file, a parquet file or a Hub dataset
  ``<source>: row i`` (counted from 0); in-memory rows ``row i`` (their index in the list), e.g.
  ``data.jsonl: line 4: A2_score is NaN``.  Local JSON is decoded one row at a time exactly as written
  (:func:`read_json_rows`), never through typed columns, so a value is judged by its own JSON type; an empty,
  blank-only, non-UTF-8 or malformed file, or a key given twice in one object, is a one-line
  :class:`DataError` naming file and line.
* A prompt left with fewer than 2 usable responses (after "N/A" fillers and unrated completions are dropped) is
  dropped and counted: no contrastive loss is defined for it, so training never meets it.
* A prompt whose rewards all tie is *kept* and counted as information ("all rewards tie"): the losses handle
  ties (pairwise losses skip tied pairs and give 0; InfoNCA/NCA use uniform soft labels), so dropping it would
  silently change the NCA/InfoNCA objectives.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Sequence

from nca_lab.llm.data_fields import (  # noqa: F401  (re-exported: the data API lives in nca_lab.llm.data)
    ALL_TIE, DUPLICATE_SAME_REWARD, FEWER_THAN_TWO, MAX_ABS_REWARD, MISSING_COMPLETION, NO_NUMERIC_RATING, ROLES,
    DataError, DataReport, _error, _messages, _present, _prompt, _rating, _response, _reward,
)
from nca_lab.llm.data_files import (  # noqa: F401
    _iter_rows, _local_files, _select_split, load_raw_dataset, read_json_rows,
)

SCHEMAS = ("ultrafeedback", "nca", "pairwise", "hh", "generic")

# Columns each schema needs before detect_schema picks it (shown in its error message).
_SCHEMA_COLUMNS = {
    "generic": ("prompt", "responses", "rewards"),
    "ultrafeedback": ("instruction", "completions"),
    "nca": ("prompt", "A0", "A0_score"),
    "pairwise": ("prompt", "chosen", "rejected"),
    "hh": ("chosen", "rejected"),
}

HUMAN_MARKER = "\n\nHuman:"
ASSISTANT_MARKER = "\n\nAssistant:"
_HH_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")
_NCA_RESPONSE = re.compile(r"^A(\d+)$")
_NCA_MISSING = "N/A"  # the NCA authors' filler for a completion that does not exist


# --------------------------------------------------------------------------------------------- detection


def detect_schema(column_names: list[str], first_row: dict | None = None) -> str:
    """The schema whose required columns are all present (see the module docstring).

    ``chosen``/``rejected`` without ``prompt`` are HH transcripts (``"hh"``) unless ``first_row`` shows message
    lists, which makes them implicit-prompt conversational ``"pairwise"`` data.
    """
    columns = set(column_names)
    if {"prompt", "responses", "rewards"} <= columns:
        return "generic"
    if {"instruction", "completions"} <= columns:
        return "ultrafeedback"
    if {"prompt", "A0", "A0_score"} <= columns:
        return "nca"
    if {"chosen", "rejected"} <= columns:
        if "prompt" in columns:
            return "pairwise"
        if first_row is not None and isinstance(first_row.get("chosen"), list):
            return "pairwise"
        return "hh"
    known = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in _SCHEMA_COLUMNS.items())
    raise ValueError(f"cannot detect the data schema from columns {sorted(columns)}; known schemas and the "
                     f"columns they need: {known}. Pass schema=... explicitly or rename the columns.")


# --------------------------------------------------------------------------------------------- turn splitting


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two transcripts sharing a prompt.

    The prompt is everything up to and including the last ``"\\n\\nAssistant:"`` lying inside the common
    prefix of the two strings; responses keep their text verbatim (HH responses start with a space).  A
    common prefix that ends mid-response is never used: responses beginning with the same words keep them.
    Raises ``ValueError`` when the two share no such marker.
    """
    common = len(os.path.commonprefix([chosen, rejected]))
    start = chosen.rfind(ASSISTANT_MARKER, 0, common)  # the marker must lie entirely in the shared prefix
    if start < 0:
        raise ValueError('chosen and rejected share no "\\n\\nAssistant:" turn boundary')
    end = start + len(ASSISTANT_MARKER)
    return chosen[:end], chosen[end:], rejected[end:]


def split_conversations(chosen: list[dict[str, str]], rejected: list[dict[str, str]]
                        ) -> tuple[list[dict[str, str]], dict[str, str], dict[str, str]]:
    """(prompt messages, chosen final message, rejected final message) of two conversations.

    The prompt is the longest common prefix of *messages* (whole messages compared), capped so that each
    conversation keeps at least one message; what is left of each must be exactly one assistant message.
    Raises ``ValueError`` when the conversations share no message or differ before their final assistant turn.
    """
    shared = 0
    limit = min(len(chosen), len(rejected)) - 1
    while shared < limit and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise ValueError("chosen and rejected share no prompt message")
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        rest = conversation[shared:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise ValueError(f"{name} differs from the other conversation before its final assistant turn "
                             f"(message {shared} onwards: roles {[m['role'] for m in rest]}); only the final "
                             "assistant turn may differ")
    return chosen[:shared], chosen[shared], rejected[shared]


def hh_to_messages(text: str) -> list[dict[str, str]]:
    """Split an Anthropic HH transcript into chat messages ("Human" → user, "Assistant" → assistant).

    Contents are stripped of surrounding whitespace.  A final empty assistant turn (a prompt ending with
    ``"\\n\\nAssistant:"``) is removed: a chat template's generation prompt plays its role.  Raises ``ValueError``
    when the text has no turn or starts with text before its first turn marker.
    """
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"HH transcript must start with a turn marker, found {parts[0][:40]!r}")
    if len(parts) < 3:
        raise ValueError('HH transcript has no "\\n\\nHuman:"/"\\n\\nAssistant:" turn')
    messages = [{"role": "user" if marker == HUMAN_MARKER else "assistant", "content": content.strip()}
                for marker, content in zip(parts[1::2], parts[2::2])]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


# --------------------------------------------------------------------------------------------- adapters
# Each adapter returns (prompt, [(field name, response, reward)], number of dropped responses by reason).


def _ultrafeedback(row: dict, r: int, reward_field: str, report: DataReport | None):
    prompt = _prompt(row.get("instruction"), r, "instruction")
    completions = _present(row, "completions", r)
    if not isinstance(completions, list):
        raise _error(r, "completions", f"must be a list, got {type(completions).__name__}", "wrong type")
    items, unrated = [], 0
    for i, completion in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(completion, dict):
            raise _error(r, where, f"must be a dict, got {type(completion).__name__}", "wrong type")
        if completion.get("response") is None:
            raise _error(r, where, 'has no "response"', "missing field")
        if reward_field == "ratings":
            ratings = _aspect_ratings(completion.get("annotations"), r, f"{where}.annotations")
            if not ratings:
                unrated += 1
                continue
            reward = sum(ratings) / len(ratings)
        else:
            if completion.get(reward_field) is None:
                raise _error(r, where, f'has no "{reward_field}"', "missing field")
            reward = _reward(completion[reward_field], r, f"{where}.{reward_field}")
        items.append((f"{where}.response", completion["response"], reward))
    if report is not None:
        report.count_response_drop(NO_NUMERIC_RATING, unrated)
    return prompt, items


def _aspect_ratings(annotations: Any, r: int, where: str) -> list[float]:
    """Numeric ``Rating`` values of an UltraFeedback ``annotations`` dict (aspect → {"Rating": ...})."""
    if annotations is None:
        return []
    if isinstance(annotations, dict):
        aspects = annotations.items()
    elif isinstance(annotations, list):  # a list of {"aspect"?, "Rating", ...} entries
        aspects = ((str(j), a) for j, a in enumerate(annotations))
    else:
        raise _error(r, where, f"must be a dict of aspects, got {type(annotations).__name__}", "wrong type")
    ratings = []
    for aspect, entry in aspects:
        if entry is None:  # Arrow fills an aspect absent from this completion with null
            continue
        if not isinstance(entry, dict):
            raise _error(r, f"{where}.{aspect}", f"must be a dict, got {type(entry).__name__}", "wrong type")
        value = _rating(entry.get("Rating"), r, f"{where}.{aspect}.Rating")
        if value is not None:
            ratings.append(value)
    return ratings


def _nca(row: dict, r: int, report: DataReport | None):
    prompt = _prompt(row.get("prompt"), r)
    indices = sorted(int(m.group(1)) for key in row if (m := _NCA_RESPONSE.match(key)))
    for expected, found in enumerate(indices):  # K comes from the columns, which must be A0..A{K-1}
        if expected != found:
            raise _error(r, f"A{expected}", f"is missing (columns A0..A{indices[-1]} expected)", "missing field")
    items, fillers = [], 0
    for i in indices:
        response = row.get(f"A{i}")
        if response is None or (isinstance(response, str) and response.strip() == _NCA_MISSING):
            fillers += 1  # its score is meaningless (often NaN) and ignored
            continue
        if f"A{i}_score" not in row:
            raise _error(r, f"A{i}_score", "is missing", "missing field")
        items.append((f"A{i}", response, _reward(row[f"A{i}_score"], r, f"A{i}_score")))
    if report is not None:
        report.count_response_drop(MISSING_COMPLETION, fillers)
    return prompt, items


def _generic(row: dict, r: int):
    prompt = _prompt(row.get("prompt"), r)
    responses, rewards = _present(row, "responses", r), _present(row, "rewards", r)
    for name, value in (("responses", responses), ("rewards", rewards)):
        if not isinstance(value, list):
            raise _error(r, f'"{name}"', f"must be a list, got {type(value).__name__}", "wrong type")
    if len(rewards) != len(responses):
        raise DataError(f'row {r}: "rewards" has {len(rewards)} entries but "responses" has {len(responses)}',
                        row=r, field="rewards", reason="length mismatch")
    return prompt, [(f"responses[{i}]", response, _reward(reward, r, f"rewards[{i}]"))
                    for i, (response, reward) in enumerate(zip(responses, rewards))]


def _pairwise(row: dict, r: int, *, transcripts_only: bool, as_messages: bool):
    chosen, rejected = _present(row, "chosen", r), _present(row, "rejected", r)
    if type(chosen) is not type(rejected) or not isinstance(chosen, (str, list)):
        raise _error(r, "chosen/rejected", "must both be strings or both message lists, got "
                     f"{type(chosen).__name__}/{type(rejected).__name__}", "wrong type")
    if transcripts_only and not isinstance(chosen, str):
        raise _error(r, "chosen", "must be an HH transcript string for schema 'hh' (message lists: use "
                     "schema 'pairwise')", "wrong type")
    if isinstance(chosen, list):
        chosen, rejected = _messages(chosen, r, "chosen"), _messages(rejected, r, "rejected")
        if any(m["role"] != "assistant" for m in chosen + rejected):
            # Whole conversations: the prompt is their shared message prefix (an explicit "prompt" column, as
            # in ultrafeedback_binarized, repeats its text and is superseded by the exact messages).
            try:
                prompt, chosen_msg, rejected_msg = split_conversations(chosen, rejected)
            except ValueError as e:
                raise DataError(f"row {r}: {e}", row=r, field="chosen/rejected",
                                reason="no shared turn boundary") from None
        else:
            if "prompt" not in row:
                raise _error(r, "prompt", "is missing and chosen/rejected hold only assistant messages",
                             "missing field")
            prompt = _prompt(row.get("prompt"), r)
            for name, messages in (("chosen", chosen), ("rejected", rejected)):
                if len(messages) != 1:
                    raise _error(r, name, f"holds {len(messages)} assistant messages; one response expected",
                                 "multi-turn response")
            chosen_msg, rejected_msg = chosen[0], rejected[0]
        return prompt, [("chosen", chosen_msg["content"], 1.0), ("rejected", rejected_msg["content"], 0.0)]
    if "prompt" in row:
        # Explicit prompt (TRL's standard layout): chosen/rejected are the responses, taken verbatim.
        return _prompt(row.get("prompt"), r), [("chosen", chosen, 1.0), ("rejected", rejected, 0.0)]
    try:
        prompt, chosen, rejected = split_transcripts(chosen, rejected)
    except ValueError as e:
        raise DataError(f"row {r}: {e}", row=r, field="chosen/rejected", reason="no shared turn boundary") from None
    if as_messages:
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if _HH_TURN.search(text):
                raise _error(r, name, "differs from the other transcript before its final Assistant turn; "
                             "with hh_as_messages=True only the final turn may differ", "multi-turn response")
        prompt = hh_to_messages(prompt)
        chosen, rejected = chosen.strip(), rejected.strip()
    return prompt, [("chosen", chosen, 1.0), ("rejected", rejected, 0.0)]


def _check_duplicates(names: list[str], responses: list[str], rewards: list[float], r: int,
                      report: DataReport | None) -> None:
    """One response text with two different rewards (pairwise: chosen == rejected) is contradictory: refused.
    Exact repeats with the same reward are kept (each is a sample) and noted."""
    first: dict[str, int] = {}
    repeats = 0
    for k, text in enumerate(responses):
        j = first.setdefault(text, k)
        if j == k:
            continue
        if rewards[j] == rewards[k]:
            repeats += 1
        elif {names[j], names[k]} == {"chosen", "rejected"}:
            raise _error(r, "chosen/rejected", "are the same response; one text cannot be both preferred and "
                         "rejected", "identical chosen and rejected")
        else:
            raise _error(r, names[k], f"repeats {names[j]} with a different reward ({rewards[k]:g} vs "
                         f"{rewards[j]:g}); one text cannot carry two rewards", "duplicate response, different rewards")
    if repeats and report is not None:
        report.count_note(DUPLICATE_SAME_REWARD)


def convert_row(row: dict, schema: str, *, reward_field: str | None = None, row_index: int,
                report: DataReport | None = None, hh_as_messages: bool = False) -> dict | None:
    """One source row → one record, or ``None`` when fewer than 2 usable responses remain.

    Raises :class:`DataError` (a ``ValueError``) naming ``row_index`` and the field for an invalid row.  When
    ``report`` is given, dropped responses, a dropped row and the "all rewards tie" note are counted in it.
    """
    r = row_index
    if schema == "ultrafeedback":
        prompt, items = _ultrafeedback(row, r, reward_field or "overall_score", report)
    elif reward_field is not None:
        raise ValueError(f"reward_field={reward_field!r} applies to schema 'ultrafeedback' only, not {schema!r}")
    elif schema == "nca":
        prompt, items = _nca(row, r, report)
    elif schema == "generic":
        prompt, items = _generic(row, r)
    elif schema in ("pairwise", "hh"):
        prompt, items = _pairwise(row, r, transcripts_only=schema == "hh", as_messages=hh_as_messages)
    else:
        raise ValueError(f"unknown schema {schema!r}; known schemas: {', '.join(SCHEMAS)}")
    responses = [_response(text, r, name) for name, text, _ in items]
    rewards = [reward for _, _, reward in items]
    _check_duplicates([name for name, _, _ in items], responses, rewards, r, report)
    if len(responses) < 2:
        if report is not None:
            report.count_row_drop(FEWER_THAN_TWO)
        return None
    if report is not None:
        if max(rewards) == min(rewards):
            report.count_note(ALL_TIE)
        report.responses_out += len(responses)
    return {"prompt": prompt, "responses": responses, "rewards": rewards}


# --------------------------------------------------------------------------------------------- loading


def _records_dataset(records: list[dict], rows: list[int], prompt_is_text: bool, where: list[str] | None = None):
    import datasets

    prompt_feature = (datasets.Value("string") if prompt_is_text
                      else datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}))
    features = {
        "prompt": prompt_feature,
        "responses": datasets.List(datasets.Value("string")),
        "rewards": datasets.List(datasets.Value("float64")),
        "row": datasets.Value("int64"),
    }
    columns = {
        "prompt": [rec["prompt"] for rec in records],
        "responses": [rec["responses"] for rec in records],
        "rewards": [rec["rewards"] for rec in records],
        "row": rows,
    }
    if where is not None:  # "<file>: line N" of each kept row, for the tokeniser's errors
        features["where"] = datasets.Value("string")
        columns["where"] = [where[r] for r in rows]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _relabel(e: DataError, r: int, label: str) -> DataError:
    """``e`` (whose message starts with ``row r``, as every :func:`convert_row` error does) named by ``label``."""
    prefix = f"row {r}"
    message = str(e)
    message = label + message[len(prefix):] if message.startswith(prefix) else f"{label}: {message}"
    return DataError(message, row=e.row, field=e.field, reason=e.reason)


def _convert_rows(rows: Iterable[dict], schema: str, report: DataReport, *, reward_field: str | None,
                  skip_invalid_rows: bool, hh_as_messages: bool, where: Sequence[str] | None = None):
    """Convert every row (one pass, O(total size)); returns the records ``datasets.Dataset``.

    ``where[r]``: how errors name row ``r`` (e.g. ``"data.jsonl: line 4"``); default ``"row r"``.
    """
    records, kept_rows = [], []
    prompt_kind: tuple[bool, int] | None = None  # (prompt is text, first row showing it)
    label = (lambda r: f"row {r}") if where is None else where.__getitem__
    for r, row in enumerate(rows):
        report.rows_in += 1
        try:
            record = convert_row(row, schema, reward_field=reward_field, row_index=r, report=report,
                                 hh_as_messages=hh_as_messages)
        except DataError as e:
            if where is not None:
                e = _relabel(e, r, label(r))
            if not skip_invalid_rows:
                raise e from None
            report.count_row_drop(f"invalid row: {e.reason}")
            if len(report.examples) < 5:
                report.examples.append(str(e))
            continue
        if record is None:
            continue
        is_text = isinstance(record["prompt"], str)
        if prompt_kind is None:
            prompt_kind = (is_text, r)
        elif prompt_kind[0] != is_text:
            kinds = {True: "a text prompt", False: "a message-list prompt"}
            raise DataError(f"{label(r)}: prompt is {kinds[is_text]} but {label(prompt_kind[1])} has "
                            f"{kinds[prompt_kind[0]]}; a dataset must use one prompt form", row=r, field="prompt",
                            reason="mixed prompt forms")
        records.append(record)
        kept_rows.append(r)
    report.rows_out = len(records)
    if not records:
        dropped = "; ".join(f"{n} x {reason}" for reason, n in sorted(report.dropped_rows.items())) or "none dropped"
        first = f" (first: {report.examples[0]})" if report.examples else ""
        raise DataError(f"no usable rows: {report.rows_in} rows in, 0 out ({dropped}){first}",
                        reason="no usable rows")
    return _records_dataset(records, kept_rows, prompt_kind[0], None if where is None else list(where))


def records_from_list(rows: list[dict], schema: str | None = None, *, reward_field: str | None = None,
                      skip_invalid_rows: bool = False, hh_as_messages: bool = False, source: str = "<in-memory>"):
    """In-memory rows → (records ``datasets.Dataset``, :class:`DataReport`); see :func:`load_records`.

    Errors name a row by its 0-based index in ``rows`` (``row 3: ...``)."""
    if not rows:
        raise ValueError("rows is empty")
    if schema is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        schema = detect_schema(columns, rows[0])
    report = DataReport(source=source, schema=schema)
    dataset = _convert_rows(rows, schema, report, reward_field=reward_field, skip_invalid_rows=skip_invalid_rows,
                            hh_as_messages=hh_as_messages)
    return dataset, report


def load_records(source: str, *, schema: str | None = None, reward_field: str | None = None,
                 split: str = "train", skip_invalid_rows: bool = False, hh_as_messages: bool = False):
    """Load preference data and convert it to records.

    ``source``: a local json/jsonl/parquet file, a folder of such files, or a Hub dataset id.  Returns
    ``(dataset, report)``: a ``datasets.Dataset`` with columns ``prompt`` (text or messages, one form per
    dataset), ``responses`` (K strings), ``rewards`` (K floats), ``row`` (the 0-based source row, over all files
    of a folder, so later errors can name it) and ``where`` (the row's name in errors: ``"<file>: line N"`` for
    JSON Lines, 1-based; ``"<file>: row i"`` for a JSON array, a parquet file or a Hub dataset, 0-based), and a
    :class:`DataReport`.  Local JSON is decoded row by row as written (:func:`read_json_rows`).  See the module
    docstring for the row policy.
    """
    if os.path.exists(source) and _local_files(source)[0] == "json":
        _, files = _local_files(source)
        rows, where, skipped = [], [], ([] if skip_invalid_rows else None)
        for f in files:
            file_rows, file_where = read_json_rows(f, skipped)
            rows += file_rows
            where += file_where
        try:
            keep = _select_split(len(rows), split)
        except (ValueError, AssertionError) as e:
            raise ValueError(f"{source}: split {split!r}: {e}") from None
        if len(keep) != len(rows):
            rows, where = [rows[i] for i in keep], [where[i] for i in keep]
        if not rows:
            first = f" (first: {skipped[0]})" if skipped else ""
            raise DataError(f"{source}: no usable rows: split {split!r} selects no readable row{first}",
                            reason="no usable rows")
        if schema is None:
            schema = detect_schema(list(dict.fromkeys(key for row in rows for key in row)), rows[0])
        source_rows: Iterable[dict] = rows
    else:
        raw = load_raw_dataset(source, split)
        if schema is None:
            schema = detect_schema(raw.column_names, raw[0] if len(raw) else None)
        source_rows, where = _iter_rows(raw), [f"{source}: row {i}" for i in range(len(raw))]
        skipped = None
    report = DataReport(source=source, schema=schema)
    for e in skipped or ():  # lines that are no row at all (malformed JSON), dropped under skip_invalid_rows
        report.rows_in += 1
        report.count_row_drop(f"invalid row: {e.reason}")
        if len(report.examples) < 5:
            report.examples.append(str(e))
    try:
        dataset = _convert_rows(source_rows, schema, report, reward_field=reward_field,
                                skip_invalid_rows=skip_invalid_rows, hh_as_messages=hh_as_messages, where=where)
    except DataError as e:
        if e.reason != "no usable rows":
            raise
        # name the source too: with --eval-data, the message alone does not say which file it is about
        raise DataError(f"{source}: {e}", row=e.row, field=e.field, reason=e.reason) from None
    return dataset, report

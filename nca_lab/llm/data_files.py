"""Reading the rows of a data source: local JSON/JSON Lines decoded row by row as written, parquet and Hub
datasets through ``datasets``; split selection.  Used by :mod:`nca_lab.llm.data` (which re-exports these names).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from nca_lab.llm.data_fields import DataError

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _iter_rows(dataset, batch_size: int = 1024) -> Iterator[dict]:
    """Rows of a ``datasets.Dataset`` as dicts, decoded a batch at a time (much faster than row indexing)."""
    for batch in dataset.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def _local_files(source: str) -> tuple[str, list[str]]:
    """(datasets builder name, files) for a local file or a folder of json/jsonl/parquet files."""
    if os.path.isdir(source):
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(source) for name in names
                       if os.path.splitext(name)[1].lower() in _LOCAL_FORMATS)
        if not files:
            raise ValueError(f"folder {source!r} holds no {'/'.join(sorted(_LOCAL_FORMATS))} files")
    else:
        files = [source]
    builders = {_LOCAL_FORMATS.get(os.path.splitext(f)[1].lower()) for f in files}
    if None in builders:
        raise ValueError(f"unsupported data file {source!r}; use {', '.join(sorted(_LOCAL_FORMATS))}")
    if len(builders) > 1:
        raise ValueError(f"folder {source!r} mixes json and parquet files; use one format per folder")
    return builders.pop(), files


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``json.loads`` object hook: a key given twice in one object (plain ``json`` silently keeps the last)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def _json_error(path: str, line: int, text: str, e: json.JSONDecodeError) -> DataError:
    hint = " (a trailing comma after the row?)" if e.msg == "Extra data" and text[e.pos:].strip() == "," else ""
    return DataError(f"{path}: line {line}: malformed JSON: {e.msg} at column {e.colno}{hint}", field=None,
                     reason="malformed JSON")


def read_json_rows(path: str, skipped: list[DataError] | None = None) -> tuple[list[dict], list[str]]:
    """The rows of a local ``.json``/``.jsonl`` file, each decoded by ``json.loads`` exactly as written, and
    where each one is: ``"<path>: line N"`` (JSON Lines, N counted from 1, blank lines skipped) or
    ``"<path>: row i"`` (a JSON array of row objects, i counted from 0).

    Every row is checked as written: no column type is shared between rows (a reader that builds typed columns
    would turn a string reward "8.5" in one row into 8.5, or a NaN into null).  An empty, blank-only, non-UTF-8
    or malformed file, or a row that is not a JSON object, raises :class:`DataError` naming the file and line;
    with a ``skipped`` list given, a malformed JSON Lines line or a row that is not an object is appended to it
    instead (``--skip-invalid-rows``), the file's other lines are still read.
    """
    data = open(path, "rb").read()
    if not data:
        raise DataError(f"{path}: the file is empty (0 bytes); it holds no rows", reason="empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
                        "data files must be UTF-8", reason="not UTF-8") from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark
    if not text.strip():
        raise DataError(f"{path}: the file holds only blank lines; it holds no rows", reason="empty file")
    if text.lstrip().startswith("["):  # one JSON array of row objects
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise _json_error(path, e.lineno, text, e) from None
        except _DuplicateKey as e:
            raise DataError(f"{path}: key {e.args[0]!r} appears twice in one object; which value is meant is "
                            "ambiguous", reason="duplicate key") from None
        if not value:
            raise DataError(f"{path}: the file holds an empty JSON array; it holds no rows", reason="empty file")
        rows, where = [], []
        for i, row in enumerate(value):
            if not isinstance(row, dict):
                error = DataError(f"{path}: row {i}: a row must be a JSON object, got {_json_type(row)}", row=i,
                                  reason="wrong type")
                if skipped is None:
                    raise error
                skipped.append(error)
                continue
            rows.append(row)
            where.append(f"{path}: row {i}")
        return rows, where
    rows, where = [], []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            error = DataError(f"{path}: line {n}: key {e.args[0]!r} appears twice in one object; which value is "
                              "meant is ambiguous", reason="duplicate key")
        except json.JSONDecodeError as e:
            if n == 1 and line.strip() == "{":
                raise DataError(f"{path}: line 1: a JSON object spread over several lines; use JSON Lines (one row "
                                "object per line) or a JSON array of row objects", reason="malformed JSON") from None
            error = _json_error(path, n, line, e)
        else:
            error = None if isinstance(row, dict) else DataError(
                f"{path}: line {n}: a row must be a JSON object, got {_json_type(row)}", reason="wrong type")
        if error is not None:
            if skipped is None:
                raise error from None
            skipped.append(error)
            continue
        rows.append(row)
        where.append(f"{path}: line {n}")
    return rows, where


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _select_split(n: int, split: str) -> list[int]:
    """Row indices of ``split`` ("train", "train[:100]", "train[10%:]", ...) of a local source of ``n`` rows (a
    local source is one split named "train", as in ``datasets``)."""
    import datasets

    indices: list[int] = []
    for part in datasets.ReadInstruction.from_spec(split).to_absolute({"train": n}):
        indices.extend(range(part.from_, part.to))
    return indices


def load_raw_dataset(source: str, split: str = "train"):
    """The source rows as a ``datasets.Dataset``: a local file/folder, else a Hugging Face Hub dataset id.

    Local files form one split named "train" (``split`` may still slice it, e.g. ``"train[:100]"``).  (The
    trainer reads local JSON through :func:`read_json_rows`, which checks each row as written.)
    """
    import datasets

    if os.path.exists(source):
        builder, files = _local_files(source)
        for f in files:
            if os.path.getsize(f) == 0:
                raise DataError(f"{f}: the file is empty (0 bytes); it holds no rows", reason="empty file")
        try:
            dataset = datasets.load_dataset(builder, data_files={"train": files}, split=split)
        except datasets.exceptions.DatasetGenerationError as e:
            # A malformed file (broken JSON line, a column whose type changes between rows): the reader's
            # own message (e.g. "JSON parse error: ... in row 2") sits in the cause, not in e itself.
            cause = e.__cause__ or e
            raise ValueError(f"cannot read {source!r} as {builder}: {str(cause).strip() or type(cause).__name__}"
                             ) from e
        if len(dataset) == 0:
            raise DataError(f"{source}: holds no rows", reason="empty file")
        return dataset
    if source.startswith((".", "/", "~")) or os.path.splitext(source)[1].lower() in _LOCAL_FORMATS:
        raise FileNotFoundError(f"data file or folder {source!r} does not exist")
    return datasets.load_dataset(source, split=split)  # hub id (needs network)

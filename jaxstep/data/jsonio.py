"""Reading JSON records from files, with errors that name the file and the line.

`.jsonl` (and any other extension): one JSON object per non-blank line.
`.json`: one object, a list of objects, or several objects one after another
(pretty-printed files concatenated), each reported with the line it starts on.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

from jaxstep import paths
from jaxstep.data.problem import DataError, ErrorPolicy

JsonRecord = dict[str, Any]


def iter_records(path: str | os.PathLike, policy: ErrorPolicy) -> Iterator[tuple[int | None, JsonRecord]]:
    """Yields (line, record) for every JSON object in a file; bad ones go to `policy`."""
    path = os.fspath(path)
    try:
        with paths.open(path, "rb") as f:  # local paths and URLs
            raw = f.read()
    except OSError as e:
        raise DataError(path, None, f"cannot read file: {e.strerror or e}") from e
    if path.endswith(".json"):
        yield from _iter_json_document(path, raw, policy)
    else:
        yield from _iter_json_lines(path, raw, policy)


def _decode(path: str, line: int | None, raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8-sig" if line in (None, 1) else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, line, f"not valid UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r})") from e


def _iter_json_lines(path: str, raw: bytes, policy: ErrorPolicy):
    for index, line_bytes in enumerate(raw.split(b"\n")):
        line = index + 1
        if not line_bytes.strip():
            continue
        try:
            text = _decode(path, line, line_bytes)
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(path, line, f"invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(record, dict):
                raise DataError(path, line, f"expected a JSON object, got {type(record).__name__}")
        except DataError as e:
            policy.handle(e)
            continue
        yield line, record


def _iter_json_document(path: str, raw: bytes, policy: ErrorPolicy):
    # A whole-document problem (bad encoding, broken JSON) makes the file one bad record.
    try:
        text = _decode(path, None, raw)
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            objects = _concatenated_objects(path, text)
        else:
            if isinstance(doc, dict):
                objects = [(1, doc)]
            elif isinstance(doc, list):
                objects = [(None, item) for item in doc]
            else:
                raise DataError(path, 1, f"expected a JSON object or list, got {type(doc).__name__}")
    except DataError as e:
        policy.handle(e)
        return
    for k, (line, record) in enumerate(objects):
        if not isinstance(record, dict):
            policy.handle(DataError(path, line, f"record {k}: expected a JSON object, got {type(record).__name__}"))
            continue
        yield line, record


def _concatenated_objects(path: str, text: str) -> list[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    objects = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            return objects
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})") from e
        objects.append((text.count("\n", 0, pos) + 1, obj))
        pos = end


def get_field(record: JsonRecord, key: str, kinds: type | tuple[type, ...], path: str,
              line: int | None, *, optional: bool = False) -> Any:
    """record[key] checked against `kinds`; a DataError naming the field otherwise."""
    if key not in record or record[key] is None:
        if optional:
            return None
        raise DataError(path, line, f"missing field {key!r} (fields present: {sorted(record)})")
    value = record[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise DataError(path, line, f"field {key!r} should be {names}, got {type(value).__name__}")
    return value

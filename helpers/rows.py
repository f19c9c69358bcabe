"""Reading rows from a CSV (with a header) or JSON-lines file, line by line, each bad row named by its line.

Shared by the bulk import and the e-mail batch: one reader, the same rules for what a readable row is.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from helpers.errors import PermanentError


def detect_format(path: Path, fmt: str | None) -> str:
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if fmt == "csv":
        return "csv"
    raise PermanentError(f"cannot tell the format of {path.name}: pass fmt='csv' or fmt='jsonl'")


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row) for each row, or (line number, error message) for one that cannot be read.

    Invalid UTF-8 rejects the row it is on rather than the whole file.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        if fmt == "jsonl":
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if _has_surrogates(line):
                    yield number, "not valid UTF-8"
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    yield number, f"not valid JSON: {exc}"
                    continue
                yield number, row if isinstance(row, dict) else "not a JSON object"
            return
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            return
        if _has_surrogates("".join(header)) or len(set(header)) != len(header) or not all(header):
            raise PermanentError(f"{path.name}: the CSV header must be unique, non-empty UTF-8 column names")
        last = reader.line_num
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                number, last = last + 1, reader.line_num
                yield number, f"CSV error: {exc}"
                continue
            number, last = last + 1, reader.line_num
            if not values:
                continue
            if len(values) != len(header):
                yield number, f"expected {len(header)} fields, found {len(values)}"
            elif any(_has_surrogates(v) for v in values):
                yield number, "not valid UTF-8"
            else:
                yield number, dict(zip(header, values))


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True

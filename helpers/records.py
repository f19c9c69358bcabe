"""Bulk upsert of a large CSV or JSON-lines file into the `nightshift_records` table.

Rows go in batches, one transaction per batch, with `insert_many(...).on_conflict(...)`: a crash loses at
most the batch in flight, and running the file again finishes the job. Rows already stored with the same
content are left alone and counted as unchanged, so a second run of the same file writes nothing.
Bad rows (unreadable, missing key or required fields, key repeated in the file) are rejected with their
line numbers; the good rows around them are still imported.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import peewee

from helpers import db as dbh
from helpers.errors import PermanentError
from helpers.rows import detect_format, read_rows

Progress = Callable[[int, "int | None", str], None]
MAX_KEY = 500
MAX_ERRORS_REPORTED = 100


class StoredRecord(dbh.HelperModel):
    """One record of a data set, its fields as canonical JSON text (portable between SQLite and PostgreSQL)."""

    dataset = peewee.CharField(max_length=200)
    key = peewee.CharField(max_length=MAX_KEY)
    data = peewee.TextField()
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "nightshift_records"
        primary_key = peewee.CompositeKey("dataset", "key")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def import_records(database: peewee.Database, path: str | Path, dataset: str | None = None, key: str = "id",
                   fmt: str | None = None, required: Sequence[str] = (), batch_size: int = 1000,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Upsert the rows of `path` into data set `dataset` (default: the file's name without extension).

    Returns {"dataset", "rows", "inserted", "updated", "unchanged", "rejected", "errors"}; `errors` lists the
    first 100 rejected rows as {"line", "error"}.
    """
    source = Path(path)
    if not source.is_file():
        raise PermanentError(f"input file not found: {source}")
    fmt = detect_format(source, fmt)
    dataset = dataset or source.stem
    if not 1 <= batch_size <= 10_000:
        raise PermanentError("batch_size must be from 1 to 10000")
    Record = dbh.bind(StoredRecord, database)
    total_lines = _count_lines(source)

    counts = {"rows": 0, "inserted": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    errors: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    batch: list[tuple[str, str]] = []

    def reject(number: int, message: str) -> None:
        counts["rejected"] += 1
        if len(errors) < MAX_ERRORS_REPORTED:
            errors.append({"line": number, "error": message})

    def flush(number: int) -> None:
        if batch:
            for name, value in _upsert(database, Record, dataset, batch).items():
                counts[name] += value
            batch.clear()
        if progress:
            progress(number, total_lines, f"{counts['rows']} rows read, {counts['rejected']} rejected")

    number = 0
    for number, row in read_rows(source, fmt):
        counts["rows"] += 1
        if isinstance(row, str):
            reject(number, row)
            continue
        problem = _check(row, key, required)
        if problem:
            reject(number, problem)
            continue
        record_key = str(row[key])
        if record_key in first_line:
            reject(number, f"duplicate {key} {record_key!r} (first on line {first_line[record_key]})")
            continue
        first_line[record_key] = number
        batch.append((record_key, json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))))
        if len(batch) >= batch_size:
            flush(number)
    flush(number)
    return {"dataset": dataset, **counts, "errors": errors}


def _check(row: dict[str, Any], key: str, required: Sequence[str]) -> str | None:
    value = row.get(key)
    if value is None or value == "" or isinstance(value, (dict, list, bool)):
        return f"missing or unusable {key!r}"
    if len(str(value)) > MAX_KEY:
        return f"{key!r} is longer than {MAX_KEY} characters"
    empty = [name for name in required if row.get(name) in (None, "")]
    if empty:
        return "missing required field(s): " + ", ".join(empty)
    return None


def _upsert(database: peewee.Database, Record: type[StoredRecord], dataset: str,
            batch: list[tuple[str, str]]) -> dict[str, int]:
    """Write one batch in one transaction: read the batch's stored rows, then upsert only new or changed ones.

    Reading first is what lets the report tell inserted from updated from unchanged on SQLite and PostgreSQL
    alike, and makes a re-run of the same file a read-only pass.
    """
    with dbh.writing(database):
        stored = dict(Record.select(Record.key, Record.data)
                      .where((Record.dataset == dataset) & (Record.key.in_([k for k, _ in batch]))).tuples())
        now = _now()
        changes = [(dataset, k, data, now) for k, data in batch if stored.get(k) != data]
        if changes:
            (Record.insert_many(changes, fields=[Record.dataset, Record.key, Record.data, Record.updated_at])
             .on_conflict(conflict_target=[Record.dataset, Record.key], preserve=[Record.data, Record.updated_at])
             .execute())
    updated = sum(1 for _, k, _, _ in changes if k in stored)
    return {"inserted": len(changes) - updated, "updated": updated, "unchanged": len(batch) - len(changes)}


def _count_lines(path: Path) -> int:
    """Lines in the file, for progress (a cheap binary scan)."""
    count = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return count


def dataset_rows(database: peewee.Database, dataset: str) -> dict[str, dict[str, Any]]:
    """Every stored record of `dataset` by key (reports and tests)."""
    Record = dbh.bind(StoredRecord, database)
    return {r.key: json.loads(r.data) for r in Record.select().where(Record.dataset == dataset)}


def dataset_count(database: peewee.Database, dataset: str) -> int:
    """How many records `dataset` holds."""
    Record = dbh.bind(StoredRecord, database)
    return Record.select().where(Record.dataset == dataset).count()

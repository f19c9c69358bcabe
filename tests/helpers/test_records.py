"""Bulk upserts of CSV and JSON-lines files into real SQLite/PostgreSQL tables."""
from __future__ import annotations

import json
import time
from pathlib import Path

import peewee
import pytest

from helpers import records
from helpers.errors import PermanentError
from helper_fixtures import database  # noqa: F401  (fixture)


def test_csv_import_rejects_bad_rows_by_line(database, tmp_path: Path) -> None:
    source = tmp_path / "customers.csv"
    source.write_bytes(
        b"id,name,city\n"              # line 1
        b"1,Ann,Oslo\n"                # 2
        b"2,Bob\n"                     # 3 too few fields
        b",Nobody,Rome\n"              # 4 no key
        b"3,\"Cy, Jr.\",\"Multi\nline\"\n"  # 5-6 quoted newline
        b"4,D\xe9sir\xe9e,Paris\n"     # 7 Latin-1, not UTF-8
        b"1,Ann twice,Oslo\n"          # 8 duplicate key
        b"5,Eve,\n")                   # 9 empty city: fine unless required
    result = records.import_records(database, source, key="id")
    assert {k: result[k] for k in ("dataset", "rows", "inserted", "updated", "unchanged", "rejected")} == {
        "dataset": "customers", "rows": 7, "inserted": 3, "updated": 0, "unchanged": 0, "rejected": 4}
    assert [(e["line"], e["error"].split(" ")[0]) for e in result["errors"]] == [
        (3, "expected"), (4, "missing"), (7, "not"), (8, "duplicate")]
    assert "first on line 2" in result["errors"][3]["error"]
    stored = records.dataset_rows(database, "customers")
    assert stored["3"] == {"id": "3", "name": "Cy, Jr.", "city": "Multi\nline"}
    assert sorted(stored) == ["1", "3", "5"]

    strict = records.import_records(database, source, key="id", required=["city"])
    assert (strict["inserted"], strict["unchanged"], strict["rejected"]) == (0, 2, 5)


def test_jsonl_import_insert_update_unchanged(database, tmp_path: Path) -> None:
    source = tmp_path / "products.jsonl"
    rows = [{"sku": "a", "price": 1}, {"sku": "b", "price": 2, "tags": ["x"]}, {"sku": "c", "price": 3}]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n{broken\n[1, 2]\n{\"price\": 9}\n")
    first = records.import_records(database, source, key="sku", batch_size=2)
    assert (first["inserted"], first["updated"], first["unchanged"], first["rejected"]) == (3, 0, 0, 3)
    assert [e["line"] for e in first["errors"]] == [5, 6, 7]

    rows[1]["price"] = 20
    source.write_text("\n".join(json.dumps(r) for r in reversed(rows)) + "\n")  # key order/row order irrelevant
    second = records.import_records(database, source, dataset="products", key="sku")
    assert (second["inserted"], second["updated"], second["unchanged"], second["rejected"]) == (0, 1, 2, 0)
    assert records.dataset_rows(database, "products")["b"] == {"sku": "b", "price": 20, "tags": ["x"]}


def test_bad_inputs_are_permanent(database, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="not found"):
        records.import_records(database, tmp_path / "missing.csv")
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(PermanentError, match="format"):
        records.import_records(database, tmp_path / "data.xml")
    (tmp_path / "dup.csv").write_text("id,id\n1,2\n")
    with pytest.raises(PermanentError, match="header"):
        records.import_records(database, tmp_path / "dup.csv")


def write_big_csv(path: Path, rows: int) -> set[int]:
    """`rows` data rows; every 997th has no id and every 1009th has a missing field. Returns bad line numbers."""
    bad = set()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("id,name,email,score\n")
        for i in range(rows):
            line = i + 2
            if i % 997 == 500:
                handle.write(f",nameless,x@example.com,{i}\n")
                bad.add(line)
            elif i % 1009 == 700:
                handle.write(f"{i},short row\n")
                bad.add(line)
            else:
                handle.write(f"{i},Person {i},p{i}@example.com,{i % 100}\n")
    return bad


def test_bulk_import_100k_rows_twice(database, tmp_path: Path) -> None:
    # 100,000 rows on SQLite (the default ledger); 20,000 on PostgreSQL, whose per-batch round trips would
    # double the test's time without exercising anything the smaller file does not.
    total = 100_000 if isinstance(database, peewee.SqliteDatabase) else 20_000
    source = tmp_path / "people.csv"
    bad = write_big_csv(source, total)
    good = total - len(bad)
    reports: list[tuple[int, int | None]] = []
    started = time.monotonic()
    first = records.import_records(database, source, progress=lambda done, total, note: reports.append((done, total)))
    assert (first["rows"], first["inserted"], first["updated"], first["unchanged"], first["rejected"]) == (
        total, good, 0, 0, len(bad))
    assert len(first["errors"]) == min(len(bad), records.MAX_ERRORS_REPORTED)
    assert {e["line"] for e in first["errors"]} <= bad
    assert reports[-1] == (total + 1, total + 1) and len(reports) >= total // 1000

    second = records.import_records(database, source)
    assert (second["inserted"], second["updated"], second["unchanged"], second["rejected"]) == (
        0, 0, good, len(bad))
    assert records.dataset_count(database, "people") == good
    assert time.monotonic() - started < 60, f"two imports took {time.monotonic() - started:.1f}s"  # ~10 s idle

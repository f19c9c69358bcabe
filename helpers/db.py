"""Binding helper models to the database a caller passes in, safely from several threads.

Helpers take a peewee `Database` as a parameter instead of importing the app's ledger. `Model.bind_ctx`
swaps the database on the shared class for everyone, which races when worker threads overlap, so instead
each database gets its own cached subclass of the model, and its tables are created once (if missing).
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, TypeVar

import peewee

M = TypeVar("M", bound=peewee.Model)

_lock = threading.Lock()
_bound: "weakref.WeakKeyDictionary[peewee.Database, dict[type, type]]" = weakref.WeakKeyDictionary()
_created: "weakref.WeakKeyDictionary[peewee.Database, set[str]]" = weakref.WeakKeyDictionary()


class HelperModel(peewee.Model):
    """Base for helper tables: unbound until `bind()` gives it a database."""

    class Meta:
        database = None
        legacy_table_names = False


def bind(model: type[M], database: peewee.Database, create: bool = True) -> type[M]:
    """`model` bound to `database` (cached per database); creates its table if missing when `create`."""
    with _lock:
        per_db = _bound.setdefault(database, {})
        bound = per_db.get(model)
        if bound is None:
            meta = type("Meta", (), {"database": database, "table_name": model._meta.table_name})
            bound = type(model.__name__, (model,), {"Meta": meta, "__module__": model.__module__})
            per_db[model] = bound
    if create:
        ensure_table(bound)
    return bound  # type: ignore[return-value]


def ensure_table(model: type[peewee.Model]) -> None:
    """CREATE TABLE IF NOT EXISTS once per database and process, tolerating a concurrent creator."""
    database = model._meta.database
    name = model._meta.table_name
    with _lock:
        done = _created.setdefault(database, set())
        if name in done:
            return
    try:
        with writing(database):
            database.create_tables([model], safe=True)
    except (peewee.IntegrityError, peewee.ProgrammingError):
        # PostgreSQL: two processes creating the same table at once; the loser sees a duplicate type.
        if not database.table_exists(name):
            raise
    with _lock:
        _created.setdefault(database, set()).add(name)


def writing(database: peewee.Database) -> Any:
    """A transaction that will write. On SQLite it is BEGIN IMMEDIATE: the write lock is taken up front, waiting
    out other writers (busy timeout), instead of a read-then-write transaction failing at once with "database is
    locked" because another connection wrote in between (WAL snapshots cannot be upgraded)."""
    if isinstance(database, peewee.SqliteDatabase):
        return database.atomic(lock_type="IMMEDIATE")
    return database.atomic()


def forget(database: peewee.Database) -> None:
    """Drop the caches for `database` (tests that drop tables under a live Database object)."""
    with _lock:
        _bound.pop(database, None)
        _created.pop(database, None)

"""The ledger's database connection: a SQLite file by default, PostgreSQL by URL."""
from __future__ import annotations

import os

import peewee
from playhouse.db_url import connect as connect_url
from playhouse.shortcuts import ReconnectMixin

import config

database = peewee.DatabaseProxy()
_url: str | None = None


class ReconnectingPostgres(ReconnectMixin, peewee.PostgresqlDatabase):
    """Reconnects after the server restarted instead of failing every later query."""


def sqlite_path(url: str) -> str:
    """`sqlite:///data/x.db` is relative to the working directory, `sqlite:////srv/x.db` is absolute."""
    return url.split("://", 1)[1][1:] or ":memory:"


def open_database(url: str) -> peewee.Database:
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Every transaction on the ledger writes: take the write lock at BEGIN (IMMEDIATE), so two processes
        # that read and then write wait for each other instead of failing with "database is locked".
        return peewee.SqliteDatabase(path, timeout=30, lock_type="IMMEDIATE", pragmas={
            "journal_mode": "wal", "synchronous": "normal", "busy_timeout": 30000, "foreign_keys": 1})
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if peewee.psycopg2 is None:
        raise peewee.ImproperlyConfigured(
            "a PostgreSQL ledger needs its driver: pip install 'nightshift[postgres]' (psycopg2-binary)")
    parsed = connect_url(url)
    return ReconnectingPostgres(parsed.database, **parsed.connect_params)


def init(url: str | None = None, create: bool = True) -> peewee.Database:
    """Point the ledger at `url` (default: NIGHTSHIFT_DATABASE_URL) and create its tables if missing."""
    global _url
    url = url or config.get().database_url
    if _url == url and database.obj is not None:
        return database.obj
    if database.obj is not None:
        database.obj.close()
    database.initialize(open_database(url))
    _url = url
    if create:
        from app import models
        database.obj.create_tables(models.ALL, safe=True)
    return database.obj


def is_sqlite() -> bool:
    return isinstance(database.obj, peewee.SqliteDatabase)

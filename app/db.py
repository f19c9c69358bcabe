"""The ledger's database connection: a SQLite file by default, PostgreSQL by URL.

Two rules keep a connection from being shared or stuck:
- a forked process (a process worker, the scheduler) never uses a connection it inherited: it opens its own on
  first use (the parent's socket stays the parent's: the inherited object is kept, never closed, so its
  destructor cannot end the parent's session);
- a PostgreSQL connection the server dropped (restart, failover, `pg_terminate_backend`) is replaced on next use;
  a statement outside a transaction is retried once on the new connection, a transaction fails as a whole.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import peewee

import config

log = logging.getLogger("nightshift.ledger")
database = peewee.DatabaseProxy()

# Errors that mean "the ledger does not answer" (down, unreachable, dropped connection, locked past the timeout),
# as opposed to a statement the database refuses.
UNREACHABLE = (peewee.OperationalError, peewee.InterfaceError)

# SQLite's own default, said here because app.checkpoints works with it: the commit that takes the write-ahead
# log past this many pages checkpoints it. (A `journal_size_limit`, which cuts the log file back when the log starts
# over, made the log grow further in a 4-worker drain: 130 MB against 54-86 MB without.)
WAL_AUTOCHECKPOINT_PAGES = 1_000


class LedgerMissing(peewee.PeeweeException):
    """There is no ledger where the settings point, and this process may not create one (a producer: a job
    recorded in a brand-new ledger would never reach the worker, which reads another one)."""

    def __init__(self, where: str, why: str = "") -> None:
        super().__init__(f"no ledger at {where}{f' ({why})' if why else ''}: start a worker first or set "
                         f"NIGHTSHIFT_DATABASE_URL")


class ReconnectingPostgres(peewee.PostgresqlDatabase):
    """PostgreSQL that replaces a connection the server dropped instead of failing every later query
    (peewee's ReconnectMixin only knows MySQL's errors)."""

    def _lost(self) -> bool:
        conn = self._state.conn
        return conn is not None and getattr(conn, "closed", 0) != 0

    def _drop_lost(self) -> None:
        self._state.reset()  # the dead connection's socket is closed already; nothing to send

    def cursor(self, *args: Any, **kwargs: Any):
        if self._lost() and not self.in_transaction():
            self._drop_lost()
        return super().cursor(*args, **kwargs)

    def execute_sql(self, sql: str, params: Any = None):
        try:
            return super().execute_sql(sql, params)
        except UNREACHABLE:
            if not self._lost() or self.in_transaction():
                raise
            return super().execute_sql(sql, params)  # cursor() opens a new connection


def postgres_database(url: str) -> peewee.Database:
    """peewee's own parser of a database URL (not connected yet). Imported on first use: playhouse.db_url loads
    every backend peewee has (MySQL, CockroachDB, SQLite extensions: 4 ms and 0.3 MB), which every command and
    consumer on a SQLite ledger would pay for nothing."""
    from playhouse.db_url import connect
    return connect(url if not url.startswith("postgres://") else "postgresql://" + url[len("postgres://"):])


def sqlite_path(url: str) -> str:
    """`sqlite:///data/x.db` is relative to the working directory, `sqlite:////srv/x.db` is absolute."""
    return url.split("://", 1)[1][1:] or ":memory:"


def where(url: str) -> str:
    """The ledger's location for messages: a SQLite file's absolute path, or a PostgreSQL database's name."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        return path if path == ":memory:" else os.path.abspath(path)
    parsed = postgres_database(url)
    host = parsed.connect_params.get("host", "localhost")
    return f"database {parsed.database!r} on {host}"


def _check_sqlite_file(path: str, create: bool) -> None:
    """Only the default ledger's directory is ever made: a typo'd directory is an error, not a new ledger."""
    if path == ":memory:":
        return
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        default_dir = os.path.abspath(config.default_data_dir())
        if not create:
            raise LedgerMissing(path, f"directory {directory} does not exist")
        if default_dir != directory:
            raise peewee.OperationalError(f"directory {directory} does not exist; only the default ledger's "
                                          f"directory ({default_dir}) is created")
        os.makedirs(directory, exist_ok=True)
    elif not create and not os.path.exists(path):
        raise LedgerMissing(path)


def open_database(url: str, create: bool = True) -> peewee.Database:
    """Open (lazily) the ledger at `url`. Without `create`, a SQLite file that does not exist is an error."""
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        _check_sqlite_file(path, create)
        # Every transaction on the ledger writes: take the write lock at BEGIN (IMMEDIATE), so two processes
        # that read and then write wait for each other instead of failing with "database is locked".
        return peewee.SqliteDatabase(path, timeout=30, lock_type="IMMEDIATE", pragmas={
            "journal_mode": "wal", "synchronous": "normal", "busy_timeout": 30000, "foreign_keys": 1,
            "wal_autocheckpoint": WAL_AUTOCHECKPOINT_PAGES})
    if peewee.psycopg2 is None:
        raise peewee.ImproperlyConfigured(
            "a PostgreSQL ledger needs its driver: pip install 'nightshift[postgres]' (psycopg2-binary)")
    parsed = postgres_database(url)
    return ReconnectingPostgres(parsed.database, **parsed.connect_params)


_inherited: list[Any] = []


def _forget_inherited_connection() -> None:
    """In a forked child: the next query opens a connection of the child's own."""
    db = database.obj
    if db is not None and db._state.conn is not None:
        _inherited.append(db._state.conn)
        db._state.reset()


os.register_at_fork(after_in_child=_forget_inherited_connection)


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, UNREACHABLE)


def is_refused(exc: BaseException) -> bool:
    """The database answered and refused the statement (a constraint, a trigger, a value it cannot take): trying
    again would give the same answer, unlike an unreachable ledger."""
    return isinstance(exc, peewee.DatabaseError) and not is_unreachable(exc)


class Outage:
    """A ledger outage as one process sees it: logged once when it starts and once when it ends, not on every
    retry (a worker waiting for its database must not fill the log)."""

    def __init__(self, who: str, on_end: Callable[[], None] | None = None) -> None:
        self.who = who
        self.on_end = on_end  # called once the ledger answers again
        self.since: float | None = None
        self.failures = 0
        self._lock = threading.Lock()

    def pause(self, max_delay: float = 5.0) -> None:
        """Sleep before the next try: 0.5 s, doubling with each failure of this outage, up to `max_delay`."""
        time.sleep(min(0.5 * 2 ** min(self.failures - 1, 10), max_delay))

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            if self.since is not None:
                return
            self.since = time.monotonic()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("%s: ledger unreachable (%s); waiting for it, nothing is lost meanwhile", self.who, detail)

    def ended(self) -> None:
        with self._lock:
            if self.since is None:
                return
            lasted, self.since, self.failures = time.monotonic() - self.since, None, 0
        log.warning("%s: the ledger answers again after %.1f s", self.who, lasted)
        if self.on_end is not None:
            try:
                self.on_end()
            except Exception as exc:  # noqa: BLE001 - a hook must not turn a recovered outage into a failure
                log.warning("%s: after the outage: %s", self.who, exc)


def wait_until_reachable(outage: Outage) -> None:
    """Pause (see Outage.pause), then block until a trivial query succeeds, probing with the same backoff."""
    while True:
        outage.pause()
        try:
            database.obj.execute_sql("SELECT 1")
        except UNREACHABLE as exc:
            outage.failed(exc)
            continue
        return


def is_sqlite() -> bool:
    return isinstance(database.obj, peewee.SqliteDatabase)


SMALL_CACHE_KIB = 512


def use_small_page_cache() -> None:
    """Give this process's SQLite connections, the open one and every later one, a page cache of
    SMALL_CACHE_KIB instead of SQLite's 2 MB each. For the long-lived processes that keep a connection per thread
    (a consumer's workers, keeper and maintenance; the console's server threads): they read by index and leave
    the rest to the OS's file cache, and each full cache was resident memory the process never gave back."""
    if is_sqlite():
        database.obj.pragma("cache_size", -SMALL_CACHE_KIB, permanent=True)

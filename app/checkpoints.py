"""SQLite's write-ahead log checkpointed by the consumer's maintenance, not by the commits on the job path.

Each job's commits (its submit, its claim, its outcome) append pages to the ledger's log. Left to SQLite, the
commit that takes the log past `wal_autocheckpoint` pages copies it into the database file and fsyncs it: a
submit or a claim every few dozen jobs took ~10 ms instead of ~0.1 (the p99 of enqueue->start latency was 7x bare
Huey's). Connections now checkpoint only past a backstop (db.WAL_BACKSTOP_PAGES), and the consumer's Maintenance
runs a PASSIVE checkpoint (it waits for no reader or writer) every EVERY_SECONDS. A PostgreSQL ledger has nothing
to do here.
"""
from __future__ import annotations

import logging

from app import db

EVERY_SECONDS = 0.2
# Under a steady stream of commits a PASSIVE checkpoint rarely copies the very last page, and only one that did
# lets the log start over: in a long drain of 4 workers the log grew past 200 MB. From this many pages (4 MB) on,
# a RESTART follows the PASSIVE one: it copies what is left while new commits wait, and the log starts over. It
# gives up after RESTART_WAIT_MS if a reader still holds old pages, so no commit waits longer than that for one.
RESTART_PAGES = 1_000
RESTART_WAIT_MS = 20

log = logging.getLogger("nightshift.ledger")


class Checkpoints:
    """The consumer's checkpoints of a SQLite ledger."""

    def __init__(self) -> None:
        self._failing = False

    def run(self) -> None:
        """Copy the log's pages into the database file. A checkpoint that fails is logged once until one succeeds
        (the next one does its work, and a commit past the backstop would too)."""
        if not db.is_sqlite():
            return
        try:
            self._checkpoint(db.database.obj)
        except Exception as exc:  # noqa: BLE001 - the ledger unreachable, its disk full: recovery reports those
            if not self._failing:
                log.warning("could not checkpoint the ledger's log (%s); will try again", exc)
            self._failing = True
            return
        self._failing = False

    @staticmethod
    def _checkpoint(database) -> None:
        _busy, pages, _copied = database.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        if pages < RESTART_PAGES:
            return
        timeout = database.execute_sql("PRAGMA busy_timeout").fetchall()[0][0]
        database.execute_sql(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
        try:
            database.execute_sql("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            database.execute_sql(f"PRAGMA busy_timeout = {int(timeout)}")

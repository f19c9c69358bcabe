"""SQLite's write-ahead log checkpointed by the consumer's maintenance while the job path is light.

Each job's commits (its submit, its claim, its outcome) append pages to the ledger's log. SQLite checkpoints it
from the commit that takes it past 1,000 pages (`wal_autocheckpoint`): that commit copies the log into the
database file and fsyncs it, ~10 ms instead of ~0.1. At a steady 20 jobs/s that was a submit or a claim every
1.5 s, the p99 of enqueue->start latency (7x bare Huey's). The consumer's Maintenance runs a PASSIVE checkpoint
(it waits for no reader or writer) every EVERY_SECONDS, so under a light load the log starts over long before it
reaches 1,000 pages and no job's commit checkpoints. Under a heavy load the log passes 1,000 pages between two of
them anyway; the commits then checkpoint as SQLite does by default, and Maintenance stands back (BACK_OFF_SECONDS)
rather than contend with them for the checkpoint lock. A PostgreSQL ledger has nothing to do here.
"""
from __future__ import annotations

import logging
import math

from app import db

EVERY_SECONDS = 0.2
BACK_OFF_SECONDS = 1.0

log = logging.getLogger("nightshift.ledger")


class Checkpoints:
    """The consumer's checkpoints of a SQLite ledger; `pause` is the time until the next one."""

    def __init__(self) -> None:
        self.pause = EVERY_SECONDS
        self._failing = False

    def run(self) -> None:
        """Copy the log's pages into the database file. A checkpoint that fails is logged once until one succeeds
        (the next one does its work, and so would the next commit past 1,000 pages)."""
        if not db.is_sqlite():
            self.pause = math.inf  # nothing to do: Maintenance sleeps until its next recovery run
            return
        try:
            _busy, pages, _copied = db.database.obj.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        except Exception as exc:  # noqa: BLE001 - the ledger unreachable, its disk full: recovery reports those
            if not self._failing:
                log.warning("could not checkpoint the ledger's log (%s); will try again", exc)
            self._failing, self.pause = True, BACK_OFF_SECONDS
            return
        self._failing = False
        self.pause = BACK_OFF_SECONDS if pages >= db.WAL_AUTOCHECKPOINT_PAGES else EVERY_SECONDS

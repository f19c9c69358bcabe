"""The ledger's tables: create them for a new ledger, and bring a ledger made by an older version up to date.

Upgrades are idempotent and safe to run from several processes at once (whoever adds a column first wins; the
others find it there).
"""
from __future__ import annotations

import logging

import peewee

from app.db import add_missing_columns
from app.models import ALL, Job, WorkerBeat

log = logging.getLogger("nightshift.ledger")


def has_tables(db: peewee.Database) -> bool:
    return db.table_exists(Job._meta.table_name)


# Indexes an older version made that this one replaced: every index costs each job's writes, so they go.
OBSOLETE_INDEXES = ("job_state_task",)  # by (state, finished_at), issue 16


def create(db: peewee.Database) -> None:
    """Create whatever tables and indexes are missing (after upgrading the tables that exist), and drop the
    indexes this version replaced."""
    if has_tables(db):
        upgrade(db)
    db.create_tables(ALL, safe=True)
    for name in OBSOLETE_INDEXES:
        db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')


def upgrade(db: peewee.Database) -> None:
    """Add the columns this version needs to tables an older version made (db.add_missing_columns), and give
    the jobs written before `nightshift_job.queue` existed their queue where it can be known."""
    try:
        added = add_missing_columns(db, ALL)
    except peewee.DatabaseError:  # another process added them first: what it added is there now
        if add_missing_columns(db, ALL):
            raise
        return
    if f"{Job._meta.table_name}.queue" in added:
        Job._schema.create_indexes(safe=True)
        adopt_old_jobs()


def adopt_old_jobs() -> None:
    """Give the jobs written before the ledger recorded queues the queue of the one service that ran on it.

    A row does not say which service wrote it. When the ledger's worker table shows that consumers of exactly one
    queue ever ran on it (the usual one-service ledger), every old row is that queue's. When several queues share
    the ledger, the owner of an old row cannot be known: the row keeps NULL, which recovery and the per-queue
    commands leave alone (`--all-queues` shows it), because guessing would let one service's recovery dead-letter
    or re-queue another's jobs, the very thing the column exists to prevent."""
    queues = [row[0] for row in WorkerBeat.select(WorkerBeat.queue).distinct().limit(2).tuples()]
    if len(queues) == 1:
        filled = Job.update(queue=queues[0]).where(Job.queue.is_null()).execute()
        log.info("ledger upgraded: %d existing job(s) belong to queue %r", filled, queues[0])
    else:
        log.warning("ledger upgraded: existing jobs keep no queue (%s); recovery leaves them alone, "
                    "`nightshift list --all-queues` shows them",
                    "several queues share this ledger" if queues else "no consumer has run on it")

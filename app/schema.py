"""Opening the ledger, once per process: its tables created for a new ledger, brought up to date for one an
older version made.

Upgrades are idempotent and safe to run from several processes at once (whoever adds a column first wins; the
others find it there).
"""
from __future__ import annotations

import logging

import peewee

from app.db import LedgerMissing, database, open_database, where
from app.models import ALL, Job, WorkerBeat

log = logging.getLogger("nightshift.ledger")
_url: str | None = None  # the ledger this process opened


def open_ledger(url: str, create: bool = True) -> peewee.Database:
    """Point the ledger at `url` (NIGHTSHIFT_DATABASE_URL), create its tables if missing and bring an older
    ledger's tables up to date. With `create=False` (producers) a ledger that does not exist yet (no SQLite
    file, or no tables) raises LedgerMissing and nothing is created."""
    global _url
    if _url == url and database.obj is not None:
        return database.obj
    if database.obj is not None:
        database.obj.close()
    _url = None
    database.initialize(open_database(url, create))
    if create:
        create_tables(database.obj)
    elif has_tables(database.obj):
        upgrade(database.obj)
    else:
        database.obj.close()
        raise LedgerMissing(where(url), "its tables do not exist")
    _url = url
    return database.obj


def add_missing_columns(db: peewee.Database, models: list) -> list[str]:
    """Columns a newer version added to a table that an older version created (all nullable or defaulted);
    returns "table.column" for each one added. peewee's migrator is imported only when a column is missing: it
    loads PostgreSQL's and CockroachDB's extensions too (3 ms and 0.4 MB in every process that opens the ledger)."""
    added = []
    for model in models:
        table = model._meta.table_name
        present = {column.name for column in db.get_columns(table)}
        missing = [field for field in model._meta.sorted_fields if field.column_name not in present]
        if missing:
            from playhouse.migrate import SchemaMigrator, migrate
            migrator = SchemaMigrator.from_database(db)
            migrate(*[migrator.add_column(table, field.column_name, field) for field in missing])
            added += [f"{table}.{field.column_name}" for field in missing]
    return added


def add_missing_indexes(db: peewee.Database, models: list) -> list[str]:
    """Indexes a newer version declares on a table that an older version created (CREATE INDEX IF NOT EXISTS,
    so a process racing this one is harmless); returns the names of the ones created. On a big ledger this
    takes a while once (seconds per million rows), which is why it is logged."""
    added = []
    for model in models:
        table = model._meta.table_name
        if not db.table_exists(table):
            continue
        present = {index.name for index in db.get_indexes(table)}
        for index in model._meta.fields_to_index():
            if index._name in present:
                continue
            log.info("ledger upgrade: creating index %s on %s", index._name, table)
            db.execute(model._schema._create_index(index, safe=True))
            added.append(index._name)
    return added


def has_tables(db: peewee.Database) -> bool:
    return db.table_exists(Job._meta.table_name)


# Indexes an older version made that this one replaced: every index costs each job's writes, so they go.
OBSOLETE_INDEXES = ("job_state_task",  # by (state, finished_at), issue 16
                    # recovery's: its reads use (queue, state, created_at, id), one index less for every claim to write
                    "job_queue_state_updated_at", "job_queue_state_lease_expires_at",
                    # replaced by partial indexes of the rows with the column set (app.models): a submit and a
                    # claim write no entry in them
                    "job_state_finished_at", "job_finished_at", "job_key",
                    # by (queue, state, created_at, id): recovery pages the waiting jobs by (created_at, id)
                    "job_queue_state_created_at")


def create_tables(db: peewee.Database) -> None:
    """Create whatever tables and indexes are missing (after upgrading the tables that exist), and drop the
    indexes this version replaced."""
    if has_tables(db):
        upgrade(db)
    db.create_tables(ALL, safe=True)
    for name in OBSOLETE_INDEXES:
        db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')


def upgrade(db: peewee.Database) -> None:
    """Add the tables, columns and indexes this version needs to a ledger an older version made
    (add_missing_columns, add_missing_indexes), and give the jobs written before `nightshift_job.queue`
    existed their queue where it can be known."""
    missing = [model for model in ALL if not db.table_exists(model._meta.table_name)]
    if missing:  # a table this version added (the audit trail): created whole, with its indexes
        db.create_tables(missing, safe=True)
    try:
        added = add_missing_columns(db, ALL)
    except peewee.DatabaseError:  # another process added them first: what it added is there now
        if add_missing_columns(db, ALL):
            raise
        return
    try:
        add_missing_indexes(db, ALL)
    except peewee.DatabaseError:  # another process is creating the same index: it will be there
        log.info("ledger upgrade: another process is creating the same indexes")
    if f"{Job._meta.table_name}.queue" in added:
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

"""The job ledger's state transitions and queries: the only module that changes a job's state.

Every worker-side transition is guarded by (job id, attempt, state) so a late or duplicate worker can never
overwrite what a newer attempt or recovery wrote: such an update changes nothing and returns False.
"""
from __future__ import annotations

import datetime
import json
from typing import Any, Iterable

from app.db import database
from app.models import FINISHED, WAITING, Attempt, Job

BATCH = 400  # rows per INSERT; keeps under SQLite's and PostgreSQL's parameter limits
PREVIEW_BYTES = 2048


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def summarize(value: Any, limit: int = 1000) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = json.dumps(repr(value))
    # Always valid JSON: a long value is kept as a JSON string of its first `limit` characters.
    return text if len(text) <= limit else json.dumps(text[:limit] + "...")


# -- plain SQL for the per-job hot path ------------------------------------------------------------------------
# Building a peewee query costs more CPU than SQLite takes to run it (~150-200 us a statement), so the statements
# every job runs (insert, claim, finish) are plain SQL, written once per placeholder style ('?' or '%s').

_statements: dict[tuple[str, str], str] = {}
JOB_TABLE = Job._meta.table_name
ATTEMPT_TABLE = Attempt._meta.table_name
JOB_FIELDS = Job._meta.sorted_fields


def _run(template: str, params: tuple | list):
    """Execute `template` (`{p}` marks a parameter) and return the cursor."""
    db = database.obj
    sql = _statements.get((template, db.param))
    if sql is None:
        sql = _statements[(template, db.param)] = template.replace("{p}", db.param)
    return db.execute_sql(sql, params)


def _insert_template(rows: int) -> str:
    one = "(" + ", ".join(["{p}"] * len(JOB_FIELDS)) + ")"
    columns = ", ".join(f'"{field.column_name}"' for field in JOB_FIELDS)
    return f'INSERT INTO "{JOB_TABLE}" ({columns}) VALUES ' + ", ".join([one] * rows)


# -- producer side ---------------------------------------------------------------------------------------------

def insert_jobs(rows: list[dict]) -> None:
    """Record new jobs as queued, in one transaction. Columns a row leaves out take the model's default."""
    stamp = now()
    defaults = {"state": "queued", "created_at": stamp, "updated_at": stamp}
    for field in JOB_FIELDS:
        if field.default is not None and not callable(field.default):
            defaults.setdefault(field.name, field.default)
    names = [field.name for field in JOB_FIELDS]

    def insert(chunk: list[dict]) -> None:
        _run(_insert_template(len(chunk)),
             [row[name] if name in row else defaults.get(name) for row in chunk for name in names])

    if len(rows) <= BATCH:  # one statement is atomic on its own
        return insert(rows)
    with database.atomic():
        for start in range(0, len(rows), BATCH):
            insert(rows[start:start + BATCH])


def job_for_key(key: str, window_seconds: float) -> Job | None:
    """The job that still holds idempotency key `key`; a finished job past the window gives the key up."""
    job = Job.get_or_none(Job.key == key)
    if job is None:
        return None
    if job.state in FINISHED and job.finished_at is not None \
            and job.finished_at < now() - datetime.timedelta(seconds=window_seconds):
        Job.update(key=None).where(Job.id == job.id, Job.key == key).execute()
        return None
    return job


# -- worker side -------------------------------------------------------------------------------------------------

def claim(job_id: str, attempt: int, worker: str, lease_seconds: float) -> bool:
    """Take attempt `attempt` of a waiting job for `worker`; False if it is already running or finished.

    One guarded UPDATE: of two deliveries of the same attempt, exactly one matches the row."""
    stamp = now()
    return _run(f'UPDATE "{JOB_TABLE}" SET "state" = {{p}}, "worker" = {{p}}, "started_at" = {{p}}, '
                f'"finished_at" = NULL, "duration" = NULL, "lease_expires_at" = {{p}}, "updated_at" = {{p}} '
                f'WHERE "id" = {{p}} AND "attempt" = {{p}} AND "state" IN ({{p}}, {{p}})',
                ("running", worker, stamp, stamp + datetime.timedelta(seconds=lease_seconds), stamp,
                 job_id, attempt, *WAITING)).rowcount == 1


def _finish_attempt(job_id: str, attempt: int, outcome: str, stamp: datetime.datetime,
                    duration: float | None, error: str | None = None) -> bool:
    """Write the history row of a running attempt that ends now; False if that attempt is not running.

    Runs first in the transaction that moves the job on, while the job row still holds the attempt's worker
    and start time."""
    return _run(f'INSERT INTO "{ATTEMPT_TABLE}" ("job_id", "number", "worker", "started_at", "finished_at", '
                f'"duration", "outcome", "error") SELECT "id", "attempt", "worker", "started_at", {{p}}, {{p}}, '
                f'{{p}}, {{p}} FROM "{JOB_TABLE}" WHERE "id" = {{p}} AND "attempt" = {{p}} AND "state" = {{p}} '
                f'ON CONFLICT ("job_id", "number") DO UPDATE SET "worker" = excluded."worker", '
                f'"started_at" = excluded."started_at", "finished_at" = excluded."finished_at", '
                f'"duration" = excluded."duration", "outcome" = excluded."outcome", "error" = excluded."error"',
                (stamp, duration, outcome, error, job_id, attempt, "running")).rowcount == 1


def mark_succeeded(job_id: str, attempt: int, duration: float, result: str | None) -> bool:
    stamp = now()
    with database.atomic():
        if not _finish_attempt(job_id, attempt, "succeeded", stamp, duration):
            return False
        _run(f'UPDATE "{JOB_TABLE}" SET "state" = {{p}}, "finished_at" = {{p}}, "duration" = {{p}}, '
             f'"result" = {{p}}, "lease_expires_at" = NULL, "updated_at" = {{p}} WHERE "id" = {{p}}',
             ("succeeded", stamp, duration, result, stamp, job_id))
    return True


def mark_retrying(job_id: str, attempt: int, duration: float, error: str, traceback: str,
                  eta: datetime.datetime | None, retries_left: int, retry_delay: float) -> bool:
    """The attempt failed and another follows: the job waits as attempt + 1."""
    stamp = now()
    with database.atomic():
        if not _finish_attempt(job_id, attempt, "failed", stamp, duration, error):
            return False
        Job.update(state="retrying", attempt=attempt + 1, eta=eta, retries_left=retries_left,
                   retry_delay=retry_delay, error=error, traceback=traceback, duration=duration,
                   lease_expires_at=None, updated_at=stamp).where(Job.id == job_id).execute()
    return True


def mark_dead(job_id: str, reason: str, error: str | None = None, traceback: str | None = None,
              attempt: int | None = None, duration: float | None = None, outcome: str = "failed") -> bool:
    """Out of retries, lost too often, or unrunnable: waits in the dead letters for an operator.

    With `attempt`, only that running attempt may end this way (its history row says `outcome`); without it,
    any job that has not finished."""
    stamp = now()
    fields = dict(state="dead", reason=reason, error=error, traceback=traceback, finished_at=stamp,
                  duration=duration, lease_expires_at=None, updated_at=stamp)
    with database.atomic():
        if attempt is not None:
            if not _finish_attempt(job_id, attempt, outcome, stamp, duration, error or reason):
                return False
            Job.update(**fields).where(Job.id == job_id).execute()
            return True
        return bool(Job.update(**fields).where(Job.id == job_id, Job.state.not_in(FINISHED)).execute())


def requeue(job_id: str, attempt: int, outcome: str, reason: str, lease_lost: bool = False) -> int | None:
    """Put a running attempt back as a new attempt (interrupted at shutdown, or its lease expired).

    Returns the new attempt number, or None when the attempt was no longer running."""
    stamp = now()
    fields = dict(state="queued", attempt=attempt + 1, worker=None, lease_expires_at=None, reason=reason,
                  eta=None, updated_at=stamp)
    if lease_lost:
        fields["lease_losses"] = Job.lease_losses + 1
    with database.atomic():
        if not _finish_attempt(job_id, attempt, outcome, stamp, None, reason):
            return None
        Job.update(**fields).where(Job.id == job_id).execute()
    return attempt + 1


def renew_leases(job_ids: Iterable[str], worker: str, lease_seconds: float) -> int:
    ids = list(job_ids)
    if not ids:
        return 0
    return Job.update(lease_expires_at=now() + datetime.timedelta(seconds=lease_seconds)).where(
        Job.id.in_(ids), Job.worker == worker, Job.state == "running").execute()


def record_progress(job_id: str, done: float, total: float | None = None, note: str = "") -> None:
    Job.update(progress=json.dumps({"done": done, "total": total, "note": note}), updated_at=now()).where(
        Job.id == job_id, Job.state == "running").execute()


def mark_canceled(job_id: str, reason: str = "canceled by operator") -> bool:
    stamp = now()
    return bool(Job.update(state="canceled", reason=reason, finished_at=stamp, updated_at=stamp).where(
        Job.id == job_id, Job.state.in_(WAITING)).execute())


def mark_expired(job_id: str, attempt: int) -> bool:
    stamp = now()
    return bool(Job.update(state="expired", reason="expired before it could run", finished_at=stamp,
                           updated_at=stamp).where(
        Job.id == job_id, Job.attempt == attempt, Job.state.in_(WAITING)).execute())


def revive(job_id: str, retries_left: int) -> Job | None:
    """A dead job back to queued as a new attempt with a fresh set of retries (operator's `retry`).

    Dead letters that never were a runnable job (poison messages) stay dead."""
    stamp = now()
    with database.atomic():
        done = Job.update(state="queued", attempt=Job.attempt + 1, retries_left=retries_left, lease_losses=0,
                          reason="retried by operator", eta=None, finished_at=None, worker=None,
                          updated_at=stamp).where(Job.id == job_id, Job.state == "dead", Job.raw.is_null()).execute()
        return Job.get_by_id(job_id) if done else None


def discard(job_ids: Iterable[str], states: tuple[str, ...] = ("dead",)) -> list[str]:
    """Delete jobs (dead ones by default) and their history; returns the ids removed."""
    ids = list(job_ids)
    with database.atomic():
        found = [row[0] for row in Job.select(Job.id).where(Job.id.in_(ids), Job.state.in_(states)).tuples()]
        if found:
            Attempt.delete().where(Attempt.job_id.in_(found)).execute()
            Job.delete().where(Job.id.in_(found), Job.state.in_(states)).execute()
    return found


def record_dead_letter(job_id: str, task: str, reason: str, raw: bytes) -> None:
    """A message that could not become a job (unreadable, unsigned, unknown): kept dead with a preview."""
    stamp = now()
    # Readable, and storable as text everywhere (PostgreSQL text refuses NUL characters).
    preview = raw[:PREVIEW_BYTES].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    Job.insert(id=job_id, task=task, kwargs="{}", state="dead", reason=reason, raw=preview, created_at=stamp,
               updated_at=stamp, finished_at=stamp).on_conflict_ignore().execute()


# -- queries -------------------------------------------------------------------------------------------------------

def get(job_id: str) -> Job | None:
    """A job by id, or by a unique prefix of its id (as printed in lists)."""
    job = Job.get_or_none(Job.id == job_id)
    if job is None and 4 <= len(job_id) < 36:
        matches = list(Job.select().where(Job.id.startswith(job_id)).limit(2))
        job = matches[0] if len(matches) == 1 else None
    return job


def attempts(job_id: str) -> list[Attempt]:
    return list(Attempt.select().where(Attempt.job_id == job_id).order_by(Attempt.number))


def list_jobs(state: str | None = None, task: str | None = None, limit: int = 50) -> list[Job]:
    query = Job.select()
    if state:
        query = query.where(Job.state == state)
    if task:
        query = query.where(Job.task == task)
    return list(query.order_by(Job.created_at.desc(), Job.id).limit(limit))


def state_of(job_id: str) -> str | None:
    row = Job.select(Job.state).where(Job.id == job_id).tuples().first()
    return row[0] if row else None


# -- retention (run by app.cleanup) ----------------------------------------------------------------------------

PREVIEW_REMOVED = "[preview removed by cleanup]"  # not NULL: a dead letter that never was a job stays one
TEXT_COLUMNS = ("task", "kwargs", "result", "error", "traceback", "reason", "progress", "raw")
ROW_OVERHEAD = 160  # rough bytes per row beyond its text columns (ids, numbers, timestamps, index entries)


def row_bytes(model, columns: Iterable[str]):
    from peewee import fn
    total = ROW_OVERHEAD
    for name in columns:
        total = total + fn.COALESCE(fn.LENGTH(getattr(model, name)).coerce(False), 0)
    return total


def delete_finished(before: datetime.datetime, states: Iterable[str], limit: int = 1000) -> tuple[int, int, int]:
    """Delete at most `limit` jobs in `states` that finished before `before`, with their attempts, in one short
    transaction; returns (jobs, attempts, approximate bytes) actually deleted by this call.

    One DELETE ... WHERE id IN (SELECT ... LIMIT) RETURNING statement: no read-modify-write, so two cleanups
    running at once delete each row once between them and each counts only what it removed."""
    states = tuple(states)
    finished = Job.state.in_(states) & (Job.finished_at < before)
    batch = Job.select(Job.id).where(finished).limit(limit)
    with database.atomic():
        gone = list(Job.delete().where(Job.id.in_(batch), finished)
                    .returning(Job.id, row_bytes(Job, TEXT_COLUMNS).alias("size")).tuples().execute())
        if not gone:
            return 0, 0, 0
        ids = [row[0] for row in gone]
        history = list(Attempt.delete().where(Attempt.job_id.in_(ids))
                       .returning(row_bytes(Attempt, ("job_id", "worker", "error")).alias("size"))
                       .tuples().execute())
    return len(gone), len(history), sum(int(row[1]) for row in gone) + sum(int(row[0]) for row in history)


def drop_previews(before: datetime.datetime, limit: int = 1000) -> tuple[int, int]:
    """Replace the raw-message preview of dead letters older than `before` (at most `limit` of them) with a
    short marker; returns (previews dropped, bytes freed) by this call."""
    from peewee import fn
    old = (Job.state == "dead") & Job.raw.is_null(False) & (Job.raw != PREVIEW_REMOVED) & (Job.finished_at < before)
    sizes = dict(Job.select(Job.id, fn.LENGTH(Job.raw).coerce(False)).where(old).limit(limit).tuples())
    if not sizes:
        return 0, 0
    done = [row[0] for row in Job.update(raw=PREVIEW_REMOVED).where(Job.id.in_(list(sizes)), old)
            .returning(Job.id).tuples().execute()]
    return len(done), sum(max(int(sizes[i] or 0) - len(PREVIEW_REMOVED), 0) for i in done)

"""The job ledger's state transitions and queries: the only module that changes a job's state.

Every worker-side transition is guarded by (job id, attempt, state) so a late or duplicate worker can never
overwrite what a newer attempt or recovery wrote: such an update changes nothing and returns False.
"""
from __future__ import annotations

import datetime
import functools
import itertools
import json
import operator
from typing import Any, Iterable

import peewee
from peewee import SQL, NodeList, fn

import config
from app import clock, jobids
from app.db import database, is_sqlite
from app.models import FINISHED, STATES, WAITING, Action, Attempt, Job, WorkerBeat
from app.states import State

BATCH = 400  # rows per INSERT; keeps under SQLite's and PostgreSQL's parameter limits
PREVIEW_BYTES = 2048
ID_LENGTH = Job.id.max_length            # 36
TASK_LENGTH = Job.task.max_length        # 200
TEXT_LENGTH = 65536                      # errors, tracebacks, reasons: enough to read, never unbounded


def now() -> datetime.datetime:
    """Naive UTC on the shared clock (app.clock): leases written here are judged by other hosts."""
    return clock.now()


def storable(text: Any, limit: int = TEXT_LENGTH) -> str | None:
    """`text` as every ledger accepts it: NUL escaped as \\x00 (PostgreSQL text refuses NUL), lone surrogates
    escaped (not UTF-8), and at most `limit` characters (a CharField's max_length; PostgreSQL refuses longer).

    Every text a ledger write takes from a task, a message or an exception goes through here, so an outcome is
    never unrecordable because of what it says."""
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[:max(limit - 3, 0)] + "..."
    return text


def is_storable_id(job_id: Any) -> bool:
    """An id that can key a ledger row as it is (a message may carry anything in its "id")."""
    return isinstance(job_id, str) and 0 < len(job_id) <= ID_LENGTH and storable(job_id, ID_LENGTH) == job_id


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


def sqlite_datetime(value: datetime.datetime) -> str:
    """`value` as SQLite stores it: the text sqlite3's default adapter makes (and peewee reads back)."""
    return value.isoformat(" ")


@functools.lru_cache(maxsize=64)
def _insert_template(columns: tuple[str, ...], rows: int) -> str:
    one = "(" + ", ".join(["{p}"] * len(columns)) + ")"
    names = ", ".join(f'"{column}"' for column in columns)
    return f'INSERT INTO "{JOB_TABLE}" ({names}) VALUES ' + ", ".join([one] * rows)


_DEFAULTS = {field.name: None if field.default is None or callable(field.default) else field.default
             for field in JOB_FIELDS}
_COLUMNS = {field.name: field.column_name for field in JOB_FIELDS}


# -- producer side ---------------------------------------------------------------------------------------------

def insert_jobs(rows: list[dict], queue: str, common: dict | None = None) -> None:
    """Record new jobs of `queue` as queued, in one transaction. `common` holds values every row shares (a bulk
    submit's rows carry only what differs); columns neither gives take the model's default.

    Built for bulk submits, where this is most of the CPU per job: one dict merge and one itemgetter per row, and
    columns that are NULL in every row are left out of the INSERT (they are NULL all the same; binding them cost
    a third of SQLite's time)."""
    if not rows:
        return
    stamp = now()
    fields = dict(_DEFAULTS, state=State.QUEUED, created_at=stamp, updated_at=stamp, queue=queue)
    if common:
        fields.update(common)
    if "task" in fields:
        fields["task"] = storable(fields["task"], TASK_LENGTH)
    if is_sqlite():  # every row shares these: adapted here once, not by sqlite3 once per row and column
        fields = {name: sqlite_datetime(value) if isinstance(value, datetime.datetime) else value
                  for name, value in fields.items()}
    given = set().union(*rows)
    names = tuple(name for name in _DEFAULTS if name in given or fields[name] is not None)
    pick = operator.itemgetter(*names)
    tasks: dict[Any, str | None] = {}  # each row's task name as storable text, worked out once per name
    values = []
    for row in rows:
        full = {**fields, **row}
        if "task" in row:
            name = row["task"]
            full["task"] = tasks[name] if name in tasks else tasks.setdefault(name, storable(name, TASK_LENGTH))
        values.append(pick(full))
    columns = tuple(_COLUMNS[name] for name in names)

    def insert(chunk: list[tuple]) -> None:
        _run(_insert_template(columns, len(chunk)), list(itertools.chain.from_iterable(chunk)))

    if len(values) <= BATCH:  # one statement is atomic on its own
        return insert(values)
    with database.atomic():
        for start in range(0, len(values), BATCH):
            insert(values[start:start + BATCH])


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

    One guarded UPDATE: of two deliveries of the same attempt, exactly one matches the row. It leaves
    `finished_at` alone: a waiting job has none (every way into a waiting state leaves or sets it NULL), and naming
    it would update its index too, a page more in every claim's commit."""
    stamp = now()
    return _run(f'UPDATE "{JOB_TABLE}" SET "state" = {{p}}, "worker" = {{p}}, "started_at" = {{p}}, '
                f'"duration" = NULL, "lease_expires_at" = {{p}}, "updated_at" = {{p}} '
                f'WHERE "id" = {{p}} AND "attempt" = {{p}} AND "state" IN ({{p}}, {{p}})',
                (State.RUNNING, worker, stamp, stamp + datetime.timedelta(seconds=lease_seconds), stamp,
                 job_id, attempt, *WAITING)).rowcount == 1


def _finish_attempt(job_id: str, attempt: int, outcome: str, stamp: datetime.datetime,
                    duration: float | None, error: str | None = None) -> bool:
    """Write the history row of a running attempt that ends now; False if that attempt is not running.

    Runs first in the transaction that moves the job on, while the job row still holds the attempt's worker
    and start time. On PostgreSQL the SELECT locks the job row: under READ COMMITTED a second transition that
    starts while the first is uncommitted then waits for it and re-reads the row (no longer running, so it
    matches nothing), instead of reading the old row, waiting only on the history row's conflict and
    overwriting it (both transitions winning). SQLite takes its write lock at BEGIN and needs no row lock."""
    lock = "" if is_sqlite() else " FOR UPDATE"
    return _run(f'INSERT INTO "{ATTEMPT_TABLE}" ("job_id", "number", "worker", "started_at", "finished_at", '
                f'"duration", "outcome", "error") SELECT "id", "attempt", "worker", "started_at", {{p}}, {{p}}, '
                f'{{p}}, {{p}} FROM "{JOB_TABLE}" WHERE "id" = {{p}} AND "attempt" = {{p}} AND "state" = {{p}}{lock} '
                f'ON CONFLICT ("job_id", "number") DO UPDATE SET "worker" = excluded."worker", '
                f'"started_at" = excluded."started_at", "finished_at" = excluded."finished_at", '
                f'"duration" = excluded."duration", "outcome" = excluded."outcome", "error" = excluded."error"',
                (stamp, duration, outcome, storable(error), job_id, attempt, State.RUNNING)).rowcount == 1


def mark_succeeded(job_id: str, attempt: int, duration: float, result: str | None) -> bool:
    """The running attempt `attempt` succeeded: the job is finished; False if that attempt is not running.

    The job row, which holds the attempt's worker and start time from its claim, is the succeeded attempt's
    history: no history row is written for it (`attempts` gives it from the job row). So a success is one guarded
    UPDATE, the one ledger write of most jobs' ends, instead of one that also inserted a row under a random job id
    (measured: 13 % of a worker's CPU per job in a drain). It stays in a transaction of its own, which SQLite
    begins IMMEDIATE: autocommitted, the UPDATEs of four worker threads contending for the write lock cost 60 %
    more system CPU per job (benchmarks in docs/performance.md)."""
    stamp = now()
    with database.atomic():
        return _run(f'UPDATE "{JOB_TABLE}" SET "state" = {{p}}, "finished_at" = {{p}}, "duration" = {{p}}, '
                    f'"result" = {{p}}, "lease_expires_at" = NULL, "updated_at" = {{p}} '
                    f'WHERE "id" = {{p}} AND "attempt" = {{p}} AND "state" = {{p}}',
                    (State.SUCCEEDED, stamp, duration, storable(result), stamp, job_id, attempt, State.RUNNING)
                    ).rowcount == 1


def mark_retrying(job_id: str, attempt: int, duration: float, error: str, traceback: str,
                  eta: datetime.datetime | None, retries_left: int, retry_delay: float) -> bool:
    """The attempt failed and another follows: the job waits as attempt + 1."""
    stamp = now()
    error, traceback = storable(error), storable(traceback)
    with database.atomic():
        if not _finish_attempt(job_id, attempt, "failed", stamp, duration, error):
            return False
        Job.update(state=State.RETRYING, attempt=attempt + 1, eta=eta, retries_left=retries_left,
                   retry_delay=retry_delay, error=error, traceback=traceback, duration=duration,
                   lease_expires_at=None, updated_at=stamp).where(Job.id == job_id).execute()
    return True


def mark_dead(job_id: str, reason: str, error: str | None = None, traceback: str | None = None,
              attempt: int | None = None, duration: float | None = None, outcome: str = "failed") -> bool:
    """Out of retries, lost too often, or unrunnable: waits in the dead letters for an operator.

    With `attempt`, only that running attempt may end this way (its history row says `outcome`); without it,
    any job that has not finished."""
    stamp = now()
    reason, error, traceback = storable(reason), storable(error), storable(traceback)
    fields = dict(state=State.DEAD, reason=reason, error=error, traceback=traceback, finished_at=stamp,
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
    reason = storable(reason)
    fields = dict(state=State.QUEUED, attempt=attempt + 1, worker=None, lease_expires_at=None, reason=reason,
                  eta=None, updated_at=stamp)
    if lease_lost:
        fields["lease_losses"] = Job.lease_losses + 1
    with database.atomic():
        if not _finish_attempt(job_id, attempt, outcome, stamp, None, reason):
            return None
        Job.update(**fields).where(Job.id == job_id).execute()
    return attempt + 1


def wait_for_write_lock() -> None:
    """Return once this process could take the ledger's write lock (SQLite's one writer; at once on PostgreSQL).

    One statement that writes nothing, so the lock is taken and let go inside SQLite. An empty transaction would
    hold it from BEGIN until its COMMIT got the GIL back: in a consumer where a task held the GIL meanwhile, every
    consumer's writes and recoveries waited as long as that task held it."""
    Job.update(attempt=Job.attempt).where(SQL("1 = 0")).execute()


def renew_leases(attempts: Iterable[tuple[str, int]], worker: str, lease_seconds: float) -> int:
    """Extend the leases of the (job id, attempt) pairs `worker` is running."""
    pairs = list(attempts)
    if not pairs:
        return 0
    these = functools.reduce(operator.or_, [(Job.id == job_id) & (Job.attempt == number) for job_id, number in pairs])
    return Job.update(lease_expires_at=now() + datetime.timedelta(seconds=lease_seconds)).where(
        these, Job.worker == worker, Job.state == State.RUNNING).execute()


LEASE_LOST_PREFIX = "lost its lease"


def note_lease_lost_alive(job_id: str, attempt: int, note: str) -> bool:
    """An attempt whose lease recovery took ended later in a live worker: say so on the attempt's history row,
    and on the job's reason when the lost leases made it dead."""
    note = storable(note, 1000)
    with database.atomic():
        noted = Attempt.update(error=note).where(Attempt.job_id == job_id, Attempt.number == attempt,
                                                  Attempt.outcome == "lease-lost").execute()
        if noted:
            Job.update(reason=Job.reason.concat(f"; attempt {attempt}: {note}")).where(
                Job.id == job_id, Job.state == State.DEAD, Job.reason.startswith(LEASE_LOST_PREFIX),
                ~Job.reason.contains("worker was alive")).execute()
    return bool(noted)


def record_progress(job_id: str, done: float, total: float | None = None, note: str = "") -> None:
    progress = storable(json.dumps({"done": done, "total": total, "note": storable(note, 1000)}, default=str))
    Job.update(progress=progress, updated_at=now()).where(
        Job.id == job_id, Job.state == State.RUNNING).execute()


def mark_canceled(job_id: str, reason: str = "canceled by operator") -> bool:
    stamp = now()
    return bool(Job.update(state=State.CANCELED, reason=storable(reason), finished_at=stamp, updated_at=stamp).where(
        Job.id == job_id, Job.state.in_(WAITING)).execute())


def cancel_running(job_id: str, reason: str = "canceled by operator while running") -> int | None:
    """A running job canceled: the attempt ends as `canceled` now (its worker is told to stop it, app.canceling;
    whatever it reports afterwards is stale). Returns the attempt that was running, or None."""
    stamp = now()
    reason = storable(reason)
    with database.atomic():
        row = Job.select(Job.attempt).where(Job.id == job_id, Job.state == State.RUNNING).tuples().first()
        if row is None or not _finish_attempt(job_id, row[0], "canceled", stamp, None, reason):
            return None
        Job.update(state=State.CANCELED, reason=reason, finished_at=stamp, lease_expires_at=None,
                   updated_at=stamp).where(Job.id == job_id).execute()
    return row[0]


def canceled_among(attempts: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Which of these (job id, attempt) pairs were canceled while they ran."""
    pairs = set(attempts)
    if not pairs:
        return []
    rows = Job.select(Job.id, Job.attempt).where(Job.id.in_([job_id for job_id, _ in pairs]),
                                                 Job.state == State.CANCELED).tuples()
    return [(job_id, attempt) for job_id, attempt in rows if (job_id, attempt) in pairs]


def mark_expired(job_id: str, attempt: int) -> bool:
    stamp = now()
    return bool(Job.update(state=State.EXPIRED, reason="expired before it could run", finished_at=stamp,
                           updated_at=stamp).where(
        Job.id == job_id, Job.attempt == attempt, Job.state.in_(WAITING)).execute())


def revive(job_id: str, retries_left: int, queue: str) -> Job | None:
    """A dead job back to queued as a new attempt with a fresh set of retries (operator's `retry`), on its own
    queue; a job from before the ledger recorded queues becomes `queue`'s (the operator's service's).

    Dead letters that never were a runnable job (poison messages) stay dead."""
    stamp = now()
    with database.atomic():
        done = Job.update(state=State.QUEUED, attempt=Job.attempt + 1, retries_left=retries_left, lease_losses=0,
                          reason="retried by operator", eta=None, finished_at=None, worker=None, updated_at=stamp,
                          queue=fn.COALESCE(Job.queue, queue)).where(
            Job.id == job_id, Job.state == State.DEAD, Job.raw.is_null()).execute()
        return Job.get_by_id(job_id) if done else None


def discard(job_ids: Iterable[str], states: tuple[str, ...] = (State.DEAD,)) -> list[str]:
    """Delete jobs (dead ones by default) and their history; returns the ids removed."""
    ids = list(job_ids)
    with database.atomic():
        found = [row[0] for row in Job.select(Job.id).where(Job.id.in_(ids), Job.state.in_(states)).tuples()]
        if found:
            Attempt.delete().where(Attempt.job_id.in_(found)).execute()
            Job.delete().where(Job.id.in_(found), Job.state.in_(states)).execute()
    return found


def preview(raw: bytes) -> str:
    """The first PREVIEW_BYTES of a raw message, readable and storable as text everywhere."""
    return storable(bytes(raw[:PREVIEW_BYTES]).decode("utf-8", "backslashreplace"))


def record_dead_letter(job_id: Any, task: Any, reason: str, raw: bytes, queue: str) -> str:
    """A message that could not become a job (unreadable, unsigned, unknown): kept dead with a preview, on
    `queue`. An id that cannot key a row as it is (too long, not text, NUL) is
    replaced by a new one, the original kept in the reason. Returns the dead letter's id."""
    stamp = now()
    if not is_storable_id(job_id):
        reason = f"{reason} (message id {storable(repr(job_id), 120)} replaced)"
        job_id = jobids.new_id()
    Job.insert(id=job_id, task=storable(task, TASK_LENGTH), kwargs="{}", state=State.DEAD, reason=storable(reason),
               raw=preview(raw), created_at=stamp, updated_at=stamp, finished_at=stamp,
               queue=queue).on_conflict_ignore().execute()
    return job_id


REFUSED_PREFIX = "refused message "


def flag_refused(job_id: str, queue: str, letter_id: str, reason: str) -> bool:
    """An untrusted message (bad or missing signature), kept as dead letter `letter_id`, named this waiting job
    of `queue`. The job still runs if its own, genuine message comes (a forged copy must not be able to kill a
    job); if that never comes, recovery does not send it again but makes it dead (fold_refused): a refused
    message never runs by another path. False when no such job waits."""
    if not is_storable_id(job_id):
        return False
    return bool(Job.update(reason=storable(f"{REFUSED_PREFIX}{letter_id}: {reason}")).where(
        Job.id == job_id, Job.state.in_(WAITING), (Job.queue == queue) | Job.queue.is_null()).execute())


def is_flagged_refused(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(REFUSED_PREFIX)


def fold_refused(job_id: str, attempt: int, flag: str) -> bool:
    """Recovery found a job flagged by flag_refused (`flag` is its reason) whose message is missing: the job goes
    dead with the refusal's reason and the refused message's preview, taken from its dead letter, which is then
    removed: one dead entry for the job. False when the job no longer waits at `attempt`."""
    letter_id, _, why = flag[len(REFUSED_PREFIX):].partition(": ")
    stamp = now()
    with database.atomic():
        letter = Job.get_or_none((Job.id == letter_id) & (Job.state == State.DEAD) & Job.raw.is_null(False))
        done = Job.update(state=State.DEAD, reason=storable(f"{why}; not sent again: a refused message never runs by "
                                                        f"another path"),
                          error=f"refused message: {letter.raw}" if letter else None, finished_at=stamp,
                          lease_expires_at=None, updated_at=stamp).where(
            Job.id == job_id, Job.attempt == attempt, Job.state.in_(WAITING),
            Job.reason.startswith(REFUSED_PREFIX)).execute()
        if done and letter:
            Job.delete().where(Job.id == letter_id, Job.raw.is_null(False)).execute()
    return bool(done)


def mark_refused(job_id: str, queue: str, reason: str, raw: bytes) -> bool:
    """An authentic message of a waiting job of `queue` that the consumer cannot run (unknown task): that job
    is dead with the reason and the message's preview, one entry, and recovery never sends it again.

    The preview goes in `error`, not in `raw` (which marks a dead letter that never was a job), so an operator
    can still `retry` the job once the task or the key is fixed. False when no such job waits."""
    if not is_storable_id(job_id):
        return False
    stamp = now()
    return bool(Job.update(state=State.DEAD, reason=storable(reason), error=f"refused message: {preview(raw)}",
                           finished_at=stamp, lease_expires_at=None, updated_at=stamp).where(
        Job.id == job_id, Job.state.in_(WAITING), (Job.queue == queue) | Job.queue.is_null()).execute())


# -- the operators' audit trail ---------------------------------------------------------------------------------

def record_action(action: str, target: str, who: str, detail: str = "") -> None:
    """Note an operator's action (retry, cancel, discard, pause, resume, run-now, submit...) and its outcome, so
    "who retried this at 3 am" has an answer in the ledger, whichever tool did it."""
    Action.insert(at=now(), action=storable(action, Action.action.max_length),
                  target=storable(target, Action.target.max_length), who=storable(who, Action.who.max_length),
                  detail=storable(detail, 2000) or "").execute()


def actions(target: str | None = None, limit: int = 50) -> list[Action]:
    """The newest operator actions, of one target (a job id, a queue or a task name) or of all."""
    query = Action.select()
    if target is not None:
        query = query.where(Action.target == target)
    return list(query.order_by(Action.at.desc(), Action.id.desc()).limit(limit))


# -- queries -------------------------------------------------------------------------------------------------------

def get(job_id: str) -> Job | None:
    """A job by id, or by a unique prefix of its id (as printed in lists).

    The prefix is looked up as a range of the primary key (prefix <= id < the next prefix) as well as by LIKE:
    LIKE alone is not an index search on either ledger (SQLite's is case-insensitive, PostgreSQL's needs a C
    collation), so it read every row of a big ledger."""
    job = Job.get_or_none(Job.id == job_id)
    if job is None and (starting := ids_starting(job_id)) is not None:
        matches = list(Job.select().where(starting).limit(2))
        job = matches[0] if len(matches) == 1 else None
    return job


def count_prefix(prefix: str, most: int = 1000) -> int:
    """How many jobs' ids start with `prefix`, up to `most` (why `get` found none for a prefix)."""
    starting = ids_starting(prefix)
    return 0 if starting is None else Job.select(Job.id).where(starting).limit(most).count()


def ids_starting(prefix: str) -> peewee.Expression | None:
    """WHERE condition: ids that start with `prefix`, found as a range of the primary key (see get); None for text
    that cannot be a prefix get() takes."""
    if not 4 <= len(prefix) < 36 or prefix[-1] >= "\uffff":
        return None
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return (Job.id >= prefix) & (Job.id < after) & Job.id.startswith(prefix)


def attempts(job_id: str, job: Job | None = None) -> list[Attempt]:
    """A job's history: one Attempt per attempt that ended, in order. A succeeded job's last attempt has no row of
    its own (mark_succeeded): it is given from the job row (`job`, else read), as the row it would have been."""
    history = list(Attempt.select().where(Attempt.job_id == job_id).order_by(Attempt.number))
    if job is None:
        job = Job.get_or_none(Job.id == job_id)
    if job is not None and job.state == State.SUCCEEDED and all(a.number != job.attempt for a in history):
        history.append(Attempt(job_id=job.id, number=job.attempt, worker=job.worker or "", started_at=job.started_at,
                               finished_at=job.finished_at, duration=job.duration, outcome=State.SUCCEEDED))
    return history


def in_queues(queues: Iterable[str | None]):
    """WHERE condition: jobs of these queues (None among them: rows from before the ledger recorded queues)."""
    names = list(queues)
    named = [name for name in names if name is not None]
    condition = Job.queue.in_(named)
    return (condition | Job.queue.is_null()) if None in names else condition


def list_jobs(state: str | None = None, task: str | None = None, limit: int = 50,
              queues: Iterable[str | None] | None = None) -> list[Job]:
    """Newest jobs first; of the given queues only (see in_queues; None: every job).

    With queues, read as the newest `limit` of each (queue, state) in the order of the
    (queue, state, created_at, id) index, merged here: one ORDER BY over all of a queue's jobs had the database
    sort every one of them (seconds on a ledger of a million finished jobs) to return fifty."""
    if queues is None:
        query = Job.select()
        if state:
            query = query.where(Job.state == state)
        if task:
            query = query.where(Job.task == task)
        return list(query.order_by(Job.created_at.desc(), Job.id).limit(limit))
    found: list[Job] = []
    for name in dict.fromkeys(queues):
        for one_state in ([state] if state else STATES):
            query = Job.select().where(Job.queue.is_null() if name is None else Job.queue == name,
                                       Job.state == one_state)
            if task:
                query = query.where(Job.task == task)
            found.extend(query.order_by(Job.created_at.desc(), Job.id).limit(limit))
    found.sort(key=lambda job: job.id)
    found.sort(key=lambda job: job.created_at, reverse=True)  # stable: ties stay in id order
    return found[:limit]


def state_of(job_id: str) -> str | None:
    row = Job.select(Job.state).where(Job.id == job_id).tuples().first()
    return row[0] if row else None


# -- retention (run by app.cleanup) ----------------------------------------------------------------------------

PREVIEW_REMOVED = "[preview removed by cleanup]"  # not NULL: a dead letter that never was a job stays one
TEXT_COLUMNS = ("task", "kwargs", "result", "error", "traceback", "reason", "progress", "raw")
ROW_OVERHEAD = 160  # rough bytes per row beyond its text columns (ids, numbers, timestamps, index entries)


def row_bytes(model, columns: Iterable[str]):
    total = ROW_OVERHEAD
    for name in columns:
        total = total + fn.COALESCE(fn.LENGTH(getattr(model, name)).coerce(False), 0)
    return total


def delete_finished(before: datetime.datetime, states: Iterable[str], limit: int = 1000,
                    queues: Iterable[str | None] | None = None) -> tuple[int, int, int]:
    """Delete at most `limit` jobs in `states` that finished before `before` (of `queues` only, when given: see
    in_queues), with their attempts, in one short transaction; returns (jobs, attempts, approximate bytes)
    actually deleted by this call.

    One DELETE ... WHERE id IN (SELECT ... LIMIT) RETURNING statement: no read-modify-write, so two cleanups
    running at once delete each row once between them and each counts only what it removed."""
    states = tuple(states)
    where = _finished(states, before)
    if queues is not None:
        where &= in_queues(queues)
    batch = Job.select(Job.id).where(where).limit(limit)  # the (state, finished_at) index
    with database.atomic():
        gone = list(Job.delete().where(Job.id.in_(batch), _finished(states, before, recheck=True))
                    .returning(Job.id, row_bytes(Job, TEXT_COLUMNS).alias("size")).tuples().execute())
        if not gone:
            return 0, 0, 0
        ids = [row[0] for row in gone]
        history = list(Attempt.delete().where(Attempt.job_id.in_(ids))
                       .returning(row_bytes(Attempt, ("job_id", "worker", "error")).alias("size"))
                       .tuples().execute())
    return len(gone), len(history), sum(int(row[1]) for row in gone) + sum(int(row[0]) for row in history)


def _finished(states: tuple[str, ...], before: datetime.datetime, recheck: bool = False):
    """WHERE condition: jobs in `states` that finished before `before`.

    `recheck`: as the re-check of a DELETE ... WHERE id IN (...), which no index may serve. Without statistics
    SQLite took the equality on `state` for the best way to find those rows, and read every job of the state
    (the whole grown ledger) for each batch of a cleanup: a unary + on the columns keeps the ids leading. (Not on
    PostgreSQL, which plans by its statistics and has no unary + for text.)"""
    if not (recheck and is_sqlite()):
        return Job.state.in_(states) & (Job.finished_at < before)
    state = NodeList((SQL("+"), Job.state), glue="")
    finished_at = NodeList((SQL("+"), Job.finished_at), glue="")
    return state.in_(list(states)) & (finished_at < Job.finished_at.to_value(before))


def old_previews(before: datetime.datetime, queues: Iterable[str | None] | None = None) -> peewee.Expression:
    """WHERE condition: dead letters (of `queues`, when given) older than `before` that still keep their preview."""
    old = (Job.state == State.DEAD) & Job.raw.is_null(False) & (Job.raw != PREVIEW_REMOVED) & (Job.finished_at < before)
    return old & in_queues(queues) if queues is not None else old


def drop_previews(before: datetime.datetime, limit: int = 1000,
                  queues: Iterable[str | None] | None = None) -> tuple[int, int]:
    """Replace the raw-message preview of dead letters older than `before` (at most `limit` of them; of `queues`
    only, when given) with a short marker; returns (previews dropped, bytes freed) by this call."""
    old = old_previews(before, queues)
    sizes = dict(Job.select(Job.id, fn.LENGTH(Job.raw).coerce(False)).where(old).limit(limit).tuples())
    if not sizes:
        return 0, 0
    done = [row[0] for row in Job.update(raw=PREVIEW_REMOVED).where(Job.id.in_(list(sizes)), old)
            .returning(Job.id).tuples().execute()]
    return len(done), sum(max(int(sizes[i] or 0) - len(PREVIEW_REMOVED), 0) for i in done)


# -- workers -------------------------------------------------------------------------------------------------------

def gone_after(settings: config.Settings) -> float:
    """The one rule for a live consumer: it has not said goodbye and beat within this many seconds (three
    heartbeats). Older than that, it is gone (killed, hung or cut off): status, health and cleanup all say so."""
    return 3 * settings.heartbeat_seconds


def served_by(queue: str) -> peewee.Expression:
    """WHERE condition that may match consumers serving `queue` (a beat's queue column lists them: "mail,default");
    narrow the rows with `serves`, which is exact (this LIKE is case-insensitive on some databases)."""
    return (WorkerBeat.queue == queue) | WorkerBeat.queue.contains(queue)


def serves(beat_queues: str | None, queue: str) -> bool:
    """Whether a consumer whose beat lists `beat_queues` serves `queue`."""
    return queue in (beat_queues or "").split(",")


def alive_worker_ids(queue: str | None, now: datetime.datetime, settings: config.Settings,
                     host: str | None = None) -> set[str]:
    """Ids of the live consumers of `queue` (None: of any queue; on `host`, when given), also those serving other
    queues too."""
    since = now - datetime.timedelta(seconds=gone_after(settings))
    where = WorkerBeat.stopped_at.is_null() & (WorkerBeat.last_seen >= since)
    if queue is not None:
        where &= served_by(queue)
    if host:
        where &= WorkerBeat.host == host
    return {row[0] for row in WorkerBeat.select(WorkerBeat.id, WorkerBeat.queue).where(where).tuples()
            if queue is None or serves(row[1], queue)}


def record_beat(worker_id: str, **fields: Any) -> None:
    """A consumer's heartbeat (insert or update its row)."""
    WorkerBeat.insert(id=worker_id, **fields).on_conflict(conflict_target=[WorkerBeat.id], update=fields).execute()

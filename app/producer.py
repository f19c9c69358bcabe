"""Submitting jobs: the path shared by `nightshift submit`, `from app import submit` and direct task calls.

Arguments are checked (JSON values only, against the task's signature) before anything is written; the job is
recorded in the ledger first and then put on Redis, so a Redis that is down loses nothing: recovery delivers it.
A producer never creates a ledger: a job recorded in a brand-new one (a relative path from another directory, a
typo) would never reach the worker, which reads the real one, so that is an error (db.LedgerMissing).

The settings a submission goes by (the default queue, the ledger, the signing key, the idempotency window) are
those of the Huey instance it is delivered through (app.queue.get_huey: configured by the entry point, or read
from the environment once in a program that only submits).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from typing import Any, Iterable

import peewee
import redis
from huey.api import Task
from huey.utils import normalize_time

from app import catalog, events, keycheck, ledger
from app.codec import NotJSON, ensure_json
from app.db import database
from app.schema import open_ledger
from app.models import Job
from app.queue import NightshiftHuey, check_queue_name, get_huey

log = logging.getLogger("nightshift.producer")

OPTIONS = ("key", "delay", "eta", "priority", "retries", "queue")  # submit()'s own keywords; the rest are arguments
MAX_INT = 2**31 - 1            # priority and retries are 32-bit columns in the ledger
MAX_DELAY = 100 * 366 * 86400  # seconds: a century is more than any job waits
MAX_KEY = 255                  # characters: the ledger's key column


class BadOption(ValueError):
    """A submit option (delay, eta, priority, retries, key) with a value it cannot take."""


@dataclasses.dataclass
class Submission:
    ids: list[str]
    delivered: bool = True            # False: recorded, but Redis was unreachable; recovery will deliver
    existing: list[str] = dataclasses.field(default_factory=list)  # ids returned for a repeated key
    delivery_error: str = ""


def check_arguments(task_class: type, arguments: dict, where: str = "", args: tuple = ()) -> dict:
    """Arguments as keyword arguments, checked against the task's signature and for JSON values only."""
    try:
        kwargs = catalog.bind_arguments(task_class, tuple(args), arguments)
        for name, value in kwargs.items():
            ensure_json(value, f"argument {name!r}")
        catalog.check_types(task_class, kwargs)
    except (catalog.BadArguments, NotJSON) as exc:
        raise type(exc)(f"{where}{exc}") from None
    return kwargs


def _row(task: Task, key: str | None) -> dict:
    return {"id": task.id, "task": type(task).__name__, "kwargs": json.dumps(task.kwargs), "attempt": 1,
            "retries_left": task.retries or 0, "retry_delay": task.retry_delay or 0,
            "priority": task.priority or 0, "timeout": task.timeout, "eta": task.eta, "key": key}


def submit_direct(task: Task) -> Submission:
    """A task Huey enqueues that nobody recorded yet (a decorated task called directly, a periodic run, the next
    step of a pipeline): checked like any submission, then recorded and queued."""
    task.kwargs, task.args = check_arguments(type(task), task.kwargs, args=task.args), ()
    return submit_tasks([task])


def submit_tasks(tasks: list[Task], key: str | None = None, *, deliver: bool = True,
                 warn: bool = True, queue: str | None = None) -> Submission:
    """Record new task instances, their arguments already checked (`build_task`, `submit_direct`), in the
    ledger, then put them on Redis in one round trip per queue. Each goes to `queue`, else its task's declared
    queue, else NIGHTSHIFT_QUEUE (catalog.queue_of). `deliver=False` only records them (Redis is known to be
    down: recovery delivers them); `warn=False` leaves telling about an unreachable Redis to the caller."""
    if queue is not None:
        try:
            check_queue_name(queue)
        except ValueError as exc:
            raise BadOption(str(exc)) from None
    settings = get_huey().settings
    for task in tasks:
        task.attempt = 1
        task.queue_name = catalog.queue_of(type(task), settings.queue, queue)
    if key is not None and (not isinstance(key, str) or ledger.storable(key, Job.key.max_length) != key):
        raise catalog.BadArguments(f"an idempotency key is text of at most {Job.key.max_length} characters "
                                   f"without NUL")
    if deliver:  # (not when Redis is known to be down)
        check_signing_key()
    open_ledger(settings.database_url, create=False)
    if key is not None:
        return _submit_with_key(tasks[0], key, settings.idempotency_window, warn)
    # In id order: the ids are random, and inserting them sorted touches each page of the primary-key index once
    # per batch instead of once per row (a bulk insert into a big SQLite ledger costs about half as much).
    for name, batch in _by_queue(tasks).items():
        ledger.insert_jobs(sorted((_row(task, None) for task in batch), key=lambda row: row["id"]), name)
    _log_submitted(tasks)  # before delivery: a worker may start the job at once, and "started" comes after
    submission = Submission([t.id for t in tasks])
    if not deliver:
        submission.delivered, submission.delivery_error = False, "not tried: Redis was unreachable"
        return submission
    return _deliver(tasks, submission, warn)


def check_signing_key() -> None:
    """Refuse (keycheck.SigningKeyMismatch) before anything is recorded when the consumers use another key. An
    unreadable Redis skips the check: the job is recorded and delivered later, as any submit while Redis is down."""
    huey = get_huey()
    try:
        keycheck.check(huey.storage.conn, huey.settings.queue, huey.settings.signing_key)
    except redis.RedisError:
        pass


def _log_submitted(tasks: list[Task], key: str | None = None) -> None:
    """One "submitted" line per job; a bulk submit logs one line per task and batch (per job only at DEBUG)."""
    if len(tasks) == 1 or events.log.isEnabledFor(logging.DEBUG):
        level = logging.INFO if len(tasks) == 1 else logging.DEBUG
        for task in tasks:
            events.emit("submitted", task.id, type(task).__name__, level, attempt=1, args=task.kwargs,
                        eta=task.eta.isoformat() if task.eta else None, priority=task.priority or None, key=key)
    if len(tasks) > 1:
        by_task: dict[str, list[str]] = {}
        for task in tasks:
            by_task.setdefault(type(task).__name__, []).append(task.id)
        for name, ids in by_task.items():
            events.emit_batch("submitted", name, ids)


def _submit_with_key(task: Task, key: str, window: float, warn: bool = True) -> Submission:
    """One job under idempotency key `key`, unless a job still holds it (finished ones give it up after `window`
    seconds: NIGHTSHIFT_IDEMPOTENCY_WINDOW)."""
    try:
        with database.atomic():
            existing = ledger.job_for_key(key, window)
            if existing is not None:
                return Submission([existing.id], existing=[existing.id])
            ledger.insert_jobs([_row(task, key)], task.queue_name)
    except peewee.IntegrityError:  # another producer recorded this key first
        existing = ledger.job_for_key(key, window)
        if existing is None:
            raise
        return Submission([existing.id], existing=[existing.id])
    _log_submitted([task], key)
    return _deliver([task], Submission([task.id]), warn)


RESUBMIT_CHUNK = 1000  # tasks per Redis round trip when putting known jobs (back) on Redis


def task_from_row(job: Job) -> Task:
    """Rebuild the message of a job's current attempt from its ledger row."""
    task_class = catalog.get_task_class(job.task)
    task = task_class((), json.loads(job.kwargs), id=job.id, eta=job.eta, retries=job.retries_left,
                      retry_delay=job.retry_delay, priority=job.priority, timeout=job.timeout)
    task.attempt = job.attempt
    return task


def resubmit(tasks: Iterable[Task], huey: NightshiftHuey | None = None) -> str | None:
    """Put jobs the ledger already holds as waiting on Redis (first delivery, recovery, an operator's retry, a
    job handed back or interrupted), RESUBMIT_CHUNK per round trip. Returns None, or what went wrong when Redis
    does not answer: the jobs stay waiting in the ledger and recovery delivers them once Redis is back, so the
    caller has nothing to undo, only to say so."""
    huey = huey or get_huey()
    tasks = list(tasks)
    try:
        for start in range(0, len(tasks), RESUBMIT_CHUNK):
            huey.push(tasks[start:start + RESUBMIT_CHUNK])
    except (redis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _by_queue(tasks: list[Task]) -> dict[str, list[Task]]:
    by_queue: dict[str, list[Task]] = {}
    for task in tasks:
        by_queue.setdefault(task.queue_name, []).append(task)
    return by_queue


def _deliver(tasks: list[Task], submission: Submission, warn: bool = True) -> Submission:
    error = None
    for name, batch in _by_queue(tasks).items():
        error = resubmit(batch, get_huey(name)) or error
    if error is not None:
        submission.delivered = False
        submission.delivery_error = error
        if warn:
            log.warning("Redis unreachable (%s): %d job(s) recorded in the ledger and will be delivered by "
                        "recovery when Redis is back", error, len(tasks))
    return submission


def check_options(delay: Any = None, eta: Any = None, priority: Any = None, retries: Any = None,
                  key: Any = None) -> datetime.datetime | None:
    """Refuse option values that would fail later (overflow, unstorable key); return the run time, in UTC.

    An `eta` without a UTC offset is read as UTC, as the docs say (Huey would read it as local time)."""
    if delay is not None and eta is not None:
        raise BadOption("give delay or eta, not both")
    if delay is not None:
        if isinstance(delay, datetime.timedelta):
            delay = delay.total_seconds()
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DELAY:
            raise BadOption(f"delay must be a number of seconds from 0 to {MAX_DELAY} (100 years), got {delay!r}")
    if eta is not None and not isinstance(eta, datetime.datetime):
        raise BadOption(f"eta must be a datetime, got {type(eta).__name__}")
    for name, value, low in (("priority", priority, -MAX_INT), ("retries", retries, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not low <= value <= MAX_INT):
            raise BadOption(f"{name} must be a whole number from {low} to {MAX_INT}, got {value!r}")
    if key is not None:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            raise BadOption(f"key must be a string of 1 to {MAX_KEY} characters")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise BadOption(f"key {key!r} is not valid UTF-8 text") from None
    if delay is not None:
        return normalize_time(None, delay, utc=True)
    if eta is not None:
        if eta.tzinfo is None:
            return eta
        try:
            return normalize_time(eta, None, utc=True)
        except OverflowError:
            raise BadOption(f"eta {eta.isoformat()} is out of range") from None
    return None


def build_task(task_name: str, arguments: dict, *, delay: float | None = None,
               eta: datetime.datetime | None = None, priority: int | None = None,
               retries: int | None = None, where: str = "", when: datetime.datetime | None = None) -> Task:
    """A checked task instance (not yet recorded). `when`: the run time from `check_options`, when the caller
    checked the options once for many tasks."""
    task_class = catalog.get_task_class(task_name)
    if when is None and (delay is not None or eta is not None):
        when = check_options(delay, eta, priority, retries)
    elif priority is not None or retries is not None:
        check_options(priority=priority, retries=retries)
    kwargs = check_arguments(task_class, arguments, where)
    return task_class((), kwargs, eta=when, priority=priority, retries=retries)


def _arguments_of(task_name: str, arguments: dict | None, keywords: dict, options: dict) -> dict:
    """The job's arguments: `arguments=` or the keywords, never both. A keyword that names a submit option and
    also a parameter of the task is refused: it would silently have been taken as the option."""
    if arguments is not None:
        if keywords:
            raise catalog.BadArguments(f"pass {task_name}'s arguments either as keywords or as arguments={{...}}, "
                                       f"not both (got arguments= and {', '.join(map(repr, keywords))})")
        if not isinstance(arguments, dict):
            raise catalog.BadArguments(f"arguments= must be a dict of {task_name}'s arguments, "
                                       f"got {type(arguments).__name__}")
        return dict(arguments)
    clash = sorted(name for name, value in options.items()
                   if value is not None and name in catalog.parameter_names(catalog.get_task_class(task_name)))
    if clash:
        raise catalog.BadArguments(
            f"{task_name} has a parameter named {' and '.join(map(repr, clash))}, which is also a submit option: "
            f"pass the task's arguments as arguments={{...}}, e.g. submit({task_name!r}, "
            f"arguments={{{clash[0]!r}: ...}}, {clash[0]}=...)")
    return keywords


def submit(task_name: str, /, arguments: dict | None = None, *, key: str | None = None,
           delay: float | None = None, eta: datetime.datetime | None = None, priority: int | None = None,
           retries: int | None = None, queue: str | None = None, **keywords: Any) -> str:
    """Queue one job and return its id.

    The task's arguments come as `arguments={...}` or as keywords (`submit("add", a=1)`); key, delay, eta,
    priority, retries and queue are always options. With `key`, a repeat while the first job holds the key returns
    the first job's id instead of queueing another. An `eta` without an offset is UTC. `queue` overrides the
    task's own queue (`@task(queue=...)`, else NIGHTSHIFT_QUEUE)."""
    options = dict(key=key, delay=delay, eta=eta, priority=priority, retries=retries)
    kwargs = _arguments_of(task_name, arguments, keywords, dict(options, queue=queue))
    when = check_options(**options)
    task = build_task(task_name, kwargs, priority=priority, retries=retries, when=when)
    return submit_tasks([task], key=key, queue=queue).ids[0]


def submit_many(task_name: str, arguments: Iterable[dict], *, delay: float | None = None,
                eta: datetime.datetime | None = None, priority: int | None = None,
                retries: int | None = None, queue: str | None = None) -> list[str]:
    """Queue many jobs of one task: one ledger transaction and one Redis round trip per call. `arguments` holds
    one dict of arguments per job; an error names the item (from 0) that caused it, and nothing is queued."""
    when = check_options(delay, eta, priority, retries)
    tasks = []
    for index, kwargs in enumerate(arguments):
        if not isinstance(kwargs, dict):
            raise catalog.BadArguments(f"item {index}: expected a dict of arguments, got {type(kwargs).__name__}")
        tasks.append(build_task(task_name, kwargs, priority=priority, retries=retries, where=f"item {index}: ",
                                when=when))
    return submit_tasks(tasks, queue=queue).ids if tasks else []


# Direct calls, periodic runs and pipeline steps reach Huey's enqueue without a ledger row: Huey hands them here.
NightshiftHuey.submit_new = staticmethod(submit_direct)

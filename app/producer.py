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
import itertools
import json
import logging
from typing import Any, Callable, Iterable

import peewee
import redis
from huey.api import Task
from huey.utils import normalize_time

import config
from app import catalog, events, jobids, keycheck, ledger
from app.codec import NotJSON, dumps_text, ensure_json
from app.db import database
from app.schema import open_ledger
from app.models import Job
from app.queue import NightshiftHuey, check_queue_name, get_huey

log = logging.getLogger("nightshift.producer")

OPTIONS = ("key", "delay", "eta", "priority", "retries", "queue")  # submit()'s own keywords; the rest are arguments
MAX_INT = 2**31 - 1            # priority and retries are 32-bit columns in the ledger
MAX_DELAY = 100 * 366 * 86400  # seconds: a century is more than any job waits
MAX_KEY = 255                  # characters: the ledger's key column
_PLAIN_JSON = {str, int, bool, type(None)}  # always JSON values as they are (a float may be NaN, lists nest)


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
            if type(value) not in _PLAIN_JSON:
                ensure_json(value, f"argument {name!r}")
        catalog.check_types(task_class, kwargs)
    except (catalog.BadArguments, NotJSON) as exc:
        raise type(exc)(f"{where}{exc}") from None
    return kwargs


def encode_arguments(kwargs: dict) -> tuple[str, str]:
    """Checked arguments (check_arguments) as the ledger records them and as a message carries them: what
    submit_batch takes, so a bulk submit encodes each job's arguments once, where it checks them."""
    return _ledger_json(kwargs), dumps_text(kwargs)


def _ledger_json(kwargs: dict) -> str:
    return json.dumps(kwargs)  # the ledger's form of the arguments, which the console's search matches


def _row(task: Task, key: str | None) -> dict:
    return {"id": task.id, "task": type(task).__name__, "kwargs": _ledger_json(task.kwargs), "attempt": 1,
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
    ledger, then put them on Redis (RESUBMIT_CHUNK messages per round trip, per queue). Each goes to `queue`,
    else its task's declared queue, else NIGHTSHIFT_QUEUE (catalog.queue_of). `deliver=False` only records them
    (Redis is known to be down: recovery delivers them); `warn=False` leaves telling about an unreachable Redis to
    the caller."""
    _check_queue(queue)
    if key is not None and (not isinstance(key, str) or ledger.storable(key, Job.key.max_length) != key):
        raise catalog.BadArguments(f"an idempotency key is text of at most {Job.key.max_length} characters "
                                   f"without NUL")
    settings = _ready(deliver)
    for task in tasks:
        task.attempt = 1
        task.queue_name = catalog.queue_of(type(task), settings.queue, queue)
    if key is not None:
        return _submit_with_key(tasks[0], key, settings.idempotency_window, warn)
    # In id order: the ids are random, and inserting them sorted touches each page of the primary-key index once
    # per batch instead of once per row (a bulk insert into a big SQLite ledger costs about half as much).
    by_queue = _by_queue(tasks)
    for name, batch in by_queue.items():
        ledger.insert_jobs(sorted((_row(task, None) for task in batch), key=lambda row: row["id"]), name)
    by_task: dict[str, list[str]] = {}
    for task in tasks:
        by_task.setdefault(type(task).__name__, []).append(task.id)
    # Logged before delivery: a worker may start the job at once, and "started" comes after.
    _log_submitted(by_task, lambda: ((t.id, type(t).__name__, t.kwargs, t.eta, t.priority) for t in tasks))
    submission = Submission([t.id for t in tasks])
    if not deliver:
        return _undelivered(submission)
    error = None
    for name, batch in by_queue.items():
        error = resubmit(batch, get_huey(name)) or error
    return _delivered(submission, error, len(tasks), warn)


def submit_batch(task_class: type, arguments: list[tuple[str, str]], *, priority: int | None = None,
                 retries: int | None = None, when: datetime.datetime | None = None, queue: str | None = None,
                 deliver: bool = True, warn: bool = True) -> Submission:
    """submit_tasks for many jobs of one task and the same options (bulk submits): each job's `arguments` come
    checked (check_arguments) and encoded (encode_arguments), in order. Recorded in the ledger in one
    transaction, then put on Redis, with the same rows and messages as submit_tasks, but built from one prototype
    task instead of a task object, a row dict and a message dict per job. The ids are made sorted (new_ids) and
    given in order, so the rows go in in id order and the messages in the given order."""
    _check_queue(queue)
    settings = _ready(deliver)
    prototype = task_class((), {}, eta=when, priority=priority, retries=retries)
    prototype.attempt = 1
    name = catalog.queue_of(task_class, settings.queue, queue)
    ids = jobids.new_ids(len(arguments))
    common = _row(prototype, None)
    del common["id"], common["kwargs"]
    ledger.insert_jobs([{"id": job_id, "kwargs": stored} for job_id, (stored, _) in zip(ids, arguments)], name,
                       common)
    eta, priority = prototype.eta, prototype.priority
    task_name = task_class.__name__
    _log_submitted({task_name: ids}, lambda: ((job_id, task_name, json.loads(stored), eta, priority)
                                              for job_id, (stored, _) in zip(ids, arguments)))
    submission = Submission(ids)
    if not deliver:
        return _undelivered(submission)
    huey = get_huey(name)
    message = huey.message_maker(prototype)
    error = push_messages(huey, ((message(job_id, carried), eta, priority)
                                 for job_id, (_, carried) in zip(ids, arguments)))
    return _delivered(submission, error, len(ids), warn)


def _check_queue(queue: str | None) -> None:
    if queue is not None:
        try:
            check_queue_name(queue)
        except ValueError as exc:
            raise BadOption(str(exc)) from None


def _ready(deliver: bool) -> config.Settings:
    """The settings of a submission, once the consumers' signing key is known to match (unless Redis is known
    to be down) and the ledger is there: what is checked before anything is recorded."""
    settings = get_huey().settings
    if deliver:
        check_signing_key()
    open_ledger(settings.database_url, create=False)
    return settings


def check_signing_key() -> None:
    """Refuse (keycheck.SigningKeyMismatch) before anything is recorded when the consumers use another key. An
    unreadable Redis skips the check: the job is recorded and delivered later, as any submit while Redis is down."""
    huey = get_huey()
    try:
        keycheck.check(huey.storage.conn, huey.settings.queue, huey.settings.signing_key)
    except redis.RedisError:
        pass


def _log_submitted(by_task: dict[str, list[str]], jobs: Callable[[], Iterable[tuple]],
                   key: str | None = None) -> None:
    """One "submitted" line per job; a bulk submit logs one line per task and batch (per job only at DEBUG).
    `by_task`: the ids of each task; `jobs` gives (id, task, arguments, eta, priority) of each job, called only
    when jobs are logged one by one."""
    count = sum(map(len, by_task.values()))
    if count == 1 or events.log.isEnabledFor(logging.DEBUG):
        level = logging.INFO if count == 1 else logging.DEBUG
        for job_id, name, args, eta, priority in jobs():
            events.emit("submitted", job_id, name, level, attempt=1, args=args,
                        eta=eta.isoformat() if eta else None, priority=priority or None, key=key)
    if count > 1:
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
    _log_submitted({type(task).__name__: [task.id]},
                   lambda: [(task.id, type(task).__name__, task.kwargs, task.eta, task.priority)], key)
    return _delivered(Submission([task.id]), resubmit([task], get_huey(task.queue_name)), 1, warn)


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
    return push_messages(huey, ((huey.serialize_task(task), task.eta, task.priority) for task in tasks))


def push_messages(huey: NightshiftHuey, messages: Iterable[tuple[bytes, datetime.datetime | None, int | None]]
                  ) -> str | None:
    """resubmit for messages already serialized, as (message, eta, priority): RESUBMIT_CHUNK per round trip;
    None, or what went wrong when Redis does not answer."""
    messages = iter(messages)
    try:
        while chunk := list(itertools.islice(messages, RESUBMIT_CHUNK)):
            huey.push_serialized(chunk)
    except (redis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _by_queue(tasks: list[Task]) -> dict[str, list[Task]]:
    by_queue: dict[str, list[Task]] = {}
    for task in tasks:
        by_queue.setdefault(task.queue_name, []).append(task)
    return by_queue


def _undelivered(submission: Submission) -> Submission:
    submission.delivered, submission.delivery_error = False, "not tried: Redis was unreachable"
    return submission


def _delivered(submission: Submission, error: str | None, count: int, warn: bool = True) -> Submission:
    """The submission once its messages went to Redis, or did not (`error`): then recovery delivers them."""
    if error is not None:
        submission.delivered = False
        submission.delivery_error = error
        if warn:
            log.warning("Redis unreachable (%s): %d job(s) recorded in the ledger and will be delivered by "
                        "recovery when Redis is back", error, count)
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
    return task_class((), kwargs, id=jobids.new_id(), eta=when, priority=priority, retries=retries)


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
    """Queue many jobs of one task: one ledger transaction per call (submit_batch), then RESUBMIT_CHUNK messages
    per Redis round trip. `arguments` holds one dict of arguments per job; an error names the item (from 0) that
    caused it, and nothing is queued."""
    when = check_options(delay, eta, priority, retries)
    task_class = catalog.get_task_class(task_name)
    encoded = []
    for index, kwargs in enumerate(arguments):
        if not isinstance(kwargs, dict):
            raise catalog.BadArguments(f"item {index}: expected a dict of arguments, got {type(kwargs).__name__}")
        encoded.append(encode_arguments(check_arguments(task_class, kwargs, f"item {index}: ")))
    if not encoded:
        return []
    return submit_batch(task_class, encoded, priority=priority, retries=retries, when=when, queue=queue).ids


# Direct calls, periodic runs and pipeline steps reach Huey's enqueue without a ledger row: Huey hands them here.
NightshiftHuey.submit_new = staticmethod(submit_direct)

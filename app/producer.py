"""Submitting jobs: the path shared by `nightshift submit`, `from app import submit` and direct task calls.

Arguments are checked (JSON values only, against the task's signature) before anything is written; the job is
recorded in the ledger first and then put on Redis, so a Redis that is down loses nothing: recovery delivers it.
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

import config
from app import catalog, events, ledger
from app.codec import ensure_json
from app.db import database, init as init_db
from app.queue import get_huey

log = logging.getLogger("nightshift.producer")


@dataclasses.dataclass
class Submission:
    ids: list[str]
    delivered: bool = True            # False: recorded, but Redis was unreachable; recovery will deliver
    existing: list[str] = dataclasses.field(default_factory=list)  # ids returned for a repeated key
    delivery_error: str = ""


def _check_arguments(task_class: type, arguments: dict, where: str = "", args: tuple = ()) -> dict:
    """Arguments as keyword arguments, checked against the task's signature and for JSON values only."""
    kwargs = catalog.bind_arguments(task_class, tuple(args), arguments)
    for name, value in kwargs.items():
        ensure_json(value, f"{where}argument {name!r}")
    return kwargs


def _row(task: Task, key: str | None) -> dict:
    return {"id": task.id, "task": type(task).__name__, "kwargs": json.dumps(task.kwargs), "attempt": 1,
            "retries_left": task.retries or 0, "retry_delay": task.retry_delay or 0,
            "priority": task.priority or 0, "timeout": task.timeout, "eta": task.eta, "key": key}


def submit_direct(task: Task) -> Submission:
    """A task Huey enqueues that nobody recorded yet (a decorated task called directly, a periodic run, the next
    step of a pipeline): checked like any submission, then recorded and queued."""
    task.kwargs, task.args = _check_arguments(type(task), task.kwargs, args=task.args), ()
    return submit_tasks([task])


def submit_tasks(tasks: list[Task], key: str | None = None) -> Submission:
    """Record new task instances, their arguments already checked (`build_task`, `submit_direct`), in the
    ledger, then put them on Redis in one round trip."""
    for task in tasks:
        task.attempt = 1
    init_db()
    if key is not None:
        return _submit_with_key(tasks[0], key)
    ledger.insert_jobs([_row(task, None) for task in tasks])
    return _log_submitted(tasks, _deliver(tasks, Submission([t.id for t in tasks])))


def _log_submitted(tasks: list[Task], submission: Submission, key: str | None = None) -> Submission:
    """One "submitted" line per job; a bulk submit logs one line per task and batch (per job only at DEBUG)."""
    undelivered = None if submission.delivered else True
    if len(tasks) == 1 or events.log.isEnabledFor(logging.DEBUG):
        level = logging.INFO if len(tasks) == 1 else logging.DEBUG
        for task in tasks:
            events.emit("submitted", task.id, type(task).__name__, level, attempt=1, args=task.kwargs,
                        eta=task.eta.isoformat() if task.eta else None, priority=task.priority or None, key=key,
                        undelivered=undelivered)
    if len(tasks) > 1:
        by_task: dict[str, list[str]] = {}
        for task in tasks:
            by_task.setdefault(type(task).__name__, []).append(task.id)
        for name, ids in by_task.items():
            events.emit_batch("submitted", name, ids, undelivered=undelivered)
    return submission


def _submit_with_key(task: Task, key: str) -> Submission:
    window = config.get().idempotency_window
    try:
        with database.atomic():
            existing = ledger.job_for_key(key, window)
            if existing is not None:
                return Submission([existing.id], existing=[existing.id])
            ledger.insert_jobs([_row(task, key)])
    except peewee.IntegrityError:  # another producer recorded this key first
        existing = ledger.job_for_key(key, window)
        if existing is None:
            raise
        return Submission([existing.id], existing=[existing.id])
    return _log_submitted([task], _deliver([task], Submission([task.id])), key)


def _deliver(tasks: list[Task], submission: Submission) -> Submission:
    try:
        get_huey().push(tasks)
    except redis.RedisError as exc:
        submission.delivered = False
        submission.delivery_error = str(exc)
        log.warning("Redis unreachable (%s): %d job(s) recorded in the ledger and will be delivered by "
                    "recovery when Redis is back", exc, len(tasks))
    return submission


def build_task(task_name: str, arguments: dict, *, delay: float | None = None,
               eta: datetime.datetime | None = None, priority: int | None = None,
               retries: int | None = None, where: str = "") -> Task:
    task_class = catalog.get_task_class(task_name)
    kwargs = _check_arguments(task_class, arguments, where)
    when = normalize_time(eta, delay, utc=True) if (eta is not None or delay is not None) else None
    return task_class((), kwargs, eta=when, priority=priority, retries=retries)


def submit(task_name: str, /, *, delay: float | None = None, eta: datetime.datetime | None = None,
           priority: int | None = None, retries: int | None = None, key: str | None = None,
           **arguments: Any) -> str:
    """Queue one job and return its id. With `key`, a repeat while the first job holds the key returns the
    first job's id instead of queueing another."""
    task = build_task(task_name, arguments, delay=delay, eta=eta, priority=priority, retries=retries)
    return submit_tasks([task], key=key).ids[0]


def submit_many(task_name: str, arguments: Iterable[dict], *, delay: float | None = None,
                eta: datetime.datetime | None = None, priority: int | None = None,
                retries: int | None = None) -> list[str]:
    """Queue many jobs of one task: one ledger transaction and one Redis round trip per call."""
    tasks = [build_task(task_name, kwargs, delay=delay, eta=eta, priority=priority, retries=retries)
             for kwargs in arguments]
    return submit_tasks(tasks).ids if tasks else []

"""Huey's hooks and signals wired to the ledger and the logs: what happens to a job inside a worker.

claim → run → post_execute (succeeded / retrying / dead); interrupted at shutdown → queued again as a new
attempt; expired → expired. A message that cannot be read becomes a dead letter.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import socket
import threading
import time
import traceback
import uuid
from typing import Any

from huey import signals as S
from huey.api import Task
from huey.exceptions import CancelExecution, RateLimitExceeded, RetryTask, TaskTimeout
from huey.utils import normalize_time

import config
from app import catalog, events, ledger
from app.codec import BadSignature, PoisonMessage
from app.db import init as init_db
from app.queue import NightshiftHuey, UnknownTask

log = logging.getLogger("nightshift.worker")

WORKER_ID = ""
# job id -> (task name, attempt, monotonic start, wall start): what this process is running now
running: dict[str, tuple[str, int, float, datetime.datetime]] = {}
jobs_done = 0
_lock = threading.Lock()


_id_pid = 0


def worker_id() -> str:
    """Identity of this process: host:pid:nonce (made again after a fork, for process workers). The nonce keeps
    two consumers apart that share a hostname and a pid, as containers on the host network running as pid 1 do."""
    global WORKER_ID, _id_pid
    if _id_pid != os.getpid():
        WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        _id_pid = os.getpid()
    return WORKER_ID


worker_id()


# -- before a job runs -------------------------------------------------------------------------------------------

def claim(task: Task) -> bool:
    """Claim this attempt in the ledger; False (and logged) for a duplicate delivery or an unrunnable job."""
    name = type(task).__name__
    attempt = getattr(task, "attempt", None)
    init_db()
    try:
        catalog.bind_arguments(type(task), task.args, task.kwargs)
    except catalog.BadArguments as exc:
        reason = f"arguments no longer fit the task: {exc}"
        if not ledger.mark_dead(task.id, reason):
            ledger.record_dead_letter(task.id, name, reason, b"")
        events.emit("dead", task.id, name, logging.ERROR, attempt=attempt, reason=reason)
        return False
    if attempt is None or not ledger.claim(task.id, attempt, WORKER_ID, config.get().lease_seconds):
        state = ledger.state_of(task.id)
        if state is None:
            reason = "message for a job the ledger does not know"
            ledger.record_dead_letter(task.id, name, reason, json.dumps({"id": task.id, "task": name}).encode())
            events.emit("dead", task.id, name, logging.ERROR, attempt=attempt, reason=reason)
        else:
            events.emit("skipped", task.id, name, logging.WARNING, attempt=attempt, state=state,
                        reason=skip_reason(state))
        return False
    with _lock:
        running[task.id] = (name, attempt, time.monotonic(), ledger.now())
    events.emit("started", task.id, name, attempt=attempt, worker=WORKER_ID, args=task.kwargs)
    return True


def skip_reason(state: str) -> str:
    if state in ("canceled", "expired", "dead"):
        return f"the job is {state}"
    if state in ("queued", "retrying"):
        return "stale message: the job waits for a newer attempt"
    return "duplicate delivery: this attempt already ran or is running"


# -- after a job ran -----------------------------------------------------------------------------------------------

def _retry_eta(task: Task, exc: BaseException) -> datetime.datetime | None:
    """When Huey will run the next attempt (mirrors Huey's own rules in Huey._execute/_requeue_task)."""
    if isinstance(exc, RetryTask) and (exc.eta or exc.delay is not None):
        return normalize_time(exc.eta, exc.delay, True)
    if isinstance(exc, RateLimitExceeded):
        return normalize_time(None, task.retry_delay or exc.delay, True)
    if task.retry_delay:
        return ledger.now() + datetime.timedelta(seconds=task.retry_delay)
    return None


def _finished(task: Task) -> tuple[int, float]:
    global jobs_done
    with _lock:
        entry = running.pop(task.id, None)
        jobs_done += 1
    return (entry[1], time.monotonic() - entry[2]) if entry else (getattr(task, "attempt", 0), 0.0)


def after_execute(huey: NightshiftHuey, task: Task, value: Any, exc: BaseException | None) -> None:
    """Record the outcome of an attempt (Huey post-execute hook)."""
    name = type(task).__name__
    attempt, duration = _finished(task)
    if exc is None:
        if getattr(task, "store_result", False) and value is not None:
            try:
                huey.put_result(task.id, value)
            except Exception:  # noqa: BLE001 - a result that cannot be stored must not fail the job
                log.exception("could not store the result of %s %s", name, task.id)
        if ledger.mark_succeeded(task.id, attempt, duration, ledger.summarize(value) if value is not None else None):
            events.emit("succeeded", task.id, name, attempt=attempt, duration=round(duration, 6), worker=WORKER_ID)
        else:
            events.emit("stale", task.id, name, logging.WARNING, attempt=attempt,
                        reason="finished after its lease was lost; the outcome of the newer attempt counts")
        return
    error = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if task.retries:  # Huey requeues this task after this hook
        eta = _retry_eta(task, exc)
        delay = task.retry_delay or 0
        if task.retry_backoff and delay and not isinstance(exc, (RetryTask, RateLimitExceeded)):
            delay *= task.retry_backoff
        if ledger.mark_retrying(task.id, attempt, duration, error, tb, eta, task.retries - 1, delay):
            task.attempt = attempt + 1
            events.emit("retrying", task.id, name, logging.WARNING, attempt=attempt, duration=round(duration, 6),
                        error=error, retries_left=task.retries - 1, eta=eta.isoformat() if eta else None,
                        worker=WORKER_ID)
        return
    if isinstance(exc, CancelExecution):
        reason = "the task gave up (permanent error, not retried)"
    elif isinstance(exc, TaskTimeout):
        reason = f"timed out after {task.timeout}s on attempt {attempt}"
    else:
        reason = f"failed on attempt {attempt} with no retries left"
    if ledger.mark_dead(task.id, reason, error, tb, attempt=attempt, duration=duration):
        events.emit("dead", task.id, name, logging.ERROR, attempt=attempt, duration=round(duration, 6),
                    error=error, reason=reason, worker=WORKER_ID)


def on_interrupted(huey: NightshiftHuey, task: Task) -> None:
    """The worker stopped before the job finished: queue it again as a new attempt, not as a failure."""
    name = type(task).__name__
    attempt, _ = _finished(task)
    new_attempt = ledger.requeue(task.id, attempt, "interrupted", "worker shut down before the job finished")
    if new_attempt is None:
        return
    task.attempt = new_attempt
    task.eta = None
    try:
        huey.push([task])
    except Exception:  # noqa: BLE001 - recovery delivers what the ledger holds as queued
        log.warning("could not put interrupted job %s back on Redis; recovery will", task.id)
    events.emit("requeued", task.id, name, logging.WARNING, attempt=attempt,
                reason="interrupted by shutdown", next_attempt=new_attempt)


def on_expired(huey: NightshiftHuey, task: Task) -> None:
    if ledger.mark_expired(task.id, getattr(task, "attempt", 0) or 0):
        events.emit("expired", task.id, type(task).__name__, logging.WARNING)


def dead_letter_message(data: bytes, exc: BaseException) -> None:
    """Keep an unreadable, unsigned or unknown message as a dead letter with the reason; never raise."""
    reason = str(exc) if isinstance(exc, PoisonMessage) else f"unreadable message: {type(exc).__name__}: {exc}"
    job_id, task = str(uuid.uuid4()), "(unreadable)"
    if isinstance(exc, UnknownTask):
        task = exc.task_name
    elif isinstance(exc, BadSignature):
        task = "(bad signature)"
    try:
        init_db()
        ledger.record_dead_letter(job_id, task, reason, bytes(data))
    except Exception:  # noqa: BLE001
        log.exception("could not record a dead letter for a bad message (%s)", reason)
    events.emit("dead", job_id, task, logging.ERROR, reason=reason, size=len(data))


def install(huey: NightshiftHuey) -> None:
    """Connect the hooks above to `huey` (in the consumer only)."""
    huey.post_execute("nightshift_outcome")(lambda task, value, exc: after_execute(huey, task, value, exc))
    huey.signal(S.SIGNAL_INTERRUPTED)(lambda signal, task, *a: on_interrupted(huey, task))
    huey.signal(S.SIGNAL_EXPIRED)(lambda signal, task, *a: on_expired(huey, task))

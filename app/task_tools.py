"""What task functions share: helper errors mapped onto Huey's retries, files confined to NIGHTSHIFT_FILES_ROOT,
progress reports, the ledger's database for helpers that keep data there, per-process rate limiters, and the
settings the worker started with (`worker_settings`).

Helpers raise PermanentError (the job ends, not retried) or TemporaryError (retried with backoff and jitter,
honouring a server's Retry-After, while the job has retries left); `outcome` maps them onto Huey's retry machinery.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import peewee
from huey.exceptions import CancelExecution, RetryTask

import config
from app.db import database
from app.ledger import record_progress
from app.queue import get_huey
from helpers import paths
from helpers.backoff import backoff_delay
from helpers.errors import PermanentError, TemporaryError
from helpers.ratelimit import RateLimiter

MAX_REPORTED_ERRORS = 5  # the ledger keeps ~1000 characters of a result


def outcome(task: Any, call: Callable[[], Any], cap: float = 3600.0) -> Any:
    """Run a helper call; map its errors onto Huey: PermanentError stops retries, TemporaryError retries after
    exponential backoff with jitter (base: the task's retry_delay; at least the server's Retry-After)."""
    try:
        return call()
    except PermanentError as exc:
        raise CancelExecution(f"{type(exc).__name__}: {exc}", retry=False) from exc
    except TemporaryError as exc:
        if not task.retries:
            raise  # out of retries: the job goes dead with this error
        delay = backoff_delay(task.attempt or 1, base=task.retry_delay or 1.0, cap=cap, retry_after=exc.retry_after)
        task.retries -= 1  # RetryTask alone does not use up a retry; this one must
        raise RetryTask(f"{type(exc).__name__}: {exc}", delay=delay) from exc


def worker_settings() -> config.Settings:
    """The settings the worker started with: those its entry point gave the Huey instance tasks run on. (Keep
    them in a variable named `settings`: Sentry's scrubber drops a variable by that name, see app.monitoring.)"""
    return get_huey().settings


def allowed(path: Any, what: str = "path") -> str:
    """PATH resolved inside NIGHTSHIFT_FILES_ROOT, or a PermanentError: every file task reads and writes only there."""
    return str(paths.confine(path, worker_settings().files_root, what))


def first_errors(errors: list) -> list:
    """The first few rejected rows, messages shortened: the ledger keeps only ~1000 characters of a result."""
    return [{"line": e["line"], "error": e["error"][:120]} for e in errors[:MAX_REPORTED_ERRORS]]


def progress(task: Any) -> Callable[[int, Any, str], None]:
    return lambda done, total, note: record_progress(task.id, done, total, note)


_email_limiter: RateLimiter | None = None
_email_limiter_lock = threading.Lock()


def email_rate_limiter() -> RateLimiter:
    """One limiter per worker process, so a consumer's threads together keep to NIGHTSHIFT_EMAIL_RATE."""
    global _email_limiter
    with _email_limiter_lock:
        if _email_limiter is None:
            _email_limiter = RateLimiter(worker_settings().email_rate or None)
        return _email_limiter


def ledger_database() -> peewee.Database:
    """The ledger's database (opened by the worker), for helpers that keep their own tables there."""
    return database.obj

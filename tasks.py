"""The task catalog: thin tasks that parse arguments, call a helper and return the outcome.

The work lives in `helpers/`; the worker records every outcome in the ledger. Tasks are idempotent: a job may
run again after a crash (delivery is at-least-once).
"""
from __future__ import annotations

from huey.exceptions import TaskTimeout

from app import record_progress, task
from helpers import checksums, primes


@task(store_result=True, context=True, retries=2, retry_delay=1)
def checksum_file(path: str, task=None) -> dict:
    """SHA-256 of a file under NIGHTSHIFT_FILES_ROOT on the worker's disk."""
    return {"path": path, "sha256": _outcome(task, lambda: checksums.sha256_file(_allowed(path)))}


@task(store_result=True, context=True, timeout=3600)
def count_primes(limit: int, task=None) -> int:
    """Count the primes below LIMIT (a long CPU-bound computation that reports progress)."""
    try:
        return primes.count_primes(limit, progress=_progress(task), should_stop=lambda: bool(task.is_timed_out))
    except TimeoutError as exc:  # stopped at its time limit: Huey's timeout, so the ledger says "timed out"
        raise TaskTimeout(str(exc)) from exc


# -- recipes: e-mail batches, webhooks, thumbnails, API pulls, bulk records ------------------------------------------
# Each task parses its JSON arguments, calls a helper and returns a small JSON outcome. Helpers raise
# PermanentError (the job ends, not retried) or TemporaryError (retried with backoff and jitter, honouring a
# server's Retry-After, while the job has retries left); `_outcome` maps them onto Huey's retry machinery.
# Each task imports its helper when it runs (Pillow, smtplib, ssl...), so an idle worker stays small.

import math  # noqa: E402
import threading  # noqa: E402
from pathlib import PurePath  # noqa: E402
from typing import Any, Callable  # noqa: E402

from huey.exceptions import CancelExecution, RetryTask  # noqa: E402

import config  # noqa: E402
from app import submit_many  # noqa: E402
from app.db import init as ledger_database  # noqa: E402
from helpers.backoff import backoff_delay  # noqa: E402
from helpers import paths  # noqa: E402
from helpers.errors import PermanentError, TemporaryError  # noqa: E402
from helpers.ratelimit import RateLimiter  # noqa: E402

MAX_REPORTED_ERRORS = 5  # the ledger keeps ~1000 characters of a result


def _outcome(task: Any, call: Callable[[], Any], cap: float = 3600.0) -> Any:
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


def _allowed(path: Any, what: str = "path") -> str:
    """PATH resolved inside NIGHTSHIFT_FILES_ROOT, or a PermanentError: every file task reads and writes only there."""
    return str(paths.confine(path, config.get().files_root, what))


def _first_errors(errors: list) -> list:
    """The first few rejected rows, messages shortened: the ledger keeps only ~1000 characters of a result."""
    return [{"line": e["line"], "error": e["error"][:120]} for e in errors[:MAX_REPORTED_ERRORS]]


def _progress(task: Any) -> Callable[[int, Any, str], None]:
    return lambda done, total, note: record_progress(task.id, done, total, note)


_email_limiter: RateLimiter | None = None
_email_limiter_lock = threading.Lock()


def _email_rate_limiter() -> RateLimiter:
    """One limiter per worker process, so a consumer's threads together keep to NIGHTSHIFT_EMAIL_RATE."""
    global _email_limiter
    with _email_limiter_lock:
        if _email_limiter is None:
            _email_limiter = RateLimiter(config.get().email_rate or None)
        return _email_limiter


@task(store_result=True, context=True, retries=2, retry_delay=10)
def send_email_batch(recipients: str, subject: str, body: str, html: str | None = None, sender: str | None = None,
                     batch_id: str | None = None, email_field: str = "email", task=None) -> dict:
    """Send SUBJECT/BODY ({name} placeholders) to every row of RECIPIENTS (CSV or JSON lines, column 'email').

    Fans out one send_email job per distinct recipient, spread over time at NIGHTSHIFT_EMAIL_RATE per second.
    The batch id (default: this job's id, so a retried batch keeps it) makes each recipient get it at most once."""
    from helpers import mail
    plan = _outcome(task, lambda: mail.plan_batch(_allowed(recipients, "recipients"), subject, body, email_field,
                                                  html=html))
    batch = batch_id or task.id
    jobs = [{"batch_id": batch, "to": m["to"], "subject": m["subject"], "body": m["body"], "html": m["html"],
             "sender": sender} for m in plan["messages"]]
    rate = config.get().email_rate
    per_second = max(1, math.floor(rate)) if rate else max(1, len(jobs))
    for number, start in enumerate(range(0, len(jobs), per_second)):
        delay = number * per_second / rate if rate else 0
        submit_many("send_email", jobs[start:start + per_second], delay=delay or None)
    return {"batch_id": batch, "queued": len(jobs), "rejected": len(plan["rejected"]),
            "duplicates": plan["duplicates"], "errors": _first_errors(plan["rejected"])}


@task(store_result=True, context=True, retries=5, retry_delay=10)
def send_email(batch_id: str, to: str, subject: str, body: str, html: str | None = None,
               sender: str | None = None, task=None) -> dict:
    """Send one e-mail of batch BATCH_ID over NIGHTSHIFT_SMTP_URL, unless this batch already sent it to TO."""
    from helpers import mail
    settings = config.get()
    return _outcome(task, lambda: mail.send_email(
        ledger_database(), settings.smtp_url, batch_id, to, subject, body, sender or settings.email_from, html,
        throttle=_email_rate_limiter().wait))


@task(store_result=True, context=True, retries=8, retry_delay=2)
def deliver_webhook(url: str, payload: Any, event: str | None = None, headers: dict | None = None,
                    task=None) -> dict:
    """POST PAYLOAD as JSON to URL, signed (Standard Webhooks) with NIGHTSHIFT_WEBHOOK_SECRET; the job id is the
    delivery id (webhook-id).

    Timeouts, connection errors, 429 and 5xx are retried with backoff (honouring Retry-After); other 4xx are final."""
    from helpers import webhooks
    settings = config.get()
    return _outcome(task, lambda: webhooks.deliver_webhook(
        url, payload, task.id, settings.webhook_secret, timeout=settings.webhook_timeout,
        allow_private=settings.webhook_allow_private, headers=headers, event=event,
        legacy_signature=settings.webhook_legacy_signature))


@task(store_result=True, context=True, retries=2, retry_delay=5)
def make_thumbnail(path: str, width: int, output: str | None = None, task=None) -> dict:
    """Write a WIDTH-pixel-wide copy of the image at PATH (default output: NAME.thumb-WIDTH.EXT beside it); both
    under NIGHTSHIFT_FILES_ROOT."""
    from helpers import files

    def thumbnail() -> dict:
        source = _allowed(path)
        target = _allowed(output if output is not None else files.thumbnail_path(source, width), "output")
        return files.make_thumbnail(source, width, target)
    return _outcome(task, thumbnail)


@task(store_result=True, context=True, retries=5, retry_delay=30)
def pull_pages(url: str, name: str | None = None, records_key: str = "records", id_key: str = "id",
               next_key: str = "next", cursor_param: str | None = None, max_pages: int | None = None,
               restart: bool = False, headers: dict | None = None, follow_other_origins: bool = False,
               task=None) -> dict:
    """Pull a paginated JSON API into the nightshift_pulled_records table, resuming from the last saved page.

    Runs at NIGHTSHIFT_PULL_RATE requests per second; a finished pull does nothing unless RESTART. HEADERS go only
    to URL's origin: a next page elsewhere fails the job, or is fetched without them with FOLLOW_OTHER_ORIGINS."""
    from helpers import api_pull
    settings = config.get()
    return _outcome(task, lambda: api_pull.pull_pages(
        ledger_database(), url, name=name, id_key=id_key, records_key=records_key, next_key=next_key,
        cursor_param=cursor_param, rate=settings.pull_rate or None, max_pages=max_pages, restart=restart,
        allow_private=settings.pull_allow_private, headers=headers, progress=_progress(task),
        follow_other_origins=follow_other_origins))


@task(store_result=True, context=True, retries=2, retry_delay=10)
def import_records(path: str, dataset: str | None = None, key: str = "id", fmt: str | None = None,
                   required: list | None = None, batch_size: int = 1000, task=None) -> dict:
    """Upsert a CSV or JSON-lines file into the nightshift_records table; bad rows are rejected by line number."""
    from helpers import records
    result = _outcome(task, lambda: records.import_records(
        ledger_database(), _allowed(path), dataset=dataset or PurePath(path).stem, key=key, fmt=fmt,
        required=required or (), batch_size=batch_size, progress=_progress(task)))
    result["errors"] = _first_errors(result["errors"])
    return result

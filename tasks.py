"""The task catalog: thin tasks that parse arguments, call a helper and return the outcome.

The work lives in `helpers/`; the worker records every outcome in the ledger. Tasks are idempotent: a job may
run again after a crash (delivery is at-least-once).
"""
from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

from huey.exceptions import TaskTimeout

from app import submit_many, task
from app.task_tools import (allowed, email_rate_limiter, first_errors, ledger_database, outcome, progress,
                            worker_settings)
from helpers import checksums, primes


@task(store_result=True, context=True, retries=2, retry_delay=1)
def checksum_file(path: str, task=None) -> dict:
    """SHA-256 of a file under NIGHTSHIFT_FILES_ROOT on the worker's disk."""
    return {"path": path, "sha256": outcome(task, lambda: checksums.sha256_file(allowed(path)))}


@task(store_result=True, context=True, timeout=3600)
def count_primes(limit: int, task=None) -> int:
    """Count the primes below LIMIT (a long CPU-bound computation that reports progress)."""
    try:
        return primes.count_primes(limit, progress=progress(task), should_stop=lambda: bool(task.is_timed_out))
    except TimeoutError as exc:  # stopped at its time limit: Huey's timeout, so the ledger says "timed out"
        raise TaskTimeout(str(exc)) from exc


# -- recipes: e-mail batches, webhooks, thumbnails, API pulls, bulk records ------------------------------------------
# Each task imports its helper when it runs (Pillow, smtplib, ssl...), so an idle worker stays small.

@task(store_result=True, context=True, retries=2, retry_delay=10)
def send_email_batch(recipients: str, subject: str, body: str, html: str | None = None, sender: str | None = None,
                     batch_id: str | None = None, email_field: str = "email", task=None) -> dict:
    """Send SUBJECT/BODY ({name} placeholders) to every row of RECIPIENTS (CSV or JSON lines, column 'email').

    Fans out one send_email job per distinct recipient, spread over time at NIGHTSHIFT_EMAIL_RATE per second.
    The batch id (default: this job's id, so a retried batch keeps it) makes each recipient get it at most once."""
    from helpers import mail
    plan = outcome(task, lambda: mail.plan_batch(allowed(recipients, "recipients"), subject, body, email_field,
                                                  html=html))
    batch = batch_id or task.id
    jobs = [{"batch_id": batch, "to": m["to"], "subject": m["subject"], "body": m["body"], "html": m["html"],
             "sender": sender} for m in plan["messages"]]
    rate = worker_settings().email_rate
    per_second = max(1, math.floor(rate)) if rate else max(1, len(jobs))
    for number, start in enumerate(range(0, len(jobs), per_second)):
        delay = number * per_second / rate if rate else 0
        submit_many("send_email", jobs[start:start + per_second], delay=delay or None)
    return {"batch_id": batch, "queued": len(jobs), "rejected": len(plan["rejected"]),
            "duplicates": plan["duplicates"], "errors": first_errors(plan["rejected"])}


@task(store_result=True, context=True, retries=5, retry_delay=10)
def send_email(batch_id: str, to: str, subject: str, body: str, html: str | None = None,
               sender: str | None = None, task=None) -> dict:
    """Send one e-mail of batch BATCH_ID over NIGHTSHIFT_SMTP_URL, unless this batch already sent it to TO."""
    from helpers import mail
    settings = worker_settings()
    return outcome(task, lambda: mail.send_email(
        ledger_database(), settings.smtp_url, batch_id, to, subject, body, sender or settings.email_from, html,
        throttle=email_rate_limiter().wait))


@task(store_result=True, context=True, retries=8, retry_delay=2)
def deliver_webhook(url: str, payload: Any, event: str | None = None, headers: dict | None = None,
                    task=None) -> dict:
    """POST PAYLOAD as JSON to URL, signed (Standard Webhooks) with NIGHTSHIFT_WEBHOOK_SECRET; the job id is the
    delivery id (webhook-id).

    Timeouts, connection errors, 429 and 5xx are retried with backoff (honouring Retry-After); other 4xx are final."""
    from helpers import webhooks
    settings = worker_settings()
    return outcome(task, lambda: webhooks.deliver_webhook(
        url, payload, task.id, settings.webhook_secret, timeout=settings.webhook_timeout,
        allow_private=settings.webhook_allow_private, headers=headers, event=event,
        legacy_signature=settings.webhook_legacy_signature))


@task(store_result=True, context=True, retries=2, retry_delay=5)
def make_thumbnail(path: str, width: int, output: str | None = None, task=None) -> dict:
    """Write a WIDTH-pixel-wide copy of the image at PATH (default output: NAME.thumb-WIDTH.EXT beside it); both
    under NIGHTSHIFT_FILES_ROOT."""
    from helpers import files

    def thumbnail() -> dict:
        source = allowed(path)
        target = allowed(output if output is not None else files.thumbnail_path(source, width), "output")
        return files.make_thumbnail(source, width, target)
    return outcome(task, thumbnail)


@task(store_result=True, context=True, retries=5, retry_delay=30)
def pull_pages(url: str, name: str | None = None, records_key: str = "records", id_key: str = "id",
               next_key: str = "next", cursor_param: str | None = None, max_pages: int | None = None,
               restart: bool = False, headers: dict | None = None, follow_other_origins: bool = False,
               task=None) -> dict:
    """Pull a paginated JSON API into the nightshift_pulled_records table, resuming from the last saved page.

    Runs at NIGHTSHIFT_PULL_RATE requests per second; a finished pull does nothing unless RESTART. HEADERS go only
    to URL's origin: a next page elsewhere fails the job, or is fetched without them with FOLLOW_OTHER_ORIGINS."""
    from helpers import api_pull
    settings = worker_settings()
    return outcome(task, lambda: api_pull.pull_pages(
        ledger_database(), url, name=name, id_key=id_key, records_key=records_key, next_key=next_key,
        cursor_param=cursor_param, rate=settings.pull_rate or None, max_pages=max_pages, restart=restart,
        allow_private=settings.pull_allow_private, headers=headers, progress=progress(task),
        follow_other_origins=follow_other_origins))


@task(store_result=True, context=True, retries=2, retry_delay=10)
def import_records(path: str, dataset: str | None = None, key: str = "id", fmt: str | None = None,
                   required: list | None = None, batch_size: int = 1000, task=None) -> dict:
    """Upsert a CSV or JSON-lines file into the nightshift_records table; bad rows are rejected by line number."""
    from helpers import records
    result = outcome(task, lambda: records.import_records(
        ledger_database(), allowed(path), dataset=dataset or PurePath(path).stem, key=key, fmt=fmt,
        required=required or (), batch_size=batch_size, progress=progress(task)))
    result["errors"] = first_errors(result["errors"])
    return result

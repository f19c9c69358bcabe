"""Tasks routed to a queue of their own, for tests/test_queues.py (NIGHTSHIFT_TASK_MODULES=...,queue_tasks).

The queue's name comes from NIGHTSHIFT_TEST_MAIL_QUEUE, read at import, so each test's workers use a name of
that test's own on the shared Redis."""
from __future__ import annotations

import os
import time

from app import periodic_task, task
from app.locks import lock_task
from app.schedule import every_tick

MAIL = os.environ.get("NIGHTSHIFT_TEST_MAIL_QUEUE", "mail")


@task(queue=MAIL)
def send_mail(to: str = "someone@example.com") -> str:
    """A short job that lives on the mail queue."""
    return to


@task(queue=MAIL, retries=0)
def bounce_mail() -> None:
    """A mail job that fails at once: dead after one attempt."""
    raise RuntimeError("mailbox does not exist")


@periodic_task(every_tick, queue=MAIL)
def mail_tick() -> None:
    """A periodic task routed to the mail queue."""


@task()
def hold_lock(name: str, seconds: float) -> None:
    """Hold the task lock NAME for SECONDS: taken in the consumer's service queue (NIGHTSHIFT_QUEUE), whatever
    queue the job runs on, with the consumer as its recorded holder (app.locks)."""
    with lock_task(name):
        time.sleep(seconds)

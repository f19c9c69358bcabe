"""Tasks used only by tests/test_monitoring.py (loaded with NIGHTSHIFT_TASK_MODULES=...,monitoring_tasks)."""
from __future__ import annotations

import time

from app import task


@task()
def sign_in(user: str, password: str, token: str = "") -> None:
    """Pretend to sign in: takes secrets as arguments, which the logs must mask."""


@task(retries=2, retry_delay=0.05)
def flaky_io(message: str = "disk on fire") -> None:
    """Fail every attempt with an OSError."""
    raise OSError(message)


@task()
def nap(seconds: float) -> None:
    """Sleep SECONDS."""
    time.sleep(seconds)

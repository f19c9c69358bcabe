"""Tasks used only by the tests (loaded with NIGHTSHIFT_TASK_MODULES=tasks,sample_tasks)."""
from __future__ import annotations

import os
import time

from app import task


@task()
def noop() -> None:
    """Do nothing."""


@task(store_result=True)
def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    return a + b


@task(retries=2, retry_delay=0.1)
def always_fails(message: str = "boom") -> None:
    """Raise every time."""
    raise RuntimeError(message)


@task(retries=3, context=True)
def fails_first(times: int, task=None) -> str:
    """Fail the first TIMES attempts, then succeed."""
    if task.attempt <= times:
        raise RuntimeError(f"attempt {task.attempt} fails on purpose")
    return "ok"


@task(context=True)
def record_effect(path: str, seconds: float = 0.0, task=None) -> None:
    """Sleep, then append this job's id to PATH: the job's effect, counted by the tests."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(task.id + "\n")
        f.flush()
        os.fsync(f.fileno())


@task()
def sleep_for(seconds: float) -> None:
    """Sleep SECONDS."""
    time.sleep(seconds)

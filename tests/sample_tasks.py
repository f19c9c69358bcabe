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
def record_effect(directory: str, seconds: float = 0.0, task=None) -> None:
    """Sleep, then record this job's effect idempotently: one file per job id (created once, whatever the number
    of runs); every run is also appended to DIRECTORY/runs.log so the tests can count re-runs."""
    with open(os.path.join(directory, "runs.log"), "a") as f:
        f.write(f"{task.id} {task.attempt} start\n")
    time.sleep(seconds)
    try:
        fd = os.open(os.path.join(directory, task.id), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        pass


@task()
def sleep_for(seconds: float) -> None:
    """Sleep SECONDS."""
    time.sleep(seconds)


@task(retries=3)
def gives_up(reason: str = "the address does not exist") -> None:
    """Fail for good on the first attempt (a permanent error): no retries."""
    from huey.exceptions import CancelExecution
    raise CancelExecution(reason, retry=False)

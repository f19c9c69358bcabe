"""Tasks under flow limits, for tests/test_flow.py (NIGHTSHIFT_TASK_MODULES=...,flow_tasks). Each records its
start and end (wall clock) in DIRECTORY/starts.log."""
from __future__ import annotations

import os
import time

from app import task


def _record(directory: str, what: str, job_id: str, tag: str = "") -> None:
    with open(os.path.join(directory, "starts.log"), "a") as f:
        f.write(f"{time.time():.6f} {what} {job_id} {tag}\n")


@task(rate_limit="5/s", context=True)
def five_per_second(directory: str, task=None) -> None:
    """Record the start; at most five of these start per second across all consumers."""
    _record(directory, "start", task.id)


@task(concurrency=2, concurrency_key="host", context=True)
def two_per_host(directory: str, host: str, seconds: float = 1.0, task=None) -> None:
    """Sleep SECONDS with at most two running at once per HOST across all consumers."""
    _record(directory, "start", task.id, host)
    time.sleep(seconds)
    _record(directory, "end", task.id, host)


@task(concurrency=1, context=True)
def one_at_a_time(directory: str, seconds: float = 1.0, task=None) -> None:
    """A global mutex: never two at once, whatever the number of consumers."""
    _record(directory, "start", task.id)
    time.sleep(seconds)
    _record(directory, "end", task.id)


@task(context=True, retries=3)
def busy(directory: str, seconds: float, task=None) -> None:
    """Python code running for SECONDS (interruptible at any bytecode), then record the end."""
    _record(directory, "start", task.id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(1000))
    _record(directory, "end", task.id)


@task(context=True, retries=3)
def sleeper(directory: str, seconds: float, task=None) -> None:
    """Block in time.sleep for SECONDS (a blocking call), then record the end."""
    _record(directory, "start", task.id)
    time.sleep(seconds)
    _record(directory, "end", task.id)


_kept: list = []


@task(context=True)
def leak(directory: str, megabytes: int, task=None) -> int:
    """Keep MEGABYTES of touched memory for the life of the process (a leaking task); returns the pid."""
    _kept.append(bytearray(megabytes * 2**20))
    _record(directory, "start", task.id, str(os.getpid()))
    return os.getpid()

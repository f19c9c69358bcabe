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


@task(context=True)
def slow_first_attempt(first_seconds: float, later_seconds: float, task=None) -> None:
    """Attempt 1 sleeps FIRST_SECONDS and succeeds; a later attempt sleeps LATER_SECONDS and fails."""
    if task.attempt == 1:
        time.sleep(first_seconds)
        return
    time.sleep(later_seconds)
    raise RuntimeError(f"attempt {task.attempt} fails on purpose")


def _hold_gil(directory: str, seconds: int, job_id: str) -> None:
    """Record the run, then block in C without releasing the GIL (as a long regex or C extension call does)."""
    import ctypes
    with open(os.path.join(directory, "runs.log"), "a") as f:
        f.write(f"{job_id} start\n")
    ctypes.PyDLL(None).sleep(int(seconds))


@task(context=True)
def hold_gil(directory: str, seconds: int, task=None) -> None:
    """Hold the GIL for SECONDS: the worker's lease renewal cannot run meanwhile."""
    _hold_gil(directory, seconds, task.id)


@task(context=True, lease=10)
def hold_gil_long_lease(directory: str, seconds: int, task=None) -> None:
    """hold_gil with a lease of its own, longer than the time it holds the GIL."""
    _hold_gil(directory, seconds, task.id)


@task(retries=2, retry_delay=0.1, context=True)
def fails_with_nul(directory: str, task=None) -> None:
    """Record the run, then fail with a NUL character in the error (PostgreSQL text refuses NUL)."""
    with open(os.path.join(directory, "runs.log"), "a") as f:
        f.write(f"{task.id} {task.attempt}\n")
    raise RuntimeError("bad\x00byte")


_counters: dict[tuple[int, str], "redis.Redis"] = {}


def _counter(redis_url: str):
    """One Redis client per process (process workers are forked: a client must not cross the fork)."""
    import redis
    key = (os.getpid(), redis_url)
    if key not in _counters:
        _counters[key] = redis.Redis.from_url(redis_url)
    return _counters[key]


@task(context=True)
def count_effect_run(redis_url: str, prefix: str, seconds: float = 0.0, task=None) -> None:
    """Count this run in REDIS_URL, keyed by job id: INCR PREFIX:started:ID, sleep SECONDS, then INCR
    PREFIX:effect:ID (the job's effect). The chaos tests point REDIS_URL at a Redis their faults leave alone,
    so the counts tell runs killed midway (started, no effect) from effects made more than once."""
    client = _counter(redis_url)
    client.incr(f"{prefix}:started:{task.id}")
    time.sleep(seconds)
    client.incr(f"{prefix}:effect:{task.id}")


@task()
def forks_children(directory: str) -> str:
    """Fork as task code does, in a process worker too: a bare os.fork() child and a subprocess with a
    preexec_fn (both run the at-fork hooks); each child writes a file in DIRECTORY. Fails if either did not."""
    import subprocess
    pid = os.fork()
    if pid == 0:
        try:
            with open(os.path.join(directory, "forked"), "w") as f:
                f.write(str(os.getpid()))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    forked = os.waitstatus_to_exitcode(status)
    spawned = subprocess.run(["/bin/sh", "-c", 'echo ok > "$1"', "sh", os.path.join(directory, "spawned")],
                             preexec_fn=lambda: None, timeout=30).returncode
    if forked or spawned:
        raise RuntimeError(f"a child of the task exited early: os.fork child {forked}, preexec_fn child {spawned}")
    return "ok"

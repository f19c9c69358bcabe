"""Tasks of the named-queues benchmark (benchmarks/queues.py; NIGHTSHIFT_TASK_MODULES=benchmarks.queue_tasks)."""
import time

from app import task


@task()
def bench_sleep(seconds: float) -> None:
    """A long job: holds its worker thread."""
    time.sleep(seconds)


@task()
def bench_short() -> None:
    """A short job: measures the wait, not the work."""


@task(rate_limit="5/s")
def bench_rated() -> None:
    """A job under a rate limit held across all consumers (app.flow)."""

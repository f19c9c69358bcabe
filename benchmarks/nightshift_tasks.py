"""The benchmark's Nightshift task module (NIGHTSHIFT_TASK_MODULES=benchmarks.nightshift_tasks)."""
from app import task


@task()
def bench_noop():
    """Does nothing: the benchmark measures the machinery around a job."""


@task()
def bench_item(n: int, name: str = "") -> None:
    """Takes two arguments: the bulk-file benchmark checks them (signature, JSON, type hints) on every line."""

"""The benchmark's Nightshift task module (NIGHTSHIFT_TASK_MODULES=benchmarks.nightshift_tasks)."""
import os
import time

from app import task


@task()
def bench_noop():
    """Does nothing: the benchmark measures the machinery around a job."""


@task()
def bench_item(n: int, name: str = "") -> None:
    """Takes two arguments: the bulk-file benchmark checks them (signature, JSON, type hints) on every line."""


@task()
def bench_latency(sent: float) -> None:
    """Notes enqueue->start latency as it starts (benchmarks/peers.py), as every peer's `latency` task does."""
    lag = time.time() - sent
    with open(os.environ["BENCH_LATENCY_FILE"], "a") as f:
        f.write(f"{lag!r}\n")

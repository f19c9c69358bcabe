"""The task catalog: thin tasks that parse arguments, call a helper and return the outcome.

The work lives in `helpers/`; the worker records every outcome in the ledger. Tasks are idempotent: a job may
run again after a crash (delivery is at-least-once).
"""
from __future__ import annotations

from app import record_progress, task
from helpers import checksums, primes


@task(store_result=True, retries=2, retry_delay=1)
def checksum_file(path: str) -> dict:
    """SHA-256 of a file on the worker's disk."""
    return {"path": path, "sha256": checksums.sha256_file(path)}


@task(store_result=True, context=True, timeout=3600)
def count_primes(limit: int, task=None) -> int:
    """Count the primes below LIMIT (a long CPU-bound computation that reports progress)."""
    return primes.count_primes(
        limit,
        progress=lambda done, total, note: record_progress(task.id, done, total, note),
        should_stop=lambda: bool(task.is_timed_out),
    )

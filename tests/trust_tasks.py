"""Tasks for the command-line and Python API tests (NIGHTSHIFT_TASK_MODULES=...,trust_tasks)."""
from __future__ import annotations

import time

from app import task


@task()
def takes_options(key: str, retries: int = 0, priority: int = 0, delay: float = 0.0) -> None:
    """Parameters named like submit's options."""


@task()
def typed(limit: int, ratio: float = 1.0, name: str = "", flag: bool = False, items: list | None = None,
          opts: dict | None = None) -> None:
    """Simple type hints, checked at submit."""


@task(timeout=2)
def spin(seconds: float) -> int:
    """Loop in Python for SECONDS (longer than its time limit)."""
    end, turns = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        turns += 1
    return turns

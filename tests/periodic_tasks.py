"""A periodic task for the scheduling tests (NIGHTSHIFT_TASK_MODULES=...,periodic_tasks)."""
from __future__ import annotations

from app import periodic_task
from app.schedule import every_tick


@periodic_task(every_tick)
def tick_probe() -> None:
    """Runs once per tick."""


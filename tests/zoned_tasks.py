"""Periodic tasks on a time zone's wall clock, for the daylight-saving tests
(NIGHTSHIFT_TASK_MODULES=...,zoned_tasks)."""
from __future__ import annotations

from app import crontab, periodic_task


@periodic_task(crontab(hour=2, minute=30), tz="Europe/Berlin")
def berlin_night() -> None:
    """Runs at 02:30 in Berlin: skipped in spring, twice in autumn, once a day all the same."""

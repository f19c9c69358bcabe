"""Nightshift's own periodic tasks, loaded by every worker before NIGHTSHIFT_TASK_MODULES.

Each run is a job in the ledger like any other (retries, dead letters, `nightshift list --task ...`).
NIGHTSHIFT_CLEANUP_CRON (default hourly, "0 * * * *") and NIGHTSHIFT_BACKLOG_CRON (default every minute)
set when they run; "off" leaves a task out of the schedule (`nightshift cleanup` still works by hand).
"""
from __future__ import annotations

from app import backlog, cleanup
from app.catalog import periodic_task
from app.queue import get_huey
from app.schedule import parse

_huey = get_huey()  # the instance these tasks register on; its settings say when they run, and how
_settings = _huey.settings

if _settings.cleanup_cron != "off":
    @periodic_task(parse(_settings.cleanup_cron), retries=1, retry_delay=60, name="nightshift_cleanup")
    def nightshift_cleanup() -> dict:
        """Remove expired results, finished jobs past retention, stale locks and flags (see app.cleanup)."""
        return cleanup.run(_huey.settings).as_dict()

if _settings.backlog_cron != "off":
    # High priority: the watch must not wait behind the backlog it watches.
    @periodic_task(parse(_settings.backlog_cron), priority=100, name="nightshift_backlog_watch")
    def nightshift_backlog_watch() -> dict:
        """Measure the backlog and open or clear alerts past the NIGHTSHIFT_ALERT_* thresholds."""
        result = backlog.check(_huey)
        return {"active": result["active"], "opened": result["opened"], "cleared": result["cleared"],
                "queued": result["snapshot"]["queued"]}

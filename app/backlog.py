"""Backlog watch: measure the queue and raise an alert once per incident when a threshold is crossed.

Measured from the ledger (the record of every job, even when Redis lost its copy): jobs due to run (queued or
retrying, not scheduled for later), how long the oldest of them has waited, running jobs, the failure rate of
attempts over the last NIGHTSHIFT_ALERT_WINDOW seconds and the dead letters added in it; plus the depth of the
Redis queue for comparison.

Alerts: crossing a threshold logs a warning (and sends a Sentry message when SENTRY_DSN is set) once per
incident; the incident is a Redis key `nightshift:{queue}:alert:{name}` taken with SET NX, so however many
consumers run the watch, only the one that opens it reports it. When the value is back under the threshold, the
consumer that deletes the key logs that it cleared. No storm, shared across consumers and hosts.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from typing import Any

from peewee import fn

import config
from app import keys, leader, ledger
from app.models import WAITING, Attempt, Job
from app.queue import NightshiftHuey, get_huey
from app.states import State

log = logging.getLogger("nightshift.backlog")

MIN_ATTEMPTS = 10  # the failure rate of fewer attempts in the window is noise, not an incident


@dataclasses.dataclass
class Snapshot:
    queued: int
    redis_depth: int | None
    oldest_age: float | None        # seconds the oldest due job has waited
    running: int
    attempts: int                   # attempts finished in the window
    failed: int
    failure_rate: float | None      # failed / attempts, None below MIN_ATTEMPTS
    dead_letters: int               # jobs that went dead in the window
    window: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_datetime(value: Any) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value))


def measure(huey: NightshiftHuey | None = None, now: datetime.datetime | None = None) -> Snapshot:
    """The backlog now: plain read queries on the ledger, and the Redis queue's length (of `huey`, default the
    process's; the window is its settings' NIGHTSHIFT_ALERT_WINDOW)."""
    huey = huey or get_huey()
    settings = huey.settings
    now = now or ledger.now()
    since = now - datetime.timedelta(seconds=settings.alert_window)
    due = Job.state.in_(WAITING) & (Job.eta.is_null() | (Job.eta <= now))
    queued, oldest = Job.select(fn.COUNT(Job.id), fn.MIN(fn.COALESCE(Job.eta, Job.updated_at))).where(due) \
        .tuples().first()
    oldest = _as_datetime(oldest)
    running = Job.select().where(Job.state == State.RUNNING).count()
    # Attempts that ended in the window: the failed ones have history rows; a succeeded one is its job's row
    # (ledger.mark_succeeded), counted from the finished jobs' (state, finished_at) index.
    failed = Attempt.select().where(Attempt.finished_at >= since, Attempt.outcome == "failed").count()
    attempts = failed + Job.select().where(Job.state == State.SUCCEEDED, Job.finished_at >= since).count()
    dead = Job.select().where(Job.state == State.DEAD, Job.finished_at >= since).count()
    try:
        depth = huey.pending_count()
    except Exception:  # noqa: BLE001 - the ledger still tells the backlog when Redis does not answer
        depth = None
    return Snapshot(queued=queued or 0, redis_depth=depth,
                    oldest_age=round((now - oldest).total_seconds(), 3) if oldest else None,
                    running=running, attempts=attempts, failed=failed,
                    failure_rate=round(failed / attempts, 4) if attempts >= MIN_ATTEMPTS else None,
                    dead_letters=dead, window=settings.alert_window)


def thresholds(settings: config.Settings) -> dict[str, tuple[str, float]]:
    """alert name -> (snapshot field, threshold); a threshold of 0 turns the alert off."""
    return {"queue_depth": ("queued", settings.alert_queue_depth),
            "oldest_age": ("oldest_age", settings.alert_oldest_age),
            "failure_rate": ("failure_rate", settings.alert_failure_rate),
            "dead_letters": ("dead_letters", settings.alert_dead_letters)}


def _report(message: str, fields: dict, settings: config.Settings) -> None:
    log.warning(message, extra={"alert": fields})
    if settings.sentry_dsn:
        import sentry_sdk  # lazily: sentry-sdk costs memory and is set up by the worker only when configured
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("alert", fields["alert"])
            scope.set_tag("queue", fields["queue"])
            scope.set_context("backlog", fields)
            sentry_sdk.capture_message(message, level="warning")


def check(huey: NightshiftHuey | None = None) -> dict:
    """Measure, then open or close incidents; returns the snapshot and what changed."""
    huey = huey or get_huey()
    snap = measure(huey)
    conn = huey.storage.conn
    opened, cleared, active = [], [], []
    for name, (field, limit) in thresholds(huey.settings).items():
        value = getattr(snap, field)
        key = keys.alert(huey.name, name)
        if limit and value is not None and value > limit:
            active.append(name)
            fields = {"alert": name, "queue": huey.name, "value": value, "threshold": limit,
                      "since": ledger.now().isoformat(), **snap.as_dict()}
            if leader.take(conn, key, json.dumps(fields, default=str), None):
                opened.append(name)
                _report(f"backlog alert {name} on queue {huey.name}: {value} > {limit}", fields, huey.settings)
        elif conn.delete(key):
            cleared.append(name)
            log.info("backlog alert %s on queue %s cleared: %s (threshold %s)", name, huey.name, value, limit,
                     extra={"alert": {"alert": name, "queue": huey.name, "value": value, "cleared": True}})
    return {"snapshot": snap.as_dict(), "active": active, "opened": opened, "cleared": cleared}


def incidents(huey: NightshiftHuey | None = None) -> dict[str, dict]:
    """Open incidents by alert name, with the values that opened them."""
    huey = huey or get_huey()
    out = {}
    for name in thresholds(huey.settings):
        raw = huey.storage.conn.get(keys.alert(huey.name, name))
        if raw is not None:
            out[name] = json.loads(raw)
    return out

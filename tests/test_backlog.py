"""Backlog watch: an alert fires once per incident across consumers, and clears once."""
from __future__ import annotations

import datetime
import re
import uuid

import pytest

from conftest import wait_until

try:  # the Sentry stub of the monitoring tests, when present
    from test_monitoring import SentryStub
except ImportError:  # pragma: no cover
    SentryStub = None

OPENED = re.compile(r"backlog alert (\w+) on queue \S+: ")
CLEARED = re.compile(r"backlog alert (\w+) on queue \S+ cleared")


@pytest.mark.slow
def test_queue_depth_alert_fires_once_and_clears_once_across_two_consumers(env, start_worker, monkeypatch):
    from app import keys, submit_many
    from app.models import Job
    from app.queue import get_huey
    sentry = SentryStub() if SentryStub else None
    submit_many("sleep_for", [{"seconds": 0.4}] * 24)
    settings = dict(NIGHTSHIFT_BACKLOG_CRON="* * * * *", NIGHTSHIFT_TICK_SECONDS=1, NIGHTSHIFT_WORKERS=1,
                    NIGHTSHIFT_ALERT_QUEUE_DEPTH=5, NIGHTSHIFT_ALERT_OLDEST_AGE=0, NIGHTSHIFT_ALERT_FAILURE_RATE=0,
                    NIGHTSHIFT_ALERT_DEAD_LETTERS=0)
    if sentry:
        settings["SENTRY_DSN"] = sentry.dsn
    workers = [start_worker(f"c{i}", **settings) for i in range(2)]

    def lines(pattern):
        return [m for w in workers for m in pattern.findall(w.log())]

    wait_until(lambda: lines(OPENED), 15, message="the alert")
    wait_until(lambda: lines(CLEARED), 20, message="the alert to clear")
    wait_until(lambda: Job.select().where(Job.task == "sleep_for", Job.state == "succeeded").count() == 24, 10,
               message="the backlog to drain")
    before = Job.select().where(Job.task == "nightshift_backlog_watch").count()
    wait_until(lambda: Job.select().where(Job.task == "nightshift_backlog_watch", Job.state == "succeeded")
               .count() >= before + 2, 10, message="two more watches with nothing to report")
    assert lines(OPENED) == ["queue_depth"], [w.log() for w in workers]
    assert lines(CLEARED) == ["queue_depth"]
    assert get_huey().storage.conn.get(keys.alert(env["NIGHTSHIFT_QUEUE"], "queue_depth")) is None
    for worker in workers:
        assert worker.stop() == 0  # flushes Sentry
    if sentry:
        messages = [e.get("message") or e.get("logentry", {}).get("message", "") for e in sentry.events]
        assert [m for m in messages if "backlog alert" in m] == [m for m in messages if "queue_depth" in m]
        assert len([m for m in messages if "backlog alert" in m]) == 1, messages
        sentry.close()


def test_measure_and_incident_state(env, monkeypatch):
    """The measurements from the ledger, and each alert opening once and clearing once (in-process)."""
    from app import backlog, ledger
    from app.models import Attempt, Job
    now = ledger.now()
    ago = lambda s: now - datetime.timedelta(seconds=s)  # noqa: E731
    rows = [dict(id=str(uuid.uuid4()), task="add", state="queued", created_at=ago(100), updated_at=ago(100)),
            dict(id=str(uuid.uuid4()), task="add", state="queued", created_at=ago(5), updated_at=ago(5)),
            dict(id=str(uuid.uuid4()), task="add", state="retrying", created_at=ago(500), updated_at=ago(50),
                 eta=ago(-3600)),  # scheduled for later: not waiting yet
            dict(id=str(uuid.uuid4()), task="add", state="running", created_at=ago(9), updated_at=ago(9))]
    dead = [dict(id=str(uuid.uuid4()), task="add", state="dead", created_at=ago(60), updated_at=ago(60),
                 finished_at=ago(60)) for _ in range(3)]
    # 6 failed attempts (history rows) and 4 succeeded ones (their jobs' rows: a success writes no history row;
    # one of them has the row an older version wrote, which must not count twice), plus one success too old.
    succeeded = [dict(id=str(uuid.uuid4()), task="add", state="succeeded", created_at=ago(40), updated_at=ago(20),
                      finished_at=ago(20)) for _ in range(4)]
    old = dict(id=str(uuid.uuid4()), task="add", state="succeeded", created_at=ago(9000), updated_at=ago(9000),
               finished_at=ago(9000))
    Job.insert_many([dict(r, kwargs="{}", eta=r.get("eta"), finished_at=r.get("finished_at"))
                     for r in rows + dead + succeeded + [old]]).execute()
    Attempt.insert_many([dict(job_id=str(uuid.uuid4()), number=1, worker="w", started_at=ago(30),
                              finished_at=ago(20), outcome="failed") for _ in range(6)]
                        + [dict(job_id=succeeded[0]["id"], number=1, worker="w", started_at=ago(30),
                                finished_at=ago(20), outcome="succeeded")]).execute()
    snap = backlog.measure()
    assert snap.queued == 2 and snap.running == 1 and snap.dead_letters == 3
    assert 99 <= snap.oldest_age < 130
    assert snap.attempts == 10 and snap.failed == 6 and snap.failure_rate == 0.6

    env.set(monkeypatch, NIGHTSHIFT_ALERT_QUEUE_DEPTH=1, NIGHTSHIFT_ALERT_OLDEST_AGE=60,
            NIGHTSHIFT_ALERT_FAILURE_RATE=0.5, NIGHTSHIFT_ALERT_DEAD_LETTERS=2)
    first = backlog.check()
    assert sorted(first["opened"]) == ["dead_letters", "failure_rate", "oldest_age", "queue_depth"]
    again = backlog.check()
    assert again["opened"] == [] and sorted(again["active"]) == sorted(first["opened"])
    assert sorted(backlog.incidents()) == sorted(first["opened"])

    env.set(monkeypatch, NIGHTSHIFT_ALERT_QUEUE_DEPTH=10, NIGHTSHIFT_ALERT_OLDEST_AGE=0)  # raised / off
    third = backlog.check()
    assert sorted(third["cleared"]) == ["oldest_age", "queue_depth"] and third["opened"] == []
    assert backlog.check()["cleared"] == []
    assert sorted(backlog.incidents()) == ["dead_letters", "failure_rate"]

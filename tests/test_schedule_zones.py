"""Periodic tasks on a time zone's wall clock: exactly one daily run across both daylight-saving changes.

The scheduler judges each tick (its start, naive UTC) with the task's schedule; these tests feed it every tick of
the days around each change, as the scheduler would, and count the runs."""
from __future__ import annotations

import datetime
import os
import signal
import types

import pytest

import config
from app import catalog, schedule
from app.schedule import crontab

TICK = 60


@pytest.fixture(autouse=True)
def one_minute_ticks(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_TICK_SECONDS", str(TICK))
    monkeypatch.delenv("NIGHTSHIFT_TIMEZONE", raising=False)
    config.reload()
    yield
    monkeypatch.undo()
    config.reload()


def zoned(validate, tz: str):
    """A schedule as catalog.periodic_task makes it, judged by this test's settings (one-minute ticks)."""
    return schedule.Zoned(validate, tz, types.SimpleNamespace(settings=config.get()))


def runs(validate, start: datetime.datetime, hours: int) -> list[datetime.datetime]:
    """Every tick start (naive UTC) in `hours` from `start` at which `validate` says run."""
    ticks = (start + datetime.timedelta(seconds=TICK * i) for i in range(hours * 3600 // TICK))
    return [tick for tick in ticks if validate(tick)]


def local(utc: datetime.datetime, tz: str) -> str:
    return utc.replace(tzinfo=datetime.UTC).astimezone(schedule.zone(tz)).strftime("%Y-%m-%d %H:%M %Z")


@pytest.mark.parametrize("tz, spring, autumn, repeated_hour, summer", [
    ("Europe/Berlin", datetime.datetime(2026, 3, 29), datetime.datetime(2026, 10, 25), 2, "CEST"),
    ("America/New_York", datetime.datetime(2026, 3, 8), datetime.datetime(2026, 11, 1), 1, "EDT"),
])
def test_a_daily_job_in_the_changing_hour_runs_once_on_each_change_day(tz, spring, autumn, repeated_hour, summer):
    # Spring: 02:30 does not exist; the job runs once, at the first tick after the clocks went forward.
    found = runs(zoned(crontab(hour=2, minute=30), tz), spring - datetime.timedelta(days=1), 72)
    assert len(found) == 3, [local(run, tz) for run in found]
    assert local(found[1], tz) == f"{spring:%Y-%m-%d} 03:00 {summer}", [local(run, tz) for run in found]
    # Autumn: the hour that comes twice; the job runs on the first pass only.
    found = runs(zoned(crontab(hour=repeated_hour, minute=30), tz), autumn - datetime.timedelta(days=1), 72)
    assert len(found) == 3, [local(run, tz) for run in found]
    assert local(found[1], tz) == f"{autumn:%Y-%m-%d} 0{repeated_hour}:30 {summer}", [local(run, tz) for run in found]


def test_an_hourly_job_runs_every_real_hour_of_a_23_and_a_25_hour_day():
    hourly = zoned(crontab(minute=0), "Europe/Berlin")
    spring_day = datetime.datetime(2026, 3, 28, 23)  # Berlin midnight in UTC
    autumn_day = datetime.datetime(2026, 10, 24, 22)
    assert len(runs(hourly, spring_day, 23)) == 23
    assert len(runs(hourly, autumn_day, 25)) == 25


def test_a_daily_job_runs_at_its_wall_time_all_year():
    daily = zoned(crontab(hour=9, minute=0), "Europe/Berlin")
    found = runs(daily, datetime.datetime(2026, 1, 1), 24 * 365)
    assert len(found) == 365
    assert {local(run, "Europe/Berlin")[11:16] for run in found} == {"09:00"}


def test_next_run_follows_the_zone_across_the_spring_change():
    class Task:
        periodic_schedule = zoned(crontab(hour=2, minute=30), "Europe/Berlin")
    after = datetime.datetime(2026, 3, 28, 12)
    assert schedule.next_run(Task, after=after, tick=TICK) == datetime.datetime(2026, 3, 29, 1, 0)  # 03:00 CEST
    after = datetime.datetime(2026, 3, 29, 2)
    assert schedule.next_run(Task, after=after, tick=TICK) == datetime.datetime(2026, 3, 30, 0, 30)  # 02:30 CEST
    assert schedule.zone_of(Task) == "Europe/Berlin"


def test_an_unknown_zone_fails_where_the_task_is_declared(monkeypatch):
    with pytest.raises(Exception, match="Mars/Olympus"):
        catalog.periodic_task(crontab(minute=0), tz="Mars/Olympus")
    monkeypatch.setenv("NIGHTSHIFT_TIMEZONE", "Mars/Olympus")
    with pytest.raises(config.ConfigError, match="NIGHTSHIFT_TIMEZONE"):
        config.reload()


@pytest.mark.slow
@pytest.mark.parametrize("start, tick_local, runs_then", [
    ("2026-03-29 00:59:52", "2026-03-29 03:00 CEST", True),   # 02:30 never comes: the job runs at 03:00
    ("2026-10-25 00:29:52", "2026-10-25 02:30 CEST", True),   # the first 02:30
    ("2026-10-25 01:29:52", "2026-10-25 02:30 CET", False),   # the second 02:30: not again
])
def test_a_real_consumer_runs_the_daily_job_at_the_right_tick_across_the_change(env, start, tick_local, runs_then,
                                                                                  monkeypatch):
    """A consumer whose wall clock is set (libfaketime) a few seconds before the tick in question."""
    import json
    import shutil
    import subprocess
    import sys

    from conftest import wait_until
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.skip("faketime (Debian package faketime) is not installed")
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,zoned_tasks", NIGHTSHIFT_TICK_SECONDS=60)
    tick = int(datetime.datetime.fromisoformat(start).replace(tzinfo=datetime.UTC).timestamp()) // 60 * 60 + 60
    assert local(datetime.datetime.fromtimestamp(tick, datetime.UTC).replace(tzinfo=None), "Europe/Berlin") \
        == tick_local
    path = env.tmp / "consumer.log"
    with open(path, "ab") as log:
        # faketime runs the consumer as its child: in a session of its own, so that stopping it stops both.
        consumer = subprocess.Popen([faketime, "-f", f"@{start}", sys.executable, "-m", "app", "worker"],
                                    env=env.full(FAKETIME_DONT_FAKE_MONOTONIC=1), cwd=env.tmp, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            line = wait_until(lambda: next((json.loads(text) for text in path.read_text().splitlines()
                                            if f"periodic tick {tick} " in text), None), 30,
                              message=f"the consumer's tick {tick_local}")
        finally:
            os.killpg(consumer.pid, signal.SIGKILL)  # the env fixture checks that nothing of it is left
            consumer.wait(10)
    assert ("berlin_night" in line["message"]) is runs_then, line["message"]



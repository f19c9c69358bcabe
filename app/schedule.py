"""Periodic tasks: crontab specs that can be shown, their next runs, time zones, and tick arithmetic.

The consumer's `TickScheduler` (app.consumer) enqueues each tick's periodic tasks once across all consumers.
"""
from __future__ import annotations

import calendar
import datetime
import zoneinfo
from typing import Callable, Iterable, Iterator, Protocol

from huey import crontab as huey_crontab

import config

FIELDS = ("minute", "hour", "day", "month", "day_of_week")
DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
MONTHS = ("", "January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


def cron(minute: str | int = "*", hour: str | int = "*", day: str | int = "*", month: str | int = "*",
         day_of_week: str | int = "*", strict: bool = True) -> Callable[[datetime.datetime], bool]:
    """Huey's crontab (strict parsing by default: a typo fails at import, not silently never runs), with its
    spec attached as `.cron` ("M H d m w") so `nightshift schedule` can show it and compute the next run."""
    spec = [str(v).replace(" ", "") for v in (minute, hour, day, month, day_of_week)]
    validate = huey_crontab(*spec, strict=strict)
    validate.cron = " ".join(spec)
    return validate


crontab = cron  # `from app import crontab` gives the strict, describable one


def parse(spec: str) -> Callable[[datetime.datetime], bool]:
    """A five-field crontab string ("0 * * * *") as a validate function."""
    fields = spec.split()
    if len(fields) != 5:
        raise ValueError(f"{spec!r}: a crontab has five fields: minute hour day month weekday")
    return cron(*fields)


def every_tick(timestamp: datetime.datetime) -> bool:
    """A validate function that matches every tick (useful with short ticks; Huey calls it with a datetime)."""
    return True


every_tick.cron = None  # type: ignore[attr-defined]
every_tick.words = "every tick"  # type: ignore[attr-defined]


# -- showing a schedule --------------------------------------------------------------------------------------------

def allowed(spec: str) -> list[set[int]]:
    """The values each field accepts, computed with Huey's own parser (field by field)."""
    fields = spec.split()
    base = datetime.datetime(2024, 1, 1)  # a Monday
    minutes = {m for m in range(60) if huey_crontab(minute=fields[0], strict=True)(base.replace(minute=m))}
    hours = {h for h in range(24) if huey_crontab(hour=fields[1], strict=True)(base.replace(hour=h))}
    days = {d for d in range(1, 32) if huey_crontab(day=fields[2], strict=True)(base.replace(day=d))}
    months = {m for m in range(1, 13) if huey_crontab(month=fields[3], strict=True)(base.replace(month=m))}
    weekdays = {(w + 1) % 7 for w in range(7)  # base + w days has python weekday w (Monday 0); cron Sunday 0
                if huey_crontab(day_of_week=fields[4], strict=True)(base + datetime.timedelta(days=w))}
    return [minutes, hours, days, months, weekdays]


def _list(values: Iterable[int], names: tuple[str, ...] | None = None) -> str:
    items = [names[v] if names else str(v) for v in sorted(values)]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _step(values: set[int], full: range) -> int | None:
    """n when `values` is exactly every n-th value of `full` starting at its first."""
    ordered = sorted(values)
    if len(ordered) < 2 or ordered[0] != full[0]:
        return None
    step = ordered[1] - ordered[0]
    return step if ordered == list(full[::step]) else None


def describe(spec: str) -> str:
    """A crontab spec in words: "every hour at minute 0", "every day at 03:30", "every 15 minutes"."""
    minutes, hours, days, months, weekdays = allowed(spec)
    every_minute, every_hour = len(minutes) == 60, len(hours) == 24
    if every_minute and every_hour:
        when = "every minute"
    elif every_minute:
        when = f"every minute during hour {_list(hours)}"
    elif every_hour:
        step = _step(minutes, range(60))
        when = f"every {step} minutes" if step else f"every hour at minute {_list(minutes)}"
    elif len(hours) * len(minutes) <= 4:
        when = "at " + ", ".join(f"{h:02d}:{m:02d}" for h in sorted(hours) for m in sorted(minutes))
    else:
        step = _step(hours, range(24))
        hour_text = f"every {step} hours" if step else f"hours {_list(hours)}"
        when = f"minute {_list(minutes)} of {hour_text}"
    parts = [when]
    if len(days) < 31:
        parts.append(f"on day {_list(days)} of the month")
    if len(weekdays) < 7:
        parts.append("on " + _list(weekdays, DAYS))
    if len(months) < 12:
        parts.append("in " + _list(months, MONTHS))
    if len(parts) == 1 and when.startswith("at "):
        parts[0] = "every day " + when
    return " ".join(parts)


def zone_of(task_class: type) -> str:
    """The time zone a periodic task's schedule is read in."""
    validate = getattr(task_class, "periodic_schedule", None)
    return validate.zone_name if isinstance(validate, Zoned) else "UTC"


def spec_of(task_class: type) -> str | None:
    """The crontab spec a periodic task was declared with, when known."""
    validate = getattr(task_class, "periodic_schedule", None)
    return getattr(validate, "cron", None)


def words_of(task_class: type) -> str:
    validate = getattr(task_class, "periodic_schedule", None)
    spec = spec_of(task_class)
    if spec:
        return describe(spec)
    return getattr(validate, "words", None) or "custom (a validate function without a crontab spec)"


def tick_start(epoch: float, tick: int) -> int:
    return int(epoch // tick * tick)


def next_run(task_class: type, tick: int, after: datetime.datetime | None = None,
             horizon_days: int = 366 * 4 + 1) -> datetime.datetime | None:
    """The start of the next tick (naive UTC, ticks of `tick` seconds: NIGHTSHIFT_TICK_SECONDS) at which the
    scheduler will enqueue this task."""
    after = after or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    epoch = calendar.timegm(after.timetuple()) + after.microsecond / 1e6
    first = datetime.datetime.fromtimestamp(tick_start(epoch, tick) + tick, datetime.UTC).replace(tzinfo=None)
    validate = getattr(task_class, "periodic_schedule", None)
    spec = spec_of(task_class)
    if spec is None:
        if validate is None:
            return None
        # Any callable: try the coming ticks (at most one week of them, at least one per minute).
        step = datetime.timedelta(seconds=max(tick, 1))
        candidate = first
        for _ in range(min(7 * 86400 // max(tick, 1), 20000)):
            if validate(candidate):
                return candidate
            candidate += step
        return None
    if validate(first):
        return first
    if isinstance(validate, Zoned):
        return validate.next_run(first, tick, horizon_days)
    start = first.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    return next(_walls(spec, start, horizon_days), None)


def _walls(spec: str, start: datetime.datetime, horizon_days: int) -> Iterator[datetime.datetime]:
    """The wall-clock minutes from `start` on that `spec` matches, in order."""
    minutes, hours, days, months, weekdays = allowed(spec)
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(horizon_days):
        if day.month in months and day.day in days and (day.weekday() + 1) % 7 in weekdays:
            for hour in sorted(hours):
                for minute in sorted(minutes):
                    candidate = day.replace(hour=hour, minute=minute)
                    if candidate >= start:
                        yield candidate
        day += datetime.timedelta(days=1)


# -- schedules in a time zone ---------------------------------------------------------------------------------------

def zone(name: str) -> zoneinfo.ZoneInfo:
    """A time zone by name."""
    return zoneinfo.ZoneInfo(name)


def _local(utc: datetime.datetime, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
    return utc.replace(tzinfo=datetime.UTC).astimezone(tz)


def _utc(wall: datetime.datetime, tz: zoneinfo.ZoneInfo, fold: int = 0) -> datetime.datetime:
    return wall.replace(tzinfo=tz, fold=fold).astimezone(datetime.UTC).replace(tzinfo=None)


def exists(wall: datetime.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    """False for a wall time skipped when the clocks go forward."""
    return _local(_utc(wall, tz), tz).replace(tzinfo=None) == wall


class HasSettings(Protocol):
    """What a schedule reads NIGHTSHIFT_TIMEZONE and NIGHTSHIFT_TICK_SECONDS from: the Huey instance its task is
    registered on (app.queue.build_huey)."""
    settings: config.Settings


class Zoned:
    """A periodic task's schedule read on a time zone's wall clock, with cron's rules across daylight-saving
    changes, so a daily job runs exactly once on the day the clocks change:
    - a run whose wall time is skipped when the clocks go forward runs at the first tick after the change;
    - a run whose wall time comes twice when the clocks go back runs on the first pass only, unless its schedule
      runs every hour (then on both passes, as every hour of that day is a real hour).
    Called by the scheduler with each tick's start (naive UTC), like any validate function: the tick length and
    the default time zone are the settings of `owner` (the task's Huey instance), read when it is judged."""

    def __init__(self, validate: Callable[[datetime.datetime], bool], tz: str | None, owner: HasSettings) -> None:
        self.validate = validate
        self.tz = tz  # None: NIGHTSHIFT_TIMEZONE, read when the schedule is judged
        self.owner = owner
        self.cron = getattr(validate, "cron", None)
        self.words = getattr(validate, "words", None)
        self.fixed_hours = bool(self.cron) and len(allowed(self.cron)[1]) < 24

    @property
    def zone_name(self) -> str:
        return self.tz or self.owner.settings.timezone

    def __call__(self, utc_tick: datetime.datetime) -> bool:
        tz, tick = zone(self.zone_name), datetime.timedelta(seconds=self.owner.settings.tick_seconds)
        local = _local(utc_tick, tz)
        wall = local.replace(tzinfo=None)
        if local.fold and self.fixed_hours:
            return False
        if self.validate(wall):
            return True
        expected = _local(utc_tick - tick, tz).replace(tzinfo=None) + tick  # the wall time without a change
        minute = expected.replace(second=0, microsecond=0)
        if minute < expected:
            minute += datetime.timedelta(minutes=1)
        while minute < wall:  # wall times the clocks skipped since the last tick
            if self.validate(minute):
                return True
            minute += datetime.timedelta(minutes=1)
        return False

    def next_run(self, first: datetime.datetime, tick: int, horizon_days: int) -> datetime.datetime | None:
        """The first tick from `first` (naive UTC) at which this schedule runs."""
        tz = zone(self.zone_name)
        step = datetime.timedelta(seconds=tick)
        runs = []
        start = _local(first, tz).replace(tzinfo=None, second=0, microsecond=0) - datetime.timedelta(hours=3)
        for wall in _walls(self.cron, start, horizon_days):
            if not exists(wall, tz):  # skipped: the first tick after the clocks went forward
                instant = _utc(wall, tz) - datetime.timedelta(hours=3)
                while not self(instant):
                    instant += step
                runs.append(instant)
            else:
                runs.append(_utc(wall, tz))
                if not self.fixed_hours and _utc(wall, tz, fold=1) != runs[-1]:
                    runs.append(_utc(wall, tz, fold=1))
            later = [run for run in runs if run >= first]
            if later and len(runs) >= 4:
                return min(later)
        later = [run for run in runs if run >= first]
        return min(later) if later else None


cron.hourly = lambda: cron(minute="0")  # type: ignore[attr-defined]  (as Huey's crontab.hourly)
cron.daily = lambda: cron(minute="0", hour="0")  # type: ignore[attr-defined]

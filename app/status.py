"""What the service is doing: queue depth, throughput, per-task figures and workers, read cheaply.

Shared by `nightshift status`, `nightshift health` and the Prometheus collector (app.metrics). Every query is
either bounded by an index (state, finished_at) or by a recent window, so a ledger of millions of finished jobs
costs no more than a small one: counts are aggregated in SQL, and percentiles are computed in Python over at most
SAMPLE_LIMIT durations of jobs that finished within the window.

Several services (queues) may share one ledger: every figure is of the queues asked for by name, or of all of them
(ALL_QUEUES), where `None` stands for the rows written before the ledger recorded queues (their owner is unknown,
see app.schema); the commands' default, this service's queue (NIGHTSHIFT_QUEUE), comes with their settings
(resolve_queues).
"""
from __future__ import annotations

import datetime
import socket
from typing import Any, Iterable

import peewee
from huey.api import PeriodicTask
from peewee import SQL, fn

import config
from app import catalog, ledger, pausing
from app import schedule as sched
from app.db import database
from app.preflight import check_database, check_redis
from app.models import WAITING, Job, WorkerBeat
from app.queue import get_huey
from app.states import State
from helpers.masking import bound, mask, secret_values

WINDOW_SECONDS = 3600          # per-task figures cover jobs finished in the last hour
SAMPLE_LIMIT = 5000            # at most this many recent durations feed the percentiles and histograms
WORKERS_SHOWN_FOR = 3600       # stopped and gone workers stay listed this long after their last heartbeat
THROUGHPUT_WINDOWS = (1, 5, 15)  # minutes
PROCESSED = (State.SUCCEEDED, State.DEAD)  # the outcomes a worker produced: what throughput counts


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _dt(value: Any) -> datetime.datetime | None:
    """Aggregates over datetime columns come back as text from SQLite: parse them."""
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value))


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def gone_after(settings: config.Settings) -> float:
    return ledger.gone_after(settings)


# -- which queues --------------------------------------------------------------------------------------------------

ALL_QUEUES = "*"        # every queue that has jobs or consumers in the ledger
NO_QUEUE_NAME = "(none)"  # how rows without a queue are named in output


def _sorted_queues(names: Iterable[str | None]) -> list[str | None]:
    return sorted(set(names), key=lambda name: (name is None, name or ""))


def known_queues() -> list[str | None]:
    """Every queue the ledger has jobs or consumers of (None: jobs from before the ledger recorded queues).

    Without reading every job: a loose index scan (the next queue name after the last one, by the (queue, ...)
    index) costs one index seek per queue, where `SELECT DISTINCT queue` read the whole index, which grows with
    the ledger; then whether any job has no queue (one seek)."""
    table = Job._meta.table_name
    rows = database.obj.execute_sql(
        f'WITH RECURSIVE q(name) AS (SELECT MIN("queue") FROM "{table}" UNION ALL '
        f'SELECT (SELECT MIN("queue") FROM "{table}" WHERE "queue" > q.name) FROM q WHERE q.name IS NOT NULL) '
        f'SELECT name FROM q WHERE name IS NOT NULL').fetchall()
    names: set[str | None] = {row[0] for row in rows}
    if Job.select(Job.id).where(Job.queue.is_null()).limit(1).tuples().first():
        names.add(None)
    names |= {name for row in WorkerBeat.select(WorkerBeat.queue).distinct().tuples() for name in row[0].split(",")}
    return _sorted_queues(names)


def every_queue(settings: config.Settings) -> list[str | None]:
    """The queues cleanup, the metrics and the console cover: this service's own (NIGHTSHIFT_QUEUE and
    NIGHTSHIFT_QUEUES' names, even before they have jobs) and every queue the ledger knows (known_queues), so that
    no queue's keys or figures are left out however the queues are spread over consumers and services."""
    own = {settings.queue} | {name for name, _ in config.parse_queues(settings.queues)}
    return _sorted_queues(own | set(known_queues()))


def resolve_queues(queues: Iterable[str | None] | str | None, service: str) -> list[str | None]:
    """None: this service's queue (`service`, NIGHTSHIFT_QUEUE); ALL_QUEUES: every known queue; else the names
    given."""
    if queues is None:
        return [service]
    return named(queues)


def named(queues: Iterable[str | None] | str) -> list[str | None]:
    """ALL_QUEUES: every known queue; else the names given."""
    if queues == ALL_QUEUES:
        return known_queues()
    return list(queues)


def of_queues(queues: Iterable[str | None] | str) -> peewee.Expression:
    """WHERE condition: jobs of these queues (see named)."""
    return ledger.in_queues(named(queues))


def of_queues_in_window(queues: Iterable[str | None] | str) -> peewee.Expression:
    """of_queues written so that no index can serve it (`queue || ''`), for the queries bounded by a recent window
    of finished_at, which must range over that index. SQLite keeps no statistics (nothing runs ANALYZE), so it
    preferred the equality on the leading column of a (queue, ...) index: every job of the queue, a million rows
    on a grown ledger, read to count the last few minutes."""
    names = named(queues)
    column = Job.queue.concat("")
    condition = column.in_([name for name in names if name is not None])
    return (condition | column.is_null()) if None in names else condition


# -- queue ---------------------------------------------------------------------------------------------------------

def queue_counts(stamp: datetime.datetime, queue: str | None) -> dict:
    """Jobs waiting (due now), scheduled (eta in the future), running, retrying (part of waiting/scheduled) and
    dead, in two grouped queries on the (queue, state, ...) index; plus how long the longest-waiting due job has
    waited. Of `queue` (None: jobs without a queue).

    Running and dead jobs are counted apart from the waiting ones, whose `eta` is read from the table: counted
    together, every dead job kept within retention was read from the table too (10,000 on a grown ledger: 20-85
    ms of PostgreSQL's `status`), where the index alone can count them."""
    mine = of_queues([queue])
    future = peewee.Case(None, [(Job.eta > stamp, 1)], 0)
    counts = {"waiting": 0, "scheduled": 0, "running": 0, "retrying": 0, "dead": 0}
    waiting = (Job.select(Job.state, fn.COUNT(Job.id), fn.SUM(future))
               .where(mine, Job.state.in_(WAITING)).group_by(Job.state).tuples())
    for state, total, scheduled in waiting:
        scheduled = int(scheduled or 0)
        counts["scheduled"] += scheduled
        counts["waiting"] += total - scheduled
        if state == State.RETRYING:
            counts["retrying"] += total
    held = (Job.select(Job.state, fn.COUNT(SQL("*"))).where(mine, Job.state.in_((State.RUNNING, State.DEAD)))
            .group_by(Job.state).tuples())
    for state, total in held:
        counts[state] += total
    # Due since: its eta, or when it was queued (created, requeued or set to retry without a delay).
    oldest = _dt(Job.select(fn.MIN(fn.COALESCE(Job.eta, Job.updated_at))).where(
        mine, Job.state.in_(WAITING), Job.eta.is_null() | (Job.eta <= stamp)).scalar())
    counts["oldest_waiting_seconds"] = round(max((stamp - oldest).total_seconds(), 0.0), 3) if oldest else None
    counts["oldest_waiting_since"] = _iso(oldest)
    return counts


def redis_counts(huey: Any = None) -> dict:
    """Messages on Redis: due on the queue, and on the schedule. An error is reported, not raised."""
    try:
        if huey is None:
            huey = get_huey()
        storage = huey.storage
        pipe = storage.conn.pipeline(transaction=False)
        pipe.zcard(storage.queue_key)
        pipe.zcard(storage.schedule_key)
        queued, scheduled = pipe.execute()
        return {"ok": True, "queued": queued, "scheduled": scheduled}
    except Exception as exc:  # noqa: BLE001 - status must still show the ledger when Redis is down
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def throughput(stamp: datetime.datetime, queues: Iterable[str | None] | str) -> dict:
    """Jobs of `queues` (see named) finished (succeeded or dead) per minute over the last 1, 5 and 15
    minutes; one range scan on the finished_at index."""
    since = {m: stamp - datetime.timedelta(minutes=m) for m in THROUGHPUT_WINDOWS}
    # The state test is inside the sums, not in WHERE, so that the planner (SQLite has no statistics) ranges
    # over the finished_at index rather than over every succeeded job in the state index.
    processed = Job.state.in_(PROCESSED)
    columns = [fn.SUM(peewee.Case(None, [((Job.finished_at >= since[m]) & processed, 1)], 0))
               for m in THROUGHPUT_WINDOWS]
    row = Job.select(*columns).where(Job.finished_at >= since[max(THROUGHPUT_WINDOWS)],
                                     of_queues_in_window(queues)) \
        .tuples().first() or ()
    return {f"{m}m": round(int(row[i] or 0) / m, 2) if row else 0.0 for i, m in enumerate(THROUGHPUT_WINDOWS)}



def _queue_in_window() -> peewee.Node:
    """A job's queue as the window queries group by it: `queue || ''` (see of_queues_in_window; NULL stays NULL)."""
    return Job.queue.concat("")


def throughput_by_queue(stamp: datetime.datetime,
                        queues: Iterable[str | None] | str) -> dict[str | None, dict]:
    """throughput, for each of `queues` apart, in the same one range scan (grouped by queue)."""
    since = {m: stamp - datetime.timedelta(minutes=m) for m in THROUGHPUT_WINDOWS}
    processed = Job.state.in_(PROCESSED)
    columns = [fn.SUM(peewee.Case(None, [((Job.finished_at >= since[m]) & processed, 1)], 0))
               for m in THROUGHPUT_WINDOWS]
    names = named(queues)
    found = {name: {f"{m}m": 0.0 for m in THROUGHPUT_WINDOWS} for name in names}
    queue = _queue_in_window()
    for name, *counts in (Job.select(queue, *columns)
                          .where(Job.finished_at >= since[max(THROUGHPUT_WINDOWS)], of_queues_in_window(names))
                          .group_by(queue).tuples()):
        found[name] = {f"{m}m": round(int(counts[i] or 0) / m, 2) for i, m in enumerate(THROUGHPUT_WINDOWS)}
    return found


def finished_by_queue(stamp: datetime.datetime, window: float = WINDOW_SECONDS, *,
                      queues: Iterable[str | None] | str) -> dict[tuple[str | None, str], dict]:
    """Jobs of `queues` finished within the window, by (queue, task) and outcome: one range scan on the
    finished_at index, grouped (by `task || ''`, as task_stats does, so no index on task tempts SQLite)."""
    since = stamp - datetime.timedelta(seconds=window)
    outcomes = ("succeeded", "dead", "canceled", "expired")
    sums = [fn.SUM(peewee.Case(None, [(Job.state == outcome, 1)], 0)) for outcome in outcomes]
    queue, task = _queue_in_window(), Job.task.concat("")
    return {(name, task_name): dict(zip(outcomes, (int(c or 0) for c in counts)))
            for name, task_name, *counts in (Job.select(queue, task, *sums)
                                             .where(Job.finished_at >= since, of_queues_in_window(queues))
                                             .group_by(queue, task).tuples())}


def durations_by_queue(stamp: datetime.datetime, window: float = WINDOW_SECONDS, limit: int = SAMPLE_LIMIT, *,
                       queues: Iterable[str | None] | str) -> dict[tuple[str | None, str], list[float]]:
    """recent_durations by (queue, task): the `limit` most recent of all `queues` together, split afterwards."""
    since = stamp - datetime.timedelta(seconds=window)
    found: dict[tuple[str | None, str], list[float]] = {}
    for name, task, state, duration in (Job.select(Job.queue, Job.task, Job.state, Job.duration)
                                        .where(Job.finished_at >= since, Job.duration.is_null(False),
                                               of_queues_in_window(queues))
                                        .order_by(Job.finished_at.desc()).limit(limit).tuples()):
        if state in PROCESSED:
            found.setdefault((name, task), []).append(float(duration))
    return found


# -- tasks ---------------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return None
    rank = max(1, min(len(values), int(round(q / 100 * len(values) + 0.5))))
    return values[rank - 1]


def recent_durations(stamp: datetime.datetime, window: float = WINDOW_SECONDS, limit: int = SAMPLE_LIMIT, *,
                     queues: Iterable[str | None] | str) -> dict[str, list[float]]:
    """Durations of the most recent jobs that finished within the window, by task (bounded by `limit`)."""
    since = stamp - datetime.timedelta(seconds=window)
    by_task: dict[str, list[float]] = {}
    query = (Job.select(Job.task, Job.state, Job.duration)
             .where(Job.finished_at >= since, Job.duration.is_null(False), of_queues_in_window(queues))
             .order_by(Job.finished_at.desc()).limit(limit).tuples())
    for task, state, duration in query:
        if state in PROCESSED:
            by_task.setdefault(task, []).append(float(duration))
    return by_task


def task_stats(stamp: datetime.datetime, window: float = WINDOW_SECONDS, *,
               queues: Iterable[str | None] | str) -> list[dict]:
    """Per task: jobs finished in the window by outcome, success rate, p50/p95 duration, jobs running and
    waiting now, and its last failure (the most recent job that went dead)."""
    since = stamp - datetime.timedelta(seconds=window)
    tasks: dict[str, dict] = {}
    names = named(queues)
    mine = of_queues(names)

    def entry(name: str) -> dict:
        return tasks.setdefault(name, {"task": name, "finished": 0, "succeeded": 0, "dead": 0, "canceled": 0,
                                       "expired": 0, "success_rate": None, "p50": None, "p95": None,
                                       "running": 0, "waiting": 0, "last_failure": None})

    outcomes = ("succeeded", "dead", "canceled", "expired")
    # Grouped by task only (not by state), and by `task || ''` rather than the column: an index that starts with
    # task (the console's) would tempt SQLite into walking the whole table in task order instead of ranging
    # over the finished_at index.
    sums = [fn.SUM(peewee.Case(None, [(Job.state == outcome, 1)], 0)) for outcome in outcomes]
    name_of = Job.task.concat("")
    for name, *counts in (Job.select(name_of, *sums).where(Job.finished_at >= since, of_queues_in_window(names))
                          .group_by(name_of).tuples()):
        e = entry(name)
        for outcome, count in zip(outcomes, counts):
            e[outcome] += int(count or 0)
            e["finished"] += int(count or 0)
    for name, state, count in (Job.select(Job.task, Job.state, fn.COUNT(Job.id))
                               .where(mine, Job.state.in_(WAITING + (State.RUNNING,)))
                               .group_by(Job.task, Job.state).tuples()):
        entry(name)["running" if state == State.RUNNING else "waiting"] += count
    for name, durations in recent_durations(stamp, window, queues=names).items():
        durations.sort()
        e = entry(name)
        e["p50"], e["p95"] = percentile(durations, 50), percentile(durations, 95)
        e["sampled"] = len(durations)
    for e in tasks.values():
        outcomes = e["succeeded"] + e["dead"]
        e["success_rate"] = round(e["succeeded"] / outcomes, 4) if outcomes else None
        row = (Job.select(Job.id, Job.finished_at, Job.attempt, Job.error, Job.reason)
               .where(mine, Job.state == State.DEAD, Job.task == e["task"])
               .order_by(Job.finished_at.desc()).limit(1).tuples().first())
        if row:
            job_id, finished, attempt, error, reason = row
            e["last_failure"] = {"job_id": job_id, "at": _iso(_dt(finished)), "attempt": attempt,
                                 "error": bound(error or reason, 500)}
    return sorted(tasks.values(), key=lambda e: (-(e["finished"] + e["running"] + e["waiting"]), e["task"]))


# -- workers -------------------------------------------------------------------------------------------------------

def worker_status(beat: WorkerBeat, stamp: datetime.datetime, limit: float) -> str:
    """stopped or recycled (said goodbye, and why), gone (stopped beating: killed or hung) or alive."""
    if beat.stopped_at is not None:
        return beat.stop_reason or "stopped"
    return "gone" if (stamp - beat.last_seen).total_seconds() > limit else "alive"


def workers(stamp: datetime.datetime, queue: str, settings: config.Settings,
            shown_for: float = WORKERS_SHOWN_FOR) -> list[dict]:
    """Consumers of `queue` that beat recently (alive ones, and stopped or gone ones for `shown_for` s)."""
    limit = gone_after(settings)
    since = stamp - datetime.timedelta(seconds=max(shown_for, limit))
    rows = (WorkerBeat.select().where(ledger.served_by(queue), WorkerBeat.last_seen >= since)
            .order_by(WorkerBeat.started_at.desc()).limit(200))
    rows = [beat for beat in rows if ledger.serves(beat.queue, queue)]
    running = running_by_worker([beat.id for beat in rows])
    result = []
    for beat in rows:
        current = running.get(beat.id, [])
        for job in current:
            since_job = _dt(job.get("since"))
            job["running_for"] = round((stamp - since_job).total_seconds(), 3) if since_job else None
        status = worker_status(beat, stamp, limit)
        # An alive consumer has been up until now, not only until its last beat; the others until their last beat.
        up_to = stamp if status == "alive" else beat.last_seen
        result.append({
            "id": beat.id, "host": beat.host, "pid": beat.pid, "queue": beat.queue,
            "status": status, "started_at": _iso(beat.started_at),
            "uptime": round((up_to - beat.started_at).total_seconds(), 3),
            "last_seen": _iso(beat.last_seen), "heartbeat_age": round((stamp - beat.last_seen).total_seconds(), 3),
            "stopped_at": _iso(beat.stopped_at), "rss_bytes": beat.rss_bytes, "jobs_done": beat.jobs_done,
            "current": current,
        })
    order = {"alive": 0, "gone": 1, "stopped": 2, "recycled": 3}
    result.sort(key=lambda w: (order[w["status"]], w["id"]))
    return result


def running_by_worker(worker_ids: list[str]) -> dict[str, list[dict]]:
    """What each worker runs now, from the ledger's running jobs (written when a job is claimed), not from the
    heartbeat (written every NIGHTSHIFT_HEARTBEAT_SECONDS), so a job shows as soon as it starts."""
    found: dict[str, list[dict]] = {}
    if not worker_ids:
        return found
    query = (Job.select(Job.id, Job.task, Job.attempt, Job.started_at, Job.worker)
             .where(Job.state == State.RUNNING, Job.worker.in_(worker_ids)).order_by(Job.started_at).tuples())
    for job_id, task, attempt, started, worker in query:
        found.setdefault(worker, []).append({"id": job_id, "task": task, "attempt": attempt,
                                             "since": _dt(started).isoformat() if started else None})
    return found


def alive_workers(stamp: datetime.datetime, queue: str, settings: config.Settings,
                  host: str | None = None) -> tuple[int, WorkerBeat | None]:
    """(consumers of `queue` with a fresh heartbeat, the most recent beat of any consumer of it)."""
    alive = len(ledger.alive_worker_ids(queue, stamp, settings, host))
    where = ledger.served_by(queue)
    if host:
        where &= WorkerBeat.host == host
    latest = next((beat for beat in WorkerBeat.select().where(where).order_by(WorkerBeat.last_seen.desc()).limit(50)
                   if ledger.serves(beat.queue, queue)), None)
    return alive, latest


# -- everything ----------------------------------------------------------------------------------------------------

def snapshot(settings: config.Settings, window: float = WINDOW_SECONDS, huey: Any = None,
             queues: Iterable[str | None] | str | None = None) -> dict:
    """The whole picture of `queues` (default: this service's; see resolve_queues), as plain JSON-able data (the
    shape of `nightshift status --json`): a row per queue; throughput, tasks and workers of them all."""
    stamp = now()
    names = resolve_queues(queues, settings.queue)
    rows = []
    for name in names:
        if name is None:
            on_redis = {"ok": False, "error": "jobs from before the ledger recorded queues: no queue to count"}
        elif name == settings.queue:
            on_redis = redis_counts(huey)
        else:
            on_redis = redis_counts(get_huey(name))
        rows.append({"name": NO_QUEUE_NAME if name is None else name,
                     "paused": name is not None and pausing.is_paused_in_ledger(name), **queue_counts(stamp, name),
                     "redis": on_redis})
    # Errors quote URLs and drivers' messages: masked like every other place a value is shown.
    return mask({
        "generated_at": _iso(stamp),
        "window_seconds": window,
        "gone_after_seconds": gone_after(settings),
        "queues": rows,
        "throughput_per_minute": throughput(stamp, names),
        "tasks": task_stats(stamp, window, queues=names),
        "workers": [w for name in names if name is not None for w in workers(stamp, name, settings)],
    }, secret_values(settings))


# -- schedule ------------------------------------------------------------------------------------------------------

def schedule_rows(tick: int) -> list[dict]:
    """Each periodic task of the loaded catalog: its schedule in words and cron form, time zone, next run (in
    ticks of `tick` seconds, NIGHTSHIFT_TICK_SECONDS), and its last run (the newest job of the task, one index
    seek each) with its outcome."""
    classes = {name: cls for name, cls in catalog.task_classes().items() if issubclass(cls, PeriodicTask)}
    rows = []
    for name in sorted(classes):
        cls = classes[name]
        job = Job.select().where(Job.task == name).order_by(Job.created_at.desc(), Job.id.desc()).first()
        rows.append({
            "task": name, "schedule": sched.words_of(cls), "cron": sched.spec_of(cls), "tz": sched.zone_of(cls),
            "next_run": _iso(sched.next_run(cls, tick=tick)),
            "last_run": _iso(job.created_at) if job else None, "last_job": job.id if job else None,
            "last_outcome": job.state if job else None,
            "last_finished_at": _iso(job.finished_at) if job else None,
        })
    return rows


# -- health --------------------------------------------------------------------------------------------------------

def health(settings: config.Settings, this_host: bool = False) -> tuple[bool, str]:
    """(healthy, one line): Redis answers, the ledger answers, and a consumer of the queue beats."""
    problem = check_redis(settings) or check_database(settings)
    if problem:
        return False, problem
    host = socket.gethostname() if this_host else None
    where = f" on host {host}" if host else ""
    stamp = now()
    alive, latest = alive_workers(stamp, settings.queue, settings, host)
    if alive:
        return True, f"ok: Redis and the ledger answer; {alive} consumer(s) alive on queue {settings.queue!r}{where}"
    if latest is None:
        return False, f"no consumer has ever run on queue {settings.queue!r}{where}; start one with `nightshift worker`"
    age = (stamp - latest.last_seen).total_seconds()
    how = "stopped" if latest.stopped_at is not None else "gone: no heartbeat"
    return False, (f"no live consumer on queue {settings.queue!r}{where}: the last one ({latest.id}) is {how} "
                   f"since {age:.1f}s (a consumer counts as alive for {gone_after(settings):g}s after a heartbeat)")

"""What the console reads from the ledger, with a bound on the work of every request.

Job lists are newest first and paged by key, (created_at, id), never by OFFSET: a page starts where the last one
ended with an index seek, so page 10,000 costs what page 1 does. The query walks one ordered index -- the one of
the state filter when there is one (`state, created_at, id`), else the task filter's (`task, created_at, id`),
else all jobs' (`created_at, id`) -- and the other filters (queue, the second of state and task, argument text)
are applied in SQL to windows of WINDOW rows read along it, up to SCAN_BUDGET rows per request. A page whose filters match
rarely therefore ends early with a cursor to go on from ("no more matches among the next N jobs"), instead of
one request reading millions of rows. Ids and idempotency keys are found by their own indexes.

Every figure and job shown goes through helpers.masking like the logs (app.jobview).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
import threading
import time
from typing import Any

import peewee
from peewee import fn

import config
from app import backlog, ledger, operations, pausing, status
from app.db import database
from app.jobview import iso, job_dict, last_failed_attempt
from app.models import STATES, WAITING, Job, QueueState
from helpers.masking import bound, mask, secret_values

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
WINDOW = 5_000         # index entries one statement walks when filtering on the fly
SCAN_BUDGET = 20_000   # index entries one request walks at most when filtering on the fly
CHART_HOURS = 12
NO_QUEUE = status.NO_QUEUE_NAME  # "(none)": jobs from before the ledger recorded queues
LIST_COLUMNS = (Job.id, Job.task, Job.queue, Job.state, Job.attempt, Job.created_at, Job.finished_at,
                Job.duration, Job.kwargs)
ID_PREFIX = re.compile(r"^[0-9a-f]{4,8}(-[0-9a-f]{1,4})?$")  # as far as lists print ids (jobids.short)
FULL_ID = re.compile(r"^[0-9a-fA-F-]{36}$")


def _dt(value: Any) -> datetime.datetime | None:
    return status._dt(value)


def now() -> datetime.datetime:
    return ledger.now()


# -- queues ----------------------------------------------------------------------------------------------------

def queue_names(settings: config.Settings) -> list[str | None]:
    """Every queue the service knows, by the rule cleanup and the metrics follow (status.every_queue: its own
    queues, and every queue with jobs or consumers, a consumer's served list split into its queues), and every
    queue with a pause record."""
    names = set(status.every_queue(settings)) | {row[0] for row in QueueState.select(QueueState.name).tuples()}
    return sorted(names, key=lambda name: (name is None, name or ""))


def queue_param(value: str) -> str | None:
    """A queue filter as given in a URL: "(none)" means jobs without a queue."""
    return None if value == NO_QUEUE else value


# -- overview --------------------------------------------------------------------------------------------------

PAST_HOURS_TTL = 300.0  # seconds the counts of complete past hours are reused
_past_hours: dict[str, Any] = {"key": None, "at": 0.0, "counts": {}}
_past_lock = threading.Lock()


def _finished_counts(since: datetime.datetime, until: datetime.datetime | None) -> dict[tuple, list[int]]:
    """(queue, hour start) -> [succeeded, dead] of jobs that finished in [since, until), by one range scan of the
    finished_at index grouped in SQL."""
    if isinstance(database.obj, peewee.SqliteDatabase):
        hour = fn.SUBSTR(Job.finished_at, 1, 13)       # "YYYY-MM-DD HH" of the stored text
    else:
        hour = fn.DATE_TRUNC("hour", Job.finished_at)
    # Grouped by expressions, not the columns: grouping by `queue` itself makes the planner walk the queue index
    # through every job (to skip a sort) instead of ranging over the finished_at index; the state is grouped, not
    # filtered, for the same reason (a state index would be walked).
    queue_key = fn.COALESCE(Job.queue, "")
    query = Job.select(queue_key, hour, Job.state, fn.COUNT(Job.id)).where(Job.finished_at >= since)
    if until is not None:
        query = query.where(Job.finished_at < until)
    counts: dict[tuple, list[int]] = {}
    for queue, bucket, state, count in query.group_by(queue_key, hour, Job.state).tuples():
        if state not in ("succeeded", "dead") or bucket is None:
            continue
        if isinstance(bucket, str):
            bucket = datetime.datetime.strptime(bucket[:13], "%Y-%m-%d %H")
        pair = counts.setdefault((queue or None, bucket.replace(tzinfo=None)), [0, 0])
        pair[0 if state == "succeeded" else 1] += int(count)
    return counts


def hourly(stamp: datetime.datetime, hours: int = CHART_HOURS) -> dict[str | None, list[dict]]:
    """Per queue, per hour of the last `hours` (oldest first, the current one last): jobs that succeeded and
    that went dead. The complete hours are counted once every PAST_HOURS_TTL seconds (they change only when a job
    of theirs is retried or cleaned up); the current hour on every call."""
    current = stamp.replace(minute=0, second=0, microsecond=0)
    starts = [current - datetime.timedelta(hours=hours - 1 - i) for i in range(hours)]
    key = (database.obj.database if database.obj is not None else None, starts[0], hours)
    with _past_lock:
        fresh = _past_hours["key"] == key and time.monotonic() - _past_hours["at"] < PAST_HOURS_TTL
        past = _past_hours["counts"] if fresh else None
    if past is None:
        past = _finished_counts(starts[0], current)
        with _past_lock:
            _past_hours.update(key=key, at=time.monotonic(), counts=past)
    counts = dict(past)
    counts.update(_finished_counts(current, None))
    queues = {queue for queue, _ in counts} | {"__empty__"}
    charts: dict[str | None, list[dict]] = {}
    for queue in queues:
        series = []
        for start in starts:
            ok, dead = counts.get((queue, start), (0, 0))
            series.append({"hour": iso(start), "succeeded": ok, "dead": dead, "total": ok + dead,
                           "failure_rate": round(dead / (ok + dead), 4) if ok + dead else None})
        charts[queue] = series
    return charts


def oldest_waiting(queue: str | None, stamp: datetime.datetime) -> str | None:
    """The id of the job of `queue` that has waited longest among those due now."""
    row = (Job.select(Job.id).where(ledger.in_queues([queue]), Job.state.in_(WAITING),
                                    Job.eta.is_null() | (Job.eta <= stamp))
           .order_by(fn.COALESCE(Job.eta, Job.updated_at)).limit(1).tuples().first())
    return row[0] if row else None


def overview(settings: config.Settings) -> dict:
    """Each queue's counts, oldest waiting job, hourly throughput and failure rate, paused state and open
    backlog alerts; the workers of every queue; the latest operator actions. Plain JSON-able data, masked."""
    stamp = now()
    charts = hourly(stamp)
    queues = []
    names = queue_names(settings)
    for name in names:
        counts = status.queue_counts(stamp, name)
        row = {"name": NO_QUEUE if name is None else name, "paused": False, "alerts": {}, "alerts_error": "", **counts,
               "oldest_waiting_job": oldest_waiting(name, stamp) if counts["oldest_waiting_since"] else None,
               "hourly": charts.get(name, charts["__empty__"])}
        if name is not None:
            row["paused"] = pausing.is_paused_in_ledger(name)
            try:
                row["alerts"] = backlog.incidents(operations.huey_of(name))
            except Exception as exc:  # noqa: BLE001 - the ledger's figures still show when Redis is down
                row["alerts_error"] = f"Redis: {type(exc).__name__}: {exc}"
        queues.append(row)
    # A consumer of several queues is listed once (status.workers finds it under each queue it serves).
    workers = list({w["id"]: w for name in names if name is not None
                    for w in status.workers(stamp, name, settings)}.values())
    actions = [{"at": iso(a.at), "action": a.action, "target": a.target, "who": a.who, "detail": a.detail}
               for a in ledger.actions(limit=10)]
    return mask({"generated_at": iso(stamp), "queues": queues, "workers": workers,
                 "gone_after_seconds": status.gone_after(settings), "chart_hours": CHART_HOURS,
                 "actions": actions}, secret_values(settings))


# -- job lists -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Filters:
    """What a job list shows: all of them optional."""
    queue: str = ""        # "" every queue; "(none)": jobs without one
    state: str = ""
    task: str = ""
    q: str = ""            # a job id (or its first 4-13 characters), an idempotency key, or argument text

    @classmethod
    def from_query(cls, query: dict[str, str]) -> "Filters":
        state = query.get("state", "").strip()
        return cls(queue=query.get("queue", "").strip(), state=state if state in STATES else "",
                   task=query.get("task", "").strip()[:Job.task.max_length], q=query.get("q", "").strip()[:200])

    def as_query(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}

    def __bool__(self) -> bool:
        return any(dataclasses.asdict(self).values())


@dataclasses.dataclass
class Page:
    jobs: list[dict]
    next: str | None        # cursor of the next (older) page, None at the end
    scanned: int            # rows read to make it
    partial: bool = False   # the scan budget ended it before it was full
    found_by: str = ""      # "id", "key" or "" (a list)


def encode_cursor(created_at: Any, job_id: str) -> str:
    value = _dt(created_at)
    return f"{value.isoformat(timespec='microseconds')}~{job_id}"


def decode_cursor(text: str | None) -> tuple[datetime.datetime, str] | None:
    if not text:
        return None
    stamp, sep, job_id = text.partition("~")
    try:
        return (datetime.datetime.fromisoformat(stamp), job_id) if sep and job_id else None
    except ValueError:
        return None


def _row_dict(row: tuple, secrets: list[str]) -> dict:
    job_id, task, queue, state, attempt, created, finished, duration, kwargs = row
    try:
        args = json.loads(kwargs or "{}")
    except ValueError:
        args = kwargs
    return {"id": job_id, "task": task, "queue": queue, "state": state, "attempt": attempt,
            "created_at": iso(_dt(created)), "finished_at": iso(_dt(finished)), "duration": duration,
            "args": bound(mask(args, secrets), 200)}


def _by_id_or_key(q: str) -> tuple[list[tuple], str]:
    """Jobs whose id is `q`, whose id starts with `q` (4-13 characters, as far as lists print them), or whose
    idempotency key is `q`; each by its own index."""
    if FULL_ID.match(q):
        rows = list(Job.select(*LIST_COLUMNS).where(Job.id == q.lower()).tuples())
        if rows:
            return rows, "id"
    if ID_PREFIX.match(q):
        rows = list(Job.select(*LIST_COLUMNS).where(ledger.ids_starting(q))
                    .order_by(Job.id).limit(MAX_PAGE_SIZE).tuples())
        if rows:
            return rows, "id"
    rows = list(Job.select(*LIST_COLUMNS).where(Job.key == q).tuples())
    return rows, "key" if rows else ""


def _post_filters(window: Any, filters: Filters, driving: str) -> list:
    """The filters the driving index does not serve, as conditions on the window's columns."""
    conditions = []
    if filters.queue:
        name = queue_param(filters.queue)
        conditions.append(window.c.queue.is_null() if name is None else window.c.queue == name)
    if filters.state and driving != "state":
        conditions.append(window.c.state == filters.state)
    if filters.task and driving != "task":
        conditions.append(window.c.task == filters.task)
    if filters.q:
        conditions.append(window.c.kwargs.contains(filters.q))  # LIKE/ILIKE '%q%': case-insensitive
    return conditions


def job_page(filters: Filters, secrets: list[str], before: str | None = None, limit: int = PAGE_SIZE) -> Page:
    """One page of the jobs `filters` show, newest first, starting after cursor `before`; arguments masked (and
    the literal `secrets`, helpers.masking.secret_values)."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    if filters.q:
        rows, found_by = _by_id_or_key(filters.q)
        if found_by:
            plain = dataclasses.replace(filters, q="")
            rows = [r for r in rows if (not plain.queue or r[2] == queue_param(plain.queue))
                    and (not plain.state or r[3] == plain.state) and (not plain.task or r[1] == plain.task)]
            return Page([_row_dict(r, secrets) for r in rows], None, len(rows), found_by=found_by)
    if filters.state:
        driver, driving = Job.state == filters.state, "state"
    elif filters.task:
        driver, driving = Job.task == filters.task, "task"
    else:
        driver, driving = None, ""
    order = (Job.created_at.desc(), Job.id.desc())
    cursor = decode_cursor(before)

    def walk(after: tuple | None):
        query = Job.select(*LIST_COLUMNS)
        if driver is not None:
            query = query.where(driver)
        if after is not None:
            query = query.where(peewee.Tuple(Job.created_at, Job.id) < peewee.Tuple(*after))
        return query.order_by(*order)

    probe = walk(None).alias("w")
    if not _post_filters(probe, filters, driving):  # the index serves every filter: one seek, one page
        rows = list(walk(cursor).limit(limit + 1).tuples())
        jobs = [_row_dict(r, secrets) for r in rows[:limit]]
        following = encode_cursor(rows[limit - 1][5], rows[limit - 1][0]) if len(rows) > limit else None
        return Page(jobs, following, len(rows))
    # Windows of WINDOW rows along the driving index, filtered in SQL, until the page is full or the budget spent.
    found: list[tuple] = []
    scanned = 0
    while True:
        window = walk(cursor).limit(WINDOW).alias("w")
        columns = [getattr(window.c, field.column_name) for field in LIST_COLUMNS]
        need = limit + 1 - len(found)
        found += list(Job.select(*columns).from_(window).where(*_post_filters(window, filters, driving))
                      .order_by(window.c.created_at.desc(), window.c.id.desc()).limit(need).tuples())
        if len(found) > limit:
            jobs = [_row_dict(r, secrets) for r in found[:limit]]
            return Page(jobs, encode_cursor(found[limit - 1][5], found[limit - 1][0]), scanned + WINDOW)
        edge = walk(cursor).select(Job.created_at, Job.id).offset(WINDOW - 1).limit(1).tuples().first()
        jobs = [_row_dict(r, secrets) for r in found]
        if edge is None:  # the index ends within this window
            return Page(jobs, None, scanned + WINDOW)
        scanned += WINDOW
        cursor = (_dt(edge[0]), edge[1])
        if scanned >= SCAN_BUDGET:
            return Page(jobs, encode_cursor(*edge), scanned, partial=True)


def matching_ids(filters: Filters, cap: int) -> tuple[list[str], bool]:
    """The ids of (at most `cap`) jobs a filter shows, for a bulk action; True when the cap cut it."""
    ids: list[str] = []
    before = None
    while True:
        page = job_page(filters, [], before, MAX_PAGE_SIZE)  # only the ids are read: nothing to mask
        ids.extend(job["id"] for job in page.jobs)
        if len(ids) >= cap:
            return ids[:cap], True
        if page.next is None:
            return ids, False
        before = page.next


# -- one job ---------------------------------------------------------------------------------------------------

def job_detail(job_id: str, secrets: list[str]) -> dict | None:
    """A job with its attempts on a timeline (offsets and widths in per cent of the job's life so far), where
    its last traceback belongs, its progress, and the operator actions taken on it; masked (and `secrets`)."""
    job = ledger.get(job_id)
    if job is None:
        return None
    data = job_dict(job, secrets, with_attempts=True)
    data["failed_attempt"] = last_failed_attempt(data["error"], data["attempts"])
    stamp = now()
    start = job.created_at
    spans = []
    for a in data["attempts"]:
        began = _dt(a["started_at"].rstrip("Z")) if a["started_at"] else None
        ended = _dt(a["finished_at"].rstrip("Z")) if a["finished_at"] else stamp
        if began is not None:
            spans.append((a, began, ended))
    end = max([ended for _, _, ended in spans] + [job.finished_at or start, start + datetime.timedelta(seconds=1)])
    total = max((end - start).total_seconds(), 1e-6)
    for a, began, ended in spans:
        a["offset_pct"] = round(max((began - start).total_seconds(), 0) / total * 100, 2)
        a["width_pct"] = round(max((ended - began).total_seconds() / total * 100, 0.5), 2)
        a["running"] = a["finished_at"] is None
    data["timeline_seconds"] = round(total, 3)
    progress = data.get("progress")
    if isinstance(progress, dict):
        done, total_ = progress.get("done"), progress.get("total")
        if isinstance(done, (int, float)) and isinstance(total_, (int, float)) and total_ > 0:
            progress["percent"] = round(min(max(done / total_ * 100, 0), 100), 1)
    data["actions"] = [{"at": iso(a.at), "action": a.action, "who": a.who, "detail": a.detail}
                       for a in ledger.actions(target=job.id, limit=50)]
    return mask(data, secrets)


def schedule(settings: config.Settings) -> list[dict]:
    """The periodic tasks with their cron, time zone, next run and last outcome (app.status)."""
    return mask(status.schedule_rows(settings.tick_seconds), secret_values(settings))

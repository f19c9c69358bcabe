"""Cleanup: remove what is dead, on a schedule (built-in periodic task) or by hand (`nightshift cleanup`).

What goes:
- ledger rows of finished jobs past retention (succeeded: NIGHTSHIFT_RETAIN_SUCCEEDED_DAYS; dead, canceled,
  expired: NIGHTSHIFT_RETAIN_FAILED_DAYS), with their attempts;
- raw-message previews of dead letters past NIGHTSHIFT_RETAIN_PREVIEW_DAYS (the dead letter itself stays);
- heartbeat rows of workers stopped or silent for NIGHTSHIFT_RETAIN_WORKERS_DAYS;
- stored results (`huey.r.{queue}.{job id}`) without a TTL, or whose job is no longer in the ledger;
- revocation flags (`huey.r.{queue}.r:{job id}`) of jobs that can no longer run (finished or unknown);
- task locks (`huey.r.{queue}.{queue}.lock.{name}`) whose recorded holder (app.locks) is gone or which are
  older than NIGHTSHIFT_LOCK_MAX_AGE; a lock without a recorded holder is removed when no worker of the queue is
  alive, and otherwise given NIGHTSHIFT_LOCK_MAX_AGE as a TTL so it cannot outlive that.

Which queues: by default every queue the service knows (status.every_queue: NIGHTSHIFT_QUEUE, NIGHTSHIFT_QUEUES
and every queue with jobs or consumers in the ledger), its ledger rows and its Redis keys alike, however the queues
are spread over consumers: the periodic cleanup runs in whichever consumer won the tick, which may serve other
queues. Every rule is judged by the ledger all queues share (retention is one setting, a worker is alive by
ledger.gone_after, and only finished jobs, silent workers, orphans and locks of gone holders go), so another
queue's or service's jobs lose nothing they still need. Named queues (`nightshift cleanup --queue Q`) restrict it
to their jobs and keys; worker rows (of consumers that may serve any queue) then stay.

How: in batches of NIGHTSHIFT_CLEANUP_BATCH (one short transaction per batch of rows; SCAN ... COUNT and
pipelined UNLINK for keys), so a large cleanup never holds the database or Redis for long. Every delete is
idempotent and re-checks its condition where it is applied (DELETE ... WHERE, compare-and-delete scripts in
Redis), so two cleanups at once remove each thing once between them and report only what each removed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import logging
import os
import re
import time
from typing import Iterator

from peewee import fn

import config
from app import keys, ledger, status
from app.db import is_sqlite
from app.models import Attempt, Job, WorkerBeat
from app.queue import NightshiftHuey, check_queue_name, get_huey
from app.states import State

log = logging.getLogger("nightshift.cleanup")

SUCCEEDED = (State.SUCCEEDED,)
FAILED = (State.DEAD, State.CANCELED, State.EXPIRED)
CAN_STILL_RUN = (State.QUEUED, State.RETRYING, State.RUNNING)
REDIS_COUNTERS = ("results", "revoke_flags", "locks", "locks_bounded")
JOB_ID = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Scripts over one batch of keys (one round trip per batch; each runs for about a millisecond).
# Sizes: TTL and value length of each key.
SIZES = """local out = {}
for i, key in ipairs(KEYS) do out[2 * i - 1] = redis.call('ttl', key); out[2 * i] = redis.call('strlen', key) end
return out"""
# Delete, re-checking at the moment of deletion what the key was judged stale for (no read-modify-write race):
# ARGV[i] is "any", "no-ttl" (only if it still has no TTL) or "=" followed by the value it must still have.
UNLINK_CHECKED = """local out = {}
for i, key in ipairs(KEYS) do
  local how, done = ARGV[i], 0
  if how == 'any' then done = redis.call('unlink', key)
  elseif how == 'no-ttl' then if redis.call('ttl', key) == -1 then done = redis.call('unlink', key) end
  elseif redis.call('get', key) == string.sub(how, 2) then done = redis.call('unlink', key) end
  out[i] = done
end
return out"""


@dataclasses.dataclass
class Report:
    """What one cleanup removed (or, with dry_run, would remove)."""
    dry_run: bool = False
    queues: list[str] = dataclasses.field(default_factory=list)  # whose Redis keys (and, if named, ledger rows)
    every_queue: bool = True  # not restricted to named queues: ledger rows of all queues, worker rows too
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    attempts: int = 0
    ledger_bytes: int = 0
    previews: int = 0
    previews_bytes: int = 0
    workers: int = 0
    results: int = 0
    results_bytes: int = 0
    revoke_flags: int = 0
    revoke_flags_bytes: int = 0
    locks: int = 0
    locks_bytes: int = 0
    locks_bounded: int = 0
    keys_scanned: int = 0
    seconds: float = 0.0
    # Redis keys removed per queue: {queue: {"results": n, "revoke_flags": n, "locks": n, "locks_bounded": n}}
    per_queue: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    @property
    def bytes_freed(self) -> int:
        return self.ledger_bytes + self.previews_bytes + self.results_bytes + self.revoke_flags_bytes \
            + self.locks_bytes

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), bytes_freed=self.bytes_freed)

    def count(self, queue: str, counter: str, size: int = 0) -> None:
        """One Redis key of `queue` removed (or bounded, for "locks_bounded"), of `size` bytes."""
        setattr(self, counter, getattr(self, counter) + 1)
        if counter != "locks_bounded":
            setattr(self, counter + "_bytes", getattr(self, counter + "_bytes") + size)
        of_queue = self.per_queue.setdefault(queue, dict.fromkeys(REDIS_COUNTERS, 0))
        of_queue[counter] += 1

    def scope(self) -> str:
        """Which queues it acted on, in words."""
        names = ", ".join(repr(name) for name in self.queues) or "none"
        if self.every_queue:
            return f"every queue: {names}"
        return ("queue " if len(self.queues) == 1 else "queues ") + names + " (their jobs and keys only)"

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} ({self.scope()}): {self.jobs_succeeded} "
                f"succeeded and {self.jobs_failed} dead/canceled/expired jobs ({self.attempts} attempts), "
                f"{self.previews} dead-letter previews, {self.workers} worker rows, "
                f"{self.results} results, {self.revoke_flags} revocation flags, {self.locks} stale locks; "
                f"{self.bytes_freed} bytes freed{' (estimated)' if self.dry_run else ''}; "
                f"{self.locks_bounded} lock(s) without holder given a TTL; {self.seconds:.2f}s")


def days_ago(now: datetime.datetime, days: float) -> datetime.datetime:
    return now - datetime.timedelta(days=days)


# -- ledger --------------------------------------------------------------------------------------------------------

class Batches:
    """Batch sizes for deleting many rows without holding up the workers' own ledger writes.

    Each batch is one transaction. Its size shrinks (down to MIN_ROWS) while batches take longer than
    TARGET_SECONDS and grows back up to `most` (NIGHTSHIFT_CLEANUP_BATCH) while they take less than half. On
    SQLite, where a transaction holds the one write lock, every batch is followed by a pause of PAUSE_SECONDS:
    a waiting worker's busy handler polls the lock at growing intervals (up to 25 ms apart in its first 100 ms,
    then every 100 ms), so back-to-back batches left it no gap to get in, and a worker's write waited for the
    whole cleanup (954 ms behind 40,000 rows in tests/test_growth.py). After a batch that took long (a busy
    machine), the pause is SLOW_PAUSE_SECONDS, so that a worker already polling every 100 ms gets in too.
    PostgreSQL locks rows, not the table: no pause."""

    TARGET_SECONDS = 0.04
    PAUSE_SECONDS = 0.03
    SLOW_PAUSE_SECONDS = 0.11
    MIN_ROWS = 50

    def __init__(self, most: int) -> None:
        self.most = max(int(most), 1)
        self.limit = min(self.MIN_ROWS * 2, self.most)  # grows to what the ledger deletes within the target
        self.longest = 0.0
        self.pause = self.PAUSE_SECONDS if is_sqlite() else 0.0

    @contextlib.contextmanager
    def timed(self) -> Iterator[int]:
        """The number of rows the next batch may take; times the batch run inside, then pauses."""
        started = time.monotonic()
        yield self.limit
        took = time.monotonic() - started
        self.longest = max(self.longest, took)
        if took > self.TARGET_SECONDS:
            self.limit = max(min(self.MIN_ROWS, self.most), int(self.limit * self.TARGET_SECONDS / took))
        elif took < self.TARGET_SECONDS / 2:
            self.limit = min(self.most, max(self.limit + 1, int(self.limit * 1.5)))
        if self.pause:
            # After a long batch, a waiting worker polls only every 100 ms: stay out long enough for one poll.
            time.sleep(self.pause if took < self.TARGET_SECONDS * 1.5 else self.SLOW_PAUSE_SECONDS)


def _count_finished(before: datetime.datetime, states: tuple[str, ...],
                    queues: list[str] | None = None) -> tuple[int, int, int]:
    finished = Job.state.in_(states) & (Job.finished_at < before)
    if queues is not None:
        finished &= ledger.in_queues(queues)
    jobs, size = Job.select(fn.COUNT(Job.id), fn.SUM(ledger.row_bytes(Job, ledger.TEXT_COLUMNS))) \
        .where(finished).tuples().first()
    attempts, attempt_size = Attempt.select(
        fn.COUNT(Attempt.job_id), fn.SUM(ledger.row_bytes(Attempt, ("job_id", "worker", "error")))).where(
        Attempt.job_id.in_(Job.select(Job.id).where(finished))).tuples().first()
    return int(jobs or 0), int(attempts or 0), int(size or 0) + int(attempt_size or 0)


def clean_ledger(report: Report, now: datetime.datetime, settings: config.Settings,
                 queues: list[str] | None = None) -> None:
    """Finished jobs past retention (with their attempts), then dead-letter previews, then old worker rows; of
    every queue, or of `queues` only (their jobs; worker rows then stay)."""
    for states, days, field in ((SUCCEEDED, settings.retain_succeeded_days, "jobs_succeeded"),
                                (FAILED, settings.retain_failed_days, "jobs_failed")):
        before = days_ago(now, days)
        if report.dry_run:
            jobs, attempts, size = _count_finished(before, states, queues)
        else:
            jobs = attempts = size = 0
            batches = Batches(settings.cleanup_batch)
            while True:  # until a batch finds nothing: a concurrent cleanup may take part of ours
                with batches.timed() as limit:
                    done, history, freed = ledger.delete_finished(before, states, limit, queues)
                if not done:
                    break
                jobs, attempts, size = jobs + done, attempts + history, size + freed
        setattr(report, field, getattr(report, field) + jobs)
        report.attempts += attempts
        report.ledger_bytes += size

    before = days_ago(now, settings.retain_preview_days)
    if report.dry_run:
        old = ledger.old_previews(before, queues) & (Job.finished_at >= days_ago(now, settings.retain_failed_days))
        count, size = Job.select(fn.COUNT(Job.id), fn.SUM(fn.LENGTH(Job.raw).coerce(False))).where(old) \
            .tuples().first()
        report.previews += int(count or 0)
        report.previews_bytes += max(int(size or 0) - int(count or 0) * len(ledger.PREVIEW_REMOVED), 0)
    else:
        batches = Batches(settings.cleanup_batch)
        while True:
            with batches.timed() as limit:
                done, freed = ledger.drop_previews(before, limit, queues)
            if not done:
                break
            report.previews += done
            report.previews_bytes += freed

    if queues is not None:
        return  # a consumer's row may be of any queue it serves: only a cleanup of every queue removes it
    before = days_ago(now, settings.retain_workers_days)
    gone = (WorkerBeat.stopped_at < before) | (WorkerBeat.last_seen < before)
    if report.dry_run:
        report.workers += WorkerBeat.select().where(gone).count()
    else:
        while True:
            ids = [row[0] for row in WorkerBeat.select(WorkerBeat.id).where(gone).limit(settings.cleanup_batch)
                   .tuples()]
            if not ids:
                break
            report.workers += WorkerBeat.delete().where(WorkerBeat.id.in_(ids), gone).execute()


# -- Redis ---------------------------------------------------------------------------------------------------------

def _glob_escape(text: bytes) -> bytes:
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", text)


def _lock_holder(huey: NightshiftHuey, raw: bytes) -> dict | None:
    try:
        value = huey.serializer.deserialize(raw)
    except Exception:  # noqa: BLE001 - a lock value Nightshift did not write: no holder known
        return None
    return value if isinstance(value, dict) and "holder" in value else None


def _past_retention(state: str, finished_at: datetime.datetime | None, now: datetime.datetime,
                    settings: config.Settings) -> bool:
    if finished_at is None:
        return False
    if isinstance(finished_at, str):
        finished_at = datetime.datetime.fromisoformat(finished_at)
    if state in SUCCEEDED:
        return finished_at < days_ago(now, settings.retain_succeeded_days)
    return state in FAILED and finished_at < days_ago(now, settings.retain_failed_days)


def _lock_is_stale(holder: dict | None, wall: float, alive_anywhere: set[str], alive_on_queue: set[str],
                   settings: config.Settings) -> bool:
    """A lock with a recorded holder is stale when that holder is not a live consumer (of any queue: a task takes
    its lock in the service's queue whatever queue it runs on) by the one rule, ledger.gone_after, counting the
    moment it took the lock as a sign of life (it may not have beaten yet), or when it is older than
    NIGHTSHIFT_LOCK_MAX_AGE. One without a holder, when no consumer of its queue is alive."""
    if holder is None:
        return not alive_on_queue
    age = wall - float(holder.get("since") or 0)
    return (holder["holder"] not in alive_anywhere and age > ledger.gone_after(settings)) \
        or bool(settings.lock_max_age and age > settings.lock_max_age)


def clean_redis(report: Report, queues: list[str], now: datetime.datetime, settings: config.Settings) -> None:
    """Results, revocation flags and locks of `queues`, in one SCAN of Redis however many queues there are (a SCAN
    walks the whole keyspace whatever its MATCH), each key handled by the queue whose namespace it is in."""
    if not queues:
        return
    hueys = [get_huey(name) for name in queues]
    conn = hueys[0].storage.conn  # every queue of a service is on one Redis
    # Longest prefix first: queue "a.b"'s keys also start with queue "a"'s prefix.
    namespaces = sorted(((h.storage.result_prefix, h) for h in hueys), key=lambda item: -len(item[0]))
    sizes_of = conn.register_script(SIZES)
    unlink_checked = conn.register_script(UNLINK_CHECKED)
    alive_anywhere = ledger.alive_worker_ids(None, now, settings)
    alive = {h.name: ledger.alive_worker_ids(h.name, now, settings) for h in hueys}
    # A lock's age is taken as of `now` too, the instant the holders' liveness is judged at (the cleanup's start).
    # Measured later, after a long ledger cleanup, a lock taken just before the cleanup began looked too old for a
    # holder that had not beaten yet, though that holder was judged as of the start.
    wall = time.time() - (ledger.now() - now).total_seconds()

    def handle(huey: NightshiftHuey, found: list[bytes]) -> None:
        prefix = huey.storage.result_prefix
        lock_prefix = keys.task_lock_prefix(huey.name).encode()
        results, flags, locks = [], [], []
        for key in found:
            suffix = key[len(prefix):]
            if suffix.startswith(lock_prefix):
                locks.append(key)
            elif suffix.startswith(b"r:") and JOB_ID.match(suffix[2:]):
                flags.append((key, suffix[2:].decode()))
            elif JOB_ID.match(suffix):
                results.append((key, suffix.decode()))
            # anything else in the namespace (task-wide revocations "rt:", other tools' keys) is left alone
        ids = [job_id for _, job_id in results + flags]
        rows = Job.select(Job.id, Job.state, Job.finished_at).where(Job.id.in_(ids)).tuples() if ids else []
        # A dry run did not delete the jobs past retention: count their results and flags as orphans anyway.
        states = {job_id: state for job_id, state, finished_at in rows
                  if not (report.dry_run and _past_retention(state, finished_at, now, settings))}

        measured = [key for key, _ in results + flags]
        answers = iter(sizes_of(keys=measured) if measured else [])
        pipe = conn.pipeline(transaction=False)
        for key in locks:
            pipe.get(key)
            pipe.ttl(key)
        answers = itertools.chain(answers, pipe.execute() if locks else [])

        # (how to delete, key, value to compare, size, counter)
        doomed: list[tuple[str, bytes, bytes | None, int, str]] = []
        for key, job_id in results:
            ttl, size = next(answers), next(answers)
            if ttl == -2:
                continue  # expired meanwhile
            if job_id not in states:
                doomed.append(("any", key, None, size + len(key), "results"))
            elif ttl == -1:
                doomed.append(("no-ttl", key, None, size + len(key), "results"))
        for key, job_id in flags:
            ttl, size = next(answers), next(answers)
            if ttl == -2:
                continue
            if states.get(job_id) not in CAN_STILL_RUN:
                doomed.append(("any", key, None, size + len(key), "revoke_flags"))
        bound = []
        for key in locks:
            value, ttl = next(answers), next(answers)
            if value is None:
                continue
            holder = _lock_holder(huey, value)
            if _lock_is_stale(holder, wall, alive_anywhere, alive[huey.name], settings):
                doomed.append(("equal", key, value, len(value) + len(key), "locks"))
            elif holder is None and ttl == -1 and settings.lock_max_age:
                bound.append(key)

        if report.dry_run:
            for _, _, _, size, counter in doomed:
                report.count(huey.name, counter, size)
            for _ in bound:
                report.count(huey.name, "locks_bounded")
            return
        outcomes = unlink_checked(keys=[d[1] for d in doomed],
                                  args=[b"=" + d[2] if d[0] == "equal" else d[0] for d in doomed]) if doomed else []
        for (_, _, _, size, counter), removed in zip(doomed, outcomes):
            if removed:
                report.count(huey.name, counter, size)
        for key in bound:  # NX: only a lock that still has no TTL gets one
            if conn.expire(key, int(settings.lock_max_age), nx=True):
                report.count(huey.name, "locks_bounded")

    for huey in hueys:
        report.per_queue.setdefault(huey.name, dict.fromkeys(REDIS_COUNTERS, 0))
    batches: dict[str, list[bytes]] = {}
    common = os.path.commonprefix([prefix for prefix, _ in namespaces])
    for key in conn.scan_iter(match=_glob_escape(common) + b"*", count=settings.cleanup_batch):
        huey = next((h for prefix, h in namespaces if key.startswith(prefix)), None)
        if huey is None:
            continue  # another queue's (common is only the namespaces' shared start)
        report.keys_scanned += 1
        batch = batches.setdefault(huey.name, [])
        batch.append(key)
        if len(batch) >= settings.cleanup_batch:
            handle(huey, batch)
            batches[huey.name] = []
    for huey in hueys:
        if batches.get(huey.name):
            handle(huey, batches[huey.name])


def queues_to_clean(settings: config.Settings, queues: list[str] | None = None) -> list[str]:
    """The queues whose Redis keys a cleanup walks: those named, else every queue the service knows but the jobs
    without a queue (from before the ledger recorded queues: their keys are in no queue's namespace) and names
    Huey cannot carry (a ledger row written by hand)."""
    if queues is not None:
        return list(dict.fromkeys(queues))
    names = []
    for name in status.every_queue(settings):
        if name is None:
            continue
        try:
            names.append(check_queue_name(name))
        except ValueError:
            log.warning("cleanup: queue %r of the ledger is not a queue name Huey can carry: its keys are left", name)
    return names


def run(settings: config.Settings, dry_run: bool = False, now: datetime.datetime | None = None,
        queues: list[str] | None = None) -> Report:
    """One cleanup pass of every queue the service (`settings`) knows, or of `queues` only: the ledger first (so
    results of jobs it removes become orphans), then Redis."""
    started = time.monotonic()
    now = now or ledger.now()
    names = queues_to_clean(settings, queues)
    report = Report(dry_run=dry_run, queues=names, every_queue=queues is None)
    clean_ledger(report, now, settings, None if queues is None else names)
    clean_redis(report, names, now, settings)
    report.seconds = round(time.monotonic() - started, 3)
    if not dry_run:
        log.info("cleanup %s", report.summary(), extra={"cleanup": report.as_dict()})
    return report

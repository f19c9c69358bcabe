"""Recovery: put back what a dead worker or a Redis that lost its data would otherwise lose.

1. A running job whose lease expired (its worker died or hung) is queued again as a new attempt, or goes dead
   once it has lost its lease more than NIGHTSHIFT_MAX_LEASE_LOSSES times.
2. A waiting job (queued or retrying) that has been waiting longer than NIGHTSHIFT_RECOVERY_GRACE and whose
   message is neither on the queue nor on the schedule is sent again, with its original time. The queue is
   compared with the ledger, so a healthy backlog is never duplicated.

Both act on the jobs of this consumer's queue (NIGHTSHIFT_QUEUE) only: services with other queues may share the
ledger, and their jobs are theirs to recover (this consumer may not even know their tasks).
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import time
from collections.abc import Iterator

from huey.api import Task
from peewee import Tuple

from app import catalog, clock, events, keys, ledger, producer
from app.producer import task_from_row
from app.db import database
from app.models import WAITING, Job
from app.queue import NightshiftHuey
from app.states import State

log = logging.getLogger("nightshift.recovery")
_ID = re.compile(rb'"id":"([^"]+)"')
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
SCAN_CHUNK = 5000
PAGE = 5000  # waiting jobs read from the ledger per statement (waiting_jobs)
# A message a worker has popped but not yet claimed in the ledger is in neither place. Jobs that look lost are
# looked up again this long after the scan, once that worker's claim has landed, before they are sent again.
CONFIRM_SECONDS = 1.0
CONFIRM_CHUNK = 500  # jobs found missing, looked up again and sent again per round trip


@dataclasses.dataclass
class Report:
    lease_requeued: int = 0
    lease_dead: int = 0
    resent: int = 0
    unknown_task: int = 0
    refused: int = 0
    queued_in_redis: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """What recovery did, as a log line a person reads."""
        parts = [f"requeued {self.lease_requeued} job(s) whose lease expired" if self.lease_requeued else "",
                 f"{self.lease_dead} job(s) dead after losing their lease too often" if self.lease_dead else "",
                 f"sent {self.resent} waiting job(s) again (missing from Redis)" if self.resent else "",
                 f"{self.unknown_task} job(s) dead: unknown task" if self.unknown_task else "",
                 f"{self.refused} job(s) dead: their message was refused, not sent again" if self.refused else ""]
        return "; ".join(p for p in parts if p)


def compact_id(job_id: str) -> int | str:
    """A job id as recovery keeps it in memory: a canonical uuid as its 128-bit number (about 70 bytes in a set,
    against about 110 for the text), any other id as it is (so no two ids can compare equal)."""
    if _UUID.match(job_id):
        return int(job_id.replace("-", ""), 16)
    return job_id


def message_ids(huey: NightshiftHuey) -> set[int | str]:
    """Ids (compact_id) of every job whose message is on the schedule or the queue throughout the scan.

    ZSCAN, not paging by index: workers pop the queue's head while it is read, which shifts every index and made
    paging skip messages (a healthy backlog then looked lost and was sent again). ZSCAN returns every member
    present from the start to the end of the scan, SCAN_CHUNK at a time; only the ids are kept. The schedule is
    read first: a message the scheduler moves meanwhile goes onto the queue, which is read after."""
    storage, ids = huey.storage, set()
    for key in (storage.schedule_key, storage.queue_key):
        for data, _score in storage.conn.zscan_iter(key, count=SCAN_CHUNK):
            match = _ID.search(data)
            if match:
                ids.add(compact_id(match.group(1).decode("utf-8", "replace")))
    return ids


def _resend(huey: NightshiftHuey, jobs: list[Job], report: Report) -> list[Task]:
    tasks = []
    for job in jobs:
        try:
            tasks.append(task_from_row(job))
        except catalog.UnknownTaskName as exc:
            if ledger.mark_dead(job.id, f"cannot recover: {exc}"):
                report.unknown_task += 1
    error = producer.resubmit(tasks, huey)
    if error is not None:
        log.warning("recovery could not send %d job(s): Redis unreachable (%s); the next run will", len(tasks), error)
        return []
    return tasks


def hold_leases(huey: NightshiftHuey, seconds: float | None = None) -> None:
    """After the ledger was unwritable, no worker could renew its leases: tell every consumer's recovery to leave
    leases alone for a lease period (a key in the shared Redis), so a job that finished during the outage and
    records it now is not taken for lost and run again."""
    seconds = seconds or huey.settings.lease_seconds * 1.5
    huey.storage.conn.set(keys.leases_held(huey.name), "1", px=int(seconds * 1000))


def leases_held(huey: NightshiftHuey) -> bool:
    return bool(huey.storage.conn.exists(keys.leases_held(huey.name)))


def recover_expired_leases(huey: NightshiftHuey, report: Report, now: datetime.datetime) -> None:
    settings = huey.settings
    if leases_held(huey):
        return
    began = time.monotonic()
    ledger.wait_for_write_lock()  # on SQLite this waits while another process holds it
    waited = time.monotonic() - began
    if waited > settings.lease_seconds / 3:  # longer than a keeper's renewal interval: leases went stale
        log.warning("recovery waited %.1f s for the ledger's write lock: leases are left alone for a lease "
                    "period", waited)
        hold_leases(huey)
        return
    expired = list(Job.select().where(Job.queue == huey.name, Job.state == State.RUNNING, Job.lease_expires_at < now))
    requeued = []
    for job in expired:
        losses = job.lease_losses + 1
        if losses > settings.max_lease_losses:
            how_often = "once" if losses == 1 else f"{losses} times"
            reason = (f"lost its lease {how_often} (its worker died, hung or blocked lease renewal each time; a "
                      f"task that holds the GIL that long needs a longer lease: @task(lease=SECONDS))")
            if ledger.mark_dead(job.id, reason, job.error, job.traceback, attempt=job.attempt, outcome="lease-lost"):
                report.lease_dead += 1
                events.emit("dead", job.id, job.task, logging.ERROR, attempt=job.attempt, reason=reason)
            continue
        reason = f"lease expired on worker {job.worker} (attempt {job.attempt})"
        new_attempt = ledger.requeue(job.id, job.attempt, "lease-lost", reason, lease_lost=True)
        if new_attempt is not None:
            job.attempt, job.eta = new_attempt, None
            requeued.append(job)
            events.emit("recovered", job.id, job.task, logging.WARNING, attempt=new_attempt, reason=reason)
    report.lease_requeued += len(_resend(huey, requeued, report))


def waiting_jobs(queue: str, cutoff: datetime.datetime) -> Iterator[tuple[str, int]]:
    """(id, attempt) of the queue's waiting jobs last changed before `cutoff`, read PAGE at a time by
    (created_at, id) keys from the (queue, state, created_at, id) index.

    Each page is fetched whole, as the database's own values, before any of it is handed out: its read snapshot
    lasts no longer than the statement. One statement streaming every waiting job kept its snapshot for the whole
    pass, and no checkpoint can copy a SQLite ledger's log past a snapshot a reader still holds: the log reached
    227-243 MB while a consumer's recovery went through a backlog of 200,000 jobs that its workers were draining.
    (Rows converted as they are fetched, peewee's way, kept the statement open five times as long.)"""
    for state in WAITING:
        waiting = Job.select(Job.id, Job.attempt, Job.created_at).where(
            Job.queue == queue, Job.state == state, Job.updated_at < cutoff).order_by(Job.created_at, Job.id)
        page = database.execute(waiting.limit(PAGE)).fetchall()
        while page:
            for job_id, attempt, _created_at in page:
                yield job_id, attempt
            if len(page) < PAGE:
                break
            last_id, _attempt, last_created_at = page[-1]
            after = Tuple(Job.created_at, Job.id) > Tuple(last_created_at, last_id)  # as stored: no conversion
            page = database.execute(waiting.where(after).limit(PAGE)).fetchall()


def recover_lost_messages(huey: NightshiftHuey, report: Report, now: datetime.datetime) -> None:
    """Send again the waiting jobs whose message is neither queued nor scheduled.

    Memory is one compact id per message on Redis, whatever the backlog: the ids on Redis are read first, then
    the ledger's waiting jobs go past them as (id, attempt) pairs, a page at a time (waiting_jobs), and only the
    missing ones are kept; full rows are read CONFIRM_CHUNK at a time, each chunk sent before the next is read.
    (Loading every waiting job as a row object took a consumer to ~190 MB when it started on a backlog of
    200,000 jobs.)

    A message a worker pops while Redis is read is missing from the scan, and its job still looks waiting in the
    ledger until that worker's claim lands: jobs that look lost are looked up again CONFIRM_SECONDS later, and
    only those still waiting at the same attempt are sent again. (A job whose state changed since the cutoff is
    not considered at all: updated_at is newer.)"""
    cutoff = now - datetime.timedelta(seconds=huey.settings.recovery_grace)
    present = message_ids(huey)
    report.queued_in_redis = len(present)
    missing = [(job_id, attempt) for job_id, attempt in waiting_jobs(huey.name, cutoff)
               if compact_id(job_id) not in present]
    del present
    if missing:
        time.sleep(CONFIRM_SECONDS)
    for start in range(0, len(missing), CONFIRM_CHUNK):
        chunk = dict(missing[start:start + CONFIRM_CHUNK])
        lost = []
        for job in Job.select().where(Job.id.in_(list(chunk)), Job.state.in_(WAITING)):
            if chunk[job.id] != job.attempt:
                continue
            if ledger.is_flagged_refused(job.reason):  # its message was refused: never sent again
                if ledger.fold_refused(job.id, job.attempt, job.reason):
                    report.refused += 1
                    events.emit("dead", job.id, job.task, logging.ERROR, attempt=job.attempt,
                                reason="its message was refused; not sent again")
                continue
            lost.append(job)
        for job in lost:
            events.emit("recovered", job.id, job.task, logging.WARNING, attempt=job.attempt,
                        reason="message missing from Redis; sent again")
        report.resent += len(_resend(huey, lost, report))


def recover(huey: NightshiftHuey) -> Report:
    """Run both recoveries once. Safe to run from several consumers at once: every transition is guarded."""
    began = time.monotonic()
    clock.sync(huey.storage.conn)  # leases are judged on Redis's clock, whichever host runs this
    report, now = Report(), ledger.now()
    recover_expired_leases(huey, report, now)
    recover_lost_messages(huey, report, now)
    if report.lease_requeued or report.lease_dead or report.resent or report.unknown_task or report.refused:
        log.warning("recovery: %s", report.describe())
    # Every pass, at debug: whether recovery runs at all, and how long a pass takes (tests wait on it too).
    log.debug("recovery of queue %r: %s in %.3f s", huey.name, report.describe() or "nothing to do",
              time.monotonic() - began)
    return report

"""Recovery: put back what a dead worker or a Redis that lost its data would otherwise lose.

1. A running job whose lease expired (its worker died or hung) is queued again as a new attempt, or goes dead
   once it has lost its lease more than NIGHTSHIFT_MAX_LEASE_LOSSES times.
2. A waiting job (queued or retrying) that has been waiting longer than NIGHTSHIFT_RECOVERY_GRACE and whose
   message is neither on the queue nor on the schedule is sent again, with its original time. The queue is
   compared with the ledger, so a healthy backlog is never duplicated.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re

from huey.api import Task

import config
from app import catalog, events, ledger
from app.db import init as init_db
from app.models import WAITING, Job
from app.queue import NightshiftHuey

log = logging.getLogger("nightshift.recovery")
_ID = re.compile(rb'"id":"([^"]+)"')
SCAN_CHUNK = 5000


@dataclasses.dataclass
class Report:
    lease_requeued: int = 0
    lease_dead: int = 0
    resent: int = 0
    unknown_task: int = 0
    queued_in_redis: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def message_ids(huey: NightshiftHuey) -> set[str]:
    """Ids of every job whose message is on the queue or the schedule."""
    storage, ids = huey.storage, set()
    for key in (storage.queue_key, storage.schedule_key):
        start = 0
        while True:
            chunk = storage.conn.zrange(key, start, start + SCAN_CHUNK - 1)
            for data in chunk:
                match = _ID.search(data)
                if match:
                    ids.add(match.group(1).decode())
            if len(chunk) < SCAN_CHUNK:
                break
            start += SCAN_CHUNK
    return ids


def task_from_row(job: Job) -> Task:
    """Rebuild the message of a job's current attempt from its ledger row."""
    task_class = catalog.get_task_class(job.task)
    task = task_class((), json.loads(job.kwargs), id=job.id, eta=job.eta, retries=job.retries_left,
                      retry_delay=job.retry_delay, priority=job.priority, timeout=job.timeout)
    task.attempt = job.attempt
    return task


def _resend(huey: NightshiftHuey, jobs: list[Job], report: Report) -> list[Task]:
    tasks = []
    for job in jobs:
        try:
            tasks.append(task_from_row(job))
        except catalog.UnknownTaskName as exc:
            if ledger.mark_dead(job.id, f"cannot recover: {exc}"):
                report.unknown_task += 1
    for start in range(0, len(tasks), 1000):
        huey.push(tasks[start:start + 1000])
    return tasks


def recover_expired_leases(huey: NightshiftHuey, report: Report, now: datetime.datetime) -> None:
    settings = config.get()
    expired = list(Job.select().where(Job.state == "running", Job.lease_expires_at < now))
    requeued = []
    for job in expired:
        losses = job.lease_losses + 1
        if losses > settings.max_lease_losses:
            reason = f"lost its lease {losses} times (its worker died or hung each time)"
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


def recover_lost_messages(huey: NightshiftHuey, report: Report, now: datetime.datetime) -> None:
    cutoff = now - datetime.timedelta(seconds=config.get().recovery_grace)
    waiting = {job.id: job for job in Job.select().where(Job.state.in_(WAITING), Job.updated_at < cutoff)}
    present = message_ids(huey)  # read after the ledger: a message taken meanwhile shows as claimed below
    report.queued_in_redis = len(present)
    missing = [job for job_id, job in waiting.items() if job_id not in present]
    lost = []
    for start in range(0, len(missing), 500):
        chunk = {job.id: job for job in missing[start:start + 500]}
        still = Job.select(Job.id, Job.attempt).where(Job.id.in_(list(chunk)), Job.state.in_(WAITING)).tuples()
        lost.extend(chunk[job_id] for job_id, attempt in still if chunk[job_id].attempt == attempt)
    for job in lost:
        events.emit("recovered", job.id, job.task, logging.WARNING, attempt=job.attempt,
                    reason="message missing from Redis; sent again")
    report.resent += len(_resend(huey, lost, report))


def recover(huey: NightshiftHuey) -> Report:
    """Run both recoveries once. Safe to run from several consumers at once: every transition is guarded."""
    init_db()
    report, now = Report(), ledger.now()
    recover_expired_leases(huey, report, now)
    recover_lost_messages(huey, report, now)
    if report.lease_requeued or report.lease_dead or report.resent or report.unknown_task:
        log.warning("recovery: %s", report.as_dict())
    return report

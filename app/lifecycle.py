"""Huey's hooks and signals wired to the ledger and the logs: what happens to a job inside a worker.

claim → run → post_execute (succeeded / retrying / dead); interrupted at shutdown → queued again as a new
attempt; expired → expired. A message that cannot be read becomes a dead letter.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import traceback
from typing import Any, Callable

from huey import signals as S
from huey.api import Task
from huey.exceptions import CancelExecution, TaskTimeout

import config
from app import (canceling, catalog, codec, db, events, flow, identity, jobids, ledger, monitoring, pausing, producer,
                 recovery, timelimits)
from app.codec import BadSignature, PoisonMessage
from app.queue import NightshiftHuey, UnknownTask, next_retry
from app.states import State

log = logging.getLogger("nightshift.worker")


_outage = db.Outage("worker")


# -- before a job runs -------------------------------------------------------------------------------------------

def lease_of(task_class: type, settings: config.Settings) -> float:
    """The task's own lease (`@task(lease=SECONDS)`) or NIGHTSHIFT_LEASE_SECONDS."""
    return float(getattr(task_class, "lease", None) or settings.lease_seconds)


def claim(huey: NightshiftHuey, task: Task) -> bool:
    """Claim this attempt in the ledger; False (and logged) for a duplicate delivery or an unrunnable job.

    When the ledger does not answer, the message goes back on Redis and this worker waits until the ledger
    answers again: it neither drops messages nor spins through the queue meanwhile."""
    name = type(task).__name__
    attempt = getattr(task, "attempt", None)
    try:
        catalog.bind_arguments(type(task), task.args, task.kwargs)
    except catalog.BadArguments as exc:
        reason = f"arguments no longer fit the task: {exc}"
        if not ledger.mark_dead(task.id, reason):
            ledger.record_dead_letter(task.id, name, reason, b"", huey.service)
        events.emit("dead", task.id, name, logging.ERROR, attempt=attempt, reason=reason)
        return False
    if pausing.is_paused(huey):  # taken off the queue while the pause came: back on it, unclaimed
        flow.put_back(huey, task, 0)
        return False
    lease = lease_of(type(task), huey.settings)
    admission = flow.admit(huey, task, lease)
    if admission.wait:
        flow.put_back(huey, task, admission.wait)
        events.emit("waiting", task.id, name, logging.DEBUG, attempt=attempt, seconds=round(admission.wait, 3))
        return False
    try:
        claimed = attempt is not None and ledger.claim(task.id, attempt, identity.WORKER_ID, lease)
    except Exception as exc:  # noqa: BLE001 - only an unreachable ledger is handled here
        flow.release(huey, admission.slot)
        if not db.is_unreachable(exc):
            raise
        _hand_back(huey, task, exc)
        return False
    if not claimed:
        flow.release(huey, admission.slot)
        state = ledger.state_of(task.id)
        if state is None:
            reason = "message for a job the ledger does not know"
            ledger.record_dead_letter(task.id, name, reason, json.dumps({"id": task.id, "task": name}).encode(),
                                      huey.service)
            events.emit("dead", task.id, name, logging.ERROR, attempt=attempt, reason=reason)
        else:
            events.emit("skipped", task.id, name, logging.WARNING, attempt=attempt, state=state,
                        reason=skip_reason(state))
        return False
    _outage.ended()
    with identity.lock:
        identity.running[(task.id, attempt)] = identity.Running(name, lease, time.monotonic(), ledger.now(),
                                                                admission.slot, threading.get_ident())
    events.emit("started", task.id, name, attempt=attempt, worker=identity.WORKER_ID, args=task.kwargs)
    return True


def _hand_back(huey: NightshiftHuey, task: Task, exc: BaseException) -> None:
    """Ends when the ledger answers again; the outage ends at the next recorded claim or outcome."""
    _outage.failed(exc)
    if producer.resubmit([task], huey) is not None:  # the ledger still holds it as waiting: recovery sends it
        log.warning("could not put job %s back on Redis; recovery will send it again", task.id)
    db.wait_until_reachable(_outage)


def _until_recorded(write: Callable[[], bool]) -> bool:
    """Run a ledger write of an attempt's outcome until the ledger answers. An outcome that is not recorded would
    let the lease expire and the job run again; the attempt stays in `running` (its lease renewed) meanwhile."""
    while True:
        try:
            done = write()
        except Exception as exc:  # noqa: BLE001 - only an unreachable ledger is waited for
            if not db.is_unreachable(exc):
                raise
            _outage.failed(exc)
            _outage.pause()
            continue
        _outage.ended()
        return done


def skip_reason(state: str) -> str:
    if state in (State.CANCELED, State.EXPIRED, State.DEAD):
        return f"the job is {state}"
    if state in (State.QUEUED, State.RETRYING):
        return "stale message: the job waits for a newer attempt"
    return "duplicate delivery: this attempt already ran or is running"


# -- after a job ran -----------------------------------------------------------------------------------------------

def stop_canceled(job_id: str, attempt: int | None = None) -> bool:
    """An operator canceled `job_id` while this process runs it: raise JobCanceled in its thread."""
    with identity.lock:
        found = [(pair, entry) for pair, entry in identity.running.items()
                 if pair[0] == job_id and (attempt is None or pair[1] == attempt) and pair not in identity.interrupted]
        for pair, entry in found:
            identity.interrupted.add(pair)
            canceling.interrupt(entry.thread, entry.thread == threading.main_thread().ident)
    return bool(found)


def _finished(huey: NightshiftHuey, task_id: str, attempt: int, exc: BaseException | None = None) -> None:
    with identity.lock:
        entry = identity.running.pop((task_id, attempt), None)
        identity.jobs_done += 1
        if (task_id, attempt) in identity.interrupted:
            identity.interrupted.discard((task_id, attempt))
            if entry is not None and not isinstance(exc, canceling.JobCanceled):
                timelimits.raise_in(entry.thread, None)  # ended just as the cancel came: drop it
    if entry is not None and entry.slot is not None:
        try:
            flow.release(huey, entry.slot)
        except Exception as exc:  # noqa: BLE001 - the slot's lease runs out by itself
            log.warning("could not release the concurrency slot of %s: %s", task_id, exc)


def _ended_late(task_id: str, name: str, attempt: int, lease: float, duration: float) -> None:
    """The attempt ended after recovery took its lease (of `lease` seconds): its worker was alive all along. Say
    so in the ledger."""
    note = (f"lease lost while its worker was alive: the attempt ran {duration:.1f} s and did not renew its "
            f"{lease:g} s lease in time (a task that holds the GIL or blocks its worker cannot renew it; give "
            f"the task a longer lease: @task(lease=SECONDS))")
    ledger.note_lease_lost_alive(task_id, attempt, note)
    events.emit("stale", task_id, name, logging.WARNING, attempt=attempt, duration=round(duration, 6),
                reason="finished after its lease was lost; the outcome of the newer attempt counts")


def after_execute(huey: NightshiftHuey, task: Task, value: Any, exc: BaseException | None) -> None:
    """Record the outcome of an attempt (Huey post-execute hook)."""
    attempt = getattr(task, "attempt", None) or 0
    try:
        _record_outcome(huey, task, attempt, value, exc)
    finally:
        _finished(huey, task.id, attempt, exc)


def _record_outcome(huey: NightshiftHuey, task: Task, attempt: int, value: Any, exc: BaseException | None) -> None:
    name = type(task).__name__
    entry = identity.running.get((task.id, attempt))
    duration = time.monotonic() - entry.started if entry else 0.0
    worker = identity.WORKER_ID
    if isinstance(exc, canceling.JobCanceled):  # the ledger says canceled already
        events.emit("canceled", task.id, name, logging.WARNING, attempt=attempt, duration=round(duration, 6),
                    reason="stopped by an operator's cancel while running", worker=worker)
        return
    lease = entry.lease if entry else huey.settings.lease_seconds
    ended = _EndedAttempt(task.id, name, attempt, lease, duration)
    if exc is None:
        if getattr(task, "store_result", False) and value is not None:
            try:
                huey.put_result(task.id, value)
            except Exception:  # noqa: BLE001 - a result that cannot be stored must not fail the job
                log.exception("could not store the result of %s %s", name, task.id)
        summary = ledger.summarize(value) if value is not None else None
        ended.record("succeeded", lambda: ledger.mark_succeeded(task.id, attempt, duration, summary),
                     lambda: events.emit("succeeded", task.id, name, attempt=attempt, duration=round(duration, 6),
                                         worker=worker))
        return
    error = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if task.retries:  # Huey requeues this task after this hook
        eta, delay = next_retry(task, exc, ledger.now())

        def retrying() -> None:
            task.attempt = attempt + 1
            events.emit("retrying", task.id, name, logging.WARNING, attempt=attempt, duration=round(duration, 6),
                        error=error, retries_left=task.retries - 1, eta=eta.isoformat() if eta else None,
                        worker=worker)
        ended.record("failed and will be retried", lambda: ledger.mark_retrying(
            task.id, attempt, duration, error, tb, eta, task.retries - 1, delay), retrying)
        return
    if isinstance(exc, CancelExecution):
        reason = "the task gave up (permanent error, not retried)"
    elif isinstance(exc, TaskTimeout):
        reason = f"timed out after {task.timeout}s on attempt {attempt}"
    else:
        reason = f"failed on attempt {attempt} with no retries left"
    ended.record("failed with no retries left",
                 lambda: ledger.mark_dead(task.id, reason, error, tb, attempt=attempt, duration=duration),
                 lambda: events.emit("dead", task.id, name, logging.ERROR, attempt=attempt,
                                     duration=round(duration, 6), error=error, reason=reason, worker=worker))


UNRECORDED_PREFIX = "outcome could not be recorded"


@dataclasses.dataclass
class _EndedAttempt:
    """An attempt that ended in this process, whose outcome is to be written."""
    job_id: str
    task: str
    attempt: int
    lease: float  # seconds: its running entry's, else NIGHTSHIFT_LEASE_SECONDS
    duration: float

    def record(self, outcome: str, write: Callable[[], bool], announce: Callable[[], None]) -> None:
        """Write the outcome until the ledger answers, then `announce` it; an attempt no longer running (recovery
        took its lease) ended late. A write the database refuses (a constraint, a trigger: it would refuse it
        again) ends the attempt dead with why instead: an outcome left unrecorded would let the lease expire and
        the job run again."""
        try:
            done = _until_recorded(write)
        except Exception as exc:  # noqa: BLE001 - a refusal is handled below, anything else propagates
            if not db.is_refused(exc):
                raise
            self.unrecordable(outcome, exc)
            return
        if done:
            announce()
        else:
            _until_recorded(lambda: _ended_late(self.job_id, self.task, self.attempt, self.lease, self.duration))

    def unrecordable(self, outcome: str, exc: BaseException) -> None:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        detail = ledger.storable(f"{type(exc).__name__}: {message}", 500)
        reason = f"{UNRECORDED_PREFIX}: {detail} (the attempt {outcome})"
        log.error("job %s attempt %d: the ledger refused its outcome (%s); marking it dead instead", self.job_id,
                  self.attempt, detail)
        try:
            dead = _until_recorded(lambda: ledger.mark_dead(self.job_id, reason, attempt=self.attempt,
                                                            duration=self.duration, outcome="unrecorded"))
        except Exception:  # noqa: BLE001 - nothing else to write: the lease will bring the job back
            log.exception("job %s attempt %d: could not mark it dead either; it runs again when its lease expires",
                          self.job_id, self.attempt)
            return
        if dead:
            events.emit("dead", self.job_id, self.task, logging.ERROR, attempt=self.attempt,
                        duration=round(self.duration, 6), reason=reason, worker=identity.WORKER_ID)


def on_interrupted(huey: NightshiftHuey, task: Task) -> None:
    """The worker stopped before the job finished: queue it again as a new attempt, not as a failure."""
    name = type(task).__name__
    attempt = getattr(task, "attempt", None) or 0
    try:
        new_attempt = _until_recorded(
            lambda: ledger.requeue(task.id, attempt, "interrupted", "worker shut down before the job finished"))
    finally:
        _finished(huey, task.id, attempt)
    if new_attempt is None:
        return
    task.attempt = new_attempt
    task.eta = None
    if producer.resubmit([task], huey) is not None:  # recovery delivers what the ledger holds as queued
        log.warning("could not put interrupted job %s back on Redis; recovery will", task.id)
    events.emit("requeued", task.id, name, logging.WARNING, attempt=attempt,
                reason="interrupted by shutdown", next_attempt=new_attempt)


def on_expired(huey: NightshiftHuey, task: Task) -> None:
    if ledger.mark_expired(task.id, getattr(task, "attempt", 0) or 0):
        events.emit("expired", task.id, type(task).__name__, logging.WARNING)


def dead_letter_message(data: bytes, exc: BaseException, queue: str) -> None:
    """Keep a message of `queue` that cannot run (unreadable, unsigned, unknown task) dead with the reason; never
    raise. An authentic message naming a job of this queue that waits in the ledger (unknown task) makes THAT job
    dead: one entry, which recovery leaves alone. A message with a bad or missing signature is a dead letter of
    its own, and the waiting job it names is flagged so that recovery makes it dead instead of sending it again
    (ledger.flag_refused): a refused message never becomes a run by another path. Any other message becomes a
    dead letter of its own."""
    reason = str(exc) if isinstance(exc, PoisonMessage) else f"unreadable message: {type(exc).__name__}: {exc}"
    task = "(unreadable)"
    if isinstance(exc, UnknownTask):
        task = exc.task_name
    elif isinstance(exc, BadSignature):
        task = "(bad signature)"
    job_id = codec.job_id_of(data)
    try:
        if isinstance(exc, BadSignature):
            # Untrusted: its own dead letter, and the job it names is flagged, not killed (see flag_refused).
            letter = ledger.record_dead_letter(jobids.new_id(), task, reason, bytes(data), queue)
            if job_id is not None:
                ledger.flag_refused(job_id, queue, letter, reason)
            job_id = letter
        elif job_id is None or not ledger.mark_refused(job_id, queue, reason, data):
            job_id = ledger.record_dead_letter(jobids.new_id(), task, reason, bytes(data), queue)
    except Exception:  # noqa: BLE001
        log.exception("could not record a dead letter for a bad message (%s)", reason)
    events.emit("dead", ledger.storable(job_id or "-", 120), ledger.storable(task, 200), logging.ERROR,
                reason=reason, size=len(data))


def claim_or_skip(huey: NightshiftHuey, task: Task) -> None:
    """Huey pre-execute hook: claim the attempt or skip the run (CancelExecution, which Huey handles as "do not
    run"). Any other exception in a pre-execute hook Huey would log and then run the task anyway, unclaimed."""
    # sentry-sdk's patched Huey.enqueue adds trace headers to the kwargs of a retry; they are no argument.
    task.kwargs.pop("sentry_headers", None)
    try:
        claimed = claim(huey, task)
    except Exception:  # noqa: BLE001 - not claimed: the ledger still holds the job and recovery sends it again
        log.exception("could not claim job %s; recovery will send it again", task.id)
        raise CancelExecution(retry=False) from None
    if not claimed:
        raise CancelExecution(retry=False)
    monitoring.tag_job(huey, task)


_installed: list[NightshiftHuey] = []  # every queue this consumer serves


def install(huey: NightshiftHuey) -> None:
    """Connect the hooks above to `huey` (in the consumer only)."""
    _installed.append(huey)
    _outage.on_end = lambda: [recovery.hold_leases(h) for h in _installed]
    huey.on_unreadable = dead_letter_message
    huey.pre_execute("nightshift_claim")(lambda task: claim_or_skip(huey, task))
    huey.post_execute("nightshift_outcome")(lambda task, value, exc: after_execute(huey, task, value, exc))
    huey.signal(S.SIGNAL_INTERRUPTED)(lambda signal, task, *a: on_interrupted(huey, task))
    huey.signal(S.SIGNAL_EXPIRED)(lambda signal, task, *a: on_expired(huey, task))

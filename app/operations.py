"""Operator actions on jobs and queues: retry, discard, cancel, pause, resume, run a periodic task now.

One implementation for every tool that offers them (the CLI in app/cli, the console in app/web), so the rules
(only dead jobs are retried or discarded, a running job is stopped through app.canceling, a pause is the
ledger's first) and the audit trail (app.ledger.record_action: what was done to what, by whom, with what
outcome) cannot drift apart. State changes themselves are app.ledger's; this module only sequences them with
Redis (putting revived jobs back on their queue, telling workers about a cancel) and records who asked.
"""
from __future__ import annotations

import dataclasses
import getpass
import socket
from typing import Iterable

from huey.api import PeriodicTask, Task

from app import canceling, catalog, events, ledger, pausing, producer
from app.models import WAITING, Job
from app.states import State
from app.queue import NightshiftHuey, get_huey


def local_operator() -> str:
    """Who acts from a shell: user@host, as the pause records have always said."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's numeric uid without a passwd entry
        user = "uid-unknown"
    return f"{user}@{socket.gethostname()}"


@dataclasses.dataclass
class Outcome:
    """What an action did: the ids (or names) it acted on, the ones it refused with why, and a delivery
    problem that did not stop it (Redis down: the ledger has the jobs, recovery delivers them)."""
    done: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, why)
    delivery_error: str = ""


def huey_of(queue: str | None) -> NightshiftHuey:
    """The Huey instance of `queue` (a named queue, or another service's when it shares the ledger); this
    process's own for its queue and for jobs without one."""
    return get_huey(queue)


def push_to_own_queues(tasks: list[tuple[str, Task]]) -> str | None:
    """Put revived jobs, (queue, task) pairs, on the queue each belongs to (another service's queue when it
    shares the ledger); None, or what went wrong with Redis (producer.resubmit)."""
    by_queue: dict[str, list[Task]] = {}
    for queue, task in tasks:
        by_queue.setdefault(queue, []).append(task)
    for name, batch in by_queue.items():
        error = producer.resubmit(batch, huey_of(name))
        if error is not None:
            return error
    return None


def _record(action: str, outcome: Outcome, who: str, done_detail: str = "") -> None:
    for target in outcome.done:
        ledger.record_action(action, target, who, done_detail)
    for target, why in outcome.refused:
        ledger.record_action(action, target, who, f"refused: {why}")


def retry(jobs: Iterable[Job], who: str, queue: str | None = None) -> Outcome:
    """Dead jobs back to queued, each as a new attempt with its task's retries, on the queue it belongs to (a
    job from before the ledger recorded queues: `queue`, default this process's). Poison messages and jobs that
    are not dead are refused."""
    queue = queue or get_huey().name
    outcome, tasks = Outcome(), []
    for job in jobs:
        try:
            task_class = catalog.get_task_class(job.task)
        except catalog.UnknownTaskName as exc:
            outcome.refused.append((job.id, str(exc)))
            continue
        revived = ledger.revive(job.id, task_class.default_retries or 0, queue)
        if revived is None:
            outcome.refused.append((job.id, f"it is {job.state}" + (" (a bad message, not a job)" if job.raw else "")
                                    + ", not a dead job"))
            continue
        tasks.append((revived.queue, producer.task_from_row(revived)))
        outcome.done.append(job.id)
        events.emit("retried", job.id, job.task, attempt=revived.attempt, reason="retried by operator")
    if tasks:
        outcome.delivery_error = push_to_own_queues(tasks)
    _record("retry", outcome, who, "queued again" + (" (Redis unreachable: recovery delivers it)"
                                                     if outcome.delivery_error else ""))
    return outcome


def discard(jobs: Iterable[Job], who: str) -> Outcome:
    """Remove dead jobs (and their history and stored result) from the ledger for good."""
    jobs = list(jobs)
    removed = set(ledger.discard([job.id for job in jobs]))
    outcome = Outcome()
    for job in jobs:
        if job.id in removed:
            outcome.done.append(job.id)
            try:
                huey_of(job.queue).delete(job.id)  # a stored result, if any
            except Exception:  # noqa: BLE001 - the result expires anyway; the ledger row is what counted
                pass
        else:
            outcome.refused.append((job.id, f"it is {job.state}, not dead"))
    _record("discard", outcome, who, "removed from the ledger")
    return outcome


def cancel(jobs: Iterable[Job], who: str) -> Outcome:
    """Cancel jobs: waiting or scheduled ones will not run; running ones are stopped by their worker
    (app.canceling), told on their own queue's channel."""
    outcome = Outcome()
    for job in jobs:
        if job.state in WAITING and ledger.mark_canceled(job.id):
            outcome.done.append(job.id)  # its message stays on the queue; the worker's claim skips it
            events.emit("canceled", job.id, job.task, attempt=job.attempt)
        elif job.state == State.RUNNING and (attempt := ledger.cancel_running(job.id)) is not None:
            outcome.done.append(job.id)
            try:
                canceling.publish(huey_of(job.queue), job.id)
            except Exception as exc:  # noqa: BLE001 - the worker finds the cancel when it renews its lease
                outcome.delivery_error = str(exc)
            events.emit("canceled", job.id, job.task, attempt=attempt, reason="canceled while running")
        else:
            outcome.refused.append((job.id, f"it is {ledger.state_of(job.id)}"))
    _record("cancel", outcome, who, "canceled")
    return outcome


def set_paused(queue: str, paused: bool, who: str) -> bool:
    """Pause or resume `queue` (app.pausing) and record it; returns whether it was paused before."""
    was = pausing.set_paused(huey_of(queue), queue, paused, who=who)
    ledger.record_action("pause" if paused else "resume", queue, who,
                         ("was already paused" if was else "paused") if paused else
                         ("resumed" if was else "was not paused"))
    return was


def periodic_tasks() -> dict[str, type]:
    """The periodic tasks of the loaded catalog, by name."""
    return {name: cls for name, cls in catalog.task_classes().items() if issubclass(cls, PeriodicTask)}


def run_now(task_name: str, who: str) -> producer.Submission:
    """Queue one run of periodic task `task_name` now, outside its schedule (its next scheduled run still
    comes); recorded like any job, plus the action."""
    if task_name not in periodic_tasks():
        raise catalog.UnknownTaskName(f"{task_name!r} is not a periodic task")
    task = producer.build_task(task_name, {})
    submission = producer.submit_tasks([task], warn=False)
    ledger.record_action("run-now", task_name, who, f"job {submission.ids[0]}"
                         + ("" if submission.delivered else " (Redis unreachable: recovery delivers it)"))
    return submission

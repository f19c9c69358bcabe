"""Dead-letter and queue operations: dead, retry, discard, cancel."""
from __future__ import annotations


import click
from huey.api import Task

import config
from app import canceling, catalog, events, ledger, producer
from app.cli.root import main
from app.cli.common import (EXIT_FAILED, chosen_queues, echo_json, fail, iso, json_option, queue_options,
                             queues_heading, table)
from app.schema import open_ledger
from app.models import WAITING, Job
from app.queue import get_huey
from app.status import resolve_queues
from app.states import State
from helpers.masking import mask_text


def _resolve(job_ids: tuple[str, ...]) -> list[Job]:
    jobs, missing = [], []
    for job_id in job_ids:
        job = ledger.get(job_id)
        (jobs.append(job) if job else missing.append(job_id))
    if missing:
        fail(f"no such job(s) in the ledger: {', '.join(missing)}", EXIT_FAILED)
    return jobs


@main.command()
@click.option("--task", help="Only dead jobs of this task.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@queue_options
@json_option
def dead(task, limit, queue_names, all_queues, as_json):
    """Dead letters of this service's queue (or --queue / --all-queues): jobs that ran out of retries, lost their
    lease too often, or came as bad messages."""
    queues = chosen_queues(queue_names, all_queues)
    open_ledger()
    jobs = ledger.list_jobs(State.DEAD, task, limit, resolve_queues(queues))
    if as_json:
        from app.cli.jobs import job_dict
        echo_json([job_dict(job) for job in jobs])
        return
    click.echo(f"{queues_heading(queues)}:")
    # The error itself (what the operator must fix); the reason only when there was no error (a lost lease, a
    # bad message) or when it adds something (a time limit, a permanent error).
    rows = [[job.id[:8], job.task[:22], str(job.attempt), iso(job.finished_at or job.updated_at)[:19].replace("T", " "),
             _cut(mask_text(job.error if job.error and (job.reason or "").startswith("failed on attempt") else
                            "; ".join(filter(None, [job.reason, job.error]))), 80)] for job in jobs]
    headers = ["ID", "TASK", "TRY", "DIED (UTC)", "ERROR"]
    if queues is not None:
        rows = [[(job.queue or "(none)")[:16]] + row for job, row in zip(jobs, rows)]
        headers = ["QUEUE"] + headers
    click.echo(table(rows, headers) if rows else "no dead jobs")


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


@main.command()
@click.argument("job_ids", metavar="JOB...", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead job of this service's queue, or of --queue's (of "
              "--task, when given).")
@click.option("--task", help="With --all: only this task's dead jobs.")
@queue_options
def retry(job_ids, all_, task, queue_names, all_queues):
    """Queue dead jobs again, each as a new attempt with the task's retries, on the queue they belong to."""
    open_ledger()
    if all_ == bool(job_ids):
        fail("name the jobs to retry, or use --all [--task T] [--queue Q]", 2)
    if (queue_names or all_queues) and not all_:
        fail("--queue and --all-queues choose jobs for --all; named jobs go back to their own queue", 2)
    chosen = chosen_queues(queue_names, all_queues)
    if all_:
        click.echo(f"nightshift: retrying the dead jobs of {queues_heading(chosen)}", err=True)
    queue = get_huey().name
    jobs = (_resolve(job_ids) if job_ids else
            ledger.list_jobs(State.DEAD, task, limit=1_000_000, queues=resolve_queues(chosen)))
    tasks, refused = [], []
    for job in jobs:
        try:
            task_class = catalog.get_task_class(job.task)
        except catalog.UnknownTaskName as exc:
            refused.append(f"{job.id}: {exc}")
            continue
        revived = ledger.revive(job.id, task_class.default_retries or 0, queue)
        if revived is None:
            refused.append(f"{job.id}: it is {job.state}" + (" (a bad message, not a job)" if job.raw else "")
                           + ", not a dead job")
            continue
        tasks.append((revived.queue, producer.task_from_row(revived)))
        events.emit("retried", job.id, job.task, attempt=revived.attempt, reason="retried by operator")
    if tasks:
        error = push_to_own_queues(tasks)
        if error is not None:
            click.echo(f"nightshift: Redis is unreachable ({error}); the jobs are queued in the ledger and will be "
                       f"delivered when Redis is back", err=True)
    for line in refused:
        click.echo(f"nightshift: not retried: {line}", err=True)
    click.echo(f"retried {len(tasks)} job(s)")
    if refused:
        raise SystemExit(EXIT_FAILED)


def push_to_own_queues(tasks: list[tuple[str, Task]]) -> str | None:
    """Put revived jobs, (queue, task) pairs, on the queue each belongs to (another service's queue when it
    shares the ledger); None, or what went wrong with Redis (producer.resubmit)."""
    by_queue: dict[str, list[Task]] = {}
    for queue, task in tasks:
        by_queue.setdefault(queue, []).append(task)
    for name, batch in by_queue.items():
        error = producer.resubmit(batch, get_huey(name))
        if error is not None:
            return error
    return None


@main.command()
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
def discard(job_ids):
    """Remove dead jobs from the ledger for good."""
    open_ledger()
    jobs = _resolve(job_ids)
    removed = set(ledger.discard([job.id for job in jobs]))
    for job in jobs:
        if job.id in removed:
            get_huey().delete(job.id)  # a stored result, if any
        else:
            click.echo(f"nightshift: not discarded: {job.id} is {job.state}, not dead", err=True)
    click.echo(f"discarded {len(removed)} job(s)")
    if len(removed) < len(jobs):
        raise SystemExit(EXIT_FAILED)


@main.command()
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
def cancel(job_ids):
    """Cancel jobs: queued or scheduled ones will not run; running ones are stopped (app.canceling)."""
    open_ledger()
    jobs = _resolve(job_ids)
    canceled = 0
    for job in jobs:
        if job.state in WAITING and ledger.mark_canceled(job.id):
            canceled += 1  # its message stays on the queue; the worker's claim skips it
            events.emit("canceled", job.id, job.task, attempt=job.attempt)
        elif job.state == State.RUNNING and (attempt := ledger.cancel_running(job.id)) is not None:
            canceled += 1
            canceling.publish(get_huey(job.queue), job.id)  # the channel of the queue the job runs on
            events.emit("canceled", job.id, job.task, attempt=attempt, reason="canceled while running")
        else:
            click.echo(f"nightshift: not canceled: {job.id} is {ledger.state_of(job.id)}", err=True)
    click.echo(f"canceled {canceled} job(s)")
    if canceled < len(jobs):
        raise SystemExit(EXIT_FAILED)

"""Dead-letter and queue operations: dead, retry, discard, cancel."""
from __future__ import annotations

import click

from app import jobids, ledger, operations
from app.cli.root import main
from app.cli.common import (EXIT_FAILED, JOB_ID, MAX_COUNT, TASK_NAME, WholeNumber, chosen_queues, echo_json, fail,
                             iso, json_option, no_such_job, queue_options, queues_heading, table)
from app.models import Job
from app.queue import get_huey
from app.schema import open_ledger
from app.status import resolve_queues
from app.states import State
from helpers.masking import mask_text, secret_values


def _resolve(job_ids: tuple[str, ...]) -> list[Job]:
    jobs, missing = [], []
    for job_id in job_ids:
        job = ledger.get(job_id)
        (jobs.append(job) if job else missing.append(job_id))
    if missing:
        fail("; ".join(no_such_job(job_id) for job_id in missing), EXIT_FAILED)
    return jobs


@main.command()
@click.option("--task", type=TASK_NAME, help="Only dead jobs of this task.")
@click.option("--limit", type=WholeNumber(1, MAX_COUNT), default=100, show_default=True)
@queue_options
@json_option
@click.pass_obj
def dead(settings, task, limit, queue_names, all_queues, as_json):
    """Dead letters of this service's queue (or --queue / --all-queues): jobs that ran out of retries, lost their
    lease too often, or came as bad messages."""
    queues = chosen_queues(queue_names, all_queues)
    open_ledger(settings.database_url)
    jobs = ledger.list_jobs(State.DEAD, task, limit, resolve_queues(queues, settings.queue))
    if as_json:
        from app.cli.jobs import job_dict
        secrets = secret_values(settings)
        echo_json([job_dict(job, secrets) for job in jobs])
        return
    click.echo(f"{queues_heading(queues, settings.queue)}:")
    # The error itself (what the operator must fix); the reason only when there was no error (a lost lease, a
    # bad message) or when it adds something (a time limit, a permanent error).
    rows = [[jobids.short(job.id), job.task[:22], str(job.attempt),
             iso(job.finished_at or job.updated_at)[:19].replace("T", " "),
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
@click.argument("job_ids", metavar="JOB...", nargs=-1, type=JOB_ID)
@click.option("--all", "all_", is_flag=True, help="Every dead job of this service's queue, or of --queue's (of "
              "--task, when given).")
@click.option("--task", type=TASK_NAME, help="With --all: only this task's dead jobs.")
@queue_options
@click.pass_obj
def retry(settings, job_ids, all_, task, queue_names, all_queues):
    """Queue dead jobs again, each as a new attempt with the task's retries, on the queue they belong to."""
    open_ledger(settings.database_url)
    if all_ == bool(job_ids):
        fail("name the jobs to retry, or use --all [--task T] [--queue Q]", 2)
    if (queue_names or all_queues) and not all_:
        fail("--queue and --all-queues choose jobs for --all; named jobs go back to their own queue", 2)
    chosen = chosen_queues(queue_names, all_queues)
    if all_:
        click.echo(f"nightshift: retrying the dead jobs of {queues_heading(chosen, settings.queue)}", err=True)
    queue = get_huey().name
    jobs = _resolve(job_ids) if job_ids else ledger.list_jobs(State.DEAD, task, limit=1_000_000,
                                                              queues=resolve_queues(chosen, settings.queue))
    outcome = operations.retry(jobs, operations.local_operator(), queue)
    if outcome.delivery_error:
        click.echo(f"nightshift: Redis is unreachable ({outcome.delivery_error}); the jobs are queued in the ledger "
                   f"and will be delivered when Redis is back", err=True)
    for job_id, why in outcome.refused:
        click.echo(f"nightshift: not retried: {job_id}: {why}", err=True)
    click.echo(f"retried {len(outcome.done)} job(s)")
    if outcome.refused:
        raise SystemExit(EXIT_FAILED)


@main.command()
@click.argument("job_ids", metavar="JOB...", nargs=-1, type=JOB_ID, required=True)
@click.pass_obj
def discard(settings, job_ids):
    """Remove dead jobs from the ledger for good."""
    open_ledger(settings.database_url)
    jobs = _resolve(job_ids)
    outcome = operations.discard(jobs, operations.local_operator())
    for job_id, why in outcome.refused:
        click.echo(f"nightshift: not discarded: {job_id} {why.removeprefix('it ')}", err=True)
    click.echo(f"discarded {len(outcome.done)} job(s)")
    if outcome.refused:
        raise SystemExit(EXIT_FAILED)


@main.command()
@click.argument("job_ids", metavar="JOB...", nargs=-1, type=JOB_ID, required=True)
@click.pass_obj
def cancel(settings, job_ids):
    """Cancel jobs: queued or scheduled ones will not run; running ones are stopped (app.canceling)."""
    open_ledger(settings.database_url)
    jobs = _resolve(job_ids)
    outcome = operations.cancel(jobs, operations.local_operator())
    for job_id, why in outcome.refused:
        click.echo(f"nightshift: not canceled: {job_id} {why.removeprefix('it ')}", err=True)
    click.echo(f"canceled {len(outcome.done)} job(s)")
    if outcome.refused:
        raise SystemExit(EXIT_FAILED)

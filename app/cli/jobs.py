"""Job commands: submit, show, list, tasks."""
from __future__ import annotations

import datetime
import json
import time

import click

from app import catalog, jobids, ledger, producer
from app.cli import bulk
from app.cli.root import main
from app.cli.common import (EXIT_FAILED, EXIT_TIMEOUT, JOB_ID, KEY, MAX_COUNT, NAME, QUEUE_NAME, SECONDS, TASK_NAME,
                             VALUE, WholeNumber, chosen_queues, echo_json, fail, iso, json_option, queue_options,
                             no_such_job, queues_heading, table)
from app.jobview import job_dict, last_failed_attempt  # noqa: F401  (job_dict: also imported from here by ops)
from app.models import FINISHED, STATES, Job
from app.schema import open_ledger
from app.states import State
from app.status import resolve_queues
from helpers.masking import mask_text, quoted, secret_values

def parse_arg(text: str) -> tuple[str, object, str]:
    """NAME=VALUE as (name, value, raw text): VALUE read as JSON when it parses (42, true, [1,2], {"a":1}, "x"),
    else as a plain string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{quoted(text)} is not NAME=VALUE", param_hint="--arg")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    except RecursionError:
        raise click.BadParameter(f"{name}: nested too deeply", param_hint="--arg") from None
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        raise click.BadParameter(f"{name}: NaN and infinity are not JSON values", param_hint="--arg")
    return name, value, raw


def parse_eta(text: str | None) -> datetime.datetime | None:
    """An ISO-8601 time; without an offset it is UTC (returned naive, as the ledger keeps times)."""
    if text is None:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{quoted(text)} is not an ISO-8601 time such as 2026-11-25T03:00:00Z",
                                 param_hint="--eta") from None
    if value.tzinfo is not None:
        try:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        except OverflowError:
            raise click.BadParameter(f"{quoted(text)} is out of range", param_hint="--eta") from None
    return value


def command_line_arguments(task_name: str, args: tuple[str, ...], json_args: str | None) -> dict:
    """The arguments of --json and --arg (each name once). A value given to a parameter hinted `str` stays
    the text typed (`--arg code=007`), not the JSON number it also reads as."""
    arguments: dict = {}
    if json_args:
        try:
            arguments = json.loads(json_args)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from None
        except RecursionError:
            raise click.BadParameter("nested too deeply", param_hint="--json") from None
        if not isinstance(arguments, dict):
            raise click.BadParameter("must be a JSON object of arguments", param_hint="--json")
    task_class = catalog.get_task_class(task_name)
    seen: set[str] = set()
    for name, value, raw in map(parse_arg, args):
        if name in seen:
            raise click.BadParameter(f"{name!r} is given twice", param_hint="--arg")
        if name in arguments:
            raise click.BadParameter(f"{name!r} is given by both --json and --arg", param_hint="--arg")
        seen.add(name)
        arguments[name] = raw if not isinstance(value, str) and catalog.takes_text(task_class, name) else value
    return arguments


@main.command()
@click.argument("task_name", metavar="TASK", type=TASK_NAME)
@click.option("--arg", "args", multiple=True, metavar="NAME=VALUE", type=VALUE, help="An argument (repeatable); VALUE is JSON "
              "when it parses, else a string.")
@click.option("--json", "json_args", metavar="OBJECT", type=VALUE, help="All arguments as one JSON object.")
@click.option("--file", "file_", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON-lines file (- for stdin): one job per line, each line an object of arguments.")
@click.option("--delay", type=SECONDS, help="Run no sooner than SECONDS "
              "from now.")
@click.option("--eta", type=NAME, help="Run no sooner than this ISO-8601 time (UTC unless it has an offset).")
@click.option("--priority", type=WholeNumber(-producer.MAX_INT, producer.MAX_INT), help="Higher runs first.")
@click.option("--retries", type=WholeNumber(0, producer.MAX_INT), help="Override the task's number of retries.")
@click.option("--key", type=KEY, help="Idempotency key: a repeat while the first job holds the key returns its id.")
@click.option("--queue", metavar="NAME", type=QUEUE_NAME, help="Put the job on queue NAME instead of the task's own queue "
              "(@task(queue=...), else NIGHTSHIFT_QUEUE).")
@click.option("--wait", is_flag=True, help="Block until the job ends; exit 0 if it succeeded, 1 if it failed.")
@click.option("--timeout", type=SECONDS, help="With --wait: give up after SECONDS (exit 124).")
@click.pass_obj
def submit(settings, task_name, args, json_args, file_, delay, eta, priority, retries, key, queue, wait, timeout):
    """Queue a job of TASK and print its id (or, with --file, the number of jobs queued)."""
    if delay is not None and eta is not None:
        raise click.UsageError("--delay and --eta both say when to run: give one of them")
    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait (it is how long --wait waits)")
    when = producer.check_options(delay, parse_eta(eta), priority, retries, key)
    options = dict(priority=priority, retries=retries, when=when)
    if file_:
        if args or json_args or key or wait:
            raise click.UsageError("--file takes the arguments from the file; it cannot be combined with --arg, "
                                   "--json, --key or --wait")
        count = bulk.submit_file(task_name, file_, **options, queue=queue)
        click.echo(count)
        return
    arguments = command_line_arguments(task_name, args, json_args)
    task = producer.build_task(task_name, arguments, **options)
    submission = producer.submit_tasks([task], key=key, warn=False, queue=queue)
    job_id = submission.ids[0]
    if submission.existing:
        click.echo(f"nightshift: key {key!r} already accepted as job {job_id}; not queued again", err=True)
    if not submission.delivered:
        error = mask_text(submission.delivery_error, secret_values(settings))
        click.echo(f"nightshift: Redis is unreachable ({error}); the job is recorded in the "
                   f"ledger and will be delivered when Redis is back", err=True)
    click.echo(job_id)
    if wait:
        wait_for(job_id, timeout)


def wait_for(job_id: str, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.02
    while True:
        state = ledger.state_of(job_id)
        if state in FINISHED:
            break
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"nightshift: job {job_id} is still {state} after {timeout:g}s", err=True)
            raise SystemExit(EXIT_TIMEOUT)
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)
    job = ledger.get(job_id)
    if job.state == State.SUCCEEDED:
        click.echo(f"succeeded in {job.duration:.3f}s" + (f": {job.result}" if job.result else ""), err=True)
        return
    click.echo(f"{job.state}: {job.reason or ''}" + (f"\n{job.error}" if job.error else ""), err=True)
    raise SystemExit(EXIT_FAILED)




@main.command()
@click.argument("job_id", metavar="JOB", type=JOB_ID)
@json_option
@click.pass_obj
def show(settings, job_id, as_json):
    """One job: state, attempts and their timings, arguments, result or last error with traceback."""
    open_ledger(settings.database_url)
    job = ledger.get(job_id)
    if job is None:
        fail(no_such_job(job_id), EXIT_FAILED)
    data = job_dict(job, secret_values(settings), with_attempts=True)
    if as_json:
        echo_json(data)
        return
    lines = [f"job       {job.id}", f"task      {job.task}", f"queue     {job.queue or '(none)'}",
             f"state     {job.state}",
             f"attempt   {job.attempt} ({job.retries_left} retries left)",
             f"args      {json.dumps(data['args'])}", f"created   {data['created_at']}"]
    for label, key in (("eta", "eta"), ("started", "started_at"), ("finished", "finished_at"),
                       ("worker", "worker"), ("key", "key"), ("reason", "reason")):
        if data[key]:
            lines.append(f"{label:<9} {data[key]}")
    if job.duration is not None:
        lines.append(f"duration  {job.duration:.3f}s")
    if data["progress"]:
        p = data["progress"]
        lines.append(f"progress  {p['done']}" + (f"/{p['total']}" if p.get("total") else "")
                     + (f" {p['note']}" if p.get("note") else ""))
    if data["result"] is not None:
        lines.append(f"result    {json.dumps(data['result'])}")
    failed = last_failed_attempt(data["error"], data["attempts"])
    if data["error"]:
        lines.append(f"error     {f'attempt {failed}: ' if failed else ''}{data['error']}")
    if data["attempts"]:
        lines.append("attempts:")
        for a in data["attempts"]:
            took = f"{a['duration']:.3f}s" if a["duration"] is not None else "-"
            lines.append(f"  #{a['number']:<3} {a['outcome'] or 'running':<12} {took:>9}  {a['started_at']}  "
                         f"{a['worker']}" + (f"  {a['error']}" if a["error"] else ""))
    if data["traceback"]:
        lines.append(traceback_heading(job, failed))
        lines.extend("  " + line for line in data["traceback"].rstrip().splitlines())
    if data["raw_preview"]:
        lines.append(f"message   {data['raw_preview'][:300]}")
    click.echo("\n".join(lines))


def traceback_heading(job: Job, failed: int | None) -> str:
    if failed is None:
        return "traceback:"
    if job.state == State.SUCCEEDED:
        return f"traceback of attempt {failed} (failed; the job succeeded on attempt {job.attempt}):"
    if failed != job.attempt:
        return f"traceback of attempt {failed} (failed; the job is now {job.state} as attempt {job.attempt}):"
    return f"traceback of attempt {failed}:"


STATE_ALIASES = {"failed": "dead", "waiting": "queued", "scheduled": "queued"}


@main.command("list")
@click.option("--state", type=click.Choice(list(STATES) + list(STATE_ALIASES)), help="Only jobs in this state.")
@click.option("--task", type=TASK_NAME, help="Only jobs of this task.")
@click.option("--limit", type=WholeNumber(1, MAX_COUNT), default=50, show_default=True)
@queue_options
@json_option
@click.pass_obj
def list_(settings, state, task, limit, queue_names, all_queues, as_json):
    """Recent jobs of this service's queue (or --queue / --all-queues), newest first."""
    queues = chosen_queues(queue_names, all_queues)
    open_ledger(settings.database_url)
    jobs = ledger.list_jobs(STATE_ALIASES.get(state, state), task, limit, resolve_queues(queues, settings.queue))
    if as_json:
        secrets = secret_values(settings)
        echo_json([job_dict(job, secrets) for job in jobs])
        return
    click.echo(f"{queues_heading(queues, settings.queue)}:")
    rows = [[jobids.short(job.id), job.task[:24], job.state, str(job.attempt),
             iso(job.created_at)[:19].replace("T", " "), f"{job.duration:.2f}s" if job.duration is not None else "-"]
            for job in jobs]
    headers = ["ID", "TASK", "STATE", "TRY", "CREATED (UTC)", "TOOK"]
    if queues is not None:
        rows = [[(job.queue or "(none)")[:16]] + row for job, row in zip(jobs, rows)]
        headers = ["QUEUE"] + headers
    click.echo(table(rows, headers) if rows else "no jobs")


@main.command()
@json_option
@click.pass_obj
def tasks(settings, as_json):
    """The task catalog: each task's name, parameters and what it does."""
    entries = [catalog.describe(cls, settings.queue) for _, cls in sorted(catalog.task_classes().items())]
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        options = [f"retries={e['retries']}" if e["retries"] else "", "periodic" if e["periodic"] else "",
                   f"timeout={e['timeout']}s" if e["timeout"] else ""]
        click.echo(f"{e['name']}({', '.join(e['parameters'])})  {' '.join(o for o in options if o)}".rstrip())
        if e["doc"]:
            click.echo(f"    {e['doc']}")

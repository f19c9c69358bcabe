"""Job commands: submit, show, list, tasks."""
from __future__ import annotations

import datetime
import json
import time

import click

from app import catalog, ledger, producer
from app.codec import NotJSON
from app.cli import main
from app.cli.common import EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, echo_json, fail, iso, json_option, table
from app.db import init as init_db
from app.models import FINISHED, STATES, Job

SUBMIT_BATCH = 1000


def parse_arg(text: str) -> tuple[str, object]:
    """NAME=VALUE, VALUE read as JSON when it parses (42, true, [1,2], {"a":1}, "x"), else as a plain string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="--arg")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        raise click.BadParameter(f"{name}: NaN and infinity are not JSON values", param_hint="--arg")
    return name, value


def parse_eta(text: str | None) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO-8601 time such as 2026-11-25T03:00:00Z",
                                 param_hint="--eta") from None


def read_jsonl(path: str, errors: list[str]) -> list[tuple[int, dict]]:
    """Every line a JSON object of arguments; bad lines are added to `errors` by number."""
    rows = []
    with click.open_file(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                errors.append(f"line {number}: not JSON ({exc})")
                continue
            if not isinstance(value, dict):
                errors.append(f"line {number}: expected a JSON object of arguments, got {type(value).__name__}")
                continue
            rows.append((number, value))
    return rows


@main.command()
@click.argument("task_name", metavar="TASK")
@click.option("--arg", "args", multiple=True, metavar="NAME=VALUE", help="An argument (repeatable); VALUE is JSON "
              "when it parses, else a string.")
@click.option("--json", "json_args", metavar="OBJECT", help="All arguments as one JSON object.")
@click.option("--file", "file_", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON-lines file: one job per line, each line an object of arguments.")
@click.option("--delay", type=click.FloatRange(min=0), help="Run no sooner than SECONDS from now.")
@click.option("--eta", help="Run no sooner than this ISO-8601 time (UTC unless it has an offset).")
@click.option("--priority", type=int, help="Higher runs first.")
@click.option("--retries", type=click.IntRange(min=0), help="Override the task's number of retries.")
@click.option("--key", help="Idempotency key: a repeat while the first job holds the key returns its id.")
@click.option("--wait", is_flag=True, help="Block until the job ends; exit 0 if it succeeded, 1 if it failed.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after SECONDS (exit 124).")
def submit(task_name, args, json_args, file_, delay, eta, priority, retries, key, wait, timeout):
    """Queue a job of TASK and print its id (or, with --file, the number of jobs queued)."""
    when = parse_eta(eta)
    options = dict(delay=delay, eta=when, priority=priority, retries=retries)
    if file_:
        if args or json_args or key or wait:
            fail("--file takes the arguments from the file; it cannot be combined with --arg, --json, --key or "
                 "--wait", EXIT_USAGE)
        errors: list[str] = []
        rows = read_jsonl(file_, errors)
        tasks = []
        for number, arguments in rows:
            try:
                tasks.append(producer.build_task(task_name, arguments, **options))
            except (catalog.BadArguments, NotJSON) as exc:
                errors.append(f"line {number}: {exc}")
        if errors:
            errors.sort(key=lambda e: int(e.split()[1].rstrip(":")))
            shown = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
            fail(f"{file_}: {len(errors)} bad line(s), nothing was queued:\n  {shown}", EXIT_USAGE)
        undelivered = 0
        for start in range(0, len(tasks), SUBMIT_BATCH):
            submission = producer.submit_tasks(tasks[start:start + SUBMIT_BATCH])
            undelivered += 0 if submission.delivered else len(submission.ids)
        if undelivered:
            click.echo(f"nightshift: Redis is unreachable; {undelivered} job(s) are recorded in the ledger and "
                       f"will be delivered when Redis is back", err=True)
        click.echo(len(tasks))
        return
    arguments = {}
    if json_args:
        try:
            arguments = json.loads(json_args)
        except ValueError as exc:
            fail(f"--json is not valid JSON: {exc}. Nothing was queued.", EXIT_USAGE)
        if not isinstance(arguments, dict):
            fail("--json must be a JSON object of arguments. Nothing was queued.", EXIT_USAGE)
    arguments.update(parse_arg(a) for a in args)
    task = producer.build_task(task_name, arguments, **options)
    submission = producer.submit_tasks([task], key=key)
    job_id = submission.ids[0]
    if submission.existing:
        click.echo(f"nightshift: key {key!r} already accepted as job {job_id}; not queued again", err=True)
    if not submission.delivered:
        click.echo(f"nightshift: Redis is unreachable ({submission.delivery_error}); the job is recorded in the "
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
    if job.state == "succeeded":
        click.echo(f"succeeded in {job.duration:.3f}s" + (f": {job.result}" if job.result else ""), err=True)
        return
    click.echo(f"{job.state}: {job.reason or ''}" + (f"\n{job.error}" if job.error else ""), err=True)
    raise SystemExit(EXIT_FAILED)


def job_dict(job: Job, with_attempts: bool = False) -> dict:
    data = {
        "id": job.id, "task": job.task, "state": job.state, "attempt": job.attempt,
        "args": json.loads(job.kwargs or "{}"), "priority": job.priority, "retries_left": job.retries_left,
        "key": job.key, "created_at": iso(job.created_at), "eta": iso(job.eta), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "duration": job.duration, "worker": job.worker,
        "lease_expires_at": iso(job.lease_expires_at), "lease_losses": job.lease_losses,
        "result": json.loads(job.result) if job.result else None, "reason": job.reason, "error": job.error,
        "traceback": job.traceback, "progress": json.loads(job.progress) if job.progress else None,
        "raw_preview": job.raw,
    }
    if with_attempts:
        data["attempts"] = [{"number": a.number, "worker": a.worker, "started_at": iso(a.started_at),
                             "finished_at": iso(a.finished_at), "duration": a.duration, "outcome": a.outcome,
                             "error": a.error} for a in ledger.attempts(job.id)]
        if job.state == "running":  # the attempt under way gets its history row when it ends
            data["attempts"].append({"number": job.attempt, "worker": job.worker, "started_at": iso(job.started_at),
                                     "finished_at": None, "duration": None, "outcome": None, "error": None})
    return data


def stored_result(job_id: str):
    from app.queue import get_huey
    try:
        return get_huey().get(job_id, peek=True)
    except Exception:  # noqa: BLE001 - the ledger's summary is shown instead
        return None


@main.command()
@click.argument("job_id", metavar="JOB")
@json_option
def show(job_id, as_json):
    """One job: state, attempts and their timings, arguments, result or last error with traceback."""
    init_db()
    job = ledger.get(job_id)
    if job is None:
        fail(f"no job {job_id!r} in the ledger", EXIT_FAILED)
    data = job_dict(job, with_attempts=True)
    if as_json:
        echo_json(data)
        return
    lines = [f"job       {job.id}", f"task      {job.task}", f"state     {job.state}",
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
    if job.result:
        lines.append(f"result    {job.result}")
    if job.error:
        lines.append(f"error     {job.error}")
    if data["attempts"]:
        lines.append("attempts:")
        for a in data["attempts"]:
            took = f"{a['duration']:.3f}s" if a["duration"] is not None else "-"
            lines.append(f"  #{a['number']:<3} {a['outcome'] or 'running':<12} {took:>9}  {a['started_at']}  "
                         f"{a['worker']}" + (f"  {a['error']}" if a["error"] else ""))
    if job.traceback:
        lines.append("traceback:")
        lines.extend("  " + line for line in job.traceback.rstrip().splitlines())
    if job.raw:
        lines.append(f"message   {job.raw[:300]}")
    click.echo("\n".join(lines))


STATE_ALIASES = {"failed": "dead", "waiting": "queued", "scheduled": "queued"}


@main.command("list")
@click.option("--state", type=click.Choice(list(STATES) + list(STATE_ALIASES)), help="Only jobs in this state.")
@click.option("--task", help="Only jobs of this task.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
def list_(state, task, limit, as_json):
    """Recent jobs, newest first."""
    init_db()
    jobs = ledger.list_jobs(STATE_ALIASES.get(state, state), task, limit)
    if as_json:
        echo_json([job_dict(job) for job in jobs])
        return
    rows = [[job.id[:8], job.task[:24], job.state, str(job.attempt), iso(job.created_at)[:19].replace("T", " "),
             f"{job.duration:.2f}s" if job.duration is not None else "-"] for job in jobs]
    click.echo(table(rows, ["ID", "TASK", "STATE", "TRY", "CREATED (UTC)", "TOOK"]) if rows else "no jobs")


@main.command()
@json_option
def tasks(as_json):
    """The task catalog: each task's name, parameters and what it does."""
    entries = [catalog.describe(cls) for _, cls in sorted(catalog.task_classes().items())]
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        options = [f"retries={e['retries']}" if e["retries"] else "", "periodic" if e["periodic"] else "",
                   f"timeout={e['timeout']}s" if e["timeout"] else ""]
        click.echo(f"{e['name']}({', '.join(e['parameters'])})  {' '.join(o for o in options if o)}".rstrip())
        if e["doc"]:
            click.echo(f"    {e['doc']}")

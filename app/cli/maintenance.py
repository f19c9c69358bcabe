"""Scheduled-maintenance commands: schedule, cleanup, backlog."""
from __future__ import annotations

import click

from app.cli.root import main
from app.cli.common import EXIT_USAGE, echo_json, fail, json_option, table
from app.schema import open_ledger


@main.command()
@json_option
@click.pass_obj
def schedule(settings, as_json):
    """List periodic tasks: schedule (in words and cron form), next run, last run and its outcome."""
    from app.status import schedule_rows
    open_ledger(settings.database_url)
    tick = settings.tick_seconds
    rows = schedule_rows(tick)
    if as_json:
        echo_json({"tick_seconds": tick, "tasks": rows})
        return
    if not rows:
        click.echo("no periodic tasks")
        return
    click.echo(table([[r["task"], r["schedule"], r["cron"] or "-", r["tz"], r["next_run"] or "-",
                       r["last_run"] or "never", r["last_outcome"] or "-"] for r in rows],
                     ["TASK", "SCHEDULE", "CRON", "TZ", "NEXT RUN (UTC)", "LAST RUN (UTC)", "OUTCOME"]))


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@click.option("--queue", "queue_names", multiple=True, metavar="NAME",
              help="Only the jobs and Redis keys of queue NAME (repeatable). Default: every queue the service "
                   "knows (NIGHTSHIFT_QUEUE, NIGHTSHIFT_QUEUES and every queue in the ledger).")
@click.option("--all-queues", is_flag=True, help="Every queue the service knows (the default, said explicitly).")
@json_option
@click.pass_obj
def cleanup(settings, dry_run, queue_names, all_queues, as_json):
    """Remove expired results, finished jobs past retention, stale locks, old flags and previews now."""
    from app import cleanup as cleanup_mod
    from app.queue import check_queue_name
    if all_queues and queue_names:
        fail("--queue and --all-queues exclude each other", EXIT_USAGE)
    for name in queue_names:
        try:
            check_queue_name(name)
        except ValueError as exc:
            fail(f"--queue: {exc}", EXIT_USAGE)
    open_ledger(settings.database_url)
    report = cleanup_mod.run(settings, dry_run=dry_run, queues=list(queue_names) or None)
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(report.summary())


@main.command()
@json_option
@click.pass_obj
def backlog(settings, as_json):
    """Show the backlog (depth, oldest waiting job, running, failure rate, dead letters) and open alerts."""
    from app import backlog as backlog_mod
    from app.backlog import thresholds
    open_ledger(settings.database_url)
    snap = backlog_mod.measure()
    open_alerts = backlog_mod.incidents()
    if as_json:
        echo_json({"snapshot": snap.as_dict(), "alerts": open_alerts,
                   "thresholds": {name: limit for name, (_, limit) in thresholds(settings).items()}})
        return
    window = int(snap.window)
    lines = [
        f"due to run     {snap.queued} (Redis queue: {'?' if snap.redis_depth is None else snap.redis_depth})",
        f"oldest waits   {'-' if snap.oldest_age is None else f'{snap.oldest_age:.0f}s'}",
        f"running        {snap.running}",
        f"failure rate   {'-' if snap.failure_rate is None else f'{snap.failure_rate:.0%}'} "
        f"({snap.failed}/{snap.attempts} attempts in {window}s)",
        f"dead letters   {snap.dead_letters} in {window}s",
        "alerts         " + (", ".join(f"{name} since {a.get('since')}" for name, a in open_alerts.items())
                             or "none"),
    ]
    click.echo("\n".join(lines))

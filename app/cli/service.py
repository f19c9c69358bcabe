"""Service commands: worker, recover."""
from __future__ import annotations

import dataclasses

import click

import config
from app.cli.root import main
from app.cli.common import EXIT_FAILED, VALUE, WholeNumber, echo_json, json_option
from app.schema import open_ledger
from helpers.masking import MASK, mask_url

MAX_WORKERS = 1000  # worker threads or processes of one consumer: past what one machine serves, short of a hang


@main.command()
@click.option("--workers", type=WholeNumber(1, MAX_WORKERS), help="Override NIGHTSHIFT_WORKERS.")
@click.option("--queues", metavar="NAME=N,...", type=VALUE, help="Serve these queues, each with its own N worker threads "
              "(e.g. mail=2,default=4); overrides NIGHTSHIFT_QUEUES. Default: NIGHTSHIFT_QUEUE.")
@click.pass_obj
def worker(settings, workers, queues):
    """Run the consumer: execute jobs, run the scheduler and recovery, until SIGTERM/SIGINT."""
    from app import preflight
    from app import worker as worker_mod
    problems = preflight.problems(settings)
    if problems:
        for problem in problems:
            click.echo(f"nightshift: {problem}", err=True)
        raise SystemExit(EXIT_FAILED)
    if queues is not None:
        try:
            config.parse_queues(queues)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--queues") from None
    worker_mod.run(settings, workers, queues)


@main.command()
@click.pass_obj
def init(settings):
    """Create the ledger where NIGHTSHIFT_DATABASE_URL points (tables; for SQLite the file, and the default
    location's directory) or bring an existing one up to date. The worker does this itself at start; producers
    never do."""
    from app import db
    open_ledger(settings.database_url, create=True)
    click.echo(f"ledger ready at {db.where(settings.database_url)}")


@main.command()
@json_option
@click.pass_obj
def recover(settings, as_json):
    """Run recovery now: requeue jobs whose worker died and jobs whose message Redis lost."""
    from app import catalog, recovery
    from app.queue import get_huey
    catalog.load_task_modules(settings.task_modules)
    open_ledger(settings.database_url)
    report = recovery.recover(get_huey())
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(f"requeued after lost lease: {report.lease_requeued}, dead after too many lost leases: "
                   f"{report.lease_dead}, sent again (missing from Redis): {report.resent}, "
                   f"unrecoverable (unknown task): {report.unknown_task}, dead (their message was refused): "
                   f"{report.refused}")


@main.command("config")
@json_option
@click.pass_obj
def show_config(settings, as_json):
    """Every setting: its environment variable, current value (secrets masked) and what it does."""
    rows = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        value = field.metadata["separator"].join(value) if isinstance(value, tuple) else value
        if field.metadata["secret"] and value:
            value = mask_url(value) if "://" in value else MASK
        rows.append({"variable": field.metadata["env"], "value": value, "help": field.metadata["help"]})
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['variable']}={row['value']}\n    {row['help']}")

"""Service commands: worker, recover."""
from __future__ import annotations

import click

import config
from app.cli import main
from app.cli.common import EXIT_FAILED, echo_json, json_option


@main.command()
@click.option("--workers", type=click.IntRange(min=1), help="Override NIGHTSHIFT_WORKERS.")
def worker(workers):
    """Run the consumer: execute jobs, run the scheduler and recovery, until SIGTERM/SIGINT."""
    from app import worker as worker_mod
    settings = config.get()
    problems = worker_mod.preflight(settings)
    if problems:
        for problem in problems:
            click.echo(f"nightshift: {problem}", err=True)
        raise SystemExit(EXIT_FAILED)
    worker_mod.run(workers)


@main.command()
@json_option
def recover(as_json):
    """Run recovery now: requeue jobs whose worker died and jobs whose message Redis lost."""
    from app import catalog, recovery
    from app.queue import get_huey
    catalog.load_task_modules()
    report = recovery.recover(get_huey())
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(f"requeued after lost lease: {report.lease_requeued}, dead after too many lost leases: "
                   f"{report.lease_dead}, sent again (missing from Redis): {report.resent}, "
                   f"unrecoverable (unknown task): {report.unknown_task}")


@main.command("config")
@json_option
def show_config(as_json):
    """Every setting: its environment variable, current value (passwords masked) and what it does."""
    import dataclasses

    from app.worker import redact
    settings = config.get()
    rows = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        value = ",".join(value) if isinstance(value, tuple) else value
        if field.name in ("signing_key", "webhook_secret") and value:
            value = "***"
        elif isinstance(value, str) and "://" in value:
            value = redact(value)
        rows.append({"variable": field.metadata["env"], "value": value, "help": field.metadata["help"]})
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['variable']}={row['value']}\n    {row['help']}")

"""Queue commands: pause, resume."""
from __future__ import annotations

import click

import config
from app import operations
from app.cli.common import QUEUE_NAME
from app.cli.root import main
from app.schema import open_ledger


def _set(settings: config.Settings, queue: str | None, paused: bool) -> None:
    open_ledger(settings.database_url)
    name = queue or settings.queue
    was = operations.set_paused(name, paused, operations.local_operator())
    if paused:
        click.echo(f"queue {name!r} {'was already' if was else 'is now'} paused: running jobs finish, no new job "
                   f"starts until `nightshift resume {name}`")
    else:
        click.echo(f"queue {name!r} {'resumed' if was else 'was not paused'}")


@main.command()
@click.argument("queue", required=False, type=QUEUE_NAME)
@click.pass_obj
def pause(settings, queue):
    """Stop jobs of QUEUE (default: NIGHTSHIFT_QUEUE) from starting; they keep arriving. Survives restarts."""
    _set(settings, queue, True)


@main.command()
@click.argument("queue", required=False, type=QUEUE_NAME)
@click.pass_obj
def resume(settings, queue):
    """Let jobs of QUEUE (default: NIGHTSHIFT_QUEUE) start again."""
    _set(settings, queue, False)

"""Queue commands: pause, resume."""
from __future__ import annotations

import click

import config
from app import operations
from app.cli.common import QUEUE_NAME
from app.cli.root import main
from app.schema import open_ledger


def _set(queue: str | None, paused: bool) -> None:
    open_ledger()
    name = queue or config.get().queue
    was = operations.set_paused(name, paused, operations.local_operator())
    if paused:
        click.echo(f"queue {name!r} {'was already' if was else 'is now'} paused: running jobs finish, no new job "
                   f"starts until `nightshift resume {name}`")
    else:
        click.echo(f"queue {name!r} {'resumed' if was else 'was not paused'}")


@main.command()
@click.argument("queue", required=False, type=QUEUE_NAME)
def pause(queue):
    """Stop jobs of QUEUE (default: NIGHTSHIFT_QUEUE) from starting; they keep arriving. Survives restarts."""
    _set(queue, True)


@main.command()
@click.argument("queue", required=False, type=QUEUE_NAME)
def resume(queue):
    """Let jobs of QUEUE (default: NIGHTSHIFT_QUEUE) start again."""
    _set(queue, False)

"""The `nightshift` command (also `python -m app`). Each command group lives in its own module."""
from __future__ import annotations

import click

from app.cli.common import cli


@click.group(cls=cli)
@click.version_option(package_name="nightshift")
def main() -> None:
    """Nightshift: submit background jobs, run the worker, and operate the queue."""


from app.cli import jobs, maintenance, monitor, ops, queues, service, web  # noqa: E402,F401  (commands register on `main`)

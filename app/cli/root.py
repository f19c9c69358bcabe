"""The `nightshift` command group, which every command module adds its commands to."""
from __future__ import annotations

import click

from app.cli.common import cli


@click.group(cls=cli)
@click.version_option(package_name="nightshift")
def main() -> None:
    """Nightshift: submit background jobs, run the worker, and operate the queue."""

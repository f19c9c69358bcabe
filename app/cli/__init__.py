"""The `nightshift` command (also `python -m app`). Each command group lives in its own module; importing them
adds their commands to `main` (app.cli.root)."""
from __future__ import annotations

from app.cli import jobs, maintenance, monitor, ops, queues, service, web  # noqa: F401  (commands register on `main`)
from app.cli.root import main

__all__ = ["main"]

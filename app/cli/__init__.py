"""The `nightshift` command (also `python -m app`). Each command group lives in its own module, imported when one
of its commands runs (app.cli.root.COMMANDS): a command loads only what it needs."""
from __future__ import annotations

from app.cli.root import main

__all__ = ["main"]

"""The `nightshift` command (also `python -m app`). Each command group lives in its own module, imported when one
of its commands runs (app.cli.root.COMMANDS): a command loads only what it needs."""
from __future__ import annotations

import gc

from app.cli.root import main

__all__ = ["main", "run"]


def run() -> None:
    """The `nightshift` executable: run the command, then let the process exit without a last garbage collection.

    Interpreter shutdown collects every object the imports made (redis-py's, Huey's, click's, ...); for a short
    command that walk is a sixth of its wall time (~35 of ~205 ms for `nightshift submit`, docs/performance.md).
    Frozen objects are left to the operating system; atexit handlers, log flushing and module teardown still run.
    Only the process's own entry does this: `main` called in-process (tests, scripts) leaves the caller's GC alone."""
    try:
        main()
    finally:
        gc.freeze()

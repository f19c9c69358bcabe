"""`nightshift submit TASK --file FILE`: one job per JSON line, streamed, and nothing queued if any line is bad.

Two passes keep memory flat in the file's size: the first checks every line (JSON object, the task's signature,
JSON values, simple type hints) and spools the checked arguments to a temporary file; only when every line is
good does the second read the spool back and queue the jobs in chunks (one ledger transaction and one Redis round
trip each). Spooling makes stdin work the same, and what is queued is exactly what was checked, even if the file
changes meanwhile.
"""
from __future__ import annotations

import datetime
import json
import tempfile
from typing import IO, Iterator

import click

from app import catalog, producer
from app.cli.common import EXIT_USAGE, fail
from app.codec import NotJSON

CHUNK = 20000       # jobs per ledger transaction and Redis round trip (~30 MB of task objects at a time);
                    # big sorted inserts touch each page of the ledger's id index fewer times
ERRORS_SHOWN = 20   # bad lines listed; the rest are counted


def check_lines(task_class: type, lines: Iterator[str], spool: IO[str]) -> tuple[int, int, list[str]]:
    """First pass: (jobs, bad lines, the first bad lines' messages); good lines' arguments go to `spool`."""
    jobs = bad = 0
    errors: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise NotJSON(f"not JSON ({exc})") from None
            except RecursionError:
                raise NotJSON("not JSON (nested too deeply)") from None
            if not isinstance(value, dict):
                raise NotJSON(f"expected a JSON object of arguments, got {type(value).__name__}")
            kwargs = producer.check_arguments(task_class, value)
        except (catalog.BadArguments, NotJSON) as exc:
            bad += 1
            if len(errors) < ERRORS_SHOWN:
                errors.append(f"line {number}: {exc}")
            continue
        spool.write(line.strip() if kwargs == value else json.dumps(kwargs, separators=(",", ":")))
        spool.write("\n")
        jobs += 1
    return jobs, bad, errors


def queue_spooled(task_class: type, spool: IO[str], priority: int | None, retries: int | None,
                  when: datetime.datetime | None, queue: str | None = None) -> int:
    """Second pass: queue the checked jobs in chunks; returns how many could not be put on Redis (recorded in
    the ledger all the same: recovery delivers them). After Redis fails once, the rest are only recorded."""
    undelivered = 0
    delivered = True
    chunk = []
    for line in spool:
        chunk.append(task_class((), json.loads(line), eta=when, priority=priority, retries=retries))
        if len(chunk) == CHUNK:
            undelivered, delivered = _submit(chunk, delivered, undelivered, queue)
            chunk = []
    if chunk:
        undelivered, delivered = _submit(chunk, delivered, undelivered, queue)
    return undelivered


def _submit(chunk: list, delivered: bool, undelivered: int, queue: str | None = None) -> tuple[int, bool]:
    submission = producer.submit_tasks(chunk, deliver=delivered, warn=False, queue=queue)
    if not submission.delivered:
        return undelivered + len(chunk), False
    return undelivered, True


def submit_file(task_name: str, path: str, priority: int | None = None, retries: int | None = None,
                when: datetime.datetime | None = None, queue: str | None = None) -> int:
    """Queue one job per line of `path` (- for stdin); returns the number queued."""
    task_class = catalog.get_task_class(task_name)
    try:
        source = click.open_file(path, encoding="utf-8", errors="strict")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path!r}: {exc.strerror or exc}", param_hint="--file") from None
    with source, tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        try:
            jobs, bad, errors = check_lines(task_class, source, spool)
        except UnicodeDecodeError as exc:
            raise click.BadParameter(f"{path!r} is not UTF-8 text ({exc.reason} at byte {exc.start} of a read)",
                                     param_hint="--file") from None
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path!r}: {exc.strerror or exc}", param_hint="--file") from None
        if bad:
            more = f"\n  ... and {bad - len(errors)} more" if bad > len(errors) else ""
            fail(f"{path}: {bad} bad line(s), nothing was queued:\n  " + "\n  ".join(errors) + more, EXIT_USAGE)
        spool.seek(0)
        undelivered = queue_spooled(task_class, spool, priority, retries, when, queue)
    if undelivered:
        click.echo(f"nightshift: Redis is unreachable; {undelivered} job(s) are recorded in the ledger and will "
                   f"be delivered when Redis is back", err=True)
    return jobs

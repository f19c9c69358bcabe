"""`nightshift submit TASK --file FILE`: one job per JSON line, streamed, and nothing queued if any line is bad.

Two passes keep memory flat in the file's size: the first checks every line (JSON object, the task's signature,
JSON values, simple type hints) and spools the checked arguments to a temporary file, already encoded as the
ledger and the message will hold them; only when every line is good does the second read the spool back and
queue the jobs in chunks (producer.submit_batch: one ledger transaction each, then the messages 1,000 per Redis
round trip, no JSON decoded or encoded again). Spooling makes stdin work the same, and what is queued is exactly
what was checked, even if the file changes meanwhile.
"""
from __future__ import annotations

import datetime
import itertools
import json
import tempfile
from typing import IO, Iterator

import click

from app import catalog, producer
from app.cli.common import EXIT_USAGE, fail
from app.codec import NotJSON

CHUNK = 20000       # jobs per ledger transaction (~10 MB of spooled arguments and messages at a time); big
                    # sorted inserts touch each page of the ledger's id index fewer times
ERRORS_SHOWN = 20   # bad lines listed; the rest are counted
SEPARATOR = "\t"    # between a spooled job's two encodings: JSON text never holds a raw tab


def check_lines(task_class: type, lines: Iterator[str], spool: IO[str]) -> tuple[int, int, list[str]]:
    """First pass: (jobs, bad lines, the first bad lines' messages); good lines' arguments go to `spool`, one
    line each: the ledger's encoding, a tab, the message's (producer.encode_arguments)."""
    jobs = bad = 0
    errors: list[str] = []
    write = spool.write
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
            stored, carried = producer.encode_arguments(producer.check_arguments(task_class, value))
        except (catalog.BadArguments, NotJSON) as exc:
            bad += 1
            if len(errors) < ERRORS_SHOWN:
                errors.append(f"line {number}: {exc}")
            continue
        write(f"{stored}{SEPARATOR}{carried}\n")
        jobs += 1
    return jobs, bad, errors


def queue_spooled(task_class: type, spool: IO[str], priority: int | None, retries: int | None,
                  when: datetime.datetime | None, queue: str | None = None) -> int:
    """Second pass: queue the checked jobs in chunks; returns how many could not be put on Redis (recorded in
    the ledger all the same: recovery delivers them). After Redis fails once, the rest are only recorded."""
    undelivered = 0
    delivered = True
    while chunk := [tuple(line[:-1].split(SEPARATOR)) for line in itertools.islice(spool, CHUNK)]:
        submission = producer.submit_batch(task_class, chunk, priority=priority, retries=retries, when=when,
                                           queue=queue, deliver=delivered, warn=False)
        if not submission.delivered:
            undelivered, delivered = undelivered + len(chunk), False
    return undelivered


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

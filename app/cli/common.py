"""What every command shares: the parameter types that refuse bad input before a command runs, and output
helpers. (Turning known failures into one clear line and an exit code, and reading the settings, is the group's:
app.cli.root.)"""
from __future__ import annotations

import datetime
import json
import math
import sys
from typing import Any

import click

from app import jobids, ledger
from app.producer import MAX_DELAY, MAX_INT, MAX_KEY
from app.queue import check_queue_name
from app.status import ALL_QUEUES
from helpers.masking import mask_text, quoted

EXIT_FAILED = 1      # the job failed / an operation could not be done
EXIT_USAGE = 2       # bad input: nothing was accepted
EXIT_TIMEOUT = 124   # --wait gave up (like timeout(1))


def no_such_job(job_id: str) -> str:
    """Why a job id found no job: none has it, or it is the start of several jobs' ids (the first 8 characters are
    shared by the jobs of one millisecond: app.jobids)."""
    many = ledger.count_prefix(job_id)
    if many > 1:
        return (f"{'over ' if many >= 1000 else ''}{many} jobs have ids starting with {quoted(job_id)}: give more of "
                f"the id (lists print {jobids.SHORT_LENGTH} characters)")
    return f"no job {quoted(job_id)} in the ledger"


# -- parameter types: every command's ids, names, counts and durations are checked by these, so a bad value is
# one line and exit 2 (click's usage error) before the command touches the ledger, Redis or a socket.

NUMBER_CHARS = 40   # longer number text is refused by its length, not converted (a 5,000-digit int, 1e300...)


class Text(click.ParamType):
    """Text a command can store, look up and print: valid UTF-8 (a shell passes other bytes as lone surrogates,
    which neither ledger nor a socket takes) and at most `max_chars` characters (None: any length)."""

    name = "text"

    def __init__(self, max_chars: int | None = 255, what: str = "a value") -> None:
        self.max_chars = max_chars
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        value = value if isinstance(value, str) else str(value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{quoted(mask_text(value))} is not valid UTF-8 text", param, ctx)
        if self.max_chars is not None and len(value) > self.max_chars:
            self.fail(f"{self.what} is at most {self.max_chars} characters, got {quoted(mask_text(value))}", param,
                      ctx)
        return value


class QueueName(Text):
    """A queue name as app.queue.check_queue_name takes it (printable, no spaces, ',' or '=')."""

    name = "queue"

    def __init__(self) -> None:
        super().__init__(200, "a queue name")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        value = super().convert(value, param, ctx)
        try:
            return check_queue_name(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class WholeNumber(click.IntRange):
    """A whole number from `low` to `high`, both finite: the ledger's columns and LIMITs are 64-bit at most, and
    a number too long to be in range is refused by its length before it is converted."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__(low, high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and len(value.strip().lstrip("+-").lstrip("0")) > NUMBER_CHARS:
            self.fail(f"{quoted(value.strip())} is not a whole number from {self.min} to {self.max}", param, ctx)
        return super().convert(value, param, ctx)


class Number(click.FloatRange):
    """A number from `low` to `high`, both finite, never NaN (which every comparison lets through: a NaN
    timeout would wait forever, a NaN window would fail deep in the ledger query)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__(low, high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and len(value.strip()) > NUMBER_CHARS:
            self.fail(f"{quoted(value.strip())} is not a number from {self.min:.12g} to {self.max:.12g}", param, ctx)
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"NaN is not a number from {self.min:.12g} to {self.max:.12g}", param, ctx)
        return number


MAX_COUNT = MAX_INT             # --limit and other counts: 32-bit
MAX_SECONDS = float(MAX_DELAY)  # any duration: a century
JOB_ID = Text(36, "a job id")   # a UUID, or a prefix of one
TASK_NAME = Text(200, "a task name")
QUEUE_NAME = QueueName()
KEY = Text(MAX_KEY, "an idempotency key")
VALUE = Text(None)              # a value of any length: --arg, --json
NAME = Text()                   # other short text: a time, a host name
PORT = WholeNumber(0, 65535)
SECONDS = Number(0, MAX_SECONDS)


def fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"nightshift: {message}", err=True)
    sys.exit(code)


def iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned table that stays readable at 80 columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def queue_options(command: Any) -> Any:
    """`--queue NAME` (repeatable) and `--all-queues`: which services' jobs a command shows, when several share
    the ledger. Default: this service's queue (NIGHTSHIFT_QUEUE)."""
    command = click.option("--all-queues", is_flag=True,
                           help="Jobs of every queue sharing the ledger (and jobs from before it recorded queues).")(
        command)
    return click.option("--queue", "queue_names", multiple=True, metavar="NAME", type=QUEUE_NAME,
                        help="Jobs of queue NAME (repeatable) instead of NIGHTSHIFT_QUEUE's.")(command)


def chosen_queues(queue_names: tuple[str, ...], all_queues: bool) -> list[str] | str | None:
    """What queue_options chose, in the form app.status.resolve_queues takes."""
    if all_queues and queue_names:
        fail("--queue and --all-queues exclude each other", EXIT_USAGE)
    return ALL_QUEUES if all_queues else (list(queue_names) or None)


def queues_heading(queues: list[str] | str | None, service: str) -> str:
    """The line that says which queue(s) a listing is of (None: the service's, `service`)."""
    if queues == ALL_QUEUES:
        return "all queues"
    names = queues or [service]
    return ("queue " if len(names) == 1 else "queues ") + ", ".join(repr(name) for name in names)

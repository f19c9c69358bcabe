"""One structured log line per lifecycle event of a job, with secrets masked and every value bounded."""
from __future__ import annotations

import json
import logging
from typing import Any

from helpers.masking import bound, mask

log = logging.getLogger("nightshift.jobs")

MAX_ARGUMENT_CHARS = 300   # each argument's preview in a line
MAX_FIELD_CHARS = 2000     # any other field (an error message, a reason)


_PLAIN = (int, float, bool)  # values with nothing to mask and a short form


def safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields fit for a log line: secrets masked by name and structure, each value (and each argument) cut to a
    preview that notes its full size."""
    safe = {}
    for name, value in fields.items():
        if value is None:
            continue
        if type(value) in _PLAIN:
            safe[name] = value
            continue
        value = mask(value)
        if name == "args" and isinstance(value, dict):
            value = {k: bound(v, MAX_ARGUMENT_CHARS) for k, v in value.items()}
        safe[name] = bound(value, MAX_FIELD_CHARS)
    return safe


def emit(event: str, job_id: str, task: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` for a job; the formatter in app.logs renders `extra["job"]` as text or JSON.

    The record is made here with this function as its origin, which is what logging's search of the call stack
    for the caller would find at every call (two lines per job in a worker)."""
    if not log.isEnabledFor(level):
        return
    record = {"event": event, "job_id": job_id, "task": task}
    record.update(safe_fields(fields))
    log.handle(log.makeRecord(log.name, level, __file__, _EMIT_LINE, "%s %s %s", (event, task, job_id), None,
                              "emit", {"job": record}))


_EMIT_LINE = emit.__code__.co_firstlineno


def emit_batch(event: str, task: str, ids: list[str], level: int = logging.INFO, **fields: Any) -> None:
    """One line for many jobs of one task (bulk submits): the count and the first and last ids."""
    record = {"event": event, "task": task, "count": len(ids), "first_id": ids[0] if ids else None,
              "last_id": ids[-1] if ids else None}
    record.update(safe_fields(fields))
    if log.isEnabledFor(level):
        log.log(level, "%s %s x%d", event, task, len(ids), extra={"job": record})


_SHOWN_BY_NAME = frozenset({"event", "job_id", "task"})  # the text line's own columns, not fields


def text_fields(record: dict) -> str:
    return " ".join(f"{k}={v if isinstance(v, (int, float)) else _quote(v) if type(v) is str else json.dumps(v)}"
                    for k, v in record.items() if k not in _SHOWN_BY_NAME)


_quote = json.encoder.encode_basestring_ascii  # json.dumps of a str, without its per-call set-up

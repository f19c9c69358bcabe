"""One structured log line per lifecycle event of a job, with secrets in arguments masked."""
from __future__ import annotations

import json
import logging
import re
from typing import Any

log = logging.getLogger("nightshift.jobs")

SECRET_KEYS = re.compile(r"pass(word)?|token|secret|authori[sz]ation|api[_-]?key|credential|cookie|session",
                         re.IGNORECASE)
MASK = "***"


def mask(value: Any) -> Any:
    """A copy of `value` with the values of secret-looking keys replaced, at any depth."""
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and SECRET_KEYS.search(k) else mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def emit(event: str, job_id: str, task: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` for a job; the formatter in app.logs renders `extra["job"]` as text or JSON."""
    if "args" in fields and fields["args"] is not None:
        fields["args"] = mask(fields["args"])
    record = {"event": event, "job_id": job_id, "task": task}
    record.update({k: v for k, v in fields.items() if v is not None})
    if log.isEnabledFor(level):
        log.log(level, "%s %s %s", event, task, job_id, extra={"job": record})


def emit_batch(event: str, task: str, ids: list[str], level: int = logging.INFO, **fields: Any) -> None:
    """One line for many jobs of one task (bulk submits): the count and the first and last ids."""
    record = {"event": event, "task": task, "count": len(ids), "first_id": ids[0] if ids else None,
              "last_id": ids[-1] if ids else None}
    record.update({k: v for k, v in fields.items() if v is not None})
    if log.isEnabledFor(level):
        log.log(level, "%s %s x%d", event, task, len(ids), extra={"job": record})


def text_fields(record: dict) -> str:
    skip = {"event", "job_id", "task"}
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, (int, float)) else v}"
                    for k, v in record.items() if k not in skip)

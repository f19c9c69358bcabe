"""Logging set-up: a compact human format, or one JSON object per line with NIGHTSHIFT_LOG_FORMAT=json.

Every line is masked (URLs with passwords, secret-looking names) and bounded, whatever logger wrote it: job lines
are made safe by app.events, and the formatters do the same to plain messages and tracebacks.
"""
from __future__ import annotations

import datetime
import json
import logging
import sys

from app.events import text_fields
from helpers.masking import bound, mask_text

MAX_MESSAGE_CHARS = 4000
MAX_TRACEBACK_CHARS = 20000


def safe_message(record: logging.LogRecord) -> str:
    return bound(mask_text(record.getMessage()), MAX_MESSAGE_CHARS)


def safe_exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    return bound(mask_text(formatter.formatException(record.exc_info)), MAX_TRACEBACK_CHARS)

LEVELS = ("debug", "info", "warning", "error")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name}
        job = getattr(record, "job", None)
        if job:
            data.update(job)
        else:
            data["message"] = safe_message(record)
        if record.exc_info:
            data["exc"] = safe_exception(self, record)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        job = getattr(record, "job", None)
        if job:
            record.message = f"{job['event']:<9} {job['task']} {job.get('job_id', '')} {text_fields(job)}".rstrip()
        else:
            record.message = safe_message(record)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return bound(mask_text(super().formatException(ei)), MAX_TRACEBACK_CHARS)


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Huey logs every execution at INFO; Nightshift's own lifecycle lines say the same with more detail.
    logging.getLogger("huey").setLevel(max(logging.WARNING, root.level))
    # peewee logs every SQL statement with its parameters at DEBUG: job arguments unmasked, so never.
    logging.getLogger("peewee").setLevel(max(logging.INFO, root.level))

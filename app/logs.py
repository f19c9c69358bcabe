"""Logging set-up: a compact human format, or one JSON object per line with NIGHTSHIFT_LOG_FORMAT=json."""
from __future__ import annotations

import datetime
import json
import logging
import sys

from app.events import text_fields


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name}
        job = getattr(record, "job", None)
        if job:
            data.update(job)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        job = getattr(record, "job", None)
        if job:
            record.message = f"{job['event']:<9} {job['task']} {job.get('job_id', '')} {text_fields(job)}".rstrip()
        return super().formatMessage(record)


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Huey logs every execution at INFO; Nightshift's own lifecycle lines say the same with more detail.
    logging.getLogger("huey").setLevel(max(logging.WARNING, root.level))

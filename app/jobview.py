"""A job as it is shown to people and programs: `nightshift show/list/dead --json`, the console and its API.

Arguments, errors, tracebacks, reasons and raw message previews go through helpers.masking with the literal values
of the secret settings (`secrets`: helpers.masking.secret_values of the caller's settings), the same rules as the
logs, so no view of a job shows a secret the logs would hide.
"""
from __future__ import annotations

import datetime
import json

from app import ledger
from app.models import Job
from app.states import State
from helpers.masking import mask


def iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def _json(text: str | None, default: object = None) -> object:
    """A JSON column as data; a value that is not JSON (a hand-edited row) is shown as its text."""
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return text


def job_dict(job: Job, secrets: list[str], with_attempts: bool = False) -> dict:
    """A job with its arguments, result, errors, traceback and raw message masked (and the literal `secrets`);
    with its attempts' history (the running attempt last, without an end) when asked."""
    data = {
        "id": job.id, "task": job.task, "queue": job.queue, "state": job.state, "attempt": job.attempt,
        "args": _json(job.kwargs, {}), "priority": job.priority, "retries_left": job.retries_left,
        "key": job.key, "created_at": iso(job.created_at), "eta": iso(job.eta), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "duration": job.duration, "worker": job.worker,
        "lease_expires_at": iso(job.lease_expires_at), "lease_losses": job.lease_losses,
        "result": _json(job.result), "reason": job.reason, "error": job.error,
        "traceback": job.traceback, "progress": _json(job.progress),
        "raw_preview": job.raw,
    }
    if with_attempts:
        data["attempts"] = [{"number": a.number, "worker": a.worker, "started_at": iso(a.started_at),
                             "finished_at": iso(a.finished_at), "duration": a.duration, "outcome": a.outcome,
                             "error": a.error} for a in ledger.attempts(job.id, job)]
        if job.state == State.RUNNING:  # the attempt under way, from the job row until it ends
            data["attempts"].append({"number": job.attempt, "worker": job.worker, "started_at": iso(job.started_at),
                                     "finished_at": None, "duration": None, "outcome": None, "error": None})
    return mask(data, secrets)


def last_failed_attempt(error: str | None, attempts: list[dict]) -> int | None:
    """The attempt the job's last error (and traceback) belongs to: the last one in its history that ended with
    that error. The job row keeps only the latest error, which may be older than the attempt shown."""
    for a in reversed(attempts):
        if error and a["error"] == error:
            return a["number"]
    return None


def ago(seconds: float | None) -> str:
    """A short duration as people read it, in the CLI and the console alike: 850ms, 12s, 4m05s, 3h02m, 2d04h."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"

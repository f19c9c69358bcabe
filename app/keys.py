"""Names of Nightshift's own Redis keys (Huey names its queue, schedule and result keys itself).

Every key starts with `nightshift:{queue}:`, so one Redis can carry several services and `cleanup`/tests can find
a queue's keys by that prefix.
"""
from __future__ import annotations

import hashlib


def _part(value: str) -> str:
    """A value as part of a key: kept when short and plain, else its hash (bounded, no separators)."""
    if len(value) <= 64 and ":" not in value and value.isprintable():
        return value
    return "h" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def rate(queue: str, task: str) -> str:
    """When the next job of `task` may start (app.flow)."""
    return f"nightshift:{queue}:rate:{task}"


def concurrency(queue: str, task: str, value: str | None = None) -> str:
    """The concurrency slots of `task`, per value of its concurrency key when it has one (app.flow)."""
    base = f"nightshift:{queue}:concurrency:{task}"
    return base if value is None else f"{base}:{_part(value)}"


def paused(queue: str) -> str:
    """Present while the queue is paused (a copy of the ledger's state, app.pausing)."""
    return f"nightshift:{queue}:paused"


def cancel_channel(queue: str) -> str:
    """Pub/sub channel on which `nightshift cancel` names running jobs to stop (app.canceling)."""
    return f"nightshift:{queue}:cancel"


def leases_held(queue: str) -> str:
    """Present for a while after a consumer found the ledger unwritable: recovery leaves leases alone (app.recovery)."""
    return f"nightshift:{queue}:leases-held"


def recovery_lock(queue: str) -> str:
    """Held by the consumer running recovery this interval (app.consumer.Maintenance, app.leader)."""
    return f"nightshift:{queue}:lock:recovery"


def tick(queue: str, start: int) -> str:
    """Taken by the consumer that enqueues the periodic tasks of the tick starting at `start` (app.schedule)."""
    return f"nightshift:{queue}:tick:{start}"


def alert(queue: str, name: str) -> str:
    """An open backlog incident: one alert per incident however many consumers watch (app.backlog)."""
    return f"nightshift:{queue}:alert:{name}"


def signing_key_fingerprint(queue: str) -> str:
    """The fingerprint of the consumers' signing key, never the key (app.keycheck)."""
    return f"nightshift:{queue}:signing-key-fingerprint"


def task_lock_prefix(queue: str) -> str:
    """How Huey names a task lock inside its results namespace (`huey.r.{queue}.` + this + lock name); cleanup
    finds stale locks by it (app.cleanup, app.queue.HolderLock)."""
    return f"{queue}.lock."

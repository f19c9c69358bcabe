"""Pausing a queue: jobs keep arriving, none start, until it is resumed.

The ledger holds whether a queue is paused (durable: a pause survives consumer restarts and a Redis that lost its
data); Redis carries a copy (`keys.paused`) that workers read cheaply. A worker looks at most every
CHECK_SECONDS, and while its queue is paused it does not take messages off the queue at all, so the queue keeps
its order; a message it was already waiting for when the pause came goes back on the queue before it is claimed.
A consumer copies the ledger's state to Redis when it starts.
"""
from __future__ import annotations

import getpass
import logging
import socket
import threading
import time
from typing import Any

from app import keys, ledger
from app.models import QueueState

CHECK_SECONDS = 0.5

log = logging.getLogger("nightshift.pausing")


def set_paused(huey: Any, queue: str, paused: bool, who: str | None = None) -> bool:
    """Pause or resume `queue` (ledger first, then Redis); returns whether it was paused before. `who`: who
    asked (default user@host of this process)."""
    before = is_paused_in_ledger(queue)
    who = who or f"{getpass.getuser()}@{socket.gethostname()}"
    QueueState.insert(name=queue, paused=paused, changed_at=ledger.now(), changed_by=who).on_conflict(
        conflict_target=[QueueState.name],
        update={QueueState.paused: paused, QueueState.changed_at: ledger.now(), QueueState.changed_by: who},
    ).execute()
    publish(huey, queue, paused)
    return before


def is_paused_in_ledger(queue: str) -> bool:
    row = QueueState.get_or_none(QueueState.name == queue)
    return bool(row and row.paused)


def paused_queues() -> dict[str, QueueState]:
    return {row.name: row for row in QueueState.select().where(QueueState.paused == True)}  # noqa: E712


def publish(huey: Any, queue: str, paused: bool) -> None:
    if paused:
        huey.storage.conn.set(keys.paused(queue), "1")
    else:
        huey.storage.conn.delete(keys.paused(queue))


_flags: dict[str, "PauseFlag"] = {}


def is_paused(huey: Any) -> bool:
    """Whether this process's queue is paused, as last read (at most CHECK_SECONDS ago)."""
    flag = _flags.get(huey.name)
    if flag is None:
        flag = _flags[huey.name] = PauseFlag(huey)
    return flag()


class PauseFlag:
    """Whether this process's queue is paused, read from Redis at most every CHECK_SECONDS; a change is logged
    (what an operator, and a test, can tell the pause took hold by)."""

    def __init__(self, huey: Any) -> None:
        self.huey = huey
        self.paused = False
        self.checked = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.checked >= CHECK_SECONDS:
            with self._lock:
                if now - self.checked >= CHECK_SECONDS:
                    try:
                        paused = bool(self.huey.storage.conn.exists(keys.paused(self.huey.name)))
                    except Exception:  # noqa: BLE001 - Redis down: dequeue fails anyway; keep the last state
                        paused = self.paused
                    if paused != self.paused:
                        log.info("queue %r %s", self.huey.name, "paused: no job starts here until it is resumed"
                                 if paused else "resumed: jobs start here again")
                    self.paused, self.checked = paused, now
        return self.paused

"""Canceling a running job: the operator's `nightshift cancel` reaches the worker that runs it.

The ledger records the cancel first (the attempt ends `canceled`, app.ledger.cancel_running), then the command
publishes the job id on the queue's cancel channel. Every process that runs jobs listens on it and raises
`JobCanceled` in the thread running that job, at its next Python bytecode (the same mechanism as thread time
limits, app.timelimits); in a process worker a signal to itself also breaks a blocking sleep or read. A worker that
missed the message (its Redis connection was down) finds the cancel when it next renews its leases.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import redis
from huey.exceptions import CancelExecution

from app import keys, timelimits

log = logging.getLogger("nightshift.worker")


class JobCanceled(CancelExecution):
    """Raised in a job's thread when an operator canceled it; never retried."""

    def __init__(self, *args: Any) -> None:
        super().__init__(False, *args)


def publish(huey: Any, job_id: str) -> int:
    """Tell every listening worker; returns how many processes listen on the channel."""
    return int(huey.storage.conn.publish(keys.cancel_channel(huey.name), job_id))


def interrupt(thread_id: int, in_main_process_thread: bool) -> None:
    timelimits.raise_in(thread_id, JobCanceled)
    if in_main_process_thread and hasattr(signal, "SIGUSR1"):
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs in that thread, breaking a blocking call


def install_wakeup_handler() -> None:
    """In a process worker's main thread: SIGUSR1 only wakes the thread so a pending JobCanceled is raised."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)


class Listener(threading.Thread):
    """Waits for cancels on the queue's channel and passes each job id to `on_cancel`."""

    def __init__(self, huey: Any, on_cancel) -> None:
        super().__init__(name="nightshift-cancel-listener", daemon=True)
        self.huey = huey
        self.on_cancel = on_cancel
        self.stop_event = threading.Event()

    def run(self) -> None:
        channel = keys.cancel_channel(self.huey.name)
        while not self.stop_event.is_set():
            try:
                pubsub = self.huey.storage.conn.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(channel)
                while not self.stop_event.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        self.on_cancel(data.decode() if isinstance(data, bytes) else str(data))
            except redis.RedisError as exc:
                log.debug("cancel listener: Redis unreachable (%s); the keeper's lease check covers", exc)
                self.stop_event.wait(1.0)

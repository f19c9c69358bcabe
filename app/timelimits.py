"""Time limits for jobs in thread workers, where Huey has none (its thread environment's `timeout` does nothing).

As Dramatiq's TimeLimit middleware does: one watchdog thread keeps the deadline of every limited job, and when
one passes it raises Huey's `TaskTimeout` in that job's thread with `PyThreadState_SetAsyncExc`. The exception
arrives at the thread's next Python bytecode, so pure-Python code stops within moments; C code holding the GIL
(one long regex, a big C call) and blocking system calls (a read or sleep without a timeout) are interrupted
only when they return to Python. Process workers keep Huey's own SIGALRM limit.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from typing import Iterator

from huey.exceptions import TaskTimeout

log = logging.getLogger("nightshift.worker")


class TimeLimitExceeded(TaskTimeout):
    """Raised asynchronously in a job's thread (it must be constructible without arguments)."""


class Watchdog(threading.Thread):
    """Raises `TimeLimitExceeded` in threads whose deadline passed; one per process, started on first use."""

    def __init__(self) -> None:
        super().__init__(name="nightshift-time-limits", daemon=True)
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.deadlines: dict[int, float] = {}   # thread id -> monotonic deadline
        self.fired: set[int] = set()

    def arm(self, thread_id: int, deadline: float) -> None:
        with self.lock:
            self.deadlines[thread_id] = deadline
            self.fired.discard(thread_id)
            self.wake.notify()

    def disarm(self, thread_id: int) -> bool:
        """Forget the thread's deadline; True if its exception was already raised (perhaps still pending)."""
        with self.lock:
            self.deadlines.pop(thread_id, None)
            fired = thread_id in self.fired
            self.fired.discard(thread_id)
        return fired

    def run(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                for thread_id, deadline in list(self.deadlines.items()):
                    if deadline <= now:
                        del self.deadlines[thread_id]
                        self.fired.add(thread_id)
                        raise_in(thread_id, TimeLimitExceeded)
                upcoming = min(self.deadlines.values(), default=None)
                self.wake.wait(None if upcoming is None else max(upcoming - time.monotonic(), 0.001))


def raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Schedule `exc_type` in thread `thread_id` (None clears a pending one)."""
    found = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                       ctypes.py_object(exc_type) if exc_type else None)
    if found > 1:  # more than one thread state changed: undo, as the C API documentation asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        log.error("time limit: could not interrupt thread %d", thread_id)


_watchdog: Watchdog | None = None
_start_lock = threading.Lock()


def _get_watchdog() -> Watchdog:
    global _watchdog
    with _start_lock:
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = Watchdog()
            _watchdog.start()
        return _watchdog


@contextlib.contextmanager
def limit(seconds: float) -> Iterator[None]:
    """Raise TaskTimeout in this thread once `seconds` have passed inside the block."""
    watchdog, thread_id = _get_watchdog(), threading.get_ident()
    watchdog.arm(thread_id, time.monotonic() + seconds)
    try:
        yield
    except TimeLimitExceeded:
        watchdog.disarm(thread_id)
        raise TaskTimeout(f"timeout ({seconds:g}s)") from None
    finally:
        if watchdog.disarm(thread_id):
            raise_in(thread_id, None)  # the block ended just as the limit passed: drop the pending exception

"""A small thread-safe rate limiter: at most `rate` calls per second in this process."""
from __future__ import annotations

import threading
import time
from typing import Callable


class RateLimiter:
    """Spaces calls at least 1/rate seconds apart; `rate` None or 0 means no limit.

    Waiting is done by the caller's thread, so a limited job holds its worker, which is what keeps a
    small consumer from flooding a remote service.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate is not None and rate < 0:
            raise ValueError("rate must be >= 0")
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def wait(self) -> float:
        """Block until the next call is allowed; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        waited = start - now
        if waited > 0:
            self._sleep(waited)
        return waited

    def defer(self, seconds: float) -> None:
        """Push the next allowed call at least `seconds` into the future (a server said Retry-After)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)

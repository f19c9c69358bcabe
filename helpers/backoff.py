"""Retry delays: exponential backoff with full jitter, honouring a server's Retry-After."""
from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float = 1.0, factor: float = 2.0, cap: float = 300.0,
                  jitter: bool = True, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    Jitter spreads retries of many jobs that failed together so they do not hit the server together again.
    A server's Retry-After wins when it asks for longer (capped, so a silly value cannot park a job for days).
    """
    attempt = max(1, attempt)
    delay = min(cap, base * factor ** (attempt - 1))
    if jitter:
        delay = random.uniform(delay / 2, delay)
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay

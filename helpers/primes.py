"""A CPU-bound computation that reports its progress: counting primes with a segmented sieve."""
from __future__ import annotations

import math
from typing import Callable

Progress = Callable[[int, int, str], None]


def count_primes(limit: int, progress: Progress | None = None, segment: int = 1_000_000,
                 should_stop: Callable[[], bool] | None = None) -> int:
    """Number of primes below `limit`. Calls `progress(done, total, note)` after each segment and stops early
    (raising TimeoutError) when `should_stop()` says so, so a time limit can end it cleanly."""
    if limit < 3:
        return 0
    root = math.isqrt(limit) + 1
    base = bytearray([1]) * root
    base[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(root) + 1):
        if base[i]:
            base[i * i::i] = bytes(len(base[i * i::i]))
    small = [i for i in range(root) if base[i]]
    count = 0
    for low in range(0, limit, segment):
        high = min(low + segment, limit)
        sieve = bytearray([1]) * (high - low)
        for p in small:
            start = max(p * p, (low + p - 1) // p * p)
            if start >= high:
                continue
            sieve[start - low::p] = bytes(len(sieve[start - low::p]))
        if low == 0:
            sieve[0:min(2, high)] = bytes(min(2, high))
        count += sum(sieve)
        if progress:
            progress(high, limit, f"{count} primes so far")
        if should_stop and high < limit and should_stop():
            raise TimeoutError(f"stopped at {high} of {limit}")
    return count

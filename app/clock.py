"""One clock for leases: Redis's.

A lease is written by one consumer and judged by another, possibly on another host whose clock is off by a
minute. Every consumer (and `nightshift recover`) reads Redis's `TIME` now and then and keeps the offset from its
own clock, so lease expiry, claims and recovery all use the same time source: the shared Redis. A process that
never synced (a producer) uses its own clock; its timestamps are informational only.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any

log = logging.getLogger("nightshift.clock")

SKEW_WARNING = 2.0  # seconds between this host and Redis worth a log line
# A smaller offset is taken as none: it is within what a reading can tell (half a round trip plus Redis's
# second/microsecond reply), far below any lease, and keeps a host's timestamps in order with its producers'.
NOISE = 0.25
READINGS = 3  # a sync's readings of Redis's TIME, of which the quickest counts
_offset = 0.0


def now() -> datetime.datetime:
    """Naive UTC on the shared clock."""
    return datetime.datetime.fromtimestamp(time.time() + _offset, datetime.UTC).replace(tzinfo=None)


def offset() -> float:
    return _offset


def sync(redis_conn: Any) -> float:
    """Measure this host's offset from Redis's clock; returns it.

    Of READINGS readings of Redis's TIME, the one with the shortest round trip counts (Cristian's algorithm: its
    error is at most half that round trip). One reading alone may have waited on a new connection, a Redis busy
    with another client's script or this process's GIL: half of that wait would be taken for clock skew and shift
    every lease, start and end this process writes. If even the best round trip is too long to tell an offset of
    NOISE, the last offset is kept."""
    global _offset
    measured, round_trip = min((_read_offset(redis_conn) for _ in range(READINGS)), key=lambda reading: reading[1])
    if round_trip / 2 >= NOISE:
        log.warning("each of %d readings of Redis's clock took %.2f s or more: keeping this host's offset (%.3f s)",
                    READINGS, round_trip, _offset)
        return _offset
    if abs(measured - _offset) > SKEW_WARNING:
        log.warning("this host's clock is %.1f s %s Redis's; leases follow Redis's clock", abs(measured),
                    "behind" if measured > 0 else "ahead of")
    _offset = measured if abs(measured) >= NOISE else 0.0
    return _offset


def _read_offset(redis_conn: Any) -> tuple[float, float]:
    """One reading: (Redis's time - this host's at the middle of the round trip, the round trip), in seconds."""
    before = time.time()
    seconds, micros = redis_conn.time()
    after = time.time()
    return seconds + micros / 1e6 - (before + after) / 2, after - before

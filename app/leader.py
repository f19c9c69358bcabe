"""Once per period across every consumer: whoever takes the period's Redis key does the work.

Recovery runs, periodic ticks and backlog alerts all use this one rule: `SET key holder NX PX` on the shared
Redis. Whoever sets it first leads for that period; if it dies the key expires and another consumer leads the
next one.
"""
from __future__ import annotations

from typing import Any


def take(conn: Any, key: str, holder: str, seconds: float | None) -> bool:
    """True if this caller leads for the next `seconds` (the key was free and is now `holder`'s); with `seconds`
    None the key stays until someone deletes it (a backlog incident lasts until it is cleared)."""
    if seconds is None:
        return bool(conn.set(key, holder, nx=True))
    return bool(conn.set(key, holder, nx=True, px=max(1, int(seconds * 1000))))

"""Job ids: uuid-shaped text that sorts by when the job was made, and the short form lists print.

    tttttttt-ssss-8rrr-vrrr-rrrrrrrrrrrr

`t` is the time in milliseconds modulo 2**32 (it wraps every 49.7 days), `s` counts the ids this process made in
that millisecond (from a random start), `8` marks an RFC 9562 version-8 (custom) uuid, and the rest (74 bits) is
random. Jobs made close in time therefore sit close in the ledger's primary-key index: a new job lands at the
index's current edge and cleanup deletes old jobs from a few neighbouring pages, where random uuid4 ids put every
insert and every delete on a random page (cleanup of 1,000,000 SQLite rows: 113 s with uuid4 ids). The wrap is
far longer than jobs are kept, so it only moves the edge back to the start of the index once every 49.7 days.

The short form is the first 13 characters (`tttttttt-ssss`): distinct for every id one process makes, and for two
processes' ids unless both made one in the same millisecond with the same 16-bit count. The first 8 characters,
which lists printed with random ids, are shared by the jobs of one millisecond.
"""
from __future__ import annotations

import os
import threading
import time

SHORT_LENGTH = 13
_VERSION_8 = bytes((b & 0x0F) | 0x80 for b in range(256))  # a byte with the version nibble set to 8
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))    # a byte with RFC 9562's variant bits (10)
_lock = threading.Lock()
_last = 0  # the last (milliseconds << 16 | count) this process gave out


def _forget_last() -> None:
    global _last
    _last = 0  # a forked child starts its own count, so it does not give out its parent's next ids


os.register_at_fork(after_in_child=_forget_last)


def new_ids(count: int) -> list[str]:
    """`count` new job ids, in the order they sort (but across the 49.7-day wrap)."""
    global _last
    with _lock:
        now = time.time_ns() // 1_000_000
        first = (now << 16) | int.from_bytes(os.urandom(2), "big") if now > _last >> 16 else _last + 1
        _last = first + count - 1  # past 65,536 ids in a millisecond, the count carries into the next one
    # Random uuids made from one read of the OS's random source, their first 48 bits replaced by time and count.
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_8)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    r = raw.hex()
    ids = []
    for i in range(count):
        stamp, j = f"{(first + i) & 0xFFFF_FFFF_FFFF:012x}", 32 * i
        ids.append(f"{stamp[:8]}-{stamp[8:]}-{r[j + 12:j + 16]}-{r[j + 16:j + 20]}-{r[j + 20:j + 32]}")
    return ids


def new_id() -> str:
    """One new job id (see new_ids)."""
    return new_ids(1)[0]


def short(job_id: str) -> str:
    """The form lists print and `show` takes (any unique prefix of an id is taken)."""
    return job_id[:SHORT_LENGTH]

"""Flow control across every consumer: rate limits that wait, and concurrency limits per key.

Declared on the task: `@task(rate_limit="5/s")` (also `/m`, `/h`), `@task(concurrency=2, concurrency_key="host")`
(at most 2 at once per value of the argument `host`; without a key, per task: `concurrency=1` is a global mutex).

Both are kept in the shared Redis and judged on Redis's clock (`TIME` inside the scripts), so they hold across
consumers and hosts. They are checked before a job is claimed: a job over a limit goes back on the schedule for
when its turn may come, without using an attempt or a retry (Huey's own `rate_limit` turns it into a failure).
- Rate: GCRA without burst. One key per task holds the earliest time the next job may start; a job starts when that
  time has come and pushes it one interval on, so starts are at least 1/rate apart.
- Concurrency: a sorted set of slots per task and key value; members are `job:attempt`, scored by the slot's lease
  expiry. The running worker's keeper renews the slot with the job's lease; expired slots are dropped on every
  acquire, so the slot of a worker that died frees itself when its lease would have expired.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import random
import re
from typing import Any

from huey.api import Task

from app import clock, keys

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
POLL = 0.5  # at most this long before a job refused a concurrency slot looks again

# KEYS[1] rate key; ARGV[1] seconds between starts. Returns "0" (start now) or the seconds to wait.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local next_start = tonumber(redis.call('GET', KEYS[1]) or '0')
if next_start > now then return tostring(next_start - now) end
redis.call('SET', KEYS[1], tostring(now + interval), 'PX', math.ceil(interval * 1000) + 60000)
return '0'
"""
# KEYS[1] slot set; ARGV[1] member, ARGV[2] limit, ARGV[3] lease seconds. Returns "0" (slot taken) or the
# seconds until the oldest slot's lease runs out.
ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000) + 60000)
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) - now)
"""


class BadLimit(ValueError):
    """A task declared a limit Nightshift cannot read."""


def parse_rate(text: str) -> float:
    """"5/s", "100/m", "1000/h" → seconds between starts."""
    match = _RATE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise BadLimit(f"rate_limit={text!r}: write it as a positive count per second, minute or hour, "
                       f"e.g. '5/s', '100/m' or '1000/h'")
    return _PER[match.group(2)] / float(match.group(1))


@dataclasses.dataclass(frozen=True)
class Limits:
    interval: float | None    # seconds between starts (rate limit)
    concurrency: int | None
    key: str | None           # argument whose value partitions the concurrency limit


def check_options(options: dict[str, Any], parameters: list[str]) -> None:
    """Refuse bad limit options where the task is declared (at import), not at its first run."""
    if options.get("rate_limit") is not None:
        parse_rate(options["rate_limit"])
    concurrency, key = options.get("concurrency"), options.get("concurrency_key")
    if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                    or concurrency < 1):
        raise BadLimit(f"concurrency={concurrency!r}: must be a whole number of at least 1")
    if key is not None:
        if concurrency is None:
            raise BadLimit(f"concurrency_key={key!r} needs concurrency=N")
        if key not in parameters:
            raise BadLimit(f"concurrency_key={key!r} is not a parameter of the task ({', '.join(parameters)})")


@functools.lru_cache(maxsize=None)
def limits_of(task_class: type) -> Limits | None:
    rate = getattr(task_class, "rate_limit", None)
    concurrency = getattr(task_class, "concurrency", None)
    if rate is None and concurrency is None:
        return None
    return Limits(parse_rate(rate) if rate is not None else None, concurrency,
                  getattr(task_class, "concurrency_key", None))


def slot_key(huey: Any, task: Task, limits: Limits) -> str:
    name = type(task).__name__
    if limits.key is None:
        return keys.concurrency(huey.name, name)
    value = task.kwargs.get(limits.key)
    return keys.concurrency(huey.name, name, value if isinstance(value, str) else repr(value))


def slot_member(task: Task) -> str:
    return f"{task.id}:{getattr(task, 'attempt', 0)}"


@dataclasses.dataclass(frozen=True)
class Admission:
    wait: float = 0.0              # > 0: not now; come back in this many seconds
    slot: tuple[str, str] | None = None  # (key, member) of the concurrency slot held, to renew and release


def admit(huey: Any, task: Task, lease: float) -> Admission:
    """Whether `task` may start now under its limits; takes its concurrency slot (and rate turn) if so."""
    limits = limits_of(type(task))
    if limits is None:
        return Admission()
    conn = huey.storage.conn
    slot = None
    if limits.concurrency is not None:
        slot = (slot_key(huey, task, limits), slot_member(task))
        wait = float(conn.eval(ACQUIRE_SCRIPT, 1, slot[0], slot[1], limits.concurrency, lease))
        if wait > 0:
            return Admission(wait=min(wait, POLL) * random.uniform(0.5, 1.0))
    if limits.interval is not None:
        wait = float(conn.eval(RATE_SCRIPT, 1, keys.rate(huey.name, type(task).__name__), limits.interval))
        if wait > 0:
            if slot is not None:
                release(huey, slot)
            # Spread the waiting jobs over the next turns instead of waking them all at once.
            return Admission(wait=wait + random.uniform(0, limits.interval))
    return Admission(slot=slot)


def put_back(huey: Any, task: Task, wait: float) -> None:
    """Schedule the same attempt again `wait` seconds from now (no attempt used, nothing in the ledger changes)."""
    task.eta = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(seconds=wait)
    huey.push([task])


def renew(huey: Any, slots: list[tuple[tuple[str, str], float]]) -> None:
    """Extend the concurrency slots this process holds, each by its job's lease (the keeper calls this)."""
    if not slots:
        return
    stamp = clock.now().replace(tzinfo=datetime.UTC).timestamp()
    pipe = huey.storage.conn.pipeline(transaction=False)
    for (key, member), lease in slots:
        pipe.zadd(key, {member: stamp + lease}, xx=True)
    pipe.execute()


def release(huey: Any, slot: tuple[str, str] | None) -> None:
    if slot is not None:
        huey.storage.conn.zrem(slot[0], slot[1])

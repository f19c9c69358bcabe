"""Flow control across every consumer: rate limits that wait, and concurrency limits per key.

Declared on the task: `@task(rate_limit="5/s")` (also `/m`, `/h`), `@task(concurrency=2, concurrency_key="host")`
(at most 2 at once per value of the argument `host`; without a key, per task: `concurrency=1` is a global mutex).

Both are kept in the shared Redis and judged on Redis's clock (`TIME` inside the scripts), so they hold across
consumers and hosts. They are checked before a job is claimed: a job over a limit goes back on the schedule for
when its turn may come, without using an attempt or a retry (Huey's own `rate_limit` turns it into a failure).
- Rate: GCRA without burst. One key per task holds the earliest time the next job may start. A worker whose job's
  turn is at most MAX_SLEEP away reserves it (pushing the key one interval on) and sleeps until it; a job further
  away goes back on the schedule without reserving. Starts are 1/rate apart and no turn is wasted.
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
import time
from typing import Any

from huey.api import Task

from app import clock, keys

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
POLL = 0.5  # at most this long before a job refused a concurrency slot looks again
# A worker sleeps through a wait for its rate turn up to this long; a longer wait puts the job back on the schedule
# (Huey's scheduler looks once a second, so shorter waits through it would bunch starts and waste turns).
MAX_SLEEP = 1.0

# KEYS[1] rate key; ARGV[1] seconds between starts, ARGV[2] the longest wait a caller will sleep through.
# Returns {1, wait}: the turn `wait` seconds from now is reserved for the caller (0: start now); or {0, wait}: no
# turn within ARGV[2], look again in `wait` seconds.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local turn = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if turn - now > tonumber(ARGV[2]) then return {0, tostring(turn - now)} end
redis.call('SET', KEYS[1], tostring(turn + interval), 'PX', math.ceil((turn - now + interval) * 1000) + 60000)
return {1, tostring(turn - now)}
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
        return keys.concurrency(huey.service, name)
    value = task.kwargs.get(limits.key)
    return keys.concurrency(huey.service, name, value if isinstance(value, str) else repr(value))


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
        reserved, wait = conn.eval(RATE_SCRIPT, 1, keys.rate(huey.service, type(task).__name__), limits.interval,
                                   MAX_SLEEP)
        wait = float(wait)
        if not int(reserved):
            if slot is not None:
                release(huey, slot)
            # Come back just before the turn may be free, spread so the waiting jobs do not all wake at once.
            return Admission(wait=max(wait - MAX_SLEEP, 0) + random.uniform(0, MAX_SLEEP))
        if wait > 0:
            time.sleep(wait)
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

"""arq 0.28 (asyncio), default settings (poll_delay 0.5 s, results kept 1 h). Consumer: `arq arq_peer.WorkerSettings`
with BENCH_ARQ_MAX_JOBS = N jobs at a time."""
import asyncio
import os

from arq import create_pool
from arq.connections import RedisSettings

import latency as _latency

QUEUE = "arq:queue:" + os.environ.get("BENCH_QUEUE", "bench")
REDIS = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))


async def noop(ctx):
    pass


async def latency(ctx, sent):
    _latency.record(sent)


class WorkerSettings:
    functions = [noop, latency]
    redis_settings = REDIS
    queue_name = QUEUE
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "1"))


def submit(n: int) -> None:
    async def run():
        pool = await create_pool(REDIS, default_queue_name=QUEUE)
        for _ in range(n):
            await pool.enqueue_job("noop")
        await pool.aclose()
    asyncio.run(run())


bulk = None  # no bulk enqueue


def send_latency(sent: float) -> None:
    global _pool, _loop
    if "_loop" not in globals():
        _loop = asyncio.new_event_loop()
        _pool = _loop.run_until_complete(create_pool(REDIS, default_queue_name=QUEUE))
    _loop.run_until_complete(_pool.enqueue_job("latency", sent))

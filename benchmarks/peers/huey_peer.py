"""Bare Huey 3.5: PriorityRedisHuey (the sorted-set storage Nightshift uses), pickle, results off.

Consumer: `huey_consumer huey_peer.huey -w N -k thread`."""
import os
import struct
import time

from huey import PriorityRedisHuey

import latency as _latency

huey = PriorityRedisHuey(os.environ.get("BENCH_QUEUE", "bench"), results=False,
                         url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))


@huey.task()
def noop():
    pass


@huey.task()
def latency(sent):
    _latency.record(sent)


def submit(n: int) -> None:
    for _ in range(n):
        noop()


def bulk(n: int, batch: int) -> str:
    """Huey has no bulk enqueue: what its enqueue writes (timestamp prefix + pickled message, ZADD), pipelined,
    one round trip per batch."""
    storage = huey.storage
    for start in range(0, n, batch):
        pipe = storage.conn.pipeline(transaction=False)
        for _ in range(min(batch, n - start)):
            pipe.zadd(storage.queue_key, {struct.pack(">Q", int(time.time() * 1e6)) + huey.serialize_task(noop.s()): 0})
        pipe.execute()
    return "pipelined ZADD loop (Huey has no bulk API)"


def send_latency(sent: float) -> None:
    latency(sent)

"""Dramatiq 2 with its Redis broker and default middleware. Consumer: `dramatiq dramatiq_peer -p 1 -t N`."""
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import latency as _latency

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
dramatiq.set_broker(RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")))


@dramatiq.actor(queue_name=QUEUE)
def noop():
    pass


@dramatiq.actor(queue_name=QUEUE)
def latency(sent):
    _latency.record(sent)


def submit(n: int) -> None:
    for _ in range(n):
        noop.send()


bulk = None  # no bulk enqueue (group().run() sends one message at a time)


def send_latency(sent: float) -> None:
    latency.send(sent)

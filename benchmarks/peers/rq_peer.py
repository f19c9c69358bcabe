"""RQ 2 with its default worker (a forked work horse per job); `rq worker-pool -n 4` for four.

Consumer: `rq worker QUEUE --url URL` or `rq worker-pool QUEUE -n 4 --url URL`."""
import os

from redis import Redis
from rq import Queue

import latency as _latency

queue = Queue(os.environ.get("BENCH_QUEUE", "bench"),
              connection=Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")))


def noop():
    pass


def latency(sent):
    _latency.record(sent)


def submit(n: int) -> None:
    for _ in range(n):
        queue.enqueue(noop)


def bulk(n: int, batch: int) -> str:
    for start in range(0, n, batch):
        queue.enqueue_many([Queue.prepare_data(noop) for _ in range(min(batch, n - start))])
    return "Queue.enqueue_many (one pipeline per batch)"


def send_latency(sent: float) -> None:
    queue.enqueue(latency, sent)

"""Celery 5 on Redis (broker only, no result backend), default settings.

Consumer: `celery -A celery_peer worker --pool threads -c N -Q QUEUE`."""
import os

from celery import Celery

import latency as _latency

app = Celery("celery_peer", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE", "bench")
app.conf.broker_connection_retry_on_startup = True


@app.task
def noop():
    pass


@app.task
def latency(sent):
    _latency.record(sent)


def submit(n: int) -> None:
    for _ in range(n):
        noop.delay()


bulk = None  # no bulk enqueue (a group sends one message at a time)


def send_latency(sent: float) -> None:
    latency.delay(sent)

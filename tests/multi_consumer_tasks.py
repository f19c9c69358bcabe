"""A task for tests/test_multi_consumer.py: counts every run of every attempt in Redis, outside the ledger.

Loaded with NIGHTSHIFT_TASK_MODULES=tasks,sample_tasks,multi_consumer_tasks. The counters live under the test's
queue namespace (nightshift:QUEUE:test:*), which the `env` fixture deletes afterwards.
"""
from __future__ import annotations

import os
import threading
import time

import redis

import config
from app import task

_client: redis.Redis | None = None
_client_pid: int | None = None
_lock = threading.Lock()


def client() -> redis.Redis:
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client, _client_pid = redis.Redis.from_url(config.get().redis_url), os.getpid()
        return _client


def runs_key(queue: str) -> str:
    return f"nightshift:{queue}:test:runs"


def by_process_key(queue: str) -> str:
    return f"nightshift:{queue}:test:by-process"


@task(context=True)
def count_run(n: int, pause: float = 0.0, task=None) -> int:
    """Record one run of (job, attempt) and which process ran it; optionally pause for PAUSE seconds."""
    queue = config.get().queue
    pipe = client().pipeline(transaction=False)
    pipe.hincrby(runs_key(queue), f"{task.id}:{task.attempt}", 1)
    pipe.hincrby(by_process_key(queue), str(os.getpid()), 1)
    pipe.execute()
    if pause:
        time.sleep(pause)
    return n

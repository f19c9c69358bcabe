"""Bare Huey 3.5 for the comparison: PriorityRedisHuey (the same sorted-set storage Nightshift uses), the default
pickle serializer, results off, one no-op task.

The consumer runs it as `huey_consumer benchmarks.bare_app.huey -w 1 -k thread` with BENCH_REDIS_URL and
BENCH_BARE_QUEUE set by benchmarks/compare_huey.py.
"""
import os

from huey import PriorityRedisHuey

huey = PriorityRedisHuey(os.environ.get("BENCH_BARE_QUEUE", "bench-bare"), results=False,
                         url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))


@huey.task()
def noop():
    pass


def point_at(queue: str) -> None:
    """Use another queue name (and so other Redis keys) from now on, in this process."""
    huey.name = queue
    huey.storage = huey.create_storage()

"""Task locks that say who holds them, so cleanup can free the locks of workers that died holding them.

Huey's `huey.lock_task(name)` stores the value "1" under `huey.r.{queue}.{queue}.lock.{name}`: when the worker
holding it is SIGKILLed, the lock stays forever and the task never runs again. `lock_task` here is the same
lock (same key, same TaskLock behaviour as a decorator or context manager) whose value names the holder (the
worker id of `WorkerBeat`) and when it was taken; Nightshift's Huey hands it out for `huey.lock_task` too.
`app.cleanup` removes a lock whose holder no longer beats.

    from app.locks import lock_task

    @task()
    def nightly_export():
        with lock_task("export"):
            ...
"""
from __future__ import annotations

from app.queue import HolderLock, get_huey


def lock_task(name: str, ttl: int | None = None) -> HolderLock:
    """A named lock for tasks (Huey's `lock_task`, which Nightshift's Huey also routes here)."""
    return get_huey().lock_task(name, ttl)

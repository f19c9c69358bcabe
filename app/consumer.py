"""The consumer: Huey's consumer plus the keeper (leases, heartbeat) and the maintenance loop (recovery).

Both SIGTERM and SIGINT are graceful: stop taking jobs, let running ones finish within
NIGHTSHIFT_SHUTDOWN_TIMEOUT, then queue whatever is still running again as a new attempt.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

import redis
from huey.consumer import Consumer

import config
from app import ledger, lifecycle
from app.db import init as init_db
from app.models import WorkerBeat
from app.schedule import TickScheduler

log = logging.getLogger("nightshift.worker")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Keeper(threading.Thread):
    """Renews the leases of the jobs this process runs and records its heartbeat."""

    def __init__(self, queue: str) -> None:
        super().__init__(name="nightshift-keeper", daemon=True)
        self.queue = queue
        self.stop_event = threading.Event()
        self.started_at = ledger.now()

    def run(self) -> None:
        settings = config.get()
        interval = min(settings.lease_seconds / 3, settings.heartbeat_seconds)
        next_beat = 0.0
        while not self.stop_event.is_set():
            try:
                init_db()
                ids = list(lifecycle.running)
                if ids:
                    ledger.renew_leases(ids, lifecycle.WORKER_ID, settings.lease_seconds)
                if time.monotonic() >= next_beat:
                    self.beat()
                    next_beat = time.monotonic() + settings.heartbeat_seconds
            except Exception:  # noqa: BLE001 - a database blip must not stop lease renewal for good
                log.exception("keeper: could not renew leases or record the heartbeat")
            self.stop_event.wait(interval)

    def beat(self, stopped: bool = False) -> None:
        stamp = ledger.now()
        current = [{"id": job_id, "task": name, "attempt": attempt, "since": started.isoformat()}
                   for job_id, (name, attempt, _, started) in list(lifecycle.running.items())]
        fields = dict(host=socket.gethostname(), pid=os.getpid(), queue=self.queue, started_at=self.started_at,
                      last_seen=stamp, rss_bytes=rss_bytes(), jobs_done=lifecycle.jobs_done,
                      current=json.dumps(current), stopped_at=stamp if stopped else None)
        WorkerBeat.insert(id=lifecycle.WORKER_ID, **fields).on_conflict(
            conflict_target=[WorkerBeat.id], update=fields).execute()


_keeper: Keeper | None = None
_keeper_pid: int | None = None


def start_keeper(queue: str) -> None:
    """Once per process that runs jobs (the consumer, or each forked process worker)."""
    global _keeper, _keeper_pid
    if _keeper_pid == os.getpid():
        return
    lifecycle.worker_id()
    _keeper_pid = os.getpid()
    _keeper = Keeper(queue)
    _keeper.start()


class Maintenance(threading.Thread):
    """Runs recovery every NIGHTSHIFT_RECOVERY_INTERVAL, in one consumer at a time (a Redis lock per run).

    The lock (SET NX PX 0.9 x interval) is the same once-per-period-across-consumers rule as the periodic
    tick key (app.schedule): whichever consumer takes it runs recovery for that interval; if it dies the lock
    expires and another consumer runs the next one. Recovery stays here rather than being a periodic task
    because it must run even when the queue is too blocked to deliver a periodic job."""

    def __init__(self, huey) -> None:
        super().__init__(name="nightshift-maintenance", daemon=True)
        self.huey = huey
        self.stop_event = threading.Event()

    def run(self) -> None:
        from app import recovery
        interval = config.get().recovery_interval
        lock_key = f"nightshift:{self.huey.name}:lock:recovery"
        while not self.stop_event.is_set():
            try:
                if self.huey.storage.conn.set(lock_key, lifecycle.WORKER_ID, nx=True,
                                              px=max(int(interval * 900), 100)):
                    recovery.recover(self.huey)
            except redis.RedisError as exc:
                log.warning("recovery skipped: Redis unreachable (%s)", exc)
            except Exception:  # noqa: BLE001
                log.exception("recovery failed; will try again")
            self.stop_event.wait(interval)


class NightshiftConsumer(Consumer):
    # Periodic tasks: one consumer per tick enqueues them, however many consumers run (app.schedule).
    scheduler_class = TickScheduler

    def __init__(self, huey, **options) -> None:
        options.setdefault("graceful_signal", "TERM")
        super().__init__(huey, **options)
        # Both SIGTERM and SIGINT drain gracefully; a second one stops at once.
        self._signal_actions[signal.SIGINT] = (False, True)
        self._signal_actions[signal.SIGTERM] = (False, True)
        self.maintenance = Maintenance(huey)
        huey.on_startup("nightshift_keeper")(lambda: start_keeper(huey.name))

    def start(self) -> None:
        super().start()
        self.maintenance.start()
        log.info("consumer %s started: %d %s worker(s) on queue %r", lifecycle.WORKER_ID, self.workers,
                 self.worker_type, self.huey.name)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.maintenance.stop_event.set()
            if _keeper is not None and _keeper_pid == os.getpid():
                _keeper.stop_event.set()
                _keeper.join(5)  # a beat in flight must not land after (and undo) the "stopped" one
                try:
                    _keeper.beat(stopped=True)
                except Exception:  # noqa: BLE001
                    pass
            log.info("consumer %s stopped", lifecycle.WORKER_ID)

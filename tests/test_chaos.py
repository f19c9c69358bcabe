"""The chaos matrix (issue 10): {thread, process workers} x {consumer SIGKILLed, Redis restarted empty, ledger
cut off}, on the ledger of the pass (SQLite, or PostgreSQL with NIGHTSHIFT_TEST_DATABASE=postgres).

Each cell runs 200 short jobs through a consumer with four workers while one kind of fault is injected. Every job
counts its runs and its effect in the shared Redis (db 14, under the test's queue name), which no fault touches;
the queue lives on a private Redis. At the end: every job succeeded in the ledger, every effect is there, the
consumer never exited on its own, and no process of any consumer outlived it. Each cell prints one line:
`chaos thread/sigkill/sqlite: 200 jobs, 200 effects, 3 re-runs (1 repeated effects), recovered in 2.2 s; ...`
(re-runs: runs beyond one per job, including runs killed midway; recovered: from the end of the last fault until
every job due by then succeeded with its effect). Run it with `pytest -m chaos -s`.
"""
from __future__ import annotations

import collections
import json
import random
import time
from typing import Callable

import pytest
import redis

import faults
from conftest import SHARED_REDIS, USE_PG, wait_until

JOBS = 200
IMMEDIATE = 140  # the rest are scheduled 1-6 s after the consumer starts: faults find jobs queued, running, scheduled
WORKERS = 4
RECOVERY_TIMEOUT = 45.0
LEDGER = "postgres" if USE_PG else "sqlite"


class Cell:
    """One consumer under fault: restarts it when a fault kills it, and keeps what the checks need."""

    def __init__(self, start_worker: Callable, rng: random.Random) -> None:
        self.start_worker, self.rng = start_worker, rng
        self.seen: set[faults.Process] = set()     # every process found under a consumer of this cell
        self.orphans: set[faults.Process] = set()  # those still alive 5 s after their consumer's SIGKILL
        self.worker = start_worker("chaos")

    def restart(self) -> None:
        self.worker = self.start_worker("chaos")

    def close(self) -> None:
        """Whatever happened: the consumer and every process seen under one are gone (orphans must not outlive
        the test and take jobs from another)."""
        if self.worker.alive():
            self.seen |= faults.descendants(self.worker.pid)
            self.worker.kill()
        faults.kill_processes(self.seen)

    def pause(self, low: float, high: float) -> None:
        """Let the consumer run for a random moment; it must not exit on its own meanwhile."""
        time.sleep(self.rng.uniform(low, high))
        assert self.worker.alive(), f"consumer exited on its own:\n{self.worker.log()[-3000:]}"

    def sigkill(self) -> None:
        processes, left = faults.sigkill_consumer(self.worker)
        self.seen |= processes
        self.orphans |= left


def sigkill_three_times(cell: Cell, private_redis, database) -> None:
    """SIGKILL the consumer at three random moments, starting a new one each time."""
    for _ in range(3):
        cell.pause(0.5, 2.0)
        cell.sigkill()
        cell.restart()


def restart_redis_empty(cell: Cell, private_redis, database) -> None:
    """Restart the queue's Redis without persistence while jobs are queued and scheduled: all of them lost."""
    from app.queue import get_huey
    cell.pause(0.3, 1.5)
    huey = get_huey()
    pending, scheduled = huey.pending_count(), huey.scheduled_count()
    print(f"restarting the queue's Redis without persistence: {pending} queued, {scheduled} scheduled")
    assert scheduled > 0
    private_redis.restart()


def cut_the_ledger_off(cell: Cell, private_redis, database) -> None:
    """PostgreSQL: terminate every consumer connection three times (a restart or failover). SQLite: another
    process holds the write lock (BEGIN IMMEDIATE) for 4 s, twice, longer than the 2-s lease."""
    if USE_PG:
        for _ in range(3):
            cell.pause(0.8, 2.0)
            print(f"terminated {faults.terminate_database_connections(database)} ledger connections")
        return
    for _ in range(2):  # SQLite's equivalent: another process holds the write lock for seconds
        cell.pause(0.5, 1.5)
        faults.lock_sqlite(database.database, 4)


FAULTS = {"sigkill": sigkill_three_times, "redis-restart": restart_redis_empty,
          "ledger-outage": cut_the_ledger_off}


def counts(client: redis.Redis, prefix: str, kind: str, ids: list[str]) -> list[int]:
    return [int(v or 0) for v in client.mget([f"{prefix}:{kind}:{job_id}" for job_id in ids])]


def settles(ids: list[str], effects: redis.Redis, prefix: str) -> bool:
    """Wait until every job of `ids` succeeded in the ledger with its effect; False after RECOVERY_TIMEOUT."""
    from app.models import Job

    def finished() -> bool:
        return (Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids)
                and all(counts(effects, prefix, "effect", ids)))
    try:
        wait_until(finished, RECOVERY_TIMEOUT, interval=0.1)
        return True
    except AssertionError:
        return False


def log_summary(paths) -> str:
    """The warnings and errors of the consumers' logs, by kind, most frequent first (for a failing cell)."""
    kinds: collections.Counter = collections.Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                kinds[line[:120]] += 1
                continue
            if record.get("level") not in ("warning", "error", "critical"):
                continue
            exc = record.get("exc", "").strip().splitlines()
            what = record.get("reason") or record.get("error") or record.get("message", "")
            kinds[f"{record['level']} {record.get('event', record.get('logger'))}: {str(what)[:100]}"
                  + (f" [{exc[-1][:120]}]" if exc else "")] += 1
    return "\n".join(f"  {n:>4} x {kind}" for kind, n in kinds.most_common(12))


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_chaos(worker_type, fault, env, private_redis, start_worker, monkeypatch, request):
    env.set(monkeypatch, NIGHTSHIFT_REDIS_URL=private_redis.url, NIGHTSHIFT_WORKERS=WORKERS,
            NIGHTSHIFT_WORKER_TYPE=worker_type, NIGHTSHIFT_LEASE_SECONDS=2, NIGHTSHIFT_RECOVERY_INTERVAL=1,
            NIGHTSHIFT_RECOVERY_GRACE=2)
    from app import submit, submit_many
    from app.db import database
    from app.models import Job

    name = f"{worker_type}/{fault}/{LEDGER}"
    seed = random.randrange(1 << 30)
    print(f"\nchaos {name}: seed {seed}")
    rng = random.Random(seed)
    effects = redis.Redis.from_url(SHARED_REDIS)
    prefix = f"nightshift:{env['NIGHTSHIFT_QUEUE']}:chaos"
    job = {"redis_url": SHARED_REDIS, "prefix": prefix}
    started = time.monotonic()
    ids = submit_many("count_effect_run",
                      [dict(job, seconds=round(rng.uniform(0.02, 0.1), 3)) for _ in range(IMMEDIATE)])
    cell = Cell(start_worker, rng)
    request.addfinalizer(cell.close)
    scheduled_at = time.monotonic()
    delays = [rng.uniform(1, 6) for _ in range(JOBS - IMMEDIATE)]
    ids += [submit("count_effect_run", delay=delay, **job, seconds=round(rng.uniform(0.02, 0.1), 3))
            for delay in delays]
    FAULTS[fault](cell, private_redis, database.obj)
    faults_over = time.monotonic()

    due = ids[:IMMEDIATE] + [job_id for job_id, delay in zip(ids[IMMEDIATE:], delays)
                             if scheduled_at + delay <= faults_over]
    # Recovered: every job that was due when the faults ended has succeeded, with its effect.
    if settles(due, effects, prefix):
        recovery = f"recovered in {time.monotonic() - faults_over:.1f} s"
    else:
        recovery = f"NOT recovered {RECOVERY_TIMEOUT:.0f} s after the faults"
    if not settles(ids, effects, prefix):
        recovery += f"; jobs still unfinished {RECOVERY_TIMEOUT:.0f} s later"
    alive_at_end = cell.worker.alive()
    if alive_at_end:
        cell.sigkill()

    runs, made = counts(effects, prefix, "started", ids), counts(effects, prefix, "effect", ids)
    states = collections.Counter(state for (state,) in Job.select(Job.state).where(Job.id.in_(ids)).tuples())
    reruns = sum(max(0, n - 1) for n in runs)
    repeated = sum(max(0, n - 1) for n in made)
    print(f"chaos {name}: {len(ids)} jobs, {sum(1 for n in made if n)} effects, {reruns} re-runs "
          f"({repeated} repeated effects), {recovery}; cell took {time.monotonic() - started:.1f} s")
    diagnosis = (f"ledger states {dict(states)}; orphans {sorted(p for p, _ in cell.orphans)}\n"
                 f"consumer log warnings and errors:\n{log_summary(sorted(env.tmp.glob('chaos-*.log')))}")

    assert alive_at_end, f"consumer exited on its own:\n{cell.worker.log()[-3000:]}"
    assert states == {"succeeded": len(ids)}, diagnosis
    assert all(made), f"{made.count(0)} jobs without their effect; {diagnosis}"
    assert not cell.orphans, f"{len(cell.orphans)} worker processes outlived their SIGKILLed consumer; {diagnosis}"

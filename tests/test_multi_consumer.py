"""More than one consumer: three `nightshift worker` processes sharing one Redis and one ledger drain 5,000 jobs,
every job running exactly once per attempt and none lost.

The documented way to run several consumers is a PostgreSQL ledger (`NIGHTSHIFT_TEST_DATABASE=postgres`, the
second pass of scripts/test); in the SQLite pass the three share one SQLite file (WAL), the single-host setup
docs/deploy.md allows for light load.
"""
from __future__ import annotations

import collections
import os
import signal
import time

import pytest

from conftest import USE_PG, wait_until

pytestmark = pytest.mark.serial  # 5000 jobs through 3 consumers take both cores; it bounds a stall

JOBS = int(os.environ.get("NIGHTSHIFT_TEST_MULTI_JOBS", "5000"))
CONSUMERS = 3
BATCH = 500


@pytest.fixture
def multi_env(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,multi_consumer_tasks",
            NIGHTSHIFT_WORKERS="2")
    return env


def test_three_consumers_drain_5000_jobs_once_each(multi_env, start_worker, capsys):
    import multi_consumer_tasks as mc
    from app import ledger, producer
    from app.models import Attempt, Job
    from app.queue import get_huey

    queue = multi_env["NIGHTSHIFT_QUEUE"]
    workers = [start_worker(f"consumer{i}") for i in range(CONSUMERS)]

    # Submit while the consumers already run, in batches (one ledger transaction + one Redis push each).
    started = time.monotonic()
    submitted: list[str] = []
    for first in range(0, JOBS, BATCH):
        submitted += producer.submit_many("count_run", [{"n": n} for n in range(first, min(first + BATCH, JOBS))])
    assert len(submitted) == len(set(submitted)) == JOBS

    def finished() -> int:
        return Job.select().where(Job.state.in_(("succeeded", "dead", "canceled", "expired"))).count()

    def progress() -> str:
        counts = collections.Counter(state for (state,) in Job.select(Job.state).tuples())
        logs = "\n".join(f"--- {w.log_path.name} (alive={w.alive()})\n{w.log()[-1500:]}" for w in workers)
        return f"{dict(counts)}\n{logs}"

    # Fail on a stall (no job finished for STALL seconds), not on a fixed total: a busy 2-core CI machine is slow.
    stall = float(os.environ.get("NIGHTSHIFT_TEST_MULTI_STALL", "120"))
    done, last_change = 0, time.monotonic()
    while done < JOBS:
        assert all(w.alive() for w in workers), f"a consumer died: {progress()}"
        assert time.monotonic() - last_change < stall, f"no job finished for {stall:g}s: {progress()}"
        time.sleep(0.5)
        if (now_done := finished()) != done:
            done, last_change = now_done, time.monotonic()
    took = time.monotonic() - started

    # None lost: every submitted job is in the ledger and succeeded; nothing is left in Redis.
    states = dict(Job.select(Job.id, Job.state).tuples())
    assert set(states) == set(submitted)
    assert collections.Counter(states.values()) == {"succeeded": JOBS}, progress()
    wait_until(lambda: get_huey().pending_count() == 0, 10, message="an empty queue")

    # Once per attempt: the task's own count (in Redis, outside the ledger) is exactly 1 for every
    # (job, attempt) the ledger knows, and there is no run the ledger does not know.
    attempts = {job_id: attempt for job_id, attempt in Job.select(Job.id, Job.attempt).tuples()}
    client = mc.client()
    runs = {field.decode(): int(count) for field, count in client.hgetall(mc.runs_key(queue)).items()}
    expected = {f"{job_id}:{n}" for job_id, attempt in attempts.items() for n in range(1, attempt + 1)}
    duplicates = {field: count for field, count in runs.items() if count != 1}
    assert not duplicates, f"{len(duplicates)} (job, attempt) pairs ran more than once, e.g. {list(duplicates.items())[:5]}"
    assert set(runs) == expected, (f"runs without an attempt: {list(set(runs) - expected)[:5]}; "
                                   f"attempts that never ran: {list(expected - set(runs))[:5]}")
    # The ledger's history agrees: one history row per (job, attempt) that did not succeed (a succeeded attempt is
    # its job's row), and every job's history ends in its one success.
    attempt_rows = collections.Counter((job_id, number) for job_id, number in Attempt.select(
        Attempt.job_id, Attempt.number).tuples())
    assert set(attempt_rows) == {(j, n) for j, a in attempts.items() for n in range(1, a)}
    assert max(attempt_rows.values(), default=1) == 1
    for job_id in submitted[::500]:
        assert [(a.number, a.outcome) for a in ledger.attempts(job_id)][-1] == (attempts[job_id], "succeeded")

    # All three consumers took part (jobs were not all taken by one), as seen by the task and by the ledger.
    by_process = {int(pid): int(count) for pid, count in client.hgetall(mc.by_process_key(queue)).items()}
    assert sum(by_process.values()) == len(runs)
    ledger_workers = collections.Counter(worker for (worker,) in Job.select(Job.worker).tuples())
    assert len(ledger_workers) == CONSUMERS, ledger_workers
    assert all(count > 0 for count in by_process.values()) and len(by_process) == CONSUMERS, by_process
    rerun = sum(a - 1 for a in attempts.values())

    # Every consumer stops gracefully on SIGTERM.
    for worker in workers:
        worker.signal(signal.SIGTERM)
    codes = [worker.proc.wait(30) for worker in workers]
    assert codes == [0] * CONSUMERS, progress()

    ledger = "PostgreSQL" if USE_PG else "SQLite"
    with capsys.disabled():
        print(f"\n[multi-consumer] {JOBS} jobs, {CONSUMERS} consumers x 2 threads, {ledger} ledger: drained in "
              f"{took:.1f}s ({JOBS / took:.0f} jobs/s); per consumer {sorted(by_process.values())}; "
              f"re-run attempts {rerun}")

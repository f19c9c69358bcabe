"""Nothing lost beyond the default: process workers, a PostgreSQL ledger whose connections die, two attempts of one
job in one process, orphaned worker processes, skewed clocks, GIL-holding tasks and recycled workers.

Each test runs on the ledger of the pass (SQLite, or PostgreSQL with NIGHTSHIFT_TEST_DATABASE=postgres)."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

import faults
from conftest import USE_PG, cli, wait_until
from test_reliability import attempts, runs, state


def test_process_workers_each_open_their_own_connections(env, start_worker, tmp_path):
    """Four process workers, 300 jobs, no fault: every job runs exactly once (a connection inherited across the
    fork is shared by every worker process and answers the wrong one)."""
    from app import submit_many
    from app.models import Job
    ids = submit_many("record_effect", [{"directory": str(tmp_path)} for _ in range(300)])
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="process", NIGHTSHIFT_WORKERS=4)
    wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.state.not_in(("queued", "running"))).count()
               == len(ids), 60, interval=0.2, message="300 jobs finished")
    assert Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids), worker.log()[-3000:]
    assert len(runs(tmp_path)) == len(ids), f"{len(runs(tmp_path)) - len(ids)} re-runs without any fault"
    assert "no results to fetch" not in worker.log()


def kill_ledger_connections(database_url: str) -> int:
    """pg_terminate_backend on every connection to the test's database but our own: what a restart or a failover
    does to a worker's connections."""
    import psycopg2

    from conftest import PG_ADMIN
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                (database_url.rsplit("/", 1)[1],))
    killed = cur.fetchone()[0]
    conn.close()
    return killed


def set_connections_allowed(database_url: str, allowed: bool) -> None:
    """Make the test's database refuse (or accept again) new connections: the database is down for its users."""
    import psycopg2

    from conftest import PG_ADMIN
    name = database_url.rsplit("/", 1)[1]
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    conn.cursor().execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"true" if allowed else "false"}')
    conn.close()


@pytest.mark.skipif(not USE_PG, reason="connections killed by the server: PostgreSQL ledger")
@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_worker_carries_on_after_its_database_connections_are_killed(env, start_worker, tmp_path, worker_type,
                                                                      monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=2, NIGHTSHIFT_RECOVERY_INTERVAL=0.5)
    from app import db, submit_many
    from app.models import Job
    ids = submit_many("record_effect", [{"directory": str(tmp_path), "seconds": 0.02} for _ in range(300)])
    db.database.obj.close()
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE=worker_type, NIGHTSHIFT_WORKERS=2)
    wait_until(lambda: len(runs(tmp_path)) >= 30, 30, message="first jobs ran")
    assert kill_ledger_connections(env["NIGHTSHIFT_DATABASE_URL"]) >= 1
    time.sleep(0.5)
    kill_ledger_connections(env["NIGHTSHIFT_DATABASE_URL"])
    wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids), 60,
               interval=0.3, message="every job succeeded after the connections were killed")
    assert worker.alive()
    assert {line.split()[0] for line in runs(tmp_path)} == set(ids)


@pytest.mark.skipif(not USE_PG, reason="a database that refuses connections: PostgreSQL ledger")
def test_worker_waits_while_the_database_is_down_and_resumes_by_itself(env, start_worker, tmp_path, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=2, NIGHTSHIFT_RECOVERY_INTERVAL=0.5)
    from app import db, submit_many
    from app.models import Job
    url = env["NIGHTSHIFT_DATABASE_URL"]
    first = submit_many("record_effect", [{"directory": str(tmp_path)} for _ in range(20)])
    db.database.obj.close()
    worker = start_worker(NIGHTSHIFT_WORKERS=2)
    wait_until(lambda: len(runs(tmp_path)) >= 20, 20, message="first jobs ran")
    ids = submit_many("record_effect", [{"directory": str(tmp_path), "seconds": 0.05} for _ in range(100)])
    db.database.obj.close()
    set_connections_allowed(url, False)
    try:
        kill_ledger_connections(url)
        time.sleep(0.5)
        health = cli(env, "health")
        assert health.returncode != 0 and "ledger unreachable" in health.stderr + health.stdout, health
        size = worker.log_path.stat().st_size
        time.sleep(3)
        assert worker.alive()
        grown = worker.log_path.stat().st_size - size
        assert grown < 20000, f"the worker spins while the database is down: {grown} bytes of log in 3 s"
    finally:
        set_connections_allowed(url, True)
    wait_until(lambda: Job.select().where(Job.id.in_(first + ids), Job.state == "succeeded").count()
               == len(first + ids), 60, interval=0.3, message="every job succeeded once the database is back")
    assert worker.alive()
    reruns = len(runs(tmp_path)) - len(first + ids)
    assert reruns == 0, f"{reruns} jobs ran again after an outage longer than their lease"


@pytest.mark.skipif(USE_PG, reason="the write lock of a SQLite ledger")
@pytest.mark.parametrize("worker_type", ["thread", "process"])
@pytest.mark.serial
def test_a_ledger_locked_longer_than_the_lease_runs_no_job_twice(env, start_worker, tmp_path, worker_type,
                                                                  monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=2, NIGHTSHIFT_RECOVERY_INTERVAL=0.5)
    from app import submit_many
    from app.models import Job
    ids = submit_many("record_effect", [{"directory": str(tmp_path), "seconds": 0.3} for _ in range(60)])
    start_worker(NIGHTSHIFT_WORKER_TYPE=worker_type, NIGHTSHIFT_WORKERS=3)
    start_worker(NIGHTSHIFT_WORKER_TYPE=worker_type, NIGHTSHIFT_WORKERS=3)
    wait_until(lambda: len(runs(tmp_path)) >= 10, 20, message="jobs running")
    faults.lock_sqlite(env["NIGHTSHIFT_DATABASE_URL"].split("///", 1)[1], 5)
    wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids), 60,
               interval=0.3, message="every job succeeded after the lock")
    reruns = len(runs(tmp_path)) - len(ids)
    assert reruns == 0, f"{reruns} jobs ran again after the ledger was locked longer than their lease"


def attempt_1_past_its_lease(env, start_worker, monkeypatch, later_seconds: float, **worker_env):
    """A job whose attempt 1 (5 s) runs in a consumer stopped past its 1-s lease and requeued by recovery; the
    consumer resumed, so attempt 2 (`later_seconds`, then it fails) may come to the same process."""
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=1, NIGHTSHIFT_RECOVERY_INTERVAL=600)
    from app import submit
    job_id = submit("slow_first_attempt", first_seconds=5, later_seconds=later_seconds)
    worker = start_worker(NIGHTSHIFT_WORKERS=2, **worker_env)
    wait_until(lambda: state(job_id) == "running", 10, message="attempt 1 running")
    worker.signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)  # past the lease
        recovered = cli(env, "recover")
        assert recovered.returncode == 0 and "requeued after lost lease: 1" in recovered.stdout, recovered
    finally:
        worker.signal(signal.SIGCONT)
    return job_id, worker


def test_two_attempts_of_one_job_in_one_process_keep_their_own_outcomes(env, start_worker, monkeypatch):
    """Attempt 1 outlives its lease (its consumer was stopped), attempt 2 runs in the same process and fails:
    attempt 1's end must not be recorded as attempt 2's."""
    from app import ledger
    job_id, worker = attempt_1_past_its_lease(env, start_worker, monkeypatch, later_seconds=5)
    # Attempt 1 ends first (about 5 s in), attempt 2 later with its error.
    wait_until(lambda: state(job_id) == "dead", 30, message=f"attempt 2 dead:\n{worker.log()[-3000:]}")
    job = ledger.get(job_id)
    assert job.state == "dead" and "attempt 2 fails" in job.error, (job.state, job.error, worker.log()[-2000:])
    assert attempts(job_id) == [(1, "lease-lost"), (2, "failed")]


def test_sigterm_hands_back_the_second_attempt_of_a_job_after_the_first_ended_in_the_same_process(
        env, start_worker, monkeypatch):
    """Attempts 1 and 2 of one job run in one process when SIGTERM comes; attempt 1 ends during the drain,
    attempt 2 is still running at the deadline: it is handed back at once as attempt 3, not left `running` until
    its lease expires (Huey's set of tasks in flight held the two attempts as one task, and attempt 1's end took
    attempt 2 out of it)."""
    from app import ledger
    job_id, worker = attempt_1_past_its_lease(env, start_worker, monkeypatch, later_seconds=60,
                                              NIGHTSHIFT_SHUTDOWN_TIMEOUT=6)
    wait_until(lambda: (ledger.get(job_id).state, ledger.get(job_id).attempt) == ("running", 2), 10,
               message=f"attempt 2 running beside attempt 1:\n{worker.log()[-3000:]}")
    assert worker.stop(30) == 0
    job = ledger.get(job_id)
    assert (job.state, job.attempt) == ("queued", 3), (job.state, job.attempt, job.reason, worker.log()[-3000:])
    assert attempts(job_id) == [(1, "lease-lost"), (2, "interrupted")], worker.log()[-3000:]
    assert "alive" in (ledger.attempts(job_id)[0].error or ""), "attempt 1 did not end in the process first"


def test_worker_processes_die_with_a_killed_consumer(env, start_worker):
    for _ in range(3):
        worker = start_worker(NIGHTSHIFT_WORKER_TYPE="process", NIGHTSHIFT_WORKERS=3)
        wait_until(lambda: len(faults.descendants(worker.pid)) >= 4, 10,
                   message="worker processes and scheduler forked")
        processes, orphans = faults.sigkill_consumer(worker)
        faults.kill_processes(orphans)
        assert not orphans, f"{len(orphans)} of {len(processes)} worker processes outlived their consumer"


def test_a_task_in_a_process_worker_can_fork(env, start_worker, tmp_path):
    """The parent-death hook is for the consumer's own children: a child the task forks (os.fork, subprocess
    with preexec_fn) inherits the at-fork hooks, and must not take itself for an orphan of the consumer."""
    from app import submit
    job_id = submit("forks_children", directory=str(tmp_path))
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="process", NIGHTSHIFT_WORKERS=1)
    wait_until(lambda: state(job_id) not in ("queued", "running"), 20, message="forking job finished")
    from app import ledger
    job = ledger.get(job_id)
    assert job.state == "succeeded", (job.state, job.error, worker.log()[-2000:])
    assert (tmp_path / "forked").exists() and (tmp_path / "spawned").read_text() == "ok\n"


@pytest.mark.serial
def test_recycled_process_workers_do_not_stall_the_queue(env, start_worker, tmp_path):
    from app import submit
    from app.models import Job
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="process", NIGHTSHIFT_WORKERS=2, NIGHTSHIFT_MAX_TASKS_PER_WORKER=2)
    ids = []
    for _ in range(16):
        ids.append(submit("record_effect", directory=str(tmp_path)))
        time.sleep(0.25)
    wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids), 30,
               message="all jobs ran")
    waits = [(job.started_at - job.created_at).total_seconds() for job in Job.select().where(Job.id.in_(ids))]
    assert max(waits) < 1.5, f"a job waited {max(waits):.1f} s while workers were recycled: {sorted(waits)}"
    status = cli(env, "status", "--json")
    import json
    rows = json.loads(status.stdout)["workers"]
    recycled = [row for row in rows if row["status"] == "recycled"]
    assert len(recycled) >= 4, rows
    assert not [row for row in rows if row["status"] == "gone"], rows
    worker.stop()
    rows = json.loads(cli(env, "status", "--json").stdout)["workers"]
    assert not [row for row in rows if row["status"] in ("gone", "alive")], rows


def test_leases_are_judged_by_one_clock(env, start_worker, tmp_path, monkeypatch):
    """Recovery run on a host whose clock is 90 s ahead must not take the jobs of a consumer with the right time
    (leases of 60 s)."""
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.skip("faketime (Debian package faketime) is not installed")
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=60)
    from app import submit_many
    from app.models import Job
    ids = submit_many("record_effect", [{"directory": str(tmp_path), "seconds": 3} for _ in range(4)])
    start_worker(NIGHTSHIFT_WORKERS=4)
    wait_until(lambda: Job.select().where(Job.state == "running").count() == 4, 10, message="jobs running")
    ahead = subprocess.run([faketime, "-f", "+90s", os.sys.executable, "-m", "app", "recover"], env=env.full(),
                           cwd=env.tmp, capture_output=True, text=True, timeout=60)
    assert ahead.returncode == 0, ahead.stderr
    assert "requeued after lost lease: 0" in ahead.stdout, ahead.stdout
    wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids), 30,
               message="all jobs ran")
    assert len(runs(tmp_path)) == len(ids)


@pytest.mark.serial
def test_a_task_holding_the_gil_past_the_default_lease_runs_once_with_its_own_lease(env, start_worker, tmp_path,
                                                                                      monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=1, NIGHTSHIFT_RECOVERY_INTERVAL=0.5)
    from app import submit
    job_id = submit("hold_gil_long_lease", directory=str(tmp_path), seconds=3)
    start_worker()
    start_worker()  # another consumer runs recovery while the first one holds its GIL
    wait_until(lambda: state(job_id) == "succeeded", 30, message="GIL-holding job done")
    assert attempts(job_id) == [(1, "succeeded")]
    assert len(runs(tmp_path)) == 1


# In a consumer: recovery's check for the ledger's write lock runs in one thread while a task holding the GIL
# starts in another, the moment recovery's thread lets the GIL go inside SQLite.
RECOVERY_BESIDE_A_GIL_HOLDER = """
import ctypes, threading, time
import config
from app import ledger, recovery, schema
from app.queue import get_huey
huey = get_huey()
schema.open_ledger(config.get().database_url)  # recovery's first statement is then its check for the write lock
threading.Thread(target=recovery.recover_expired_leases, args=(huey, recovery.Report(), ledger.now())).start()
time.sleep(0.3)  # recovery now waits for the write lock the test holds, in SQLite, without the GIL
print("holding", flush=True)
ctypes.PyDLL(None).sleep(3)  # takes the GIL and keeps it 3 s, as a task's long C call does
"""


@pytest.mark.skipif(USE_PG, reason="SQLite's single write lock")
def test_recovery_beside_a_task_holding_the_gil_never_keeps_the_ledger_locked(env):
    """Recovery's check for the write lock was an empty transaction: BEGIN IMMEDIATE took the lock in C, and the
    COMMIT had to wait for the GIL. A task in another thread of the same consumer that took the GIL then kept
    SQLite's write lock held for as long as it held the GIL: every consumer's writes and recoveries waited (CI saw
    a GIL-holding job run to its end because the other consumer's recovery could not judge its lease)."""
    path = env["NIGHTSHIFT_DATABASE_URL"].removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, timeout=10)
    holder.execute("BEGIN IMMEDIATE")
    consumer = subprocess.Popen([os.sys.executable, "-c", RECOVERY_BESIDE_A_GIL_HOLDER], env=env.full(), cwd=env.tmp,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert consumer.stdout.readline() == "holding\n"  # however long the interpreter took to start
        time.sleep(0.2)  # the GIL is held for 3 s from now; recovery waits for the lock meanwhile
        holder.execute("COMMIT")  # recovery's thread gets the lock now, while the other thread holds the GIL
        time.sleep(0.3)
        began = time.monotonic()
        writer = sqlite3.connect(path, isolation_level=None, timeout=10)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("COMMIT")
        waited = time.monotonic() - began
        assert consumer.wait(10) == 0
    finally:
        consumer.kill()
    assert waited < 1, f"another process waited {waited:.1f} s for the ledger's write lock"


@pytest.mark.serial
def test_a_lease_lost_while_the_worker_lived_says_so(env, start_worker, tmp_path, monkeypatch):
    """The job goes dead at its first lost lease: the other consumer's recovery must find it while the GIL is held,
    which takes up to about 2.5 s (the blocked consumer may hold the recovery lock for 2 s, then an interval and
    the pass), so the job holds the GIL 6 s. (It held it 3 s, twice: a busy CI machine missed that window.)"""
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=1, NIGHTSHIFT_RECOVERY_INTERVAL=0.5, NIGHTSHIFT_MAX_LEASE_LOSSES=0)
    from app import ledger, submit
    job_id = submit("hold_gil", directory=str(tmp_path), seconds=6)
    start_worker()
    start_worker()
    wait_until(lambda: state(job_id) in ("dead", "succeeded"), 40, message="GIL-holding job ended")
    assert state(job_id) == "dead", "the job ran to its end: recovery never saw its lease lost"
    assert "lost its lease once" in ledger.get(job_id).reason, ledger.get(job_id).reason
    wait_until(lambda: "alive" in (ledger.get(job_id).reason or ""), 15, message="the reason says the worker lived")
    assert "lease=" in ledger.get(job_id).reason, ledger.get(job_id).reason
    first = ledger.attempts(job_id)[0]
    assert first.outcome == "lease-lost" and "alive" in (first.error or ""), (first.outcome, first.error)

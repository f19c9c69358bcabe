"""Worker recycling under a steady stream of jobs (issue 14 item 5): NIGHTSHIFT_MAX_TASKS_PER_WORKER and
NIGHTSHIFT_MAX_MEMORY_MB, for thread and process workers. A replacement takes work before the old worker stops,
so no job waits more than a second; the replaced workers show as `recycled`, never `gone`.

Real consumers as subprocesses; each job's wait is started_at - created_at in the ledger (one clock)."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import faults
from conftest import cli, wait_until

pytestmark = pytest.mark.serial  # every test bounds how long a job waits (MAX_WAIT)

EVERY = 0.05           # a job every 50 ms ...
STREAM_SECONDS = 10.0  # ... for 10 s
MAX_WAIT = 1.0         # seconds any job may wait while workers are recycled
LONG_JOB = 3.0         # seconds of the one long job running when a thread consumer restarts
LEAKS = tuple(0.5 + 0.25 * n for n in range(37))  # every fifth job leaks (a leaking task among the others)


@pytest.fixture
def leak_env(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,flow_tasks")
    return env


def steady_stream(directory, leaks_at: tuple[float, ...] = (), megabytes: int = 0,
                  long_job_at: float | None = None) -> list[str]:
    """Submit a short job every EVERY seconds for STREAM_SECONDS (on a schedule, not drifting with submit's own
    time), a job leaking MEGABYTES at each second in `leaks_at`, and one of LONG_JOB seconds at `long_job_at`;
    the ids of all, in order."""
    from app import submit
    ids, leaks = [], sorted(leaks_at)
    began = time.monotonic()
    for n in range(int(STREAM_SECONDS / EVERY)):
        time.sleep(max(0.0, began + n * EVERY - time.monotonic()))
        if long_job_at is not None and time.monotonic() - began >= long_job_at:
            long_job_at = None
            ids.append(submit("record_effect", directory=str(directory), seconds=LONG_JOB))
        if leaks and time.monotonic() - began >= leaks[0]:
            leaks.pop(0)
            ids.append(submit("leak", directory=str(directory), megabytes=megabytes))
        ids.append(submit("record_effect", directory=str(directory)))
    return ids


def finished_once(ids, worker=None) -> dict[str, float]:
    """Wait until every job succeeded; each job's wait in seconds. Every job ran in one attempt: none was handed
    back or recovered while workers came and went."""
    from app.models import Job
    try:
        wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids), 60,
                   interval=0.2, message="every job of the stream succeeded")
    except AssertionError as exc:
        states = collections.Counter(job.state for job in Job.select(Job.state).where(Job.id.in_(ids)))
        raise AssertionError(f"{exc}: {dict(states)}\n{worker.log()[-4000:] if worker else ''}") from None
    jobs = list(Job.select().where(Job.id.in_(ids)))
    assert [job.id for job in jobs if job.attempt != 1] == []
    return {job.id: (job.started_at - job.created_at).total_seconds() for job in jobs}


def assert_no_long_wait(waits: dict[str, float], log: str = "") -> None:
    """Every wait under MAX_WAIT; else the consumer's log around the longest-waiting job says what held it up."""
    ordered = sorted(waits.values())
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(f"waits: n={len(ordered)} p50={p50:.3f} p99={p99:.3f} max={ordered[-1]:.3f} top={ordered[-5:]}")
    longest = max(waits, key=waits.get)
    assert ordered[-1] < MAX_WAIT, (f"a job waited {ordered[-1]:.2f} s while workers were recycled "
                                    f"(p50 {p50:.3f} s, p99 {p99:.3f} s, longest: {ordered[-10:]}); "
                                    f"the consumer's log around job {longest}:\n{log_around(log, longest)}")


def log_around(log: str, job_id: str, before: int = 30, after: int = 10) -> str:
    lines = log.splitlines()
    first = next((n for n, line in enumerate(lines) if job_id in line), len(lines))
    return "\n".join(lines[max(0, first - before):first + after])


def workers_in_status(env) -> list[dict]:
    return json.loads(cli(env, "status", "--json").stdout)["workers"]


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_workers_recycled_after_their_job_count_never_keep_a_job_waiting(env, start_worker, tmp_path, worker_type):
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE=worker_type, NIGHTSHIFT_WORKERS=1, NIGHTSHIFT_MAX_TASKS_PER_WORKER=3)
    ids = steady_stream(tmp_path)
    assert_no_long_wait(finished_once(ids, worker), worker.log())
    log = worker.log()
    rows = workers_in_status(env)
    assert not [row for row in rows if row["status"] == "gone"], rows
    assert "died" not in log, log[-3000:]  # a recycled worker is replaced as planned, not as a dead one
    if worker_type == "process":  # each worker process has a heartbeat row of its own, which says goodbye
        assert len([row for row in rows if row["status"] == "recycled"]) >= len(ids) // 3 - 4, rows
        wait_until(lambda: len([r for r in workers_in_status(env) if r["status"] == "alive"]) == 1, 10,
                   message="one worker process alive, as configured")
    else:  # threads share their process's row: it stays alive while its threads are replaced
        assert [row["status"] for row in rows] == ["alive"], rows
        assert log.count("is recycled") >= len(ids) // 3 - 4, log[-3000:]
    worker.stop()
    assert not [row for row in workers_in_status(env) if row["status"] in ("gone", "alive")]


def threads_of(pid: int) -> list[str]:
    return [Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() for tid in os.listdir(f"/proc/{pid}/task")]


def test_a_consumer_of_process_workers_forks_its_replacements_from_a_single_thread(env, start_worker, tmp_path):
    """fork() copies only the calling thread: a lock another thread holds at that moment (SQLite's, peewee's) stays
    held forever in the child, which hangs before taking a job while the consumer counts it alive. So the consumer
    of process workers runs no thread beside its main one: recovery runs in a process of its own, like Huey's
    scheduler, and every replacement is forked from a single-threaded process."""
    from app import submit
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="process", NIGHTSHIFT_WORKERS=2, NIGHTSHIFT_MAX_TASKS_PER_WORKER=1,
                          NIGHTSHIFT_LOG_LEVEL="debug")
    since = time.time()
    ids, samples = [], []
    for _ in range(60):
        ids.append(submit("record_effect", directory=str(tmp_path)))
        samples.append(len(threads_of(worker.pid)))
        time.sleep(0.02)
    worker.wait_recovery_passes(2, since=since)  # recovery runs on, outside the consumer's process
    finished_once(ids, worker)
    assert set(samples) == {1}, f"threads in the consumer while it forked: {samples}: {threads_of(worker.pid)}"
    assert "died" not in worker.log(), worker.log()[-3000:]


def test_a_killed_maintenance_process_is_restarted_and_recovery_runs_on(env, start_worker, tmp_path):
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="process", NIGHTSHIFT_WORKERS=1, NIGHTSHIFT_LOG_LEVEL="debug")
    worker.wait_recovery_passes(1)
    for pid, _ in children_of(worker.pid):  # the worker, the scheduler and the maintenance process
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "the maintenance process died, restarting it" in worker.log(), 10,
               message="the maintenance process restarted")
    worker.wait_recovery_passes(2)
    assert len(children_of(worker.pid)) == 3, children_of(worker.pid)


def test_process_workers_over_the_memory_limit_never_keep_a_job_waiting(leak_env, start_worker, tmp_path):
    # A worker process starts at about 40 MB: one that ran a leak is over the limit.
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="process", NIGHTSHIFT_WORKERS=1, NIGHTSHIFT_MAX_MEMORY_MB=60)
    ids = steady_stream(tmp_path, leaks_at=LEAKS, megabytes=30)
    assert_no_long_wait(finished_once(ids, worker), worker.log())
    assert worker.log().count("over NIGHTSHIFT_MAX_MEMORY_MB") == len(LEAKS)
    rows = workers_in_status(leak_env)
    assert len([row for row in rows if row["status"] == "recycled"]) == len(LEAKS), rows
    assert not [row for row in rows if row["status"] == "gone"], rows
    alive = [row for row in rows if row["status"] == "alive"]
    assert len(alive) == 1 and alive[0]["rss_bytes"] < 60 * 2**20, rows


def test_a_thread_consumer_over_the_memory_limit_hands_over_to_a_relief_and_restarts(leak_env, start_worker,
                                                                                      tmp_path):
    """Threads share one process, and exec ends them all: the consumer starts a relief (a fresh copy of itself)
    that takes work while it drains and restarts in place (same pid); the restarted consumer then lets the
    relief go. No job waits for the restart."""
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="thread", NIGHTSHIFT_WORKERS=2, NIGHTSHIFT_MAX_MEMORY_MB=150)
    # The leak comes while a long job runs: the consumer cannot exec before that job ends.
    ids = steady_stream(tmp_path, leaks_at=(1.2,), megabytes=120, long_job_at=1.0)
    assert_no_long_wait(finished_once(ids, worker), worker.log())
    wait_until(lambda: "took over: let its relief" in worker.log(), 30,
               message="the restarted consumer let its relief go")
    assert worker.alive() and worker.log().count("over NIGHTSHIFT_MAX_MEMORY_MB") >= 1
    rows = workers_in_status(leak_env)
    assert not [row for row in rows if row["status"] == "gone"], rows
    recycled = [row for row in rows if row["status"] == "recycled"]
    alive = [row for row in rows if row["status"] == "alive"]
    assert [row["pid"] for row in recycled] == [worker.pid], rows  # the consumer restarted in place ...
    assert [row["pid"] for row in alive] == [worker.pid], rows  # ... and runs on, in a fresh image
    assert alive[0]["rss_bytes"] < 150 * 2**20, alive
    wait_until(lambda: [row for row in workers_in_status(leak_env) if row["status"] == "stopped"], 20,
               message="the relief stopped")
    worker.stop()
    assert not [row for row in workers_in_status(leak_env) if row["status"] in ("gone", "alive")]


def handing_over(worker, tmp_path, long_job: float = 4.0) -> tuple[str, int]:
    """Make a thread consumer hand over: a long job runs, a leak puts the process over its limit; return once the
    relief takes jobs and the consumer drains (the long job holds it there): (the long job's id, relief's pid)."""
    from app import submit
    long_id = submit("record_effect", directory=str(tmp_path), seconds=long_job)
    wait_until(lambda: (tmp_path / "runs.log").exists(), 10, message="the long job started")
    submit("leak", directory=str(tmp_path), megabytes=120)
    wait_until(lambda: "takes jobs: consumer" in worker.log(), 20, message="the relief took jobs")
    found = re.search(r"started relief consumer pid (\d+)", worker.log())
    return long_id, int(found.group(1))


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of each child of `pid`, zombies (state Z: exited, not reaped) included."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            raw = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split() if raw else []
        if fields and int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


def test_a_consumer_stopped_while_it_hands_over_stops_its_relief_too(leak_env, start_worker, tmp_path):
    """systemd (KillMode=mixed) and `docker stop` signal only the consumer: it lets its running job finish,
    stops its relief and waits for it, and does not restart."""
    from app import ledger
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="thread", NIGHTSHIFT_WORKERS=2, NIGHTSHIFT_MAX_MEMORY_MB=150)
    long_id, relief_pid = handing_over(worker, tmp_path)
    assert relief_pid in dict(children_of(worker.pid))
    assert worker.stop(30) == 0
    assert relief_pid not in dict(children_of(worker.pid)) and not Path(f"/proc/{relief_pid}").exists()
    assert ledger.get(long_id).state == "succeeded" and ledger.get(long_id).attempt == 1
    assert "took over" not in worker.log() and worker.log().count(" started: ") == 2  # no restart
    rows = workers_in_status(leak_env)
    assert sorted(row["status"] for row in rows) == ["stopped", "stopped"], rows  # the consumer and its relief


def test_a_relief_dies_with_its_consumer(leak_env, start_worker, tmp_path):
    """A consumer SIGKILLed while it hands over leaves no relief behind (parent-death signal)."""
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="thread", NIGHTSHIFT_WORKERS=2, NIGHTSHIFT_MAX_MEMORY_MB=150)
    _, relief_pid = handing_over(worker, tmp_path)
    processes, left = faults.sigkill_consumer(worker)
    assert relief_pid in {pid for pid, _ in processes}
    assert not left, left


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="a pid namespace of its own needs unshare and root")
def test_a_consumer_that_is_pid_1_hands_over_and_reaps_its_relief(leak_env, tmp_path):
    """As in a container: the consumer is PID 1 of its own pid namespace, restarts in place and reaps the relief
    it let go (no zombie left); the stream of jobs never waits."""
    log_path = tmp_path / "pid1.log"
    with open(log_path, "ab") as log_file:
        outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "app", "worker"],
                                 env=leak_env.full(NIGHTSHIFT_WORKER_TYPE="thread", NIGHTSHIFT_WORKERS=2,
                                                   NIGHTSHIFT_MAX_MEMORY_MB=150),
                                 cwd=leak_env.tmp, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"started" in log_path.read_bytes(), 20, message="the consumer started")
        [(consumer, _)] = children_of(outer.pid)  # PID 1 inside, `consumer` out here
        ids = steady_stream(tmp_path, leaks_at=(1.2,), megabytes=120, long_job_at=1.0)
        assert_no_long_wait(finished_once(ids), log_path.read_text(errors="replace"))
        wait_until(lambda: b"took over: let its relief" in log_path.read_bytes(), 30, message="relief let go")
        wait_until(lambda: children_of(consumer) == [], 20, message="the relief exited and was reaped")
        rows = workers_in_status(leak_env)
        assert [row["pid"] for row in rows if row["status"] == "recycled"] == [1], rows
        assert [row["pid"] for row in rows if row["status"] == "alive"] == [1], rows
        os.kill(consumer, signal.SIGTERM)
        assert outer.wait(30) == 0
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait(10)

"""Flow control across consumers: rate limits that wait and concurrency limits per key (issue 14, items 3-4).

Real consumers as subprocesses sharing one Redis and one ledger; every job records its start and end."""
from __future__ import annotations

import pytest

from conftest import wait_until


@pytest.fixture
def flow_env(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,flow_tasks")
    return env


def events(directory):
    path = directory / "starts.log"
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(float(row[0]), row[1], row[2], row[3] if len(row) > 3 else "") for row in rows]


def all_succeeded(ids) -> bool:
    from app.models import Job
    return Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids)


def most_at_once(rows, tag=None) -> int:
    """The most jobs running at the same moment (of `tag` only, when given)."""
    points = sorted((t, 1 if what == "start" else -1) for t, what, _, row_tag in rows
                    if tag is None or row_tag == tag)
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


def test_a_rate_limit_holds_across_consumers_and_waits_instead_of_failing(flow_env, start_worker, tmp_path):
    from app import ledger, submit_many
    ids = submit_many("five_per_second", [{"directory": str(tmp_path)} for _ in range(40)])
    start_worker(NIGHTSHIFT_WORKERS=3)
    start_worker(NIGHTSHIFT_WORKERS=3)
    wait_until(lambda: all_succeeded(ids), 40, interval=0.2, message="40 rate-limited jobs done")
    starts = sorted(t for t, what, _, _ in events(tmp_path) if what == "start")
    assert len(starts) == 40
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    print(f"rate 5/s, 2 consumers: 40 jobs in {starts[-1] - starts[0]:.1f} s, at most {busiest} in any 1-s window")
    assert busiest <= 6, busiest
    assert starts[-1] - starts[0] >= 7.0
    assert all(ledger.get(job_id).attempt == 1 for job_id in ids), "a job over the limit used an attempt"


def test_concurrency_per_key_holds_across_consumers(flow_env, start_worker, tmp_path):
    from app import submit_many
    ids = submit_many("two_per_host", [{"directory": str(tmp_path), "host": host, "seconds": 0.6}
                                       for host in ("a", "b") for _ in range(6)])
    start_worker(NIGHTSHIFT_WORKERS=4)
    start_worker(NIGHTSHIFT_WORKERS=4)
    wait_until(lambda: all_succeeded(ids), 40, interval=0.2, message="12 jobs done")
    rows = events(tmp_path)
    assert most_at_once(rows, "a") == 2 and most_at_once(rows, "b") == 2, rows
    assert most_at_once(rows) >= 3  # the hosts do not hold each other up


def test_concurrency_one_without_a_key_is_a_global_mutex(flow_env, start_worker, tmp_path):
    from app import submit_many
    ids = submit_many("one_at_a_time", [{"directory": str(tmp_path), "seconds": 0.3} for _ in range(6)])
    start_worker(NIGHTSHIFT_WORKERS=3)
    start_worker(NIGHTSHIFT_WORKERS=3)
    wait_until(lambda: all_succeeded(ids), 30, interval=0.2, message="6 jobs done")
    assert most_at_once(events(tmp_path)) == 1


def test_the_slot_of_a_killed_consumer_frees_itself(flow_env, start_worker, tmp_path, monkeypatch):
    flow_env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=2, NIGHTSHIFT_RECOVERY_INTERVAL=60)
    from app import submit
    first = submit("one_at_a_time", directory=str(tmp_path), seconds=60)
    holder = start_worker()
    wait_until(lambda: any(what == "start" for _, what, _, _ in events(tmp_path)), 10, message="slot held")
    holder.kill()
    second = submit("one_at_a_time", directory=str(tmp_path), seconds=0.1)
    start_worker()
    wait_until(lambda: all_succeeded([second]), 15, message="the next job gets the slot of the killed consumer")
    starts = [job_id for _, what, job_id, _ in events(tmp_path) if what == "start"]
    assert starts == [first, second]


def test_bad_limits_fail_where_the_task_is_declared():
    from app import task
    from app.flow import BadLimit
    for options, message in [({"rate_limit": "5 per second"}, "rate_limit"), ({"concurrency": 0}, "concurrency"),
                             ({"concurrency": 2, "concurrency_key": "nope"}, "not a parameter"),
                             ({"concurrency_key": "host"}, "needs concurrency")]:
        with pytest.raises(BadLimit, match=message):
            task(**options)(lambda host: None)


def test_a_paused_queue_takes_jobs_but_starts_none_until_resumed_even_across_restarts(env, start_worker, tmp_path):
    import json
    import time

    from app import submit
    from app.models import Job
    from conftest import cli
    worker = start_worker()
    paused = cli(env, "pause")
    assert paused.returncode == 0 and "is now paused" in paused.stdout, paused
    wait_until(lambda: "paused: no job starts here" in worker.log(), 10, message="the worker saw the pause")
    ids = [submit("record_effect", directory=str(tmp_path)) for _ in range(5)]
    status = json.loads(cli(env, "status", "--json").stdout)
    assert status["queues"][0]["paused"] is True
    assert "PAUSED" in cli(env, "status").stdout
    time.sleep(1.5)
    assert Job.select().where(Job.id.in_(ids), Job.state == "queued").count() == 5
    worker.stop()
    worker = start_worker()
    assert "is paused" in worker.log()
    time.sleep(1.5)
    assert Job.select().where(Job.id.in_(ids), Job.state == "queued").count() == 5, "a restart lost the pause"
    resumed = cli(env, "resume")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    wait_until(lambda: all_succeeded(ids), 15, message="jobs run after resume")
    assert "resumed: jobs start here again" in worker.log()


@pytest.mark.parametrize("worker_type, task_name", [("thread", "busy"), ("process", "sleeper")])
def test_cancel_stops_a_running_job(flow_env, start_worker, tmp_path, worker_type, task_name):
    """A thread worker's Python code stops at its next bytecode; a process worker's job at once, even in a
    blocking sleep. The ledger says canceled, the job is not retried."""
    import time

    from app import ledger, submit
    from conftest import cli
    job_id = submit(task_name, directory=str(tmp_path), seconds=30)
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE=worker_type)
    wait_until(lambda: ledger.state_of(job_id) == "running", 10, message="job running")
    began = time.monotonic()
    out = cli(flow_env, "cancel", job_id)
    assert out.returncode == 0 and "canceled 1 job" in out.stdout, out
    wait_until(lambda: '"canceled"' in worker.log() and job_id in worker.log(), 10,
               message="the worker stopped the job")
    assert time.monotonic() - began < 5
    job = ledger.get(job_id)
    assert job.state == "canceled" and job.attempt == 1
    assert [(a.number, a.outcome) for a in ledger.attempts(job_id)] == [(1, "canceled")]
    assert not [row for row in events(tmp_path) if row[1] == "end"]
    # The worker goes on with other work.
    other = submit("five_per_second", directory=str(tmp_path))
    wait_until(lambda: ledger.state_of(other) == "succeeded", 10, message="next job")


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_a_worker_over_its_memory_limit_is_recycled_and_the_queue_goes_on(flow_env, start_worker, tmp_path,
                                                                            worker_type):
    import json
    import time

    from app import submit
    from conftest import cli
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE=worker_type, NIGHTSHIFT_WORKERS=2, NIGHTSHIFT_MAX_MEMORY_MB=150)
    ids = []
    for _ in range(4):  # each leaks 120 MB: every worker that ran one is over the limit
        ids.append(submit("leak", directory=str(tmp_path), megabytes=120))
        time.sleep(0.3)
    ids += [submit("five_per_second", directory=str(tmp_path)) for _ in range(5)]
    wait_until(lambda: all_succeeded(ids), 40, interval=0.2, message="leaking jobs and the rest done")
    assert worker.alive()

    def recycled_and_fresh():
        """Each worker process that ran a leak was recycled; thread workers share one process, which goes on
        taking jobs while its relief starts (app.relief), so it may have run every leak before it restarted."""
        rows = json.loads(cli(flow_env, "status", "--json").stdout)["workers"]
        alive = [row for row in rows if row["status"] == "alive"]
        recycled = [row for row in rows if row["status"] == "recycled"]
        fresh = alive and all(row["rss_bytes"] < 150 * 2**20 for row in alive)
        return rows if fresh and len(recycled) >= (2 if worker_type == "process" else 1) else None
    wait_until(recycled_and_fresh, 20, interval=0.3, message="recycled workers, and the alive ones under the limit")
    assert "over NIGHTSHIFT_MAX_MEMORY_MB" in worker.log()

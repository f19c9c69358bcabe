"""Two services with different NIGHTSHIFT_QUEUE on one ledger and one Redis leave each other's jobs alone
(issue 10, item 5); a ledger made before jobs recorded their queue is brought up to date."""
from __future__ import annotations

import json

from conftest import cli, wait_until


def test_two_services_on_one_ledger_do_not_touch_each_others_jobs(env, start_worker, monkeypatch, tmp_path):
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0, NIGHTSHIFT_RECOVERY_INTERVAL=0.5)
    import config
    from app import ledger, submit
    from app.models import Job
    from app.queue import build_huey
    queue_a = env["NIGHTSHIFT_QUEUE"]
    queue_b = queue_a + "b"
    b = {"NIGHTSHIFT_QUEUE": queue_b, "NIGHTSHIFT_TASK_MODULES": "tasks"}  # B does not know sample_tasks
    b_debug = {**b, "NIGHTSHIFT_LOG_LEVEL": "debug"}  # its log shows every recovery pass
    # A's jobs wait (A's consumer is not started yet): some of a task only A knows, some of one both know.
    only_a = [submit("record_effect", directory=str(tmp_path)) for _ in range(10)]
    both = [submit("count_primes", limit=100) for _ in range(10)]
    gives_up = submit("gives_up")
    worker_b = start_worker("b", **b_debug)
    b_job = cli(env, "submit", "count_primes", "--arg", "limit=50", **b).stdout.strip()
    wait_until(lambda: ledger.state_of(b_job) == "succeeded", 15, message="B runs its own job")
    worker_b.wait_recovery_passes(1)  # a whole pass of B's recovery, with no grace, while A's jobs wait

    assert all(ledger.state_of(job_id) == "queued" for job_id in only_a + both + [gives_up]), \
        [(j.task, j.state, j.reason) for j in Job.select().where(Job.id.in_(only_a + both), Job.state != "queued")]
    huey_b = build_huey(config.load({**env, **b}))
    on_b = b"".join(data for key in (huey_b.storage.queue_key, huey_b.storage.schedule_key)
                    for data, _ in huey_b.storage.conn.zscan_iter(key))
    assert not any(job_id.encode() in on_b for job_id in only_a + both), "A's jobs were copied to B's queue"
    assert "sent again" not in worker_b.log() and "cannot recover" not in worker_b.log()

    # Per-queue commands: B's see B's jobs and say so; --all-queues and --queue see A's.
    listed = cli(env, "list", **b)
    assert listed.stdout.splitlines()[0] == f"queue {queue_b!r}:" and only_a[0][:8] not in listed.stdout
    assert b_job[:13] in listed.stdout
    everything = cli(env, "list", "--all-queues", "--limit", "100", **b).stdout
    assert everything.splitlines()[0] == "all queues:" and "QUEUE" in everything
    assert only_a[0][:13] in everything and b_job[:13] in everything
    assert {j["id"] for j in json.loads(cli(env, "list", "--queue", queue_a, "--json", "--limit", "100",
                                            **b).stdout)} == set(only_a + both + [gives_up])
    status_b = json.loads(cli(env, "status", "--json", **b).stdout)
    assert [(q["name"], q["waiting"]) for q in status_b["queues"]] == [(queue_b, 0)]
    both_status = json.loads(cli(env, "status", "--json", "--all-queues", **b).stdout)
    assert {q["name"]: q["waiting"] for q in both_status["queues"]} == {queue_a: 21, queue_b: 0}

    worker_a = start_worker("a")
    wait_until(lambda: all(ledger.state_of(j) == "succeeded" for j in only_a + both)
               and ledger.state_of(gives_up) == "dead", 30, message="A runs its own jobs")
    assert {Job.get_by_id(j).worker.split(":")[1] for j in only_a + both} == {str(worker_a.pid)}
    assert len((tmp_path / "runs.log").read_text().splitlines()) == len(only_a)  # each ran once
    assert Job.get_by_id(b_job).queue == queue_b and Job.get_by_id(only_a[0]).queue == queue_a

    dead_b = cli(env, "dead", **b)
    assert dead_b.stdout.splitlines()[0] == f"queue {queue_b!r}:" and gives_up[:13] not in dead_b.stdout
    assert gives_up[:13] in cli(env, "dead").stdout
    retried = cli(env, "retry", "--all", **b)
    assert retried.stdout.strip() == "retried 0 job(s)" and queue_b in retried.stderr
    assert ledger.state_of(gives_up) == "dead"
    assert queue_b in cli(env, "cleanup", "--dry-run", **b).stdout
    assert worker_a.alive() and worker_b.alive()


def make_old_ledger(db) -> None:
    """Turn this test's fresh ledger into one as the version before `queue` left it."""
    for index in ("job_queue_state_updated_at", "job_queue_state_lease_expires_at", "job_queue_state_created_at",
                  "job_queue_state_created_at_id"):
        db.execute_sql(f'DROP INDEX IF EXISTS "{index}"')
    db.execute_sql('ALTER TABLE "nightshift_job" DROP COLUMN "queue"')


def reopen(url):
    from app import db, schema
    db.database.obj.close()
    schema._url = None
    return schema.open_ledger(url)


def old_job(db, job_id, state="queued"):
    db.execute_sql('INSERT INTO "nightshift_job" ("id", "task", "kwargs", "state", "attempt", "retries_left", '
                   '"retry_delay", "priority", "lease_losses", "created_at", "updated_at") '
                   "VALUES ('%s', 'add', '{}', '%s', 1, 0, 0, 0, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                   % (job_id, state))


def beat(db, worker_id, queue):
    db.execute_sql('INSERT INTO "nightshift_worker" ("id", "host", "pid", "queue", "started_at", "last_seen", '
                   '"rss_bytes", "jobs_done", "current") '
                   f"VALUES ('{worker_id}', 'h', 1, '{queue}', '2026-01-01', '2026-01-01', 0, 0, '[]')")


def test_an_old_ledger_of_one_service_gets_the_queue_column_and_its_rows_that_queue(env):
    from app import db, ledger
    from app.models import Job
    make_old_ledger(db.database.obj)
    old_job(db.database.obj, "old-1")
    beat(db.database.obj, "h:1:aa", "the-old-queue")
    reopen(env["NIGHTSHIFT_DATABASE_URL"])
    assert Job.get_by_id("old-1").queue == "the-old-queue"
    reopen(env["NIGHTSHIFT_DATABASE_URL"])  # idempotent
    assert ledger.get("old-1").queue == "the-old-queue"
    indexes = {i.name for i in db.database.obj.get_indexes("nightshift_job")}
    assert "job_queue_state_created_at_id" in indexes


def test_an_old_ledger_shared_by_several_services_leaves_old_rows_alone(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import db, ledger, recovery
    from app.queue import get_huey
    make_old_ledger(db.database.obj)
    old_job(db.database.obj, "old-2")
    beat(db.database.obj, "h:1:aa", "service-a")
    beat(db.database.obj, "h:2:bb", "service-b")
    reopen(env["NIGHTSHIFT_DATABASE_URL"])
    assert ledger.get("old-2").queue is None
    assert recovery.recover(get_huey()).resent == 0 and ledger.state_of("old-2") == "queued"
    listed = json.loads(cli(env, "list", "--all-queues", "--json").stdout)
    assert [(j["id"], j["queue"]) for j in listed] == [("old-2", None)]
    assert json.loads(cli(env, "list", "--json").stdout) == []

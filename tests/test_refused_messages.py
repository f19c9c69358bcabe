"""A message the consumer refuses but that names a job the ledger knows makes THAT job dead, once; recovery never
sends it again, so it never runs by another path (issue 10, item 12; issue 11, item 7)."""
from __future__ import annotations

from conftest import wait_until


def dead_rows():
    from app.models import Job
    return list(Job.select().where(Job.state == "dead"))


def test_unknown_task_gives_one_dead_entry_and_recovery_never_adds_another(env, start_worker, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0, NIGHTSHIFT_LOG_LEVEL="debug")
    from app import ledger, recovery, submit
    from app.queue import get_huey
    job_id = submit("add", a=1)  # this process knows `add`; the consumer below does not
    worker = start_worker(NIGHTSHIFT_TASK_MODULES="tasks")
    wait_until(lambda: ledger.state_of(job_id) == "dead", 15, message="the job is dead")
    for _ in range(3):  # recovery here knows the task
        assert recovery.recover(get_huey()).resent == 0
    worker.wait_recovery_passes(1)  # and the worker's own, with grace 0
    rows = dead_rows()
    assert [row.id for row in rows] == [job_id], [(row.id, row.task, row.reason) for row in rows]
    job = rows[0]
    assert "unknown task 'add'" in job.reason and job_id in job.error and job.raw is None
    assert ledger.attempts(job_id) == [] and job.started_at is None
    assert worker.alive()


def test_a_message_signed_with_another_key_never_runs(env, start_worker, monkeypatch, tmp_path):
    env.set(monkeypatch, NIGHTSHIFT_SIGNING_KEY="the-consumers-key", NIGHTSHIFT_RECOVERY_GRACE=0,
            NIGHTSHIFT_LOG_LEVEL="debug")
    from app import ledger, producer
    from app.codec import JSONCodec
    from app.queue import get_huey
    # A producer whose NIGHTSHIFT_SIGNING_KEY differs: the job is in the ledger, its message signed wrongly.
    task = producer.build_task("record_effect", {"directory": str(tmp_path)})
    task.attempt = 1
    ledger.insert_jobs([producer._row(task, None)], env["NIGHTSHIFT_QUEUE"])
    huey = get_huey()
    data = JSONCodec("a-different-key").serialize(huey._registry.create_message(task))
    huey.storage.conn.zadd(huey.storage.queue_key, {b"\0" * 8 + data: 0})
    worker = start_worker()
    wait_until(lambda: ledger.state_of(task.id) == "dead", 15, message="the job is dead")
    worker.wait_recovery_passes(1)  # a whole pass of recovery with grace 0 after it went dead
    rows = dead_rows()
    assert [row.id for row in rows] == [task.id], [(row.id, row.task, row.reason) for row in rows]
    assert "signature does not match" in rows[0].reason and "not sent again" in rows[0].reason
    assert rows[0].error.startswith("refused message: ") and task.id in rows[0].error
    assert not (tmp_path / "runs.log").exists() and not (tmp_path / task.id).exists()  # never ran
    assert ledger.attempts(task.id) == [] and ledger.state_of(task.id) == "dead"
    assert "message missing from Redis; sent again" not in worker.log()
    assert worker.alive()


def test_a_refused_message_of_an_unknown_id_is_a_dead_letter_of_its_own(env, start_worker):
    import json
    from app.queue import get_huey
    huey = get_huey()
    data = json.dumps({"v": 1, "id": "not-in-the-ledger", "task": "no_such_task", "attempt": 1, "args": [],
                       "kwargs": {}}).encode()
    huey.storage.conn.zadd(huey.storage.queue_key, {b"\0" * 8 + data: 0})
    start_worker()
    wait_until(lambda: len(dead_rows()) == 1, 15, message="a dead letter")
    row = dead_rows()[0]
    assert row.id != "not-in-the-ledger" and row.task == "no_such_task" and "not-in-the-ledger" in row.raw

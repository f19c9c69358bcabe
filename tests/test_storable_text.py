"""Every text goes into the ledger storable: NUL characters, lone surrogates and over-long names or ids in errors
and poison messages are escaped or bounded, never an outcome that cannot be recorded (issue 10, item 6)."""
from __future__ import annotations

import json
import time

import pytest

from conftest import wait_until


def test_an_error_with_a_nul_character_is_recorded_and_the_job_runs_retries_plus_one_times(env, start_worker,
                                                                                          tmp_path):
    from app import ledger, submit
    job_id = submit("fails_with_nul", directory=str(tmp_path))
    worker = start_worker()
    wait_until(lambda: ledger.state_of(job_id) == "dead", 30, message="the job goes dead after its retries")
    job = ledger.get(job_id)
    assert job.error == "RuntimeError: bad\\x00byte", job.error
    assert job.reason == "failed on attempt 3 with no retries left"
    assert "bad\\x00byte" in job.traceback
    assert [(a.number, a.outcome, a.error) for a in ledger.attempts(job_id)] == \
        [(n, "failed", "RuntimeError: bad\\x00byte") for n in (1, 2, 3)]
    runs = (tmp_path / "runs.log").read_text().splitlines()
    assert runs == [f"{job_id} {n}" for n in (1, 2, 3)]  # retries + 1 runs, no re-run after a lost lease
    assert worker.alive()


def refuse_updates_to(state: str, when: str = "") -> None:
    """A trigger in the test's own ledger that makes the database refuse moving a job to `state` (and `when`):
    a real refusal of the outcome's write, not an unreachable ledger."""
    from conftest import USE_PG

    from app import db, ledger
    condition = f"NEW.state = '{state}'" + (f" AND {when}" if when else "")
    if USE_PG:
        db.database.obj.execute_sql("CREATE FUNCTION refuse_outcome() RETURNS trigger LANGUAGE plpgsql AS "
                                    "$$ BEGIN RAISE EXCEPTION 'refused by the test trigger'; END $$")
        db.database.obj.execute_sql(f'CREATE TRIGGER refuse_outcome BEFORE UPDATE ON "{ledger.JOB_TABLE}" '
                                    f"FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION refuse_outcome()")
    else:
        db.database.obj.execute_sql(f'CREATE TRIGGER refuse_outcome BEFORE UPDATE ON "{ledger.JOB_TABLE}" '
                                    f"WHEN {condition} BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); "
                                    f"END")


@pytest.mark.parametrize("outcome, task, options, refused, when", [
    ("succeeded", "record_effect", {}, "succeeded", ""),
    ("failed and will be retried", "fails_with_nul", {}, "retrying", ""),
    ("failed with no retries left", "fails_with_nul", {"retries": 0}, "dead", "NEW.error IS NOT NULL"),
], ids=["succeeded", "retrying", "dead"])
def test_an_outcome_the_database_refuses_ends_the_job_dead_and_never_runs_it_again(
        env, start_worker, tmp_path, monkeypatch, outcome, task, options, refused, when):
    """The database answers but refuses the write of an attempt's outcome (here a trigger; in life a constraint
    or a value it cannot take): the job ends dead saying so, once, instead of losing its lease and running
    again until it is dead of lost leases with the real story gone."""
    env.set(monkeypatch, NIGHTSHIFT_LEASE_SECONDS=1, NIGHTSHIFT_RECOVERY_INTERVAL=0.5, NIGHTSHIFT_LOG_LEVEL="debug")
    from app import ledger, submit
    job_id = submit(task, directory=str(tmp_path), **options)
    refuse_updates_to(refused, when)
    worker = start_worker()
    wait_until(lambda: ledger.state_of(job_id) == "dead", 20, message=f"the job goes dead:\n{worker.log()[-3000:]}")
    worker.wait_recovery_passes(1, since=time.time() + 1)  # past the lease (1 s): nothing runs it again
    job = ledger.get(job_id)
    assert job.reason.startswith("outcome could not be recorded: "), (job.reason, worker.log()[-3000:])
    assert "refused by the test trigger" in job.reason and f"(the attempt {outcome})" in job.reason, job.reason
    assert [(a.number, a.outcome) for a in ledger.attempts(job_id)] == [(1, "unrecorded")]
    runs = [line for line in (tmp_path / "runs.log").read_text().splitlines() if line.startswith(job_id)]
    assert len(runs) == 1, runs
    assert worker.alive() and "marking it dead instead" in worker.log()


def test_poison_messages_with_unstorable_text_are_dead_letters(env, start_worker):
    from app import ledger, submit
    from app.models import Job
    from app.queue import get_huey
    huey = get_huey()
    base = {"v": 1, "task": "add", "attempt": 1, "args": [], "kwargs": {"a": 1}}
    long_name = "t" * 5000
    messages = {
        "nul-in-task": dict(base, id="nul-in-task", task="no\x00such\udcfftask"),
        "long-task": dict(base, id="long-task", task=long_name),
        "long-id": dict(base, id="x" * 40),
        "nul-in-id": dict(base, id="ab\x00cd"),
    }
    pipe = huey.storage.conn.pipeline()
    for index, message in enumerate(messages.values()):
        data = json.dumps(message).encode()  # "\u0000" and "\udcff" escapes: valid JSON, unstorable text
        pipe.zadd(huey.storage.queue_key, {index.to_bytes(8, "big") + data: 0})
    pipe.execute()
    good = submit("add", a=1)
    worker = start_worker()
    wait_until(lambda: ledger.state_of(good) == "succeeded", 20, message="the good job runs")
    wait_until(lambda: Job.select().where(Job.state == "dead").count() == len(messages), 10,
               message=f"{len(messages)} dead letters")
    dead = list(Job.select().where(Job.state == "dead"))
    by_reason = {job.reason: job for job in dead}
    assert all(len(job.id) <= 36 and len(job.task) <= 200 for job in dead)
    nul = next(job for job in dead if "no\\x00such" in job.reason)
    assert nul.task == "no\\x00such\\udcfftask" and "unknown task" in nul.reason
    long_task = next(job for job in dead if job.task.startswith("ttt"))
    assert len(long_task.task) == 200 and "unknown task" in long_task.reason
    long_id = next(job for job in dead if "x" * 40 in (job.raw or ""))
    assert "cannot be a job id" in long_id.reason and "x" * 40 in long_id.reason
    nul_id = next(job for job in dead if "ab\\x00cd" in (job.reason or ""))
    assert "cannot be a job id" in nul_id.reason
    assert len(by_reason) == len(messages)
    assert worker.alive()


def test_storable_escapes_and_bounds():
    from app import ledger
    assert ledger.storable("bad\x00byte") == "bad\\x00byte"
    assert ledger.storable("a\udcffb") == "a\\udcffb"
    assert ledger.storable("é") == "é"
    assert len(ledger.storable("x" * 5000, 200)) == 200
    assert ledger.storable(None) is None
    assert not ledger.is_storable_id("x" * 40) and not ledger.is_storable_id("a\x00") and ledger.is_storable_id("a")

"""Submit from the shell, run in a real worker, find it in the ledger."""
from __future__ import annotations

import datetime
import json
import signal

import pytest

from conftest import cli, wait_until


def job(env, job_id):
    out = cli(env, "show", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def queue_size(env):
    from app.queue import get_huey
    return get_huey().pending_count() + get_huey().scheduled_count()


def ledger_count():
    from app.models import Job
    return Job.select().count()


def test_submit_run_succeeded_with_every_step_in_the_ledger(env, start_worker, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("hello\n")
    out = cli(env, "submit", "checksum_file", "--arg", f"path={target}")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert len(job_id) == 36 and "\n" not in job_id
    assert job(env, job_id)["state"] == "queued"

    start_worker()
    data = wait_until(lambda: (d := job(env, job_id))["state"] == "succeeded" and d, 15, message="success")
    assert data["result"]["sha256"] == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert data["args"] == {"path": str(target)}
    assert data["attempt"] == 1 and data["worker"]
    assert data["created_at"] <= data["started_at"] <= data["finished_at"]
    assert data["duration"] >= 0
    [attempt] = data["attempts"]
    assert attempt["outcome"] == "succeeded" and attempt["number"] == 1
    shown = cli(env, "show", job_id)
    assert "state     succeeded" in shown.stdout and "sha256" in shown.stdout


def test_failing_task_retries_then_dies_with_traceback(env, start_worker):
    out = cli(env, "submit", "always_fails", "--arg", "message=kaput")
    job_id = out.stdout.strip()
    start_worker()
    data = wait_until(lambda: (d := job(env, job_id))["state"] == "dead" and d, 15, message="dead")
    assert data["error"] == "RuntimeError: kaput"
    assert "Traceback" in data["traceback"] and "raise RuntimeError(message)" in data["traceback"]
    assert [a["outcome"] for a in data["attempts"]] == ["failed", "failed", "failed"]
    assert data["attempt"] == 3 and "no retries left" in data["reason"]
    listed = json.loads(cli(env, "list", "--state", "failed", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]


def test_retry_then_success_goes_through_retrying(env, start_worker):
    from app import submit
    from app.models import Job
    job_id = submit("fails_first", times=1)
    start_worker()
    wait_until(lambda: Job.get_by_id(job_id).state == "succeeded", 15, message="success after retry")
    data = job(env, job_id)
    assert [a["outcome"] for a in data["attempts"]] == ["failed", "succeeded"]
    assert data["attempt"] == 2


@pytest.mark.parametrize("args, expected", [
    (["--arg", "a=1", "--arg", "c=2"], "unexpected keyword argument 'c'"),
    (["--arg", "b=2"], "missing a required argument: 'a'"),
    (["--json", '{"a": NaN}'], "is nan, which JSON cannot represent"),
    (["--json", "[1, 2]"], "JSON object"),
    (["--arg", "a"], "NAME=VALUE"),
])
def test_bad_arguments_are_refused_and_nothing_is_queued(env, args, expected):
    out = cli(env, "submit", "add", *args)
    assert out.returncode == 2
    assert expected in out.stderr
    assert queue_size(env) == 0 and ledger_count() == 0


def test_unknown_task_suggests_close_names(env):
    out = cli(env, "submit", "checksum_fil", "--arg", "path=/etc/hostname")
    assert out.returncode == 2
    assert "unknown task 'checksum_fil'" in out.stderr and "checksum_file" in out.stderr
    assert queue_size(env) == 0 and ledger_count() == 0


@pytest.mark.parametrize("value, words", [
    (datetime.datetime(2026, 1, 1), "argument 'a' is a datetime"),
    ({1, 2}, "argument 'a' is a set"),
    (float("nan"), "argument 'a' is nan"),
    (object(), "argument 'a' is a object"),
    ({"nested": [1, (2, 3)]}, "argument 'a'['nested'][1] is a tuple"),
])
def test_python_api_refuses_non_json_arguments(env, value, words):
    from app import submit
    from app.codec import NotJSON
    with pytest.raises(NotJSON, match=words.replace("[", r"\[").replace("]", r"\]")):
        submit("add", a=value)
    assert queue_size(env) == 0 and ledger_count() == 0


def test_python_api_and_direct_calls_record_and_queue(env, start_worker):
    import sample_tasks
    from app import submit, submit_many
    from app.models import Job
    one = submit("add", a=1, b=2, priority=5)
    many = submit_many("add", [{"a": i, "b": i} for i in range(50)])
    direct = sample_tasks.add(20, b=22)
    assert len(set(many)) == 50
    assert queue_size(env) == 52
    assert Job.get_by_id(direct.id).kwargs == json.dumps({"a": 20, "b": 22})
    start_worker()
    wait_until(lambda: Job.select().where(Job.state == "succeeded").count() == 52, 20, message="all succeeded")
    assert direct.get(blocking=True, timeout=5) == 42
    assert job(env, one)["result"] == 3


def test_delay_schedules_for_later(env, start_worker):
    from app import submit
    from app.models import Job
    job_id = submit("add", a=1, delay=2)
    start_worker()
    assert Job.get_by_id(job_id).state == "queued"
    wait_until(lambda: Job.get_by_id(job_id).state == "succeeded", 10, message="delayed job ran")
    data = job(env, job_id)
    assert data["started_at"] >= data["eta"]


def test_wait_exit_codes(env, start_worker):
    start_worker()
    ok = cli(env, "submit", "add", "--arg", "a=2", "--wait", "--timeout", "20")
    assert ok.returncode == 0, ok.stderr
    assert "succeeded" in ok.stderr and len(ok.stdout.strip()) == 36
    bad = cli(env, "submit", "always_fails", "--wait", "--timeout", "20")
    assert bad.returncode == 1 and "dead" in bad.stderr and "RuntimeError: boom" in bad.stderr
    slow = cli(env, "submit", "sleep_for", "--arg", "seconds=5", "--wait", "--timeout", "0.5")
    assert slow.returncode == 124 and "still" in slow.stderr


def test_bulk_file_submits_all_or_nothing(env, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"a": i}) for i in range(2500)) + "\n")
    out = cli(env, "submit", "add", "--file", str(good))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2500" and queue_size(env) == 2500 and ledger_count() == 2500

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": 2, "zzz": 3}\nnot json\n[1]\n{"a": 5}\n')
    out = cli(env, "submit", "add", "--file", str(bad))
    assert out.returncode == 2
    assert "line 2" in out.stderr and "line 3" in out.stderr and "line 4" in out.stderr
    assert "nothing was queued" in out.stderr
    assert ledger_count() == 2500 and queue_size(env) == 2500


def test_bulk_submits_record_and_send_what_a_single_submit_does(env, tmp_path):
    """`submit --file` and submit_many build the rows and messages of many jobs at once (producer.submit_batch)
    instead of through a task object each: every row and message must be what a single submit writes, but for
    the id. Their ids are made in order (app.jobids), so rows go into the ledger in id order while due jobs are
    dequeued in the order given."""
    import uuid
    from app import submit, submit_many
    from app.models import Job
    from app.queue import get_huey
    eta = datetime.datetime(2031, 1, 2, 3, 4, 5)
    single = submit("add", a=7, b=1, priority=4, retries=2, eta=eta)
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"a": 7, "b": 1}\n' * 3)
    out = cli(env, "submit", "add", "--file", str(path), "--priority", "4", "--retries", "2",
              "--eta", "2031-01-02T03:04:05")
    assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr
    many = submit_many("add", [{"a": 7, "b": 1}] * 3, priority=4, retries=2, eta=eta)

    def row(job):
        return {name: getattr(job, name) for name in Job._meta.fields if name not in ("id", "created_at",
                                                                                      "updated_at")}
    expected = row(Job.get_by_id(single))
    assert expected["kwargs"] == json.dumps({"a": 7, "b": 1}) and expected["eta"] == eta
    bulk = [job for job in Job.select() if job.id != single]
    assert len(bulk) == 6 and set(many) <= {job.id for job in bulk}
    assert all(row(job) == expected for job in bulk)
    huey = get_huey()
    messages = {huey.deserialize_task(data).id: data
                for data in huey.storage.conn.zrange(huey.storage.schedule_key, 0, -1)}
    assert len(messages) == 7
    assert all(messages[job.id].replace(job.id.encode(), single.encode()) == messages[single] for job in bulk)

    due = submit_many("add", [{"a": i} for i in range(50)])
    assert all(str(uuid.UUID(job_id)) == job_id and uuid.UUID(job_id).version == 8 for job_id in due)
    assert due == sorted(due) and len(set(due)) == 50
    assert [huey.dequeue().kwargs["a"] for _ in due] == list(range(50))


def test_list_and_tasks_read_commands_have_json(env):
    from app import submit
    ids = [submit("add", a=i) for i in range(3)]
    listed = json.loads(cli(env, "list", "--task", "add", "--limit", "2", "--json").stdout)
    assert len(listed) == 2 and {j["id"] for j in listed} <= set(ids)
    assert "add" in cli(env, "list").stdout
    catalog = {t["name"]: t for t in json.loads(cli(env, "tasks", "--json").stdout)}
    assert catalog["checksum_file"]["parameters"] == ["path: str"]
    assert catalog["checksum_file"]["doc"].startswith("SHA-256")
    assert "count_primes" in catalog
    text = cli(env, "tasks").stdout
    assert "checksum_file(path: str)" in text


def test_signed_messages_refuse_unsigned_and_tampered(env, start_worker, monkeypatch):
    from app import submit
    from app.models import Job
    from app.queue import get_huey
    env.set(monkeypatch, NIGHTSHIFT_SIGNING_KEY="s3cret")
    good = submit("add", a=1)
    raw = get_huey().storage.conn.zrange(get_huey().storage.queue_key, 0, -1)[0]
    assert b'"task":"add"' in raw  # readable JSON behind the signature, never pickle
    conn, key = get_huey().storage.conn, get_huey().storage.queue_key
    prefix, payload = raw[:8], raw[8:]
    tampered = payload.replace(b'"a":1', b'"a":9')
    unsigned = payload.split(b":", 1)[1].replace(b'"id":"', b'"id":"x')
    conn.zadd(key, {prefix[:-1] + b"\x01" + tampered: 0, prefix[:-1] + b"\x02" + unsigned: 0})
    worker = start_worker()
    wait_until(lambda: Job.get_by_id(good).state == "succeeded", 15, message="signed job runs")
    wait_until(lambda: Job.select().where(Job.state == "dead").count() == 2, 10, message="two dead letters")
    reasons = sorted(j.reason for j in Job.select().where(Job.state == "dead"))
    assert reasons == ["message is not signed but NIGHTSHIFT_SIGNING_KEY is set",
                       "message signature does not match NIGHTSHIFT_SIGNING_KEY"]
    assert all(j.raw for j in Job.select().where(Job.state == "dead"))
    assert job(env, good)["result"] == 1
    assert worker.alive()


def test_worker_with_unreachable_redis_or_database_says_which(env, start_worker, tmp_path):
    worker = start_worker(wait=False, NIGHTSHIFT_REDIS_URL="redis://127.0.0.1:1/0")
    assert worker.proc.wait(20) == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in worker.log()
    assert "NIGHTSHIFT_REDIS_URL" in worker.log() and "Traceback" not in worker.log()

    worker = start_worker(wait=False, NIGHTSHIFT_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert worker.proc.wait(20) == 1
    assert "ledger unreachable: cannot open the database at postgresql://nobody@127.0.0.1:1/none" in worker.log()


def test_invalid_setting_is_reported_by_name(env):
    out = cli(env, "list", NIGHTSHIFT_WORKERS="many")
    assert out.returncode == 2
    assert "NIGHTSHIFT_WORKERS='many' is invalid" in out.stderr


def test_graceful_stop_on_sigterm(env, start_worker):
    worker = start_worker()
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(15) == 0


def test_a_task_module_that_cannot_be_imported_is_one_clear_line(env, start_worker):
    out = cli(env, "tasks", NIGHTSHIFT_TASK_MODULES="tasks,no_such_module")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot import task module 'no_such_module' named by NIGHTSHIFT_TASK_MODULES" in out.stderr
    worker = start_worker(wait=False, NIGHTSHIFT_TASK_MODULES="no_such_module")
    assert worker.proc.wait(20) == 2 and "no_such_module" in worker.log() and "Traceback" not in worker.log()

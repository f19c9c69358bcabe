"""Named queues on one ledger and one Redis (issue 14, item 1): routing by decorator, by submit(queue=) and by
`--queue`; one consumer serving several queues, each with its own worker threads; per-queue status, list, dead and
retry; recovery of a non-default queue's job after SIGKILL; periodic ticks once with multi-queue consumers.

Real Redis, a real ledger (SQLite or PostgreSQL), consumers as real subprocesses sent real signals."""
from __future__ import annotations

import json
import re
import time

import pytest
import redis

from conftest import cli, cleanup_queue, wait_until

TICK = 2


@pytest.fixture
def queues(env, monkeypatch):
    """Two more queue names of this test's own (mail, slow); their Redis keys are deleted afterwards."""
    names = {"default": env["NIGHTSHIFT_QUEUE"], "mail": env["NIGHTSHIFT_QUEUE"] + "-mail",
             "slow": env["NIGHTSHIFT_QUEUE"] + "-slow"}
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,queue_tasks",
            NIGHTSHIFT_TEST_MAIL_QUEUE=names["mail"])
    from app import catalog
    for name in ("send_mail", "bounce_mail", "mail_tick"):  # imported once per test process: this test's name
        monkeypatch.setattr(catalog.get_task_class(name), "queue", names["mail"])
    yield names
    client = redis.Redis.from_url(env["NIGHTSHIFT_REDIS_URL"])
    for name in (names["mail"], names["slow"]):
        cleanup_queue(env["NIGHTSHIFT_REDIS_URL"], name)
        keys = list(client.scan_iter(f"nightshift:{name}:*"))
        if keys:
            client.delete(*keys)


def jobs(**where):
    from app.models import Job
    query = Job.select()
    for field, value in where.items():
        query = query.where(getattr(Job, field) == value)
    return list(query)


def state(job_id: str) -> str:
    from app.models import Job
    return Job.get_by_id(job_id).state


def test_routing_by_decorator_by_submit_and_by_the_command_line(env, queues, start_worker):
    from app import submit
    by_decorator = submit("send_mail", to="a@example.com")
    by_argument = submit("noop", queue=queues["mail"])
    overridden = submit("send_mail", queue=queues["slow"])
    default = submit("noop")
    by_cli = cli(env, "submit", "noop", "--queue", queues["mail"])
    assert by_cli.returncode == 0, by_cli.stderr
    decorated_cli = cli(env, "submit", "send_mail")  # a fresh process reads the task's queue from its decorator
    assert decorated_cli.returncode == 0, decorated_cli.stderr
    bad = cli(env, "submit", "noop", "--queue", "a,b")
    assert bad.returncode == 2 and "Nothing was queued" in bad.stderr
    routed = {job.id: job.queue for job in jobs()}
    assert routed == {by_decorator: queues["mail"], by_argument: queues["mail"], overridden: queues["slow"],
                      default: queues["default"], by_cli.stdout.strip(): queues["mail"],
                      decorated_cli.stdout.strip(): queues["mail"]}

    # A consumer of the mail queue alone runs the mail jobs, and nothing of the other queues.
    start_worker("mail-only", NIGHTSHIFT_QUEUES=f"{queues['mail']}=1")
    mail = [i for i, q in routed.items() if q == queues["mail"]]
    wait_until(lambda: all(state(i) == "succeeded" for i in mail), 15, message="mail jobs done")
    time.sleep(1)
    assert state(overridden) == "queued" and state(default) == "queued"


def test_one_consumer_two_queues_long_jobs_do_not_delay_the_other(env, queues, start_worker):
    from app import submit, submit_many
    worker = start_worker("both", NIGHTSHIFT_QUEUES=f"{queues['slow']}=2,{queues['mail']}=2")
    slow = [submit("sleep_for", seconds=6, queue=queues["slow"]) for _ in range(4)]  # 2 run, 2 wait: 12 s
    wait_until(lambda: sum(state(i) == "running" for i in slow) == 2, 10, message="slow jobs running")
    mail = submit_many("send_mail", [{"to": f"u{i}@example.com"} for i in range(30)])
    wait_until(lambda: all(state(i) == "succeeded" for i in mail), 10, message="mail jobs done")
    assert sum(state(i) == "running" for i in slow) == 2, "the slow jobs were meant to still be running"
    waits = sorted((job.started_at - job.created_at).total_seconds() for job in jobs(task="send_mail"))
    assert waits[int(0.95 * (len(waits) - 1))] < 1.0, waits

    # One process, one heartbeat row that lists both queues; each queue's status shows it.
    status = {}
    for name in (queues["slow"], queues["mail"]):
        out = cli(env, "status", "--queue", name, "--json")
        assert out.returncode == 0, out.stderr
        status[name] = json.loads(out.stdout)
    for name, data in status.items():
        alive = [w for w in data["workers"] if w["status"] == "alive"]
        assert [w["pid"] for w in alive] == [worker.pid], data["workers"]
        assert set(alive[0]["queue"].split(",")) == {queues["slow"], queues["mail"]}
    assert status[queues["slow"]]["queues"][0]["running"] == 2
    health = cli(env, "health")  # a consumer of other queues only is not one of NIGHTSHIFT_QUEUE's
    assert health.returncode != 0 and "no consumer" in health.stdout + health.stderr
    assert worker.stop(30) == 0


def test_status_list_dead_and_retry_by_queue(env, queues, start_worker):
    from app import submit
    dead_mail = submit("bounce_mail")
    dead_default = submit("always_fails", retries=0)
    start_worker("both", NIGHTSHIFT_QUEUES=f"{queues['mail']}=1,{queues['default']}=1")
    wait_until(lambda: state(dead_mail) == "dead" and state(dead_default) == "dead", 15, message="dead jobs")

    dead = cli(env, "dead", "--queue", queues["mail"], "--json")
    assert dead.returncode == 0, dead.stderr
    assert [job["id"] for job in json.loads(dead.stdout)] == [dead_mail]
    dead = cli(env, "dead", "--json")  # default: NIGHTSHIFT_QUEUE's
    assert [job["id"] for job in json.loads(dead.stdout)] == [dead_default]
    listed = cli(env, "list", "--queue", queues["mail"], "--task", "bounce_mail", "--json")
    assert [job["id"] for job in json.loads(listed.stdout)] == [dead_mail]
    status = json.loads(cli(env, "status", "--queue", queues["mail"], "--json").stdout)
    assert [(row["name"], row["dead"]) for row in status["queues"]] == [(queues["mail"], 1)]

    retried = cli(env, "retry", "--all", "--queue", queues["mail"])
    assert retried.returncode == 0 and "retried 1 job(s)" in retried.stdout, retried.stderr
    wait_until(lambda: jobs(id=dead_mail)[0].attempt == 2 and state(dead_mail) == "dead", 15,
               message="the retried mail job ran again on its queue")
    assert jobs(id=dead_default)[0].attempt == 1  # the other queue's dead job was left alone
    assert jobs(id=dead_mail)[0].queue == queues["mail"]


def test_a_job_on_a_named_queue_is_recovered_after_sigkill(env, queues, start_worker):
    from app import submit
    first = start_worker("first", NIGHTSHIFT_QUEUES=f"{queues['default']}=1,{queues['mail']}=1")
    job_id = submit("record_effect", directory=str(env.tmp), seconds=2, queue=queues["mail"])
    wait_until(lambda: state(job_id) == "running", 10, message="the job started")
    first.kill()
    start_worker("second", NIGHTSHIFT_QUEUES=f"{queues['mail']}=1,{queues['default']}=1")
    wait_until(lambda: state(job_id) == "succeeded", 30, message="the job recovered and done")
    job = jobs(id=job_id)[0]
    assert job.attempt == 2 and job.queue == queues["mail"]
    runs = (env.tmp / "runs.log").read_text().split("\n")
    assert [line.split()[1] for line in runs if line.endswith("start")] == ["1", "2"]


def test_process_workers_refuse_several_queues(env, queues):
    out = cli(env, "worker", "--queues", f"{queues['mail']}=1,{queues['default']}=1",
              NIGHTSHIFT_WORKER_TYPE="process", timeout=30)
    assert out.returncode == 2 and "thread workers only" in out.stderr, out.stderr
    out = cli(env, "worker", "--queues", "mail=0", timeout=30)
    assert out.returncode == 2 and "--queues" in out.stderr, out.stderr


@pytest.mark.parametrize("consumers", [1, 2])
def test_periodic_task_on_a_named_queue_once_per_tick(env, queues, start_worker, monkeypatch, consumers):
    env.set(monkeypatch, NIGHTSHIFT_TICK_SECONDS=TICK)
    served = f"{queues['mail']}=1,{queues['default']}=1"
    workers = [start_worker(f"c{i}", wait=False, NIGHTSHIFT_QUEUES=served) for i in range(consumers)]
    for worker in workers:
        worker.wait_started()
    first = (int(time.time()) // TICK + 1) * TICK  # the first tick every consumer was up for
    time.sleep(TICK * 4 - time.time() % TICK + 1.3)
    wait_until(lambda: all(job.state == "succeeded" for job in jobs(task="mail_tick")), 10,
               message="periodic mail jobs run on the mail queue")
    for worker in workers:  # stopped before counting: no tick is won between reading the logs and the ledger
        assert worker.stop(30) == 0
    won: dict[int, list[str]] = {}  # tick -> the consumers that enqueued it (from their logs)
    for worker in workers:
        for tick, who in re.findall(r"periodic tick (\d+) won by (\S+?): enqueued \d+ task\(s\): [^\"]*mail_tick",
                                    worker.log()):
            won.setdefault(int(tick), []).append(who)
    observed = sorted(t for t in won if t >= first)
    assert all(len(who) == 1 for who in won.values()), f"a tick was enqueued twice: {won}"
    assert len(observed) >= 3 and observed == list(range(first, observed[-1] + 1, TICK)), f"a tick was missed: {won}"
    assert len(jobs(task="mail_tick")) == len(won)  # one job per tick won, whatever the number of consumers
    assert {job.queue for job in jobs(task="mail_tick")} == {queues["mail"]}

"""Named queues on one ledger and one Redis (issue 14, item 1): routing by decorator, by submit(queue=) and by
`--queue`; one consumer serving several queues, each with its own worker threads; per-queue status, list, dead and
retry; recovery of a non-default queue's job after SIGKILL; periodic ticks once with multi-queue consumers;
cleanup and metrics of every queue.

Real Redis, a real ledger (SQLite or PostgreSQL), consumers as real subprocesses sent real signals."""
from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

from conftest import cli, cleanup_queue, free_port, wait_until

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


@pytest.mark.serial
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
    runs_log = env.tmp / "runs.log"
    # Claimed ("running") comes a moment before the task's first line: killed between them, attempt 1 never ran.
    wait_until(lambda: state(job_id) == "running" and runs_log.exists()
               and f"{job_id} 1 start" in runs_log.read_text(), 10, message="the job started")
    first.kill()
    start_worker("second", NIGHTSHIFT_QUEUES=f"{queues['mail']}=1,{queues['default']}=1")
    wait_until(lambda: state(job_id) == "succeeded", 30, message="the job recovered and done")
    job = jobs(id=job_id)[0]
    assert job.attempt == 2 and job.queue == queues["mail"]
    runs = runs_log.read_text().split("\n")
    assert [line.split()[1] for line in runs if line.endswith("start")] == ["1", "2"]


def test_process_workers_refuse_several_queues(env, queues):
    out = cli(env, "worker", "--queues", f"{queues['mail']}=1,{queues['default']}=1",
              NIGHTSHIFT_WORKER_TYPE="process", timeout=30)
    assert out.returncode == 2 and "thread workers only" in out.stderr, out.stderr
    out = cli(env, "worker", "--queues", "mail=0", timeout=30)
    assert out.returncode == 2 and "--queues" in out.stderr, out.stderr


@pytest.mark.slow
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


# -- cleanup and metrics of every queue ------------------------------------------------------------------------------

def gone(worker_id_queue: str) -> bool:
    """No live consumer of the queue by the ledger's one rule (ledger.gone_after)."""
    import config
    from app import ledger
    return not ledger.alive_worker_ids(worker_id_queue, ledger.now(), config.get())


def cleanup_report(env, *args: str) -> dict:
    out = cli(env, "cleanup", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cleanup_acts_on_every_queue_and_frees_gone_holders_locks(env, queues, start_worker):
    """The results of a second queue's jobs past retention, and the locks of consumers SIGKILLed while holding them
    (one in the service's queue, held by a consumer of the mail queue alone; one in another service's queue),
    go in the default cleanup; a live holder's lock stays, even though its holder serves another queue."""
    import config
    from app import ledger, submit
    from app.models import Job
    from app.queue import get_huey
    default, mail, slow = queues["default"], queues["mail"], queues["slow"]
    mail_only = start_worker("mail-only", NIGHTSHIFT_QUEUES=f"{mail}=1")
    other_service = start_worker("other-service", NIGHTSHIFT_QUEUE=slow)  # a service of its own on the ledger
    added = [submit("add", a=i, queue=mail) for i in range(3)]
    wait_until(lambda: all(state(i) == "succeeded" for i in added), 15, message="mail jobs done")
    result_keys = [get_huey(mail).storage.result_key(i) for i in added]
    conn = get_huey().storage.conn
    assert all(conn.ttl(key) > 0 for key in result_keys), "results of the mail queue are stored in its namespace"
    holders = [submit("hold_lock", name="export", seconds=120, queue=q) for q in (mail, slow)]
    lock_keys = [get_huey(q).storage.result_key(f"{q}.lock.export") for q in (default, slow)]
    wait_until(lambda: all(conn.exists(key) for key in lock_keys), 15, message="both locks taken")

    # Older than ledger.gone_after (1.5 s here), held by a live consumer of the mail queue alone: kept.
    def age(key: str) -> float:  # by the time its holder recorded in the lock, which cleanup goes by
        return time.time() - get_huey().serializer.deserialize(conn.get(key))["since"]
    wait_until(lambda: all(age(key) > ledger.gone_after(config.get()) for key in lock_keys), 10,
               message="both locks older than gone_after")
    kept = cleanup_report(env)
    assert kept["locks"] == 0 and all(conn.exists(key) for key in lock_keys), kept
    assert set(kept["queues"]) >= {default, mail, slow} and kept["every_queue"] is True

    # Eight days later (past NIGHTSHIFT_RETAIN_SUCCEEDED_DAYS) and both holders SIGKILLed.
    Job.update(finished_at=ledger.now() - datetime.timedelta(days=8)).where(Job.id.in_(added)).execute()
    mail_only.kill()
    other_service.kill()
    wait_until(lambda: gone(mail) and gone(slow), 10, message="both consumers gone by the ledger's rule")
    assert [state(i) for i in holders] == ["running", "running"]

    # --queue restricts it to that queue's jobs and keys, and says so.
    only_mail = cleanup_report(env, "--queue", mail, "--dry-run")
    assert (only_mail["queues"], only_mail["every_queue"]) == ([mail], False)
    assert (only_mail["jobs_succeeded"], only_mail["results"], only_mail["locks"]) == (3, 3, 0), only_mail
    only_default = cleanup_report(env, "--queue", default, "--dry-run")
    assert (only_default["jobs_succeeded"], only_default["results"], only_default["locks"]) == (0, 0, 1)
    text = cli(env, "cleanup", "--dry-run", "--queue", mail)
    assert text.returncode == 0 and f"would remove (queue {mail!r} (their jobs and keys only))" in text.stdout
    assert all(conn.exists(key) for key in result_keys + lock_keys), "--dry-run removed something"
    both = cli(env, "cleanup", "--queue", mail, "--all-queues")
    assert both.returncode == 2 and "exclude each other" in both.stderr

    report = cleanup_report(env)
    assert (report["jobs_succeeded"], report["results"], report["locks"]) == (3, 3, 2), report
    assert report["per_queue"][mail]["results"] == 3
    assert report["per_queue"][default]["locks"] == 1 and report["per_queue"][slow]["locks"] == 1
    assert not any(conn.exists(key) for key in result_keys + lock_keys)


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_carry_every_queue(env, queues, start_worker):
    from app import submit
    default, mail, slow = queues["default"], queues["mail"], queues["slow"]
    worker = start_worker("both", NIGHTSHIFT_QUEUES=f"{mail}=1,{default}=1")
    done = [submit("send_mail"), submit("send_mail"), submit("noop")]
    dead = [submit("bounce_mail"), submit("always_fails", retries=0)]
    wait_until(lambda: all(state(i) == "succeeded" for i in done) and all(state(i) == "dead" for i in dead), 15,
               message="jobs of both queues done")
    submit("noop", queue=mail, delay=600)
    submit("noop", queue=slow)  # a queue without a consumer: its backlog shows too
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app", "metrics", "--port", str(port)], env=env.full(),
                            cwd=env.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "serving" in proc.stderr.readline() or proc.poll() is not None, 15, message="metrics")
        m = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    jobs = lambda q, s: m[("nightshift_jobs", (("queue", q), ("state", s)))]  # noqa: E731
    assert (jobs(mail, "dead"), jobs(mail, "scheduled"), jobs(mail, "waiting")) == (1, 1, 0)
    assert (jobs(default, "dead"), jobs(default, "scheduled"), jobs(slow, "waiting")) == (1, 0, 1)
    for q in (mail, default):
        assert m[("nightshift_dead_letters", (("queue", q),))] == 1
        assert m[("nightshift_workers", (("queue", q), ("status", "alive")))] == 1
        assert m[("nightshift_throughput_jobs_per_minute", (("queue", q), ("window", "1m")))] >= 2
    assert m[("nightshift_workers", (("queue", slow), ("status", "alive")))] == 0
    def finished(q: str, task: str, outcome: str) -> float:
        return m[("nightshift_jobs_finished", (("outcome", outcome), ("queue", q), ("task", task)))]
    assert finished(mail, "send_mail", "succeeded") == 2 and finished(mail, "bounce_mail", "dead") == 1
    assert finished(default, "noop", "succeeded") == 1 and finished(default, "always_fails", "dead") == 1
    assert m[("nightshift_job_duration_seconds_count", (("queue", mail), ("task", "send_mail")))] == 2
    assert m[("nightshift_redis_messages", (("queue", mail), ("where", "schedule")))] == 1
    assert m[("nightshift_redis_messages", (("queue", slow), ("where", "queue")))] == 1
    assert m[("nightshift_oldest_waiting_seconds", (("queue", slow),))] > 0
    [rss_mail] = [v for (name, labels), v in m.items() if name == "nightshift_worker_rss_bytes"
                  and ("queue", mail) in labels]
    assert rss_mail > 5 * 2**20
    assert worker.stop(30) == 0

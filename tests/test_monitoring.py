"""Monitoring against real consumers, Redis and ledger: status, heartbeats, health, logs, Sentry, metrics."""
from __future__ import annotations

import gzip
import http.server
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import cli, free_port, wait_until

MODULES = "tasks,sample_tasks,monitoring_tasks"


@pytest.fixture
def menv(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES=MODULES)
    return env


def status(env, via_cli: bool = False) -> dict:
    """`nightshift status --json`; in-process (same code, same settings) when polling, to keep the test fast."""
    if not via_cli:
        import config
        from app import status as status_mod
        return json.loads(json.dumps(status_mod.snapshot(config.get())))
    out = cli(env, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def by_id(data: dict) -> dict:
    return {w["id"]: w for w in data["workers"]}


def worker_id(env, worker) -> str:
    return wait_until(lambda: next((w for w in status(env)["workers"] if w["pid"] == worker.pid), None), 10,
                      message=f"heartbeat of pid {worker.pid}")["id"]


def job_state(job_id: str) -> str:
    from app import ledger
    return ledger.state_of(job_id)


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- status, heartbeats, health -----------------------------------------------------------------------------------

def test_status_heartbeats_and_health_follow_real_consumers(menv, start_worker):
    env = menv
    out = cli(env, "health")
    assert out.returncode == 1 and "no consumer has ever run" in out.stderr and len(out.stderr.splitlines()) == 1

    from app import submit, submit_many
    waiting = submit_many("add", [{"a": i, "b": 1} for i in range(4)])
    later = submit("noop", delay=600)
    data = status(env, via_cli=True)
    [q] = data["queues"]
    assert (q["name"], q["waiting"], q["scheduled"], q["running"], q["dead"]) == (env["NIGHTSHIFT_QUEUE"], 4, 1, 0, 0)
    assert q["oldest_waiting_seconds"] >= 0 and q["redis"] == {"ok": True, "queued": 4, "scheduled": 1}

    # A short shutdown timeout: the survivor may have picked up the long job by the time it is stopped.
    w1 = start_worker("w1", NIGHTSHIFT_WORKERS=1, NIGHTSHIFT_SHUTDOWN_TIMEOUT=1)
    w2 = start_worker("w2", NIGHTSHIFT_WORKERS=1, NIGHTSHIFT_SHUTDOWN_TIMEOUT=1)
    dead = submit("always_fails", message="kaput")
    long_job = submit("nap", seconds=30)
    wait_until(lambda: all(job_state(j) == "succeeded" for j in waiting) and job_state(dead) == "dead", 20,
               message="jobs done")
    id1, id2 = worker_id(env, w1), worker_id(env, w2)
    # 4 add + 3 attempts of always_fails done, the long job running (as of the consumers' last heartbeats)
    data = wait_until(lambda: (d := status(env)) and any(w["current"] for w in d["workers"])
                      and sum(w["jobs_done"] for w in d["workers"]) >= 7 and d, 10,
                      message="a worker running the long job")
    workers = by_id(data)
    assert {workers[id1]["status"], workers[id2]["status"]} == {"alive"}
    busy = next(w for w in data["workers"] if w["current"])
    assert busy["current"][0]["id"] == long_job and busy["current"][0]["task"] == "nap"
    assert busy["current"][0]["running_for"] >= 0
    for w in data["workers"]:
        assert w["host"] and w["id"].startswith(f"{w['host']}:{w['pid']}:")  # host:pid:nonce
        assert 5 * 2**20 < w["rss_bytes"] < 500 * 2**20
        assert w["heartbeat_age"] < data["gone_after_seconds"]
    [q] = data["queues"]
    assert (q["waiting"], q["scheduled"], q["running"], q["dead"]) == (0, 1, 1, 1)
    assert data["throughput_per_minute"]["1m"] >= 5 and data["throughput_per_minute"]["15m"] > 0
    tasks = {t["task"]: t for t in data["tasks"]}
    assert tasks["add"]["finished"] == 4 and tasks["add"]["success_rate"] == 1.0
    assert tasks["add"]["p50"] is not None and tasks["add"]["p95"] >= tasks["add"]["p50"]
    assert tasks["always_fails"]["success_rate"] == 0.0
    assert tasks["always_fails"]["last_failure"]["job_id"] == dead
    assert tasks["always_fails"]["last_failure"]["error"] == "RuntimeError: kaput"
    assert tasks["nap"]["running"] == 1 and tasks["noop"]["waiting"] == 1
    assert later

    out = cli(env, "health")
    assert out.returncode == 0 and "2 consumer(s) alive" in out.stdout

    # The consumer running the long job is killed: it stops beating and is shown as gone.
    doomed = w1 if busy["pid"] == w1.pid else w2
    survivor = w2 if doomed is w1 else w1
    doomed.kill()
    data = wait_until(lambda: (d := status(env)) and by_id(d)[busy["id"]]["status"] == "gone" and d, 10,
                      message="killed consumer shown as gone")
    [alive] = [w for w in data["workers"] if w["pid"] == survivor.pid]
    assert alive["status"] == "alive"
    out = cli(env, "health")
    assert out.returncode == 0 and "1 consumer(s) alive" in out.stdout

    text = cli(env, "status")
    assert text.returncode == 0, text.stderr
    assert all(len(line) <= 80 for line in text.stdout.splitlines()), text.stdout
    for word in ("QUEUE", "WAITING", "TASK", "always_fails", "RuntimeError: kaput", "WORKER", "gone", "alive", "nap"):
        assert word in text.stdout, text.stdout

    # The last consumer stops gracefully: shown as stopped, and health turns red with one line.
    assert survivor.stop() == 0
    data = status(env, via_cli=True)
    assert {w["pid"]: w["status"] for w in data["workers"]}[survivor.pid] == "stopped"
    out = cli(env, "health")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "no live consumer" in out.stderr and "stopped" in out.stderr

    out = cli(env, "health", NIGHTSHIFT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert out.returncode == 1 and "cannot reach Redis" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_status_watch_refreshes_in_place_until_ctrl_c(menv):
    main_fd, tty_fd = pty.openpty()  # a terminal, so the screen is cleared between refreshes
    # Ctrl-C as a terminal delivers it to its foreground command, whose SIGINT is at its default: a test run
    # started in the background of a script inherits SIGINT ignored, and so would the command.
    proc = subprocess.Popen([sys.executable, "-m", "app", "status", "--watch", "0.3"], env=menv.full(),
                            cwd=menv.tmp, stdout=tty_fd, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(tty_fd)
    out = b""
    deadline = time.monotonic() + 60  # generous: on a loaded machine the interpreter may start slowly
    while out.count(b"QUEUE") < 3 and time.monotonic() < deadline:
        if select.select([main_fd], [], [], 0.5)[0]:
            out += os.read(main_fd, 65536)
    assert out.count(b"QUEUE") >= 3, out  # Ctrl-C only once it is refreshing (not while Python starts up)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    os.close(main_fd)
    assert proc.returncode == 0, err
    assert out.count(b"\x1b[H\x1b[2J") >= 3 and out.count(b"QUEUE") >= 3


# -- structured logs -------------------------------------------------------------------------------------------------

def test_lifecycle_logs_are_json_lines_with_secrets_masked(menv, start_worker, tmp_path):
    env = menv
    # A command a person runs prints no INFO lines (issue 12); at DEBUG it shows its lifecycle lines too.
    out = cli(env, "submit", "sign_in", "--arg", "user=bob", "--arg", "password=hunter2", "--arg", "token=tok-123",
              NIGHTSHIFT_LOG_LEVEL="debug")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert out.stdout == job_id + "\n"
    [submitted] = [line for line in log_lines(out.stderr) if line.get("event") == "submitted"]
    assert submitted["event"] == "submitted" and submitted["job_id"] == job_id and submitted["task"] == "sign_in"
    assert submitted["args"] == {"user": "bob", "password": "***", "token": "***"} and submitted["attempt"] == 1
    assert "hunter2" not in out.stderr and "tok-123" not in out.stderr

    failing = cli(env, "submit", "flaky_io").stdout.strip()
    bulk = tmp_path / "jobs.jsonl"
    bulk.write_text("".join(json.dumps({"a": i}) + "\n" for i in range(5)))
    out = cli(env, "submit", "add", "--file", str(bulk))
    assert out.stdout.strip() == "5" and out.stderr == ""
    out = cli(env, "submit", "add", "--file", str(bulk), NIGHTSHIFT_LOG_LEVEL="debug")
    [batch] = [line for line in log_lines(out.stderr) if "count" in line]
    assert (batch["event"], batch["task"], batch["count"]) == ("submitted", "add", 5)
    assert sum(1 for line in log_lines(out.stderr) if line.get("event") == "submitted") == 6  # 5 DEBUG + batch

    quiet = cli(env, "submit", "noop", NIGHTSHIFT_LOG_LEVEL="warning")
    assert quiet.returncode == 0 and quiet.stderr == "" and len(quiet.stdout.strip()) == 36
    text = cli(env, "submit", "sign_in", "--arg", "user=amy", "--arg", "password=s3cret", NIGHTSHIFT_LOG_FORMAT="text",
               NIGHTSHIFT_LOG_LEVEL="debug")
    assert text.stdout.count("\n") == 1 and "submitted sign_in " + text.stdout.strip() in text.stderr
    assert "s3cret" not in text.stderr and '"***"' in text.stderr and not text.stderr.lstrip().startswith("{")

    worker = start_worker()
    wait_until(lambda: job_state(job_id) == "succeeded" and job_state(failing) == "dead", 15, message="jobs done")
    assert worker.stop() == 0
    lines = log_lines(worker.log())
    assert len(lines) == len(worker.log().strip().splitlines()), "every line is JSON"
    events = [line for line in lines if line.get("logger") == "nightshift.jobs"]
    mine = {e["event"]: e for e in events if e.get("job_id") == job_id}
    assert {"started", "succeeded"} <= set(mine)
    assert mine["started"]["args"]["password"] == "***" and mine["started"]["args"]["token"] == "***"
    assert mine["succeeded"]["attempt"] == 1 and mine["succeeded"]["duration"] >= 0
    assert f":{worker.pid}:" in mine["succeeded"]["worker"]  # host:pid:nonce
    # (recovery may also log "recovered" + "skipped" for a message taken but not yet claimed: harmless noise)
    flaky = [e for e in events if e.get("job_id") == failing and e["event"] in ("started", "retrying", "dead")]
    assert [(e["event"], e["attempt"]) for e in flaky] == [
        ("started", 1), ("retrying", 1), ("started", 2), ("retrying", 2), ("started", 3), ("dead", 3)]
    assert all(e["task"] == "flaky_io" and e["ts"] and e["level"] for e in flaky)
    assert flaky[-1]["error"] == "OSError: disk on fire" and flaky[-1]["level"] == "error"
    assert "duration" in flaky[1] and "duration" in flaky[-1]
    assert all(f":{worker.pid}:" in e["worker"] for e in flaky)
    assert "hunter2" not in worker.log() and "tok-123" not in worker.log()


# -- Sentry ------------------------------------------------------------------------------------------------------

class SentryStub:
    """A tiny HTTP server that receives sentry-sdk envelopes (POST /api/<project>/envelope/) on 127.0.0.1."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "br":
                    import brotli
                    body = brotli.decompress(body)
                if self.path.endswith("/envelope/"):
                    stub.receive(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_port}/1"

    def receive(self, body: bytes) -> None:
        lines = body.split(b"\n")
        i = 1  # line 0: envelope header
        while i + 1 < len(lines):
            header = json.loads(lines[i])
            length = header.get("length")
            if length is not None:
                rest = b"\n".join(lines[i + 1:])
                payload, rest = rest[:length], rest[length + 1:]
                lines = lines[:i + 1] + rest.split(b"\n")
            else:
                payload = lines[i + 1]
            if header.get("type") == "event":
                self.events.append(json.loads(payload))
            i += 2

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sentry():
    stub = SentryStub()
    yield stub
    stub.close()


def test_task_errors_reach_sentry_tagged_final_failure_only_unless_every_attempt(menv, start_worker, sentry):
    from app import ledger, submit
    env = menv
    job_id = submit("flaky_io", message="disk on fire")
    worker = start_worker(SENTRY_DSN=sentry.dsn)
    wait_until(lambda: job_state(job_id) == "dead", 15, message="dead")
    assert [a.outcome for a in ledger.attempts(job_id)] == ["failed", "failed", "failed"]
    assert "no retries left" in ledger.get(job_id).reason  # retries still run with Sentry's enqueue patch
    wait_until(lambda: sentry.events, 10, message="a Sentry event")
    assert worker.stop() == 0  # flushes
    # (an unrelated ERROR log line of the consumer, e.g. a recovery error under load, would be an event too)
    [event] = [e for e in sentry.events if e.get("tags", {}).get("job_id") == job_id]
    [exc] = event["exception"]["values"]
    assert exc["type"] == "OSError" and exc["value"] == "disk on fire" and exc["mechanism"]["type"] == "huey"
    tags = event["tags"]
    assert tags["job_id"] == job_id and tags["task"] == "flaky_io" and tags["attempt"] == "3"
    assert tags["queue"] == env["NIGHTSHIFT_QUEUE"]

    sentry.events.clear()
    job_id = submit("flaky_io", message="again")
    worker = start_worker(SENTRY_DSN=sentry.dsn, NIGHTSHIFT_SENTRY_EVERY_ATTEMPT="true")
    wait_until(lambda: job_state(job_id) == "dead", 15, message="dead")
    mine = lambda: [e for e in sentry.events if e.get("tags", {}).get("job_id") == job_id]  # noqa: E731
    wait_until(lambda: len(mine()) >= 3, 10, message="three Sentry events")
    assert worker.stop() == 0
    assert sorted(e["tags"]["attempt"] for e in mine()) == ["1", "2", "3"]
    assert {e["exception"]["values"][0]["value"] for e in mine()} == {"again"}


# -- Prometheus metrics ---------------------------------------------------------------------------------------------

def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_are_served_for_prometheus(menv, start_worker):
    from app import submit, submit_many
    env = menv
    q = env["NIGHTSHIFT_QUEUE"]
    ok = submit_many("add", [{"a": i} for i in range(3)])
    dead = submit("always_fails")
    worker = start_worker()
    wait_until(lambda: all(job_state(j) == "succeeded" for j in ok) and job_state(dead) == "dead", 15,
               message="jobs done")
    submit("noop", delay=600)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app", "metrics", "--port", str(port)], env=env.full(),
                            cwd=env.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: b"serving" in (proc.stderr.readline().encode()) or proc.poll() is not None, 15,
                   message="metrics server")
        m = wait_until(lambda: (s := scrape(port))[("nightshift_workers", (("queue", q), ("status", "alive")))] == 1
                       and s, 10, message="alive worker in metrics")
        assert m[("nightshift_up", (("component", "ledger"),))] == 1
        assert m[("nightshift_up", (("component", "redis"),))] == 1
        assert m[("nightshift_jobs", (("queue", q), ("state", "dead")))] == 1
        assert m[("nightshift_jobs", (("queue", q), ("state", "scheduled")))] == 1
        assert m[("nightshift_jobs", (("queue", q), ("state", "waiting")))] == 0
        assert m[("nightshift_dead_letters", (("queue", q),))] == 1
        assert m[("nightshift_redis_messages", (("queue", q), ("where", "schedule")))] == 1
        assert m[("nightshift_jobs_finished", (("outcome", "succeeded"), ("queue", q), ("task", "add")))] == 3
        assert m[("nightshift_jobs_finished", (("outcome", "dead"), ("queue", q), ("task", "always_fails")))] == 1
        assert m[("nightshift_job_duration_seconds_count", (("queue", q), ("task", "add")))] == 3
        assert m[("nightshift_job_duration_seconds_bucket", (("le", "+Inf"), ("queue", q), ("task", "add")))] == 3
        assert m[("nightshift_job_duration_seconds_sum", (("queue", q), ("task", "add")))] >= 0
        assert m[("nightshift_throughput_jobs_per_minute", (("queue", q), ("window", "1m")))] >= 4
        assert m[("nightshift_oldest_waiting_seconds", (("queue", q),))] == 0
        [rss] = [v for (name, labels), v in m.items() if name == "nightshift_worker_rss_bytes"]
        assert rss > 5 * 2**20
        worker.kill()
        wait_until(lambda: scrape(port)[("nightshift_workers", (("queue", q), ("status", "gone")))] == 1, 10,
                   message="killed worker counted as gone")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0


def test_a_job_that_gives_up_for_good_reaches_sentry_too(menv, start_worker, sentry):
    """Huey's integration skips CancelExecution (control flow); the job's "dead" line reports it instead."""
    from app import ledger, submit
    job_id = submit("gives_up")
    worker = start_worker(SENTRY_DSN=sentry.dsn)
    wait_until(lambda: job_state(job_id) == "dead", 15, message="dead")
    assert [a.outcome for a in ledger.attempts(job_id)] == ["failed"]
    mine = lambda: [e for e in sentry.events if e.get("tags", {}).get("job_id") == job_id]  # noqa: E731
    wait_until(mine, 10, message="a Sentry event for the permanent failure")
    assert worker.stop() == 0
    [event] = mine()
    assert event["tags"]["task"] == "gives_up" and event["level"] == "error"
    assert "permanent error" in json.dumps(event)


def test_an_alive_consumers_uptime_runs_to_now_not_to_its_last_beat(env):
    """A consumer beats every NIGHTSHIFT_HEARTBEAT_SECONDS; between beats `status` showed the uptime as of the last
    beat (a consumer up for minutes read "10ms" until its second beat). Alive: up until now; gone: until its last
    beat."""
    import datetime

    import config
    from app import ledger, status
    from app.models import WorkerBeat
    now = ledger.now()
    queue = env["NIGHTSHIFT_QUEUE"]
    for worker, started, seen in (("alive:1:a", 100, 0.2), ("gone:2:b", 500, 400)):
        WorkerBeat.create(id=worker, host=worker.split(":")[0], pid=1, queue=queue,
                          started_at=now - datetime.timedelta(seconds=started),
                          last_seen=now - datetime.timedelta(seconds=seen))
    shown = {w["id"]: w for w in status.workers(now, queue, config.get(), shown_for=1000)}
    assert shown["alive:1:a"]["status"] == "alive" and shown["alive:1:a"]["uptime"] == 100
    assert shown["gone:2:b"]["status"] == "gone" and shown["gone:2:b"]["uptime"] == 100

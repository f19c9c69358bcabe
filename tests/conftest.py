"""Shared fixtures: real Redis, real SQLite files or a real PostgreSQL database, workers as real processes.

Each test gets its own queue name (keys on the shared Redis are namespaced by it and deleted afterwards) and
its own ledger: a SQLite file, or with NIGHTSHIFT_TEST_DATABASE=postgres a fresh PostgreSQL database.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SHARED_REDIS = os.environ.get("NIGHTSHIFT_TEST_REDIS", "redis://127.0.0.1:6379/14")
PG_ADMIN = os.environ.get("NIGHTSHIFT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
USE_PG = os.environ.get("NIGHTSHIFT_TEST_DATABASE", "sqlite") == "postgres"

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import faults  # noqa: E402  (tests/ on the path first)

# The README's test command runs the suite once per ledger. Its second pass sets this: the tests whose outcome
# cannot depend on the pass's ledger already ran in the first, so they are deselected (never lost: run alone, a
# PostgreSQL pass runs everything).
ANY_LEDGER_DONE = os.environ.get("NIGHTSHIFT_TEST_ANY_LEDGER_DONE") == "1"


@functools.cache
def _looks_at_the_ledger(path: str) -> bool:
    source = Path(path).read_text()
    return "USE_PG" in source or "NIGHTSHIFT_TEST_DATABASE" in source


def runs_on_any_ledger(item: pytest.Item) -> bool:
    """Marked any_ledger, or never given the pass's ledger (no `database_url` among its fixtures) in a module that
    does not look at which ledger the pass has."""
    if item.get_closest_marker("any_ledger"):
        return True
    module = getattr(item, "module", None)
    if module is None or "database_url" in getattr(item, "fixturenames", ()):
        return False
    return not _looks_at_the_ledger(module.__file__)


# The README's test command runs each pass in two phases: the tests not marked `serial` side by side with
# pytest-xdist, then those marked `serial` alone (they bound a time, or load the machine enough to break such a
# bound in a test beside them). Unset: every test, in this one process.
PHASE = os.environ.get("NIGHTSHIFT_TEST_PHASE", "")
PHASES = {"": lambda item: True,
          "serial": lambda item: item.get_closest_marker("serial") is not None,
          "parallel": lambda item: item.get_closest_marker("serial") is None}
if PHASE not in PHASES:
    raise pytest.UsageError(f"NIGHTSHIFT_TEST_PHASE={PHASE!r}: expected serial, parallel or nothing")


def pytest_collection_modifyitems(config, items):
    in_phase = PHASES[PHASE]
    left_out = [item for item in items if not in_phase(item) or (ANY_LEDGER_DONE and runs_on_any_ledger(item))]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        dropped = set(left_out)
        items[:] = [item for item in items if item not in dropped]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


# -- Redis -----------------------------------------------------------------------------------------------------

class PrivateRedis:
    """A redis-server of the test's own, on a free port, without persistence unless asked."""

    def __init__(self, directory: Path, appendonly: bool = False, password: str | None = None) -> None:
        self.dir = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.dir)]
            + (["--requirepass", self.password] if self.password else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, message=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            return redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Kill and start again on the same port: without persistence, everything is gone."""
        self.stop()
        self.start()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


# -- ledger ------------------------------------------------------------------------------------------------------

@pytest.fixture
def database_url(tmp_path):
    if not USE_PG:
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    import psycopg2
    name = f"nightshift_t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    from app import db
    if db.database.obj is not None:
        db.database.obj.close()
        db._url = None
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


# -- environment --------------------------------------------------------------------------------------------------

@pytest.fixture
def env(tmp_path, database_url, monkeypatch):
    """Settings for this test, applied to this process and passed to every subprocess it starts."""
    queue = f"t{uuid.uuid4().hex[:10]}"
    values = {
        "NIGHTSHIFT_REDIS_URL": SHARED_REDIS,
        "NIGHTSHIFT_DATABASE_URL": database_url,
        "NIGHTSHIFT_QUEUE": queue,
        "NIGHTSHIFT_TASK_MODULES": "tasks,sample_tasks",
        "NIGHTSHIFT_LOG_FORMAT": "json",
        "NIGHTSHIFT_LEASE_SECONDS": "3",
        "NIGHTSHIFT_RECOVERY_INTERVAL": "1",
        "NIGHTSHIFT_RECOVERY_GRACE": "2",
        "NIGHTSHIFT_HEARTBEAT_SECONDS": "0.5",
        "NIGHTSHIFT_SHUTDOWN_TIMEOUT": "5",
        # Built-in periodic tasks would add ledger rows to every test's counts; tests that want them turn them on.
        "NIGHTSHIFT_CLEANUP_CRON": "off",
        "NIGHTSHIFT_BACKLOG_CRON": "off",
        "NIGHTSHIFT_FILES_ROOT": str(tmp_path),  # file tasks read and write only in the test's directory
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
    }
    for key in list(os.environ):
        if key.startswith("NIGHTSHIFT_") or key == "SENTRY_DSN":
            monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    apply_settings()
    yield Env(values, tmp_path)
    cleanup_queue(os.environ["NIGHTSHIFT_REDIS_URL"], queue)
    # No process of this test outlives it (every worker and command it started has its queue in its
    # environment): a leaked consumer would run, and take CPU, for the rest of the suite.
    leaked = faults.survivors(faults.processes_with_env(f"NIGHTSHIFT_QUEUE={queue}"), 10)
    if leaked:
        faults.kill_processes(leaked)
        pytest.fail(f"processes of this test outlived it (killed now): {sorted(pid for pid, _ in leaked)}")


def apply_settings():
    """Make this process use the current environment: settings, Huey instance, ledger."""
    import config
    from app import catalog, queue, schema
    settings = config.reload()
    queue.configure(settings)
    catalog.load_task_modules(settings.task_modules)
    schema.open_ledger(settings.database_url)
    return settings


def cleanup_queue(redis_url: str, queue: str) -> None:
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
        keys = [k for pattern in (f"huey.*{queue}*", f"nightshift:{queue}:*") for k in client.scan_iter(pattern)]
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass


class Env(dict):
    def __init__(self, values: dict, tmp_path: Path) -> None:
        super().__init__(values)
        self.tmp = tmp_path

    def full(self, **overrides) -> dict:
        merged = dict(os.environ)
        merged.update(self)
        merged.update({k: str(v) for k, v in overrides.items()})
        return merged

    def set(self, monkeypatch, **overrides) -> None:
        """Change settings for this process and for workers started afterwards."""
        for key, value in overrides.items():
            self[key] = str(value)
            monkeypatch.setenv(key, str(value))
        apply_settings()


# -- processes -----------------------------------------------------------------------------------------------------

def cli(env: Env, *args: str, input: str | None = None, timeout: float = 60, **overrides) -> subprocess.CompletedProcess:
    """Run `python -m app ARGS` as a real subprocess."""
    return subprocess.run([sys.executable, "-m", "app", *args], env=env.full(**overrides), cwd=env.tmp,
                          capture_output=True, text=True, input=input, timeout=timeout)


RECOVERY_PASS = re.compile(r"recovery of queue .*: .* in (\d+\.\d+) s\Z")  # app.recovery.recover, at debug


class Worker:
    """`nightshift worker` as a real process, its log in a file."""

    def __init__(self, env: Env, name: str, overrides: dict) -> None:
        self.log_path = env.tmp / f"{name}.log"
        self.log_file = open(self.log_path, "ab")
        self.environ = env.full(**overrides)
        self.proc = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=self.environ,
                                     cwd=env.tmp, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_started(self, timeout: float = 15) -> "Worker":
        wait_until(lambda: b"started" in self.log_path.read_bytes() or self.proc.poll() is not None, timeout,
                   message="worker start")
        assert self.proc.poll() is None, f"worker exited at start:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def recovery_passes(self, since: float = 0.0) -> int:
        """Recovery passes of this consumer that began at or after `since` (a time.time()), by the line that
        app.recovery logs at debug at the end of every pass, with how long the pass took."""
        passes = 0
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("logger") == "nightshift.recovery" and (took := RECOVERY_PASS.match(record["message"])):
                ended = datetime.datetime.fromisoformat(record["ts"]).timestamp()
                passes += ended - float(took[1]) - 0.001 >= since  # its stamp is cut to milliseconds
        return passes

    def wait_recovery_passes(self, n: int, since: float | None = None, timeout: float = 20) -> None:
        """Wait until this consumer ran `n` whole recovery passes that began after `since` (default: now), so a
        check that recovery left something alone rests on recovery having run, not on a fixed sleep. One pass
        reads the ledger and Redis and acts on all it finds. Needs the worker started with
        NIGHTSHIFT_LOG_LEVEL=debug (and the tests' NIGHTSHIFT_LOG_FORMAT=json)."""
        assert self.environ.get("NIGHTSHIFT_LOG_LEVEL") == "debug", "start the worker with NIGHTSHIFT_LOG_LEVEL=debug"
        since = time.time() if since is None else since
        wait_until(lambda: self.recovery_passes(since) >= n or not self.alive(), timeout,
                   message=f"{n} recovery passes of {self.log_path.name}")
        assert self.alive(), f"worker exited:\n{self.log()[-3000:]}"

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def start_worker(env):
    started: list[Worker] = []

    def start(name: str = "worker", wait: bool = True, **overrides) -> Worker:
        worker = Worker(env, f"{name}-{len(started)}", overrides)
        started.append(worker)
        return worker.wait_started() if wait else worker

    yield start
    for worker in started:
        if worker.alive():
            worker.kill()
        worker.log_file.close()


@pytest.fixture
def ledger_db(env):
    """The ledger's models, bound to this test's database."""
    from app import models
    return models

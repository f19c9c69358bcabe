#!/usr/bin/env python
"""Bare Huey 3.5 and Nightshift side by side, in one run, against the same Redis.

    .venv/bin/python benchmarks/compare_huey.py --jobs 10000 [--json] [--check] [--keep]

What is measured (N no-op jobs each; see docs/performance.md):

  submit one by one   bare: calling the task (`noop()`); Nightshift: `app.submit("bench_noop")` with the ledger on
                      a fresh SQLite file.
  bulk submit         bare: a pipelined ZADD loop in batches of --batch (what Huey's enqueue writes, one round trip
                      per batch); Nightshift: `app.submit_many(...)` in batches of --batch.
  drain               one consumer process with ONE thread worker: `huey_consumer benchmarks.bare_app.huey -w 1
                      -k thread` and `python -m app worker` with NIGHTSHIFT_WORKERS=1. The consumer is started on
                      an empty queue and left until it is ready and idle; then the N jobs written by the bulk phase
                      are moved onto its queue with one RENAME and the clock runs until the queue is empty and, for
                      Nightshift, every job is `succeeded` in the ledger.
  consumer RSS        VmRSS of the consumer process (/proc/PID/status), idle before the drain and after it.

By default a private redis-server is started on a free port (no persistence) and stopped afterwards. With
--redis-url the given Redis is used instead (pick a dedicated logical db, e.g. redis://127.0.0.1:6379/12): every
key this run creates carries a unique prefix and only those keys are deleted at the end; nothing is flushed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
HUEY_CONSUMER = str(Path(sys.executable).parent / "huey_consumer")
NS_TASK = "bench_noop"
NS_CONSUMER_WITHOUT_PG_DRIVER = "import sys; sys.modules['psycopg2'] = None; from app.cli import main; main(['worker'])"
TARGETS = {  # Nightshift, ledger on SQLite, in the same run as bare Huey
    "submit_one": ("≥ 4,000 jobs/s", lambda ns, bare: ns >= 4000),
    "submit_bulk": ("≥ 30,000 jobs/s", lambda ns, bare: ns >= 30000),
    "drain": ("≥ ½ bare", lambda ns, bare: ns >= bare / 2),
    "rss_idle_mb": ("< 45 MB", lambda ns, bare: ns < 45),
}


# -- processes and /proc ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str) -> None:
    """A benchmark's progress line on stderr, with the time (its figures go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.dir, self.port, self.proc = directory, free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        import redis
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ping():
            try:
                return redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
            except redis.RedisError:
                return False
        wait_for(ping, 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB -> MB (MiB)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


class Consumer:
    """A consumer subprocess with its log in a file; stopped by its own PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path, ready_marker: str) -> None:
        self.name, self.cmd, self.env, self.log_path, self.ready_marker = name, cmd, env, log_path, ready_marker
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Consumer":
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} consumer exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready_and_idle(self, timeout: float = 60) -> None:
        def ready():
            self.alive()
            return self.ready_marker in self.log_path.read_text(errors="replace")
        wait_for(ready, timeout, f"{self.name} consumer to start")
        # Idle: at most one CPU tick (10 ms) used over 3 consecutive 0.25 s samples.
        samples = [cpu_ticks(self.proc.pid)]

        def idle():
            self.alive()
            time.sleep(0.25)
            samples.append(cpu_ticks(self.proc.pid))
            return len(samples) >= 4 and samples[-1] - samples[-4] <= 1
        wait_for(idle, timeout, f"{self.name} consumer to go idle", interval=0)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# -- bare Huey -----------------------------------------------------------------------------------------------------

def bare_submit_one(queue: str, n: int) -> tuple[float, float]:
    from benchmarks import bare_app
    bare_app.point_at(queue)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        bare_app.noop()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert bare_app.huey.storage.queue_size() == n, "bare one-by-one submit lost messages"
    return n / elapsed, cpu / n * 1e6


def bare_submit_bulk(queue: str, n: int, batch: int) -> tuple[float, float]:
    """What RedisPriorityQueue.enqueue writes for each task (timestamp prefix + pickled message, ZADD with -priority),
    one pipelined round trip per batch."""
    from benchmarks import bare_app
    bare_app.point_at(queue)
    huey, storage = bare_app.huey, bare_app.huey.storage
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, batch):
        pipe = storage.conn.pipeline(transaction=False)
        for _ in range(min(batch, n - start)):
            data = huey.serialize_task(bare_app.noop.s())
            pipe.zadd(storage.queue_key, {struct.pack(">Q", int(time.time() * 1e6)) + data: 0})
        pipe.execute()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert storage.queue_size() == n, "bare bulk submit lost messages"
    return n / elapsed, cpu / n * 1e6


def queue_key(queue: str) -> str:
    from huey.storage import PriorityRedisStorage
    return PriorityRedisStorage(queue, url="redis://127.0.0.1:1/0").queue_key  # names only, no connection made


# -- Nightshift ----------------------------------------------------------------------------------------------------

def nightshift_env(redis_url: str, ledger: Path, queue: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIGHTSHIFT_", "SENTRY_"))}
    env.update({
        "NIGHTSHIFT_REDIS_URL": redis_url,
        "NIGHTSHIFT_DATABASE_URL": f"sqlite:///{ledger}",  # absolute path -> sqlite:////...
        "NIGHTSHIFT_QUEUE": queue,
        "NIGHTSHIFT_TASK_MODULES": "benchmarks.nightshift_tasks",
        "NIGHTSHIFT_WORKERS": "1",
        "NIGHTSHIFT_WORKER_TYPE": "thread",
        # The drain's jobs wait on a staging key until the consumer is idle; a long grace keeps recovery (which
        # still runs at start and every NIGHTSHIFT_RECOVERY_INTERVAL) from sending them a second time meanwhile.
        "NIGHTSHIFT_RECOVERY_GRACE": "3600",
        "PYTHONPATH": str(ROOT),
    })
    return env


def use_nightshift(env: dict) -> None:
    """Point this process's Nightshift (settings, Huey instance, ledger) at `env`; creates the ledger's tables."""
    for key in [k for k in os.environ if k.startswith(("NIGHTSHIFT_", "SENTRY_"))]:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("NIGHTSHIFT_")})
    import config
    from app import catalog, queue, schema
    settings = config.reload()
    queue.configure(settings)
    catalog.load_task_modules(settings.task_modules)
    schema.open_ledger(settings.database_url)


def ledger_count(path: Path, state: str | None = None) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        if state is None:
            return conn.execute("SELECT count(*) FROM nightshift_job").fetchone()[0]
        return conn.execute("SELECT count(*) FROM nightshift_job WHERE state = ?", (state,)).fetchone()[0]
    finally:
        conn.close()


def nightshift_submit_one(env: dict, ledger: Path, n: int) -> tuple[float, float]:
    use_nightshift(env)
    from app import submit
    from app.queue import get_huey
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        submit(NS_TASK)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert get_huey().storage.queue_size() == n and ledger_count(ledger, "queued") == n, \
        "Nightshift one-by-one submit lost jobs"
    return n / elapsed, cpu / n * 1e6


def nightshift_submit_bulk(env: dict, ledger: Path, n: int, batch: int) -> tuple[float, float]:
    use_nightshift(env)
    from app import submit_many
    from app.queue import get_huey
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, n, batch):
        submit_many(NS_TASK, ({} for _ in range(min(batch, n - start))))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert get_huey().storage.queue_size() == n and ledger_count(ledger, "queued") == n, \
        "Nightshift bulk submit lost jobs"
    return n / elapsed, cpu / n * 1e6


# -- drain ----------------------------------------------------------------------------------------------------------

def drain(conn, consumer: Consumer, stage_key: str, target_key: str, n: int, ledger: Path | None,
          timeout: float) -> dict:
    consumer.start()
    try:
        consumer.wait_ready_and_idle()
        pid = consumer.proc.pid
        rss_idle = rss_mb(pid)
        assert conn.zcard(target_key) == 0 and conn.zcard(stage_key) == n
        ticks = cpu_ticks(pid)
        conn.rename(stage_key, target_key)  # all N jobs appear at once; BZPOPMIN wakes on it
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while conn.zcard(target_key):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{consumer.name} drain did not finish in {timeout}s")
            consumer.alive()
            time.sleep(0.005)
        if ledger is not None:
            while ledger_count(ledger, "succeeded") < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{consumer.name}: only {ledger_count(ledger, 'succeeded')} of {n} jobs "
                                       f"succeeded in the ledger after {timeout}s")
                consumer.alive()
                time.sleep(0.005)
        elapsed = time.perf_counter() - started
        cpu_seconds = (cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK")
        return {"drain": n / elapsed, "drain_seconds": elapsed, "drain_cpu_us": cpu_seconds / n * 1e6,
                "rss_idle_mb": rss_idle, "rss_after_mb": rss_mb(pid)}
    finally:
        consumer.stop()


# -- report ---------------------------------------------------------------------------------------------------------

ROWS = [  # key, label, unit, format; the CPU rows are less sensitive to other load on the machine
    ("submit_one", "submit, one call at a time", "jobs/s", "{:,.0f}"),
    ("submit_one_cpu_us", "  CPU per job (submitter)", "us", "{:,.0f}"),
    ("submit_bulk", "bulk submit (batches)", "jobs/s", "{:,.0f}"),
    ("submit_bulk_cpu_us", "  CPU per job (submitter)", "us", "{:,.0f}"),
    ("drain", "drain, 1 consumer x 1 thread", "jobs/s", "{:,.0f}"),
    ("drain_cpu_us", "  CPU per job (consumer process)", "us", "{:,.0f}"),
    ("rss_idle_mb", "consumer RSS, idle", "MB", "{:.1f}"),
    ("rss_after_mb", "consumer RSS, after drain", "MB", "{:.1f}"),
]


def table(report: dict) -> str:
    bare, ns = report["bare_huey"], report["nightshift"]
    head = f"{'':32} {'unit':>6} {'bare Huey':>11} {'Nightshift':>11} {'NS/Huey':>8}  target (Nightshift)"
    lines = [head, "-" * len(head)]
    for key, label, unit, fmt in ROWS:
        ratio = ns[key] / bare[key] if bare[key] else float("nan")
        target = ""
        if key in TARGETS:
            text, ok = TARGETS[key]
            target = f"{text:<16} {'ok' if ok(ns[key], bare[key]) else 'MISSED'}"
        lines.append(f"{label:32} {unit:>6} {fmt.format(bare[key]):>11} {fmt.format(ns[key]):>11} "
                     f"{ratio:>7.2f}x  {target}")
    meta = report["meta"]
    lines.append("")
    lines.append(f"{meta['jobs']:,} no-op jobs, bulk batches of {meta['batch']:,}; drain: bare "
                 f"{bare['drain_seconds']:.2f}s, Nightshift {ns['drain_seconds']:.2f}s (ledger: SQLite WAL file)")
    lines.append(f"{meta['date']}  code {meta['revision']}  {meta['cpus']} CPU(s)  Python {meta['python']}  "
                 f"huey {meta['huey']}  "
                 f"peewee {meta['peewee']}  redis-py {meta['redis_py']}  {meta['redis_server']}")
    lines.append(f"1-min load average: {meta['loadavg_start']:.2f} at start, {meta['loadavg_end']:.2f} at end "
                 f"(other work on the machine slows both sides; compare the ratios)")
    return "\n".join(lines)


def compile_project(python: str | Path = PYTHON) -> None:
    """Write the bytecode of Nightshift's own modules, as a user's installation has it.

    The README's editable install holds no bytecode until the first run writes it, and where
    PYTHONDONTWRITEBYTECODE is set (it is in this machine's sessions) no run writes it: every process a benchmark
    starts would compile app/ from source, ~45 ms of a `nightshift submit` and ~1.5 MB of a consumer's RSS that a
    user's second run does not pay (nor the image, whose `pip install .` compiles). Bare Huey's and every peer's
    modules were compiled by pip."""
    subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0", "app", "helpers", "config.py", "tasks.py",
                    "benchmarks"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def code_revision() -> str:
    """The commit measured (with "+dirty" for uncommitted changes), or BENCH_REVISION for a copy without .git."""
    if os.environ.get("BENCH_REVISION"):
        return os.environ["BENCH_REVISION"]
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "app", "config.py"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def redis_server_version(conn) -> str:
    try:
        return "redis-server " + conn.info("server")["redis_version"]
    except Exception:  # noqa: BLE001
        return "redis-server ?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10000, help="jobs per measurement (default 10000)")
    parser.add_argument("--batch", type=int, default=1000, help="bulk submit batch size (default 1000)")
    parser.add_argument("--redis-url", help="use this Redis (a dedicated logical db) instead of a private "
                                            "redis-server; only this run's keys are deleted afterwards")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when Nightshift misses a target")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (ledgers, consumer logs)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a drain may take (default 300)")
    args = parser.parse_args()
    compile_project()
    n, batch = args.jobs, args.batch

    import huey
    import peewee
    import redis

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="nightshift-bench-"))
    tag = "bench" + uuid.uuid4().hex[:8]  # every Redis key of this run contains it
    server = None
    consumers: list[Consumer] = []
    conn = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            server = PrivateRedis(work / "redis").start()
            redis_url = server.url
        conn = redis.Redis.from_url(redis_url)
        os.environ["BENCH_REDIS_URL"] = redis_url
        os.environ["BENCH_BARE_QUEUE"] = f"{tag}bare"

        bare, ns = {}, {}
        ns_ledgers = {phase: work / f"ledger-{phase}.db" for phase in ("submit", "drain")}
        ns_envs = {
            "submit": nightshift_env(redis_url, ns_ledgers["submit"], f"{tag}nssubmit"),
            "stage": nightshift_env(redis_url, ns_ledgers["drain"], f"{tag}nsstage"),
            "drain": nightshift_env(redis_url, ns_ledgers["drain"], f"{tag}nsdrain"),
        }

        log(f"submit one by one: bare Huey ({n:,} jobs)")
        bare["submit_one"], bare["submit_one_cpu_us"] = bare_submit_one(f"{tag}baresubmit", n)
        conn.delete(queue_key(f"{tag}baresubmit"))
        log(f"submit one by one: Nightshift ({n:,} jobs, fresh SQLite ledger)")
        ns["submit_one"], ns["submit_one_cpu_us"] = nightshift_submit_one(ns_envs["submit"], ns_ledgers["submit"], n)
        conn.delete(queue_key(f"{tag}nssubmit"))

        log(f"bulk submit: bare Huey (batches of {batch:,}) onto the drain's staging queue")
        bare["submit_bulk"], bare["submit_bulk_cpu_us"] = bare_submit_bulk(f"{tag}barestage", n, batch)
        log(f"bulk submit: Nightshift submit_many (batches of {batch:,}, fresh SQLite ledger) onto the staging queue")
        ns["submit_bulk"], ns["submit_bulk_cpu_us"] = nightshift_submit_bulk(ns_envs["stage"], ns_ledgers["drain"],
                                                                             n, batch)

        bare_env = {**os.environ, "BENCH_BARE_QUEUE": f"{tag}baredrain", "PYTHONPATH": str(ROOT)}
        bare_consumer = Consumer("bare Huey", [HUEY_CONSUMER, "benchmarks.bare_app.huey", "-w", "1", "-k", "thread"],
                                 bare_env, work / "bare-consumer.log", "Huey consumer started")
        consumers.append(bare_consumer)
        log("drain: bare Huey consumer (1 thread)")
        bare.update(drain(conn, bare_consumer, queue_key(f"{tag}barestage"), queue_key(f"{tag}baredrain"), n,
                          None, args.timeout))

        # As the README installs it (`pip install -e .`): without the optional PostgreSQL driver, which peewee
        # imports whenever it is installed (about 5 MB). This venv has the driver for the tests' PostgreSQL pass,
        # so the consumer is started with it hidden, as on a SQLite-only install.
        ns_consumer = Consumer("Nightshift", [PYTHON, "-c", NS_CONSUMER_WITHOUT_PG_DRIVER], ns_envs["drain"],
                               work / "nightshift-consumer.log", "started: 1 thread worker")
        consumers.append(ns_consumer)
        log("drain: Nightshift consumer (NIGHTSHIFT_WORKERS=1, thread)")
        ns.update(drain(conn, ns_consumer, queue_key(f"{tag}nsstage"), queue_key(f"{tag}nsdrain"), n,
                        ns_ledgers["drain"], args.timeout))

        report = {
            "meta": {
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "jobs": n,
                "revision": code_revision(),
                "batch": batch, "cpus": os.cpu_count(), "python": platform.python_version(),
                "huey": huey.__version__, "peewee": peewee.__version__, "redis_py": redis.__version__,
                "redis_server": redis_server_version(conn), "private_redis": server is not None,
                "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0],
            },
            "bare_huey": bare,
            "nightshift": ns,
            "ratio": {key: ns[key] / bare[key] for key, *_ in ROWS if bare.get(key)},
            "targets": {key: {"target": text, "met": ok(ns[key], bare[key])} for key, (text, ok) in TARGETS.items()},
        }
        print(json.dumps(report, indent=2) if args.json else table(report))
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        return 1 if args.check and not all(t["met"] for t in report["targets"].values()) else 0
    finally:
        for consumer in consumers:
            consumer.stop()
        if conn is not None and server is None:  # shared Redis: delete this run's keys only
            keys = list(conn.scan_iter(f"*{tag}*", count=1000))
            if keys:
                conn.delete(*keys)
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

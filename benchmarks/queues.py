#!/usr/bin/env python
"""Named queues: isolation, a rate limit across consumers, and what serving several queues costs.

    .venv/bin/python benchmarks/queues.py [--drain-jobs 2000] [--repeats 3] [--json]

  isolation   one consumer `--queues slow=2,mail=2`; 4 jobs of 8 s on `slow`, then 50 short jobs on `mail`.
              Wait of a mail job = its start minus its submission (ledger). Target: p95 < 1 s.
  rate limit  40 jobs of a task with rate_limit="5/s" on one queue, two consumers of 4 threads each. Start times
              from the ledger's attempts. Target: at most 6 starts in any 1-s window, every job in 1 attempt.
  drain       N short jobs already queued, one consumer of 4 threads: on one queue (`--queues q=4`), then spread
              over 4 queues (`--queues q1=1,...,q4=1`). Throughput = N / (last finish - first start), median of
              --repeats runs, alternating. Target: 4 queues within 10 % of one.

A private redis-server (free port, no persistence) and a SQLite ledger in a temporary directory; both are removed
afterwards. Consumers are real `python -m app worker` processes, stopped with SIGTERM.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_huey import compile_project  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Run:
    """One benchmark environment: private Redis, SQLite ledger, consumer processes."""

    def __init__(self, tmp: Path) -> None:
        import redis
        self.tmp = tmp
        self.port = free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
        wait_for(lambda: self._ping(redis), 10, "redis-server")
        self.workers: list[subprocess.Popen] = []

    def _ping(self, redis) -> bool:
        try:
            return redis.Redis(port=self.port).ping()
        except redis.RedisError:
            return False

    def settings(self, name: str) -> dict:
        """A fresh ledger and service queue per scenario."""
        return {"NIGHTSHIFT_REDIS_URL": f"redis://127.0.0.1:{self.port}/0",
                "NIGHTSHIFT_DATABASE_URL": f"sqlite:///{self.tmp}/{name}.db",
                "NIGHTSHIFT_QUEUE": f"b{uuid.uuid4().hex[:8]}", "NIGHTSHIFT_TASK_MODULES": "benchmarks.queue_tasks",
                "NIGHTSHIFT_CLEANUP_CRON": "off", "NIGHTSHIFT_BACKLOG_CRON": "off", "NIGHTSHIFT_LOG_LEVEL": "warning",
                "NIGHTSHIFT_FILES_ROOT": str(self.tmp), "PYTHONPATH": str(ROOT)}

    def use(self, values: dict) -> None:
        """Point this process (the producer) at `values`."""
        import config
        from app import catalog, queue, schema
        for key in [k for k in os.environ if k.startswith("NIGHTSHIFT_")]:
            del os.environ[key]
        os.environ.update(values)
        settings = config.reload()
        queue.configure(settings)
        catalog.load_task_modules(settings.task_modules)
        schema.open_ledger(settings.database_url, create=True)

    def start_worker(self, values: dict, queues: str) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "app", "worker", "--queues", queues], cwd=self.tmp,
                                env={**os.environ, **values, "NIGHTSHIFT_LOG_LEVEL": "info"}, stdout=log,
                                stderr=subprocess.STDOUT)
        self.workers.append(proc)
        path = Path(log.name)
        wait_for(lambda: b"started:" in path.read_bytes() or proc.poll() is not None, 30, "consumer start")
        if proc.poll() is not None:
            raise RuntimeError(path.read_text())
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.workers = []

    def close(self) -> None:
        self.stop_workers()
        self.redis.kill()
        self.redis.wait(10)


def all_done(ids: list[str]) -> bool:
    from app.models import Job
    return Job.select().where(Job.id.in_(ids), Job.state != "succeeded").count() == 0


def isolation(run: Run) -> dict:
    from app import submit, submit_many
    from app.models import Job
    values = run.settings("isolation")
    run.use(values)
    slow, mail = f"{values['NIGHTSHIFT_QUEUE']}-slow", f"{values['NIGHTSHIFT_QUEUE']}-mail"
    run.start_worker(values, f"{slow}=2,{mail}=2")
    long_ids = [submit("bench_sleep", seconds=8, queue=slow) for _ in range(4)]
    wait_for(lambda: Job.select().where(Job.id.in_(long_ids), Job.state == "running").count() == 2, 15, "slow")
    short_ids = submit_many("bench_short", [{}] * 50, queue=mail)
    wait_for(lambda: all_done(short_ids), 60, "mail jobs")
    slow_running = Job.select().where(Job.id.in_(long_ids), Job.state == "running").count()
    waits = sorted((j.started_at - j.created_at).total_seconds() for j in Job.select().where(Job.id.in_(short_ids)))
    run.stop_workers()
    p95 = waits[int(round(0.95 * (len(waits) - 1)))]
    return {"mail_jobs": len(waits), "slow_jobs_running_meanwhile": slow_running,
            "mail_wait_p50_s": round(statistics.median(waits), 3), "mail_wait_p95_s": round(p95, 3),
            "mail_wait_max_s": round(waits[-1], 3), "ok": p95 < 1.0 and slow_running == 2}


def rate_limit(run: Run) -> dict:
    from app import submit_many
    from app.models import Attempt, Job
    values = run.settings("rate")
    run.use(values)
    name = values["NIGHTSHIFT_QUEUE"]
    run.start_worker(values, f"{name}=4")
    run.start_worker(values, f"{name}=4")
    ids = submit_many("bench_rated", [{}] * 40)
    wait_for(lambda: all_done(ids), 60, "rated jobs")
    starts = sorted(a.started_at.timestamp() for a in Attempt.select().where(Attempt.job_id.in_(ids)))
    attempts = len(starts)
    max_attempt = max(j.attempt for j in Job.select().where(Job.id.in_(ids)))
    run.stop_workers()
    worst = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    return {"jobs": len(ids), "attempt_rows": attempts, "max_attempt": max_attempt,
            "max_starts_in_1s": worst, "span_s": round(starts[-1] - starts[0], 2),
            "ok": worst <= 6 and attempts == len(ids) and max_attempt == 1}


def drain_once(run: Run, spread: int, jobs: int) -> float:
    from app import submit_many
    from app.models import Job
    from peewee import fn
    values = run.settings(f"drain-{spread}-{uuid.uuid4().hex[:6]}")
    run.use(values)
    base = values["NIGHTSHIFT_QUEUE"]
    names = [base] if spread == 1 else [f"{base}-{i}" for i in range(spread)]
    ids = []
    for index, name in enumerate(names):
        ids += submit_many("bench_short", [{}] * (jobs // spread), queue=name)
    run.start_worker(values, ",".join(f"{n}={4 // spread}" for n in names))
    wait_for(lambda: all_done(ids), 300, "drain")
    first, last = Job.select(fn.MIN(Job.started_at), fn.MAX(Job.finished_at)).where(Job.id.in_(ids)).scalar(
        as_tuple=True)
    run.stop_workers()
    first, last = (datetime.datetime.fromisoformat(str(v)) for v in (first, last))
    return len(ids) / (last - first).total_seconds()


def drain(run: Run, jobs: int, repeats: int) -> dict:
    one, four = [], []
    for _ in range(repeats):
        one.append(drain_once(run, 1, jobs))
        four.append(drain_once(run, 4, jobs))
    m1, m4 = statistics.median(one), statistics.median(four)
    return {"jobs": jobs, "one_queue_jobs_per_s": [round(x) for x in one],
            "four_queues_jobs_per_s": [round(x) for x in four], "median_one": round(m1), "median_four": round(m4),
            "four_vs_one": round(m4 / m1, 3), "ok": m4 >= 0.9 * m1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drain-jobs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    compile_project()
    tmp = Path(tempfile.mkdtemp(prefix="nightshift-queues-bench-"))
    run = Run(tmp)
    try:
        results = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                   "load_average": os.getloadavg(), "cpus": os.cpu_count(),
                   "isolation": isolation(run), "rate_limit": rate_limit(run),
                   "drain": drain(run, args.drain_jobs, args.repeats)}
    finally:
        run.close()
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, value in results.items():
            print(f"{name:20} {value}")
    return 0 if all(results[k]["ok"] for k in ("isolation", "rate_limit", "drain")) else 1


if __name__ == "__main__":
    sys.exit(main())

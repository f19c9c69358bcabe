#!/usr/bin/env python
"""Flat as it grows: Nightshift on an empty ledger and on one holding 1,000,000 finished jobs, SQLite and PostgreSQL.

    .venv/bin/python benchmarks/growth.py [--rows 1000000] [--jobs 10000] [--ledgers sqlite,postgres]

For each ledger kind and each size (0 and --rows finished jobs of the benchmark's own queue, 1 % of them dead with
one failed attempt's history row each, all finished 31-60 days ago, so past both retentions; inserted oldest first
with ids made as app.jobids makes them from each job's time, as a ledger fills), on one private redis-server:

  fill          the rows go in with one INSERT ... SELECT generated in SQL (recursive CTE / generate_series)
  submit        --jobs `app.submit()` calls in this process, the consumer frozen (SIGSTOP)
  drain         `python -m app worker` (NIGHTSHIFT_WORKERS=1) thawed; until no job of the run waits or runs
  status, list, show
                the commands' own work in this process (status.snapshot(); ledger.list_jobs(); ledger.get() of the
                short id `list` prints, and of a full id, with attempts), median of 5; and the
                whole command from a shell (`python -m app status|list|show ID`), median of 3
  cleanup       (filled ledgers only) `app.cleanup.run(settings)` removing the expired rows, while a probe process plays
                a worker: every 20 ms it records, claims and finishes a job (three ledger writes), each timed; the
                longest of those writes is what a worker waited on the ledger during cleanup

PostgreSQL: a fresh database per measurement (dropped afterwards), VACUUM ANALYZEd and checkpointed after the fill, as
autovacuum and the checkpointer would have; SQLite: a fresh file (WAL), checkpointed after the fill.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_huey import PrivateRedis, code_revision, compile_project, log, wait_for  # noqa: E402
from benchmarks.peers import Consumer, cpu_ticks, signal_tree  # noqa: E402

PG_ADMIN = os.environ.get("NIGHTSHIFT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DAY = 86400

FILL_SQLITE = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows})
INSERT INTO nightshift_job (id, task, kwargs, state, attempt, retries_left, retry_delay, priority, created_at,
                            updated_at, started_at, finished_at, duration, worker, lease_losses, queue, error)
SELECT id, 'bench_noop', '{{}}', state, 1, 0, 0, 0, stamp, stamp, stamp, stamp, 0.001, 'growth:1:fill', 0, ?1,
       CASE state WHEN 'dead' THEN 'RuntimeError: boom' END
FROM (SELECT printf('%08x-%04x-8', CAST(round((julianday(stamp) - 2440587.5) * 86400000) AS INTEGER) % 4294967296,
                    x % 65536) || substr(lower(hex(randomblob(2))), 2) || '-a'
             || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))) AS id, x, state, stamp
      FROM (SELECT x, CASE WHEN mod(x, 100) = 0 THEN 'dead' ELSE 'succeeded' END AS state,
                   strftime('%Y-%m-%d %H:%M:%f', ?2, '-' || (31 * 86400 + x * 29 * 86400 / {rows}) || ' seconds')
                   AS stamp FROM c)
      ORDER BY x DESC)
"""
FILL_PG = """
INSERT INTO nightshift_job (id, task, kwargs, state, attempt, retries_left, retry_delay, priority, created_at,
                            updated_at, started_at, finished_at, duration, worker, lease_losses, queue, error)
SELECT lpad(to_hex(mod(round(extract(epoch FROM stamp) * 1000)::bigint, 4294967296)), 8, '0') || '-'
       || lpad(to_hex(mod(x, 65536)), 4, '0') || '-8' || substr(md5(random()::text), 1, 3) || '-a'
       || substr(md5(random()::text), 1, 3) || '-' || substr(md5(random()::text), 1, 12),
       'bench_noop', '{{}}', state, 1, 0, 0, 0, stamp, stamp, stamp, stamp, 0.001, 'growth:1:fill', 0, %s,
       CASE state WHEN 'dead' THEN 'RuntimeError: boom' END
FROM (SELECT x, CASE WHEN mod(x, 100) = 0 THEN 'dead' ELSE 'succeeded' END AS state,
             %s::timestamp - make_interval(secs => 31 * 86400 + x::float8 * 29 * 86400 / {rows}) AS stamp
      FROM generate_series({rows}, 1, -1) AS x) AS rows
"""
# History rows as the ledger writes them: one for each attempt that did not succeed (a succeeded attempt is its
# job's row, ledger.mark_succeeded), so here one for each dead job.
FILL_ATTEMPTS = """
INSERT INTO nightshift_attempt (job_id, number, worker, started_at, finished_at, duration, outcome, error)
SELECT id, 1, worker, started_at, finished_at, duration, 'failed', error
FROM nightshift_job WHERE state = 'dead' ORDER BY finished_at
"""

# The probe: a worker's three ledger writes per job, each timed, every 20 ms until the stop file appears.
PROBE = r"""
import json, os, sys, time
import config
from app import jobids, ledger, schema
schema.open_ledger(config.get().database_url)
stop, waits = sys.argv[1], []
print("ready", flush=True)
while not os.path.exists(stop):
    job_id = jobids.new_id()
    for step in ("record", "claim", "finish"):
        t = time.perf_counter()
        if step == "record":
            ledger.insert_jobs([{"id": job_id, "task": "bench_noop", "kwargs": "{}"}], config.get().queue)
        elif step == "claim":
            assert ledger.claim(job_id, 1, "probe:1:x", 60)
        else:
            assert ledger.mark_succeeded(job_id, 1, 0.0, None)
        waits.append((time.perf_counter() - t) * 1000)
    time.sleep(0.02)
waits.sort()
print(json.dumps({"writes": len(waits), "max_ms": waits[-1], "p99_ms": waits[int(len(waits) * 0.99)],
                  "p50_ms": waits[len(waits) // 2]}), flush=True)
"""


class Ledger:
    """A fresh ledger of one kind: its URL, and dropping it afterwards."""

    def __init__(self, kind: str, work: Path, label: str) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.url = f"sqlite:///{work / f'growth-{label}.db'}"
            self.name = None
        else:
            import psycopg2
            self.name = f"nightshift_growth_{uuid.uuid4().hex[:10]}"
            admin = psycopg2.connect(PG_ADMIN)
            admin.autocommit = True
            admin.cursor().execute(f'CREATE DATABASE "{self.name}"')
            admin.close()
            self.url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{self.name}"

    def drop(self) -> None:
        from app import db
        if db.database.obj is not None:
            db.database.obj.close()
            db._url = None
        if self.name:
            import psycopg2
            admin = psycopg2.connect(PG_ADMIN)
            admin.autocommit = True
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.close()


def settings_env(redis_url: str, ledger_url: str, queue: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIGHTSHIFT_", "SENTRY_"))}
    env.update({"NIGHTSHIFT_REDIS_URL": redis_url, "NIGHTSHIFT_DATABASE_URL": ledger_url,
                "NIGHTSHIFT_QUEUE": queue, "NIGHTSHIFT_TASK_MODULES": "benchmarks.nightshift_tasks",
                "NIGHTSHIFT_WORKERS": "1", "NIGHTSHIFT_WORKER_TYPE": "thread",
                "NIGHTSHIFT_CLEANUP_CRON": "off",  # cleanup is measured on its own, not at the top of an hour
                "PYTHONPATH": str(ROOT)})
    return env


def use(env: dict) -> None:
    """Point this process's Nightshift at `env` (settings, Huey, ledger; the ledger's tables are created)."""
    for key in [k for k in os.environ if k.startswith("NIGHTSHIFT_")]:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("NIGHTSHIFT_")})
    import config
    from app import catalog, queue, schema
    settings = config.reload()
    queue.configure(settings)
    catalog.load_task_modules(settings.task_modules)
    schema._url = None
    schema.open_ledger(settings.database_url)


def fill(kind: str, rows: int, queue: str) -> float:
    from app import ledger
    from app.db import database
    started = time.perf_counter()
    stamp = ledger.now()
    with database.atomic():
        if kind == "sqlite":
            database.execute_sql(FILL_SQLITE.format(rows=rows), (queue, stamp.isoformat(sep=" ")))
        else:
            database.execute_sql(FILL_PG.format(rows=rows), (queue, stamp))
        database.execute_sql(FILL_ATTEMPTS)
    # As a ledger that grew over weeks would be: its write-ahead log checkpointed (the fill's one huge transaction
    # would otherwise be copied back by the first commit measured), PostgreSQL's statistics up to date.
    if kind == "postgres":  # (VACUUM: else autovacuum's pass over the new million rows lands in the drain)
        database.execute_sql("VACUUM ANALYZE")
        database.execute_sql("CHECKPOINT")
    else:
        database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    # And on disk: the fill's hundreds of MB of dirty pages, written back by the kernel while the submit ran,
    # cost that submit 20 % of its rate in some runs and none in others.
    os.sync()
    return time.perf_counter() - started


def waiting_or_running() -> int:
    from app.models import Job
    return Job.select().where(Job.state.in_(("queued", "retrying", "running"))).count()


def median_ms(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def cli_ms(env: dict, *args: str, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT, check=True, capture_output=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(kind: str, rows: int, args: argparse.Namespace, redis_url: str, work: Path) -> dict:
    label = f"{kind}-{rows}"
    queue = "g" + uuid.uuid4().hex[:8]
    store = Ledger(kind, work, label)
    result: dict = {"ledger": kind, "rows": rows, "loadavg": os.getloadavg()[0]}
    consumer = None
    try:
        env = settings_env(redis_url, store.url, queue)
        use(env)
        if rows:
            log(f"{label}: filling {rows:,} finished jobs")
            result["fill_seconds"] = fill(kind, rows, queue)
        # The drain: a consumer started on an empty queue, idle, frozen while the jobs are submitted, thawed.
        consumer = Consumer(f"nightshift {label}", [sys.executable, "-m", "app", "worker"], env,
                            work / f"worker-{label}.log", "started:").start()
        consumer.wait_idle()
        signal_tree(consumer.proc.pid, signal.SIGSTOP)
        log(f"{label}: submit {args.jobs:,} jobs one by one")
        from app import submit
        started, cpu = time.perf_counter(), time.process_time()
        ids = [submit("bench_noop") for _ in range(args.jobs)]
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        result["submit"] = {"rate": args.jobs / elapsed, "cpu_us": cpu / args.jobs * 1e6}
        log(f"{label}: drain")
        ticks = cpu_ticks(consumer.proc.pid)
        signal_tree(consumer.proc.pid, signal.SIGCONT)
        started = time.perf_counter()
        wait_for(lambda: (consumer.alive(), waiting_or_running() == 0)[1], args.timeout, f"{label} drain",
                 interval=0.01)
        elapsed = time.perf_counter() - started
        result["drain"] = {"rate": args.jobs / elapsed, "cpu_us": (cpu_ticks(consumer.proc.pid) - ticks)
                           / os.sysconf("SC_CLK_TCK") / args.jobs * 1e6}
        consumer.stop()
        consumer = None

        log(f"{label}: status, list, show")
        from app import jobids, ledger, status
        job_id = ids[len(ids) // 2]
        result["status_ms"] = median_ms(lambda: status.snapshot(__import__("config").get(), huey=None))
        result["list_ms"] = median_ms(lambda: ledger.list_jobs(limit=50, queues=[queue]))
        result["list_dead_ms"] = median_ms(lambda: ledger.list_jobs(state="dead", limit=50, queues=[queue]))
        result["show_ms"] = median_ms(lambda: (ledger.get(job_id), ledger.attempts(job_id)))
        result["show_prefix_ms"] = median_ms(lambda: ledger.get(jobids.short(job_id)))
        assert ledger.get(jobids.short(job_id)).id == job_id
        result["cli_status_ms"] = cli_ms(env, "status")
        result["cli_list_ms"] = cli_ms(env, "list")
        result["cli_show_ms"] = cli_ms(env, "show", jobids.short(job_id))

        if rows:
            result["cleanup"] = cleanup_under_probe(env, work, label)
        return result
    finally:
        if consumer is not None:
            consumer.stop()
        store.drop()


def cleanup_under_probe(env: dict, work: Path, label: str) -> dict:
    from app import cleanup
    from app.models import Job
    stop = work / f"stop-probe-{label}"
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(stop)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert probe.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # a few undisturbed writes first
        log(f"{label}: cleanup (a probe writes as a worker meanwhile)")
        before = Job.select().count()
        started = time.perf_counter()
        report = cleanup.run(__import__("config").get())
        seconds = time.perf_counter() - started
        time.sleep(0.3)
    finally:
        stop.touch()
        out, _ = probe.communicate(timeout=60)
    probe_figures = json.loads(out.strip().splitlines()[-1])
    return {"seconds": seconds, "jobs_removed": report.jobs_succeeded + report.jobs_failed,
            "attempts_removed": report.attempts, "rows_before": before, "probe": probe_figures}


def table(report: dict) -> str:
    runs = report["runs"]
    by = {(r["ledger"], r["rows"]): r for r in runs}
    lines = []
    for kind in dict.fromkeys(r["ledger"] for r in runs):
        sizes = sorted(rows for k, rows in by if k == kind)
        lines.append(f"\n{kind}:\n")
        lines.append("| figure | " + " | ".join(f"{rows:,} rows" for rows in sizes) + " | ratio | target |")
        lines.append("|---|" + "---:|" * len(sizes) + "---:|---|")
        rows_spec = [
            ("submit, one by one (jobs/s)", lambda r: r["submit"]["rate"], "{:,.0f}", "≥ 0.9 of empty"),
            ("  CPU per job, producer (µs)", lambda r: r["submit"]["cpu_us"], "{:,.0f}", ""),
            ("drain, 1 worker (jobs/s)", lambda r: r["drain"]["rate"], "{:,.0f}", "≥ 0.9 of empty"),
            ("  CPU per job, consumer (µs)", lambda r: r["drain"]["cpu_us"], "{:,.0f}", ""),
            ("status: snapshot (ms)", lambda r: r["status_ms"], "{:.1f}", "< 200"),
            ("list: newest 50 (ms)", lambda r: r["list_ms"], "{:.1f}", "< 100"),
            ("list --state dead (ms)", lambda r: r["list_dead_ms"], "{:.1f}", "< 100"),
            ("show: full id + attempts (ms)", lambda r: r["show_ms"], "{:.1f}", "< 100"),
            ("show: short id as lists print it (ms)", lambda r: r["show_prefix_ms"], "{:.1f}", "< 100"),
            ("`nightshift status` wall (ms)", lambda r: r["cli_status_ms"], "{:.0f}", ""),
            ("`nightshift list` wall (ms)", lambda r: r["cli_list_ms"], "{:.0f}", ""),
            ("`nightshift show SHORT-ID` wall (ms)", lambda r: r["cli_show_ms"], "{:.0f}", ""),
            ("cleanup of the expired rows (s)", lambda r: r.get("cleanup", {}).get("seconds"), "{:.1f}", "< 60"),
            ("  longest worker write meanwhile (ms)", lambda r: r.get("cleanup", {}).get("probe", {}).get("max_ms"),
             "{:.1f}", "< 100"),
            ("  worker write p99 meanwhile (ms)", lambda r: r.get("cleanup", {}).get("probe", {}).get("p99_ms"),
             "{:.1f}", ""),
            ("1-min load average", lambda r: r["loadavg"], "{:.2f}", ""),
        ]
        for name, get, fmt, target in rows_spec:
            values = [get(by[(kind, rows)]) for rows in sizes]
            cells = ["—" if v is None else fmt.format(v) for v in values]
            ratio = f"{values[-1] / values[0]:.2f}" if len(values) > 1 and values[0] and values[-1] is not None \
                and "load" not in name else ""
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {target} |")
    meta = report["meta"]
    lines.append("")
    lines.append(f"{meta['date']}, code {meta['revision']}, {meta['jobs']:,} jobs submitted and drained per "
                 f"figure, {meta['cpus']} CPUs, Python {meta['python']}; 1-min load average "
                 f"{meta['loadavg_start']:.2f} at start, {meta['loadavg_end']:.2f} at end")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished jobs in the grown ledger")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs submitted and drained per figure")
    parser.add_argument("--ledgers", default="sqlite,postgres")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = parser.parse_args()
    compile_project()
    work = Path(tempfile.mkdtemp(prefix="nightshift-growth-"))
    revision = code_revision()
    server = PrivateRedis(work / "redis").start()
    load_start = os.getloadavg()[0]
    try:
        runs = []
        for kind in [k.strip() for k in args.ledgers.split(",") if k.strip()]:
            for rows in (0, args.rows):
                runs.append(measure(kind, rows, args, server.url, work))
        report = {"meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                           "revision": revision, "jobs": args.jobs, "rows": args.rows,
                           "cpus": os.cpu_count(), "python": platform.python_version(),
                           "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]},
                  "runs": runs}
        print(table(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

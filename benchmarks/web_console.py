"""How fast the console answers with a big ledger: p50/p95/max of its pages over real HTTP.

    .venv/bin/python benchmarks/web_console.py --jobs 1000000 --ledger sqlite
    .venv/bin/python benchmarks/web_console.py --jobs 1000000 --ledger postgres   # needs PostgreSQL on 127.0.0.1
    .venv/bin/python benchmarks/web_console.py --jobs 1000000 --ledger both --json

It fills a fresh ledger (a SQLite file in a temporary directory, or a PostgreSQL database of its own, dropped
afterwards) with JOBS jobs created over the last 7 days -- 8 tasks, 2 queues (90/10), about 96% succeeded, 2%
dead, 1% canceled, 1% expired, a few thousand waiting, scheduled, retrying and running ones in the last hour,
argument objects of ~100 bytes, idempotency keys on 10%, attempt rows for the dead ones -- then starts
`nightshift web` on it as a real process and times GET requests over one keep-alive connection:

- overview: `/`;
- job list: no filter, each state, a task, a queue, combinations, deep pages (a cursor at a random point of the
  7 days), search by id prefix, by idempotency key and by argument text;
- job page: `/jobs/ID` of random jobs (all states).

Targets (issue 15): job list and job page p95 < 200 ms, overview p95 < 300 ms; the server's RSS < 60 MB.
Redis is only read by the overview (paused flags are in the ledger; alert keys); the run uses logical db 12 and a
queue name of its own, and deletes nothing else.
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PG_ADMIN = os.environ.get("NIGHTSHIFT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("NIGHTSHIFT_BENCH_REDIS", "redis://127.0.0.1:6379/12")
TASKS = [("checksum_file", 30), ("count_primes", 5), ("send_email_batch", 15), ("deliver_webhook", 25),
         ("make_thumbnail", 10), ("pull_pages", 5), ("import_records", 5), ("nightshift_cleanup", 5)]
QUEUES = [("bench", 90), ("reports", 10)]
DAYS = 7


def pick(choices, rng):
    total = sum(w for _, w in choices)
    x = rng.uniform(0, total)
    for value, weight in choices:
        x -= weight
        if x <= 0:
            return value
    return choices[-1][0]


def rows(count: int, seed: int = 15):
    """The benchmark's jobs, oldest first, as tuples in app.ledger.JOB_FIELDS order."""
    from app.ledger import JOB_FIELDS
    rng = random.Random(seed)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    start = now - datetime.timedelta(days=DAYS)
    span = (now - start).total_seconds()
    names = [f.name for f in JOB_FIELDS]
    for i in range(count):
        created = start + datetime.timedelta(seconds=span * i / count)
        age = (now - created).total_seconds()
        task, queue = pick(TASKS, rng), pick(QUEUES, rng)
        duration = round(rng.expovariate(1 / 0.8), 3)
        row = dict(id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), task=task, queue=queue,
                   kwargs=json.dumps({"user_id": i, "email": f"user{i}@example.com", "path": f"in/{i}.csv",
                                      "api_token": "tok-" + str(i)}),
                   attempt=1, retries_left=2, retry_delay=1.0, priority=0, timeout=None, eta=None,
                   key=f"order-{i}" if i % 10 == 0 else None, created_at=created, updated_at=created,
                   started_at=None, finished_at=None, duration=None, worker=None, lease_expires_at=None,
                   lease_losses=0, result=None, error=None, traceback=None, reason=None, progress=None, raw=None)
        if age > 3600 or rng.random() < 0.90:
            state = pick([("succeeded", 960), ("dead", 20), ("canceled", 10), ("expired", 10)], rng)
            row.update(state=state, started_at=created + datetime.timedelta(seconds=0.05),
                       finished_at=created + datetime.timedelta(seconds=0.05 + duration), duration=duration,
                       worker=f"web{rng.randint(1, 3)}:{rng.randint(100, 999)}:ab12", updated_at=created)
            if state == "succeeded":
                row["result"] = json.dumps({"ok": True, "n": i})
            elif state == "dead":
                row.update(attempt=3, retries_left=0, reason="failed on attempt 3",
                           error="TemporaryError: upstream answered 503",
                           traceback="Traceback (most recent call last):\n  ...\nTemporaryError: upstream answered 503")
        else:
            state = pick([("queued", 90), ("retrying", 6), ("running", 1), ("scheduled", 3)], rng)
            if state == "scheduled":
                row.update(state="queued", eta=now + datetime.timedelta(hours=rng.uniform(1, 48)))
            elif state == "running":
                row.update(state="running", started_at=now, worker="web1:123:ab12",
                           lease_expires_at=now + datetime.timedelta(minutes=1),
                           progress=json.dumps({"done": 40, "total": 100, "note": "page 4"}))
            else:
                row.update(state=state)
        yield tuple(row[name] for name in names)


def fill(url: str, count: int) -> float:
    """Create the ledger at `url` and insert `count` jobs (plus attempts of dead jobs and three live workers)."""
    from app import db, ledger, schema
    from app.models import Attempt, Job, WorkerBeat
    started = time.perf_counter()
    database = schema.open_ledger(url)
    columns = ", ".join(f'"{f.column_name}"' for f in ledger.JOB_FIELDS)
    batch: list[tuple] = []
    postgres = not db.is_sqlite()

    def flush() -> None:
        if not batch:
            return
        with database.atomic():
            cursor = database.cursor()
            if postgres:
                from psycopg2.extras import execute_values
                execute_values(cursor, f'INSERT INTO "{Job._meta.table_name}" ({columns}) VALUES %s', batch,
                               page_size=2000)
            else:
                marks = ", ".join(["?"] * len(ledger.JOB_FIELDS))
                cursor.executemany(f'INSERT INTO "{Job._meta.table_name}" ({columns}) VALUES ({marks})', batch)
        batch.clear()

    for number, row in enumerate(rows(count), 1):
        batch.append(row)
        if len(batch) == 20000:
            flush()
            print(f"  {number:,} jobs ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    flush()
    with database.atomic():
        dead = Job.select(Job.id, Job.created_at).where(Job.state == "dead").tuples()
        attempts = []
        for job_id, created in dead:
            for n in (1, 2, 3):
                attempts.append(dict(job_id=job_id, number=n, worker="web1:123:ab12",
                                     started_at=created + datetime.timedelta(seconds=n),
                                     finished_at=created + datetime.timedelta(seconds=n + 0.5), duration=0.5,
                                     outcome="failed", error="TemporaryError: upstream answered 503"))
        for start in range(0, len(attempts), 1000):
            Attempt.insert_many(attempts[start:start + 1000]).execute()
        now = ledger.now()
        for n in (1, 2, 3):
            WorkerBeat.insert(id=f"web{n}:12{n}:ab12", host=f"web{n}", pid=120 + n, queue="bench", started_at=now,
                              last_seen=now, rss_bytes=42 << 20, jobs_done=1000 * n).execute()
    if postgres:
        database.execute_sql("ANALYZE")
    return time.perf_counter() - started


def sample_targets(url: str, rng: random.Random) -> dict:
    """Ids, keys and a deep cursor to ask for, drawn from the ledger."""
    from app import schema
    from app.models import Job
    schema.open_ledger(url)
    total = Job.select().count()
    ids = []
    for _ in range(60):
        row = Job.select(Job.id).where(Job.key == f"order-{rng.randrange(0, total, 10)}").tuples().first()
        if row:
            ids.append(row[0])
    states = {s: [r[0] for r in Job.select(Job.id).where(Job.state == s).limit(50).tuples()]
              for s in ("dead", "running", "queued", "retrying", "canceled")}
    return {"ids": ids + [i for v in states.values() for i in v], "total": total}


def requests(targets: dict, rng: random.Random, rounds: int) -> list[tuple[str, str]]:
    """(category, path) pairs: a shuffled mix of every kind of request."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    tasks = [t for t, _ in TASKS]
    out = []
    for _ in range(rounds):
        deep = now - datetime.timedelta(seconds=rng.uniform(0, DAYS * 86400))
        cursor = urllib.parse.quote(f"{deep.isoformat(timespec='microseconds')}~ffffffff")
        job = rng.choice(targets["ids"])
        variants = {
            "list: no filter": "/jobs",
            "list: state=dead": "/jobs?state=dead",
            "list: state=succeeded": "/jobs?state=succeeded",
            "list: state=queued": "/jobs?state=queued",
            "list: state=running": "/jobs?state=running",
            "list: task": f"/jobs?task={rng.choice(tasks)}",
            "list: queue=reports": "/jobs?queue=reports",
            "list: state=dead+task+queue": f"/jobs?state=dead&task={rng.choice(tasks)}&queue=reports",
            "list: deep page (cursor)": f"/jobs?before={cursor}",
            "list: deep page, state=succeeded": f"/jobs?state=succeeded&before={cursor}",
            "list: search id prefix": f"/jobs?q={job[:8]}",
            "list: search key": f"/jobs?q=order-{rng.randrange(0, targets['total'], 10)}",
            "list: search argument text": f"/jobs?q=user{rng.randrange(targets['total'])}%40example",
            "list: API state=dead limit=100": "/api/jobs?state=dead&limit=100",
            "job page": f"/jobs/{job}",
            "job page: API": f"/api/jobs/{job}",
            "overview": "/",
            "overview: API": "/api/overview",
        }
        out += list(variants.items())
    rng.shuffle(out)
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(url: str, rounds: int, rng: random.Random, work: str) -> dict:
    targets = sample_targets(url, rng)
    port = 18000 + rng.randrange(1000)
    env = dict(os.environ, NIGHTSHIFT_DATABASE_URL=url, NIGHTSHIFT_REDIS_URL=REDIS_URL, NIGHTSHIFT_QUEUE="bench",
               NIGHTSHIFT_CLEANUP_CRON="off", NIGHTSHIFT_BACKLOG_CRON="off", PYTHONPATH=ROOT)
    env.pop("NIGHTSHIFT_WEB_TOKEN", None)
    log = open(os.path.join(work, "web.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app", "web", "--port", str(port)], env=env, cwd=work,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        conn = None
        for _ in range(200):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.1)
        timings: dict[str, list[float]] = {}
        for category, path in requests(targets, rng, 3)[:60]:  # warm-up: imports, connections, page cache
            conn.request("GET", path)
            conn.getresponse().read()
        for category, path in requests(targets, rng, rounds):
            began = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - began) * 1000
            if response.status != 200:
                raise SystemExit(f"{path}: {response.status} {body[:300]!r}")
            timings.setdefault(category, []).append(elapsed)
        rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    figures = {}
    for category, values in timings.items():
        values.sort()
        figures[category] = {"n": len(values), "p50": round(statistics.median(values), 1),
                             "p95": round(values[max(0, int(len(values) * 0.95 + 0.5) - 1)], 1),
                             "max": round(values[-1], 1)}
    groups = {"job list": [v for c, vs in timings.items() if c.startswith("list") for v in vs],
              "job page": [v for c, vs in timings.items() if c.startswith("job page") for v in vs],
              "overview": [v for c, vs in timings.items() if c.startswith("overview") for v in vs]}
    summary = {}
    for name, values in groups.items():
        values.sort()
        summary[name] = {"n": len(values), "p50": round(statistics.median(values), 1),
                         "p95": round(values[max(0, int(len(values) * 0.95 + 0.5) - 1)], 1),
                         "max": round(values[-1], 1)}
    return {"jobs": targets["total"], "rss_mb": round(rss, 1), "summary": summary, "requests": figures}


def run(ledger_kind: str, count: int, rounds: int, keep: bool) -> dict:
    work = tempfile.mkdtemp(prefix="nightshift-web-bench-")
    rng = random.Random(15)
    if ledger_kind == "sqlite":
        url, drop = f"sqlite:///{work}/ledger.db", None
    else:
        import psycopg2
        name = f"nightshift_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(PG_ADMIN)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name

        def drop() -> None:
            from app import db
            if db.database.obj is not None:
                db.database.obj.close()
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    try:
        print(f"== {ledger_kind}: filling {count:,} jobs", file=sys.stderr, flush=True)
        seconds = fill(url, count)
        print(f"== {ledger_kind}: filled in {seconds:.0f} s; measuring", file=sys.stderr, flush=True)
        result = measure(url, rounds, rng, work)
        result.update(ledger=ledger_kind, fill_seconds=round(seconds, 1))
        return result
    finally:
        if drop is not None and not keep:
            drop()
        if keep:
            print(f"kept {work} ({url})", file=sys.stderr)


def table(result: dict) -> str:
    lines = [f"ledger {result['ledger']}: {result['jobs']:,} jobs, console RSS {result['rss_mb']} MB "
             f"(filled in {result['fill_seconds']} s)",
             f"{'request':<36} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"]
    for name, f in list(result["summary"].items()) + [("", None)] + list(result["requests"].items()):
        if f is None:
            lines.append("")
            continue
        lines.append(f"{name:<36} {f['n']:>5} {f['p50']:>8} {f['p95']:>8} {f['max']:>8}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--ledger", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=30, help="requests of each kind (default 30)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the ledger (and say where)")
    options = parser.parse_args()
    kinds = ("sqlite", "postgres") if options.ledger == "both" else (options.ledger,)
    results = []
    for kind in kinds:
        result = run(kind, options.jobs, options.rounds, options.keep)
        results.append(result)
        if not options.json:
            print(table(result) + "\n", flush=True)
    if options.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

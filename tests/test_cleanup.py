"""Cleanup on a ledger and a Redis seeded with 50,000 rows and keys of mixed ages: exactly the dead things go."""
from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
import uuid

import pytest

from conftest import cli

DAY = datetime.timedelta(days=1)

# (name, state, finished days ago (None: not finished), raw preview?, count, survives?)
GROUPS = [
    ("old_succeeded", "succeeded", 10, False, 10_000, False),
    ("new_succeeded", "succeeded", 2, False, 10_000, True),
    ("old_dead", "dead", 40, True, 4_000, False),
    ("old_canceled", "canceled", 40, False, 2_000, False),
    ("old_expired", "expired", 40, False, 2_000, False),
    ("dead_old_preview", "dead", 10, True, 3_000, True),
    ("dead_no_preview", "dead", 10, False, 2_000, True),
    ("dead_new_preview", "dead", 2, True, 2_000, True),
    ("old_queued", "queued", None, False, 5_000, True),
    ("running", "running", None, False, 2_000, True),
    ("canceled_10d", "canceled", 10, False, 3_000, True),
    ("retrying", "retrying", None, False, 5_000, True),
]
# Cleanup judges a lock's holder alive by the ledger's one rule (ledger.gone_after: 3 heartbeats) and runs here with
# the default heartbeat, so the seeded lock ages (1 s: may not have beaten yet; 60 s: gone) lie on either side of
# its 30 s whatever the time seeding takes (the tests' 0.5 s heartbeat would make it 1.5 s).
CLEANUP_HEARTBEAT = "10"
EXPECTED = {"jobs_succeeded": 10_000, "jobs_failed": 8_000, "attempts": 18_000, "previews": 3_000,
            "workers": 2, "results": 29_000, "revoke_flags": 5_000, "locks": 3, "locks_bounded": 1}


class Seed:
    """What was seeded and what must survive."""

    def __init__(self) -> None:
        self.jobs: dict[str, list[str]] = {}
        self.keep_jobs: set[str] = set()
        self.keep_keys: set[bytes] = set()
        self.gone_keys: set[bytes] = set()
        self.bounded_lock: bytes = b""


def bulk_insert(model, rows: list[dict]) -> None:
    """Insert fast: the driver's executemany / execute_values (peewee's query building costs seconds here)."""
    from app.db import database, is_sqlite
    fields = list(rows[0])
    table = model._meta.table_name
    columns = ", ".join(model._meta.fields[f].column_name for f in fields)
    values = [tuple(row[f] for f in fields) for row in rows]
    cursor = database.cursor()
    if is_sqlite():
        cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(fields))})", values)
    else:
        from psycopg2.extras import execute_values
        execute_values(cursor, f"INSERT INTO {table} ({columns}) VALUES %s", values, page_size=2000)


def seed(queue: str) -> Seed:
    from app import ledger
    from app.db import database
    from app.models import Attempt, Job, WorkerBeat
    from app.queue import get_huey
    huey = get_huey()
    conn, result_key = huey.storage.conn, huey.storage.result_key
    now, s = ledger.now(), Seed()
    jobs, attempts = [], []
    for name, state, age, raw, count, survives in GROUPS:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        s.jobs[name] = ids
        if survives:
            s.keep_jobs.update(ids)
        finished = now - age * DAY if age is not None else None
        created = now - 41 * DAY
        for job_id in ids:
            jobs.append(dict(id=job_id, task="add", kwargs='{"a": 1}', state=state, created_at=created,
                             updated_at=finished or created, finished_at=finished, result="3",
                             raw="x" * 300 if raw else None, worker="w", attempt=1, retries_left=0,
                             retry_delay=0, priority=0, lease_losses=0))
            attempts.append(dict(job_id=job_id, number=1, worker="w", started_at=created, finished_at=finished,
                                 outcome="succeeded" if state == "succeeded" else "failed"))
    with database.atomic():
        bulk_insert(Job, jobs)
        bulk_insert(Attempt, attempts)

    pending: dict[tuple, list[bytes]] = {}

    def put(key: bytes, value: bytes, ttl: int | None, keep: bool) -> None:
        pending.setdefault((value, ttl), []).append(key)
        (s.keep_keys if keep else s.gone_keys).add(key)

    value = huey.serializer.serialize({"sum": 3})
    for job_id in s.jobs["new_succeeded"]:
        put(result_key(job_id), value, 3600, True)                  # a live result
    for job_id in s.jobs["dead_old_preview"]:
        put(result_key(job_id), value, None, False)                 # a result that never expires
    for job_id in s.jobs["old_succeeded"]:
        put(result_key(job_id), value, 3600, False)                 # its job goes past retention
    for _ in range(16_000):
        put(result_key(str(uuid.uuid4())), value, 3600, False)      # no such job
    flag = huey.serializer.serialize([None, False])
    for name in ("old_queued", "running", "retrying"):
        for job_id in s.jobs[name][:2000]:
            put(result_key(f"r:{job_id}"), flag, None, True)         # may still run: the flag matters
    for job_id in s.jobs["canceled_10d"]:
        put(result_key(f"r:{job_id}"), flag, None, False)            # finished: the flag is dead
    for _ in range(2_000):
        put(result_key(f"r:{uuid.uuid4()}"), flag, None, False)      # unknown job

    lock = lambda name: result_key(f"{queue}.lock.{name}")  # noqa: E731 - Huey's lock key
    holder = lambda who, ago: huey.serializer.serialize({"holder": who, "since": time.time() - ago})  # noqa: E731
    put(lock("dead-holder"), holder("deadhost:1", 60), None, False)
    put(lock("unknown-holder-old"), holder("gonehost:9", 3600), None, False)
    put(lock("live-but-too-old"), holder("livehost:2", 7 * 3600), None, False)
    put(lock("live-holder"), holder("livehost:2", 60), None, True)
    put(lock("unknown-holder-new"), holder("newhost:3", 1), None, True)
    put(lock("no-holder"), huey.serializer.serialize("1"), None, True)
    s.bounded_lock = lock("no-holder")
    put(result_key("rt:add"), flag, None, True)                    # a task-wide revocation: operator's
    put(result_key("not-a-job-id"), b"x", None, True)               # somebody else's key
    put(f"huey.r.{queue}.other.{uuid.uuid4()}".encode(), value, None, True)   # queue "{queue}.other"
    # Seed fast: one script call per 5,000 keys of the same value and TTL.
    bulk_set = conn.register_script("for i, key in ipairs(KEYS) do if ARGV[2] == '' then "
                                    "redis.call('set', key, ARGV[1]) else redis.call('set', key, ARGV[1], 'EX', "
                                    "ARGV[2]) end end")
    for (value, ttl), batch in pending.items():
        for start in range(0, len(batch), 5000):
            bulk_set(keys=batch[start:start + 5000], args=[value, "" if ttl is None else ttl])

    WorkerBeat.insert_many([
        dict(id="livehost:2", host="livehost", pid=2, queue=queue, started_at=now, last_seen=now, stopped_at=None),
        dict(id="deadhost:1", host="deadhost", pid=1, queue=queue, started_at=now - DAY, last_seen=now,
             stopped_at=now - datetime.timedelta(minutes=5)),
        dict(id="oldhost:1", host="oldhost", pid=1, queue=queue, started_at=now - 20 * DAY,
             last_seen=now - 10 * DAY, stopped_at=now - 10 * DAY),
        dict(id="vanished:1", host="vanished", pid=1, queue=queue, started_at=now - 20 * DAY,
             last_seen=now - 10 * DAY, stopped_at=None),
    ]).execute()
    return s


def keys(queue: str) -> dict[bytes, int]:
    from app.queue import get_huey
    conn = get_huey().storage.conn
    found = list(conn.scan_iter(match=f"huey.r.{queue}.*", count=5000))
    ttls = conn.register_script("local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('ttl', key) end "
                                "return out")
    flags = [ttl for start in range(0, len(found), 5000) for ttl in ttls(keys=found[start:start + 5000])]
    return dict(zip(found, (ttl > 0 for ttl in flags)))


def ledger_state() -> tuple:
    from app.models import Attempt, Job, WorkerBeat
    return (sorted(Job.select(Job.id, Job.raw).tuples()), Attempt.select().count(),
            sorted(w.id for w in WorkerBeat.select()))


def beat_live_worker(queue: str) -> None:
    """Just before a cleanup: the live worker beats, and the lock of the holder nobody knows yet was taken a second
    ago, so both stay live however long seeding and an earlier cleanup took (over three heartbeats on a loaded
    machine made the new holder's lock stale)."""
    from app import ledger
    from app.models import WorkerBeat
    from app.queue import get_huey
    WorkerBeat.update(last_seen=ledger.now()).where(WorkerBeat.id == "livehost:2").execute()
    huey = get_huey()
    huey.storage.conn.set(huey.storage.result_key(f"{queue}.lock.unknown-holder-new"),
                          huey.serializer.serialize({"holder": "newhost:3", "since": time.time() - 1}))


def check_result(queue: str, s: Seed) -> None:
    from app import ledger
    from app.models import Attempt, Job, WorkerBeat
    survivors = {row[0] for row in Job.select(Job.id).tuples()}
    assert survivors == s.keep_jobs
    assert {row[0] for row in Attempt.select(Attempt.job_id).tuples()} == s.keep_jobs
    raws = dict(Job.select(Job.id, Job.raw).where(Job.state == "dead").tuples())
    assert all(raws[i] == ledger.PREVIEW_REMOVED for i in s.jobs["dead_old_preview"])
    assert all(raws[i] == "x" * 300 for i in s.jobs["dead_new_preview"])
    assert all(raws[i] is None for i in s.jobs["dead_no_preview"])
    assert sorted(w.id for w in WorkerBeat.select()) == ["deadhost:1", "livehost:2"]
    remaining = keys(queue)
    assert set(remaining) == s.keep_keys
    assert remaining[s.bounded_lock], "a lock without holder gets a TTL while workers live"


def run_cleanup(env, *args: str) -> dict:
    out = cli(env, "cleanup", "--json", *args, NIGHTSHIFT_HEARTBEAT_SECONDS=CLEANUP_HEARTBEAT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_cleanup_removes_exactly_the_dead_things_and_dry_run_changes_nothing(env, ledger_db):
    queue = env["NIGHTSHIFT_QUEUE"]
    s = seed(queue)
    assert len(s.keep_keys) + len(s.gone_keys) >= 50_000
    before_keys, before_ledger = keys(queue), ledger_state()

    beat_live_worker(queue)
    dry = run_cleanup(env, "--dry-run")
    assert keys(queue) == before_keys and ledger_state() == before_ledger, "--dry-run changed something"
    assert dry["dry_run"] is True
    assert {k: dry[k] for k in EXPECTED} == EXPECTED

    beat_live_worker(queue)
    report = run_cleanup(env)
    assert {k: report[k] for k in EXPECTED} == EXPECTED
    assert report["ledger_bytes"] > 18_000 * 160 and report["previews_bytes"] >= 3_000 * 270
    assert report["results_bytes"] > 29_000 * 40 and report["bytes_freed"] > report["ledger_bytes"]
    check_result(queue, s)


def test_two_cleanups_at_once_remove_everything_once(env, ledger_db):
    queue = env["NIGHTSHIFT_QUEUE"]
    s = seed(queue)
    beat_live_worker(queue)
    settings = env.full(NIGHTSHIFT_CLEANUP_BATCH=250, NIGHTSHIFT_HEARTBEAT_SECONDS=CLEANUP_HEARTBEAT)
    procs = [subprocess.Popen([sys.executable, "-m", "app", "cleanup", "--json"], env=settings, cwd=env.tmp,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    totals = {k: sum(r[k] for r in reports) for k in EXPECTED if k != "locks_bounded"}
    assert totals == {k: v for k, v in EXPECTED.items() if k != "locks_bounded"}
    assert 1 <= sum(r["locks_bounded"] for r in reports) <= 2  # EXPIRE NX: the second one finds a TTL set
    check_result(queue, s)


@pytest.mark.parametrize("spec, words", [("0 * * * *", "every hour at minute 0"),
                                         ("*/15 * * * *", "every 15 minutes"),
                                         ("30 3 * * *", "every day at 03:30"),
                                         ("0 9 * * 1-5", "at 09:00 on Monday, Tuesday, Wednesday, Thursday and "
                                                         "Friday")])
def test_schedule_words_and_strict_cron(spec, words):
    from app.schedule import describe, parse
    assert describe(spec) == words
    with pytest.raises(ValueError):
        parse("*/x * * * *")


def test_locks_are_judged_at_the_instant_their_holders_are(env, ledger_db):
    """A cleanup whose ledger part took a minute: a lock whose holder had taken it a second before the cleanup
    began, and that nobody knew yet, is kept, as the holder's liveness was judged at that start."""
    import config
    from app import cleanup, ledger
    from app.queue import get_huey
    huey, settings = get_huey(), config.get()
    began = ledger.now() - datetime.timedelta(seconds=60)
    fresh = huey.storage.result_key(f"{huey.name}.lock.fresh-at-start")
    old = huey.storage.result_key(f"{huey.name}.lock.old-at-start")
    taken = lambda ago: huey.serializer.serialize({"holder": "newhost:3", "since": time.time() - ago})  # noqa: E731
    huey.storage.conn.set(fresh, taken(61))     # one second before the cleanup began
    huey.storage.conn.set(old, taken(60 + 3600))
    report = cleanup.Report()
    cleanup.clean_redis(report, [huey.name], began, settings)
    assert huey.storage.conn.exists(fresh) and not huey.storage.conn.exists(old)
    assert report.locks == 1


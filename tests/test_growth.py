"""Flat as the ledger grows (issue 16): the read paths use index ranges, never a scan or a sort of every job of a
queue; existing ledgers get the indexes; recovery's memory is bounded by ids, not rows; cleanup never holds a
worker's ledger write for long.

Query plans are checked rather than timings (timings of a small test ledger prove nothing, and plans do not
depend on the rows on SQLite, which keeps no statistics). On PostgreSQL, with sequential scans disabled, a plan
that still scans has no index to use.
"""
from __future__ import annotations

import datetime
import re
import threading
import time
import tracemalloc
import uuid

import pytest

from conftest import USE_PG

JOB_TABLE = '"nightshift_job"'


def seed_finished(queue: str, count: int, state: str = "succeeded", days_ago: float = 40) -> list[str]:
    """`count` finished jobs of `queue` with one attempt each, inserted in a few statements."""
    from app.db import database
    from app.models import Attempt, Job
    stamp = datetime.datetime.utcnow() - datetime.timedelta(days=days_ago)
    ids = sorted(str(uuid.uuid4()) for _ in range(count))
    jobs = [dict(id=i, task="noop", kwargs="{}", state=state, attempt=1, created_at=stamp, updated_at=stamp,
                 started_at=stamp, finished_at=stamp, duration=0.001, worker="w:1:x", queue=queue) for i in ids]
    attempts = [dict(job_id=i, number=1, worker="w:1:x", started_at=stamp, finished_at=stamp, duration=0.001,
                     outcome="succeeded") for i in ids]
    with database.atomic():
        for start in range(0, count, 500):
            Job.insert_many(jobs[start:start + 500]).execute()
            Attempt.insert_many(attempts[start:start + 500]).execute()
    return ids


class Plans:
    """The plans of the SELECTs on the job table that run inside the block."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []

    def __enter__(self) -> "Plans":
        from app.db import database, is_sqlite
        db = database.obj
        self._db, self._original = db, db.execute_sql
        sqlite = is_sqlite()

        def spy(sql, params=None, *args, **kwargs):
            if sql.lstrip().upper().startswith(("SELECT", "DELETE")) and f"FROM {JOB_TABLE}" in sql:
                if sqlite:
                    plan = [row[-1] for row in self._original("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
                else:
                    self._original("SET enable_seqscan = off")
                    plan = [row[0] for row in self._original("EXPLAIN " + sql, params).fetchall()]
                    self._original("SET enable_seqscan = on")
                self.seen.append((sql, plan))
            return self._original(sql, params, *args, **kwargs)
        db.execute_sql = spy
        return self

    def __exit__(self, *exc) -> None:
        self._db.execute_sql = self._original

    def scans(self) -> list[tuple[str, list[str]]]:
        """Statements that read the whole job table (or a whole index of it)."""
        return [(sql, plan) for sql, plan in self.seen
                if any(step.startswith("SCAN") or "Seq Scan on nightshift_job" in step for step in plan)]

    def full_sorts(self) -> list[tuple[str, list[str]]]:
        """Statements that sort all the rows they match to return the first few, not an ordered index read
        (PostgreSQL: a plain Sort of more than a hundred rows by its estimate; an Incremental Sort only orders
        ties of an index's order)."""
        def sorts_many(step: str) -> bool:
            node = re.match(r"\s*(->\s*)?Sort\s+\(cost=\S+ rows=(\d+)", step)
            return bool(node) and int(node.group(2)) > 100
        return [(sql, plan) for sql, plan in self.seen
                if any(step == "USE TEMP B-TREE FOR ORDER BY" or sorts_many(step) for step in plan)]


@pytest.fixture
def grown(env, ledger_db):
    """A ledger with finished jobs of this test's queue (and a few dead ones and of another queue)."""
    queue = env["NIGHTSHIFT_QUEUE"]
    ids = seed_finished(queue, 600)
    seed_finished(queue, 20, state="dead")
    seed_finished("someone-else", 50)
    if USE_PG:  # as autovacuum would after so many inserts: PostgreSQL plans by its statistics
        from app.db import database
        database.execute_sql("ANALYZE")
    return queue, ids


def test_list_reads_the_newest_jobs_in_index_order(grown):
    from app import ledger
    queue, _ = grown
    fresh = seed_finished(queue, 3, days_ago=0)  # the newest
    with Plans() as plans:
        newest = ledger.list_jobs(limit=5, queues=[queue])
        dead = ledger.list_jobs(state="dead", limit=5, queues=[queue])
        both = ledger.list_jobs(limit=5, queues=[queue, None])
    assert plans.seen and not plans.scans() and not plans.full_sorts(), plans.seen
    assert [job.id for job in newest[:3]] == sorted(fresh)  # same created_at: id order
    assert len(newest) == 5 and all(job.queue == queue for job in newest)
    assert len(dead) == 5 and {job.state for job in dead} == {"dead"}
    assert [job.id for job in both] == [job.id for job in newest]


def test_schedule_finds_each_periodic_tasks_last_run_by_one_index_seek(grown, env, monkeypatch):
    """`nightshift schedule`: the newest job of each periodic task from the (task, created_at, id) index."""
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,periodic_tasks")
    from app import catalog, status
    from huey.api import PeriodicTask
    periodic = [name for name, cls in catalog.task_classes().items() if issubclass(cls, PeriodicTask)]
    assert "tick_probe" in periodic
    with Plans() as plans:
        rows = status.schedule_rows(60)
    assert len(rows) == len(periodic)
    lookups = [(sql, plan) for sql, plan in plans.seen if '"task" =' in sql]
    assert len(lookups) == len(periodic) and not plans.scans() and not plans.full_sorts(), plans.seen


def test_show_finds_a_job_by_prefix_through_the_primary_key(grown):
    from app import ledger
    _, ids = grown
    wanted = ids[len(ids) // 2]
    with Plans() as plans:
        assert ledger.get(wanted[:13]).id == wanted
        assert ledger.get(wanted).id == wanted
        assert ledger.get("ffffffff-no-such") is None
    assert plans.seen and not plans.scans(), plans.seen


def test_status_window_figures_range_over_finished_at(grown, env):
    from app import status
    stamp = datetime.datetime.utcnow()
    own = [env["NIGHTSHIFT_QUEUE"]]  # `nightshift status`'s default: the service's queue
    with Plans() as plans:
        status.throughput(stamp, own)
        status.task_stats(stamp, queues=own)
        names = status.every_queue(__import__("config").get())  # the metrics' queues, and their figures by queue
        status.throughput_by_queue(stamp, names)
        status.finished_by_queue(stamp, queues=names)
        status.durations_by_queue(stamp, queues=names)
    assert plans.seen and not plans.scans(), plans.seen
    windowed = [plan for sql, plan in plans.seen if '"finished_at" >=' in sql]
    assert windowed
    if not USE_PG:  # SQLite has no statistics: the queue's index would have it read every job of the queue
        assert all("finished_at>?" in " ".join(plan) for plan in windowed), windowed


def test_status_counts_running_and_dead_jobs_from_the_index_alone(grown, env):
    """The dead jobs kept within retention grow with the ledger: `status` counts them (and the running ones) from
    the (queue, state, created_at, id) index without reading their rows; only the waiting ones' eta is read."""
    from app import ledger, status
    from app.db import database
    if USE_PG:
        database.execute_sql("VACUUM ANALYZE nightshift_job")  # an index-only scan needs the visibility map
    with Plans() as plans:
        counts = status.queue_counts(ledger.now(), env["NIGHTSHIFT_QUEUE"])
    assert counts["dead"] == 20
    held = [plan for sql, plan in plans.seen if "COUNT(*)" in sql]  # the count of the running and dead ones
    assert held, plans.seen
    for plan in held:
        text = " ".join(plan)
        assert "COVERING INDEX" in text or "Index Only Scan" in text, plan


def test_cleanup_finds_each_batch_by_index_and_deletes_it_by_id(env, ledger_db):
    """Each batch: the oldest finished jobs of a state from the (state, finished_at) index, then deleted by id;
    never a read of every job of the state per batch (what made a 1,000,000-row cleanup quadratic on SQLite)."""
    from app import cleanup
    seed_finished(env["NIGHTSHIFT_QUEUE"], 300)
    if USE_PG:
        from app.db import database
        database.execute_sql("ANALYZE")
    with Plans() as plans:
        cleanup.clean_ledger(cleanup.Report(), datetime.datetime.utcnow(), __import__("config").get())
    deletes = [(sql, plan) for sql, plan in plans.seen if sql.startswith("DELETE")]
    assert deletes and not plans.scans(), plans.seen
    if not USE_PG:
        for _sql, plan in deletes:
            by_id = "SEARCH nightshift_job USING INDEX sqlite_autoindex_nightshift_job_1 (id=?)"
            assert plan[0].startswith(by_id), plan
            assert any("(state=? AND finished_at<?)" in step for step in plan), plan


def test_a_worker_adds_the_indexes_an_older_ledger_lacks(env, ledger_db):
    from app import schema
    from app.db import database
    from app.models import Job
    wanted = {index._name for index in Job._meta.fields_to_index()}
    some = next(name for name in wanted if name.endswith("queue_state_created_at_id"))  # new in issue 16
    database.execute_sql(f'DROP INDEX "{some}"')
    replaced = {"job_state_task": ("state", "task"), "job_queue_state_updated_at": ("queue", "state", "updated_at"),
                "job_queue_state_lease_expires_at": ("queue", "state", "lease_expires_at"),
                "job_state_finished_at": ("state", "finished_at"), "job_finished_at": ("finished_at",),
                "job_key": ("key",), "job_queue_state_created_at": ("queue", "state", "created_at")}
    for name, columns in replaced.items():
        quoted = ", ".join(f'"{column}"' for column in columns)
        database.execute_sql(f'CREATE INDEX "{name}" ON "nightshift_job" ({quoted})')
    assert some not in {index.name for index in database.get_indexes(Job._meta.table_name)}
    schema._url = None  # as a worker that starts on the older ledger
    schema.open_ledger(env["NIGHTSHIFT_DATABASE_URL"])
    present = {index.name for index in database.get_indexes(Job._meta.table_name)}
    assert wanted <= present and not present & set(replaced), present


def test_recovery_reads_only_the_waiting_and_running_jobs_of_its_queue(grown, env, monkeypatch):
    """Both recoveries find their jobs by an index range over (queue, state): the finished jobs, however many,
    are never read."""
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import recovery, submit_many
    from app.queue import get_huey
    submit_many("noop", [{}] * 5)
    with Plans() as plans:
        report = recovery.recover(get_huey())
    assert report.queued_in_redis == 5 and report.resent == 0
    reads = [(sql, plan) for sql, plan in plans.seen if '"state"' in sql]
    assert len(reads) >= 2 and not plans.scans() and not plans.full_sorts(), plans.seen


def test_recovery_pages_the_waiting_jobs_by_key_and_resends_each_lost_one_once(env, monkeypatch):
    """Redis lost a backlog whose jobs share created_at values across page boundaries, in both waiting states:
    read a few at a time by (created_at, id) keys, every one is sent again, once."""
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import ledger, recovery, submit_many
    from app.models import Job
    from app.queue import get_huey
    monkeypatch.setattr(recovery, "PAGE", 7)
    monkeypatch.setattr(recovery, "CONFIRM_SECONDS", 0.0)
    huey = get_huey()
    ids = submit_many("noop", [{}] * 60)
    tied = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    Job.update(created_at=tied).where(Job.id.in_(ids[:25])).execute()  # 25 jobs, one created_at: 4 pages
    Job.update(state="retrying").where(Job.id.in_(ids[40:])).execute()
    huey.storage.conn.delete(huey.storage.queue_key)
    time.sleep(0.05)
    with Plans() as plans:
        report = recovery.Report()
        recovery.recover_lost_messages(huey, report, ledger.now())
    assert report.resent == 60
    sent = [task.id for task in huey.pending()]
    assert sorted(sent) == sorted(ids)
    pages = [(sql, plan) for sql, plan in plans.seen if "LIMIT" in sql.upper() and '"state" =' in sql]
    assert len(pages) == 6 + 3 and not plans.scans() and not plans.full_sorts(), pages  # 40 queued, 20 retrying


@pytest.mark.skipif(USE_PG, reason="SQLite's write-ahead log")
def test_recovery_holds_no_read_snapshot_while_it_goes_through_the_waiting_jobs(env, monkeypatch):
    """Halfway through the waiting jobs, another connection commits and checkpoints: the checkpoint copies the
    whole log. (One statement streaming every waiting job held its snapshot for the whole pass, so a checkpoint
    could not get past it, and the log of a ledger being drained grew by hundreds of MB during a long pass.)"""
    import sqlite3
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import ledger, recovery, submit_many
    from app.queue import get_huey
    monkeypatch.setattr(recovery, "PAGE", 100)
    huey = get_huey()
    submit_many("noop", [{}] * 300)
    huey.storage.conn.delete(huey.storage.queue_key)  # Redis lost them: every id recovery reads is a ledger row
    time.sleep(0.05)
    other = sqlite3.connect(env["NIGHTSHIFT_DATABASE_URL"].removeprefix("sqlite:///"), isolation_level=None)
    checkpoints, calls = [], [0]
    original = recovery.compact_id

    def compact_id(job_id):
        calls[0] += 1
        if calls[0] == 150:  # in the second page
            other.execute("CREATE TABLE probe (x)")  # a commit after the page's read began
            other.execute("INSERT INTO probe VALUES (1)")
            checkpoints.append(other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
        return original(job_id)
    monkeypatch.setattr(recovery, "compact_id", compact_id)
    try:
        recovery.recover_lost_messages(huey, recovery.Report(), ledger.now())
    finally:
        other.close()
    [(busy, log_frames, copied)] = checkpoints
    assert log_frames > 0 and copied == log_frames, f"checkpoint copied {copied} of {log_frames} frames"


def test_recovery_memory_is_bounded_by_ids_not_rows(env, monkeypatch):
    """A waiting backlog whose messages are all on Redis: recovery compares compact ids and keeps no job rows, so
    what it holds grows by under 500 bytes per waiting job (~340 measured; loading rows cost ~2,400)."""
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import ledger, recovery, submit_many
    from app.queue import get_huey
    big = "x" * 400  # arguments the size of a real job's: rows, not ids, are what grew the consumer

    def peak_with(backlog: int) -> float:
        while get_huey().pending_count() < backlog:
            submit_many("record_effect", [{"directory": big}] * 5000)
        time.sleep(0.05)
        report = recovery.Report()
        tracemalloc.start()
        try:
            recovery.recover_lost_messages(get_huey(), report, ledger.now())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert report.queued_in_redis == backlog and report.resent == 0
        return peak

    small, large = peak_with(5_000), peak_with(20_000)
    per_job = (large - small) / 15_000
    print(f"recovery peak: {small / 1e6:.1f} MB at 5,000 waiting jobs, {large / 1e6:.1f} MB at 20,000: "
          f"{per_job:.0f} bytes per job")
    assert per_job < 500, f"{per_job:.0f} bytes per waiting job"


def test_recovery_still_resends_what_redis_lost_in_chunks(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import ledger, recovery, submit_many
    from app.queue import get_huey
    monkeypatch.setattr(recovery, "CONFIRM_CHUNK", 7)
    monkeypatch.setattr(recovery, "CONFIRM_SECONDS", 0.0)
    huey = get_huey()
    ids = submit_many("noop", [{}] * 50)
    huey.storage.conn.delete(huey.storage.queue_key)  # Redis lost them
    time.sleep(0.05)
    report = recovery.Report()
    recovery.recover_lost_messages(huey, report, ledger.now())
    assert report.resent == 50 and huey.pending_count() == 50
    assert {task.id for task in huey.pending()} == set(ids)


@pytest.mark.serial
def test_cleanup_never_holds_a_worker_write_long(env, ledger_db, monkeypatch):
    """Cleanup of many expired rows, while a thread writes as a worker (record, claim, finish) on its own
    connection: cleanup removes every expired row, and no write waits longer than 100 ms, or on a machine so busy
    that one of cleanup's short transactions itself took longer, than that transaction and one pause."""
    from app import cleanup, db, ledger
    from app.models import Job
    queue = env["NIGHTSHIFT_QUEUE"]
    longest: list[float] = []

    class Recorded(cleanup.Batches):
        def timed(self):
            longest.append(self.longest)
            return super().timed()
    monkeypatch.setattr(cleanup, "Batches", Recorded)
    seed_finished(queue, 40_000)
    waits: list[float] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            db.database.obj.connect(reuse_if_open=True)  # this thread's own connection
            while not stop.is_set():
                job_id = str(uuid.uuid4())
                for step in (lambda: ledger.insert_jobs([{"id": job_id, "task": "noop", "kwargs": "{}"}], queue),
                             lambda: ledger.claim(job_id, 1, "w:2:y", 60),
                             lambda: ledger.mark_succeeded(job_id, 1, 0.0, None)):
                    started = time.perf_counter()
                    step()
                    waits.append(time.perf_counter() - started)
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            db.database.obj.close()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        time.sleep(0.5)
        quiet = max(waits)  # what a write takes on this machine now, without cleanup
        report = cleanup.run(__import__("config").get())
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    assert report.jobs_succeeded == 40_000
    assert Job.select().where(Job.finished_at < ledger.now() - datetime.timedelta(days=30)).count() == 0
    batch = max(longest)
    print(f"{len(waits)} worker writes during cleanup ({report.seconds:.1f} s): longest {max(waits) * 1000:.0f} ms "
          f"(longest batch {batch * 1000:.0f} ms; {quiet * 1000:.0f} ms without cleanup)")
    allowed = max(0.1, batch + cleanup.Batches.SLOW_PAUSE_SECONDS + quiet)
    assert max(waits) < allowed, f"a worker write waited {max(waits) * 1000:.0f} ms"

"""SQLite in a long-running consumer.

Its write-ahead log is checkpointed by the consumer's maintenance while the load is light, not by the commits of
submits, claims and outcomes (app.checkpoints): such a checkpoint copied the log into the file and fsynced it
inside a job's path, ~10 ms every few dozen jobs, the p99 of enqueue->start latency. And each of its connections
keeps a small page cache (db.use_small_page_cache).

What a commit did is read from the files themselves: the log's length (a checkpoint that completes lets the next
commit start the log over), and the database file read without its log (what has been checkpointed into it)."""
from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from conftest import USE_PG, wait_until

pytestmark = pytest.mark.skipif(USE_PG, reason="write-ahead log checkpoints: a SQLite ledger's")

FRAME = 4096 + 24  # a page of the log and its frame header (SQLite's default page size)


def ledger_path(env) -> str:
    return env["NIGHTSHIFT_DATABASE_URL"].split("sqlite:///", 1)[1]


def pages_in_log(path: str) -> int:
    return max(0, os.path.getsize(path + "-wal") - 32) // FRAME


def checkpointed_states(path: str, ids: list[str], tmp_path) -> dict[str, str]:
    """The jobs' states as the database file holds them without its log: what checkpoints copied into it."""
    copy = tmp_path / "file-only.db"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        rows = conn.execute(f"SELECT id, state FROM nightshift_job WHERE id IN ({','.join('?' * len(ids))})",
                            ids).fetchall()
    finally:
        conn.close()
        copy.unlink()
    return dict(rows)


def test_the_maintenance_stands_back_while_commits_checkpoint(env, tmp_path):
    """A log already past SQLite's 1,000 pages (a reader held old pages while 300 jobs were submitted) is one the
    job path's commits checkpoint anyway: the consumer's next checkpoint waits a second, not 0.2 s, so as not to
    contend with them; once the log is short again it checkpoints every 0.2 s."""
    from app import checkpoints, db, submit
    path = ledger_path(env)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM nightshift_job").fetchall()  # holds its snapshot: the log cannot restart
    for _ in range(300):
        submit("noop")
    assert pages_in_log(path) > db.WAL_AUTOCHECKPOINT_PAGES
    maintenance = checkpoints.Checkpoints()
    maintenance.run()
    assert maintenance.pause == checkpoints.BACK_OFF_SECONDS
    reader.execute("COMMIT")
    reader.close()
    maintenance.run()  # everything copied now: the next commit starts the log over
    submit("noop")
    maintenance.run()
    assert maintenance.pause == checkpoints.EVERY_SECONDS


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_the_consumer_checkpoints_what_its_jobs_wrote(env, start_worker, tmp_path, worker_type):
    """With a consumer running, a few jobs' outcomes reach the database file within a second or so, though they
    wrote far fewer pages than any commit's checkpoint waits for (before, they stayed in the log until 1,000 pages
    had piled up)."""
    from app import db, submit_many
    from app.models import Job
    path = ledger_path(env)
    start_worker(NIGHTSHIFT_WORKER_TYPE=worker_type, NIGHTSHIFT_WORKERS=2)
    db.database.obj.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the log starts empty
    ids = submit_many("noop", [{} for _ in range(5)])
    wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids), 30,
               message="5 jobs succeeded")
    assert pages_in_log(path) < db.WAL_AUTOCHECKPOINT_PAGES
    wait_until(lambda: checkpointed_states(path, ids, tmp_path) == dict.fromkeys(ids, "succeeded"), 5,
               interval=0.1, message="the jobs' outcomes checkpointed into the database file")


def test_a_consumers_connections_keep_a_small_page_cache(env):
    """Each thread of a consumer (workers, keeper, maintenance) has a connection of its own, and each filled
    SQLite's default 2 MB page cache and kept it: about 2 MB more RSS after a drain than idle. After
    db.use_small_page_cache (worker start-up, and the console's), the open connection and those other threads
    open later keep 512 KiB."""
    import threading

    from app import db
    assert db.database.obj.execute_sql("PRAGMA cache_size").fetchall()[0][0] == -2000  # SQLite's default
    db.use_small_page_cache()
    sizes = [db.database.obj.execute_sql("PRAGMA cache_size").fetchall()[0][0]]

    def in_a_thread() -> None:
        sizes.append(db.database.obj.execute_sql("PRAGMA cache_size").fetchall()[0][0])
        db.database.obj.close()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert sizes == [-db.SMALL_CACHE_KIB] * 2


def test_submits_claims_and_successes_write_few_pages_of_log(env):
    """A job's write adds or rewrites its entry in every index that holds a column it sets (`state` above all):
    each such index costs a page or more of log per commit. On a table of 3,000 jobs, measured: 7.8 pages per
    one-by-one submit, 3.4 per claim and 7.1 per success. Before: 13.2, 6.5 and 9.2, while recovery had two
    indexes of its own (now read by (queue, state, created_at)) and the finished_at and key indexes held every
    job, not only the finished ones or those with a key."""
    from app import db, identity, ledger, submit, submit_many
    path = ledger_path(env)
    submit_many("noop", [{}] * 3000)
    db.database.obj.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the log starts empty
    ids = [submit("noop") for _ in range(40)]
    per_job = [pages_in_log(path) / len(ids)]
    for write in (lambda job_id: ledger.claim(job_id, 1, identity.worker_id(), 30),
                  lambda job_id: ledger.mark_succeeded(job_id, 1, 0.001, None)):
        db.database.obj.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        for job_id in ids:
            assert write(job_id)
        per_job.append(pages_in_log(path) / len(ids))
    submitted, claim, success = per_job
    assert submitted < 9 and claim < 4 and success < 8.2, \
        f"pages of log per submit {submitted:.1f}, per claim {claim:.1f}, per success {success:.1f}"

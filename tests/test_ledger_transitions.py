"""The ledger's guarded transitions, in process: no worker, no Redis, seconds to run.

Each test drives app.ledger directly on the pass's real ledger (a SQLite file, or a PostgreSQL database of its
own) the way workers, recovery and the CLI do, and checks that a late, duplicate or racing transition changes
nothing and says so (False / None), while the one that wins writes the job row and its history row together.

Races are real: each contender runs in its own thread on its own database connection, released together by a
barrier; a race repeats so that each side gets to win. Where the order matters (a transition that waits for
another one's transaction), the first transaction is held open until the second is seen waiting for it.
"""
from __future__ import annotations

import datetime
import os
import threading
import uuid

import pytest

from conftest import USE_PG, wait_until

LEASE = 30.0

@pytest.fixture
def ledger(env):
    from app import ledger as module
    return module


def service() -> str:
    """The test's queue (the env fixture's NIGHTSHIFT_QUEUE): every ledger write names its queue."""
    return os.environ["NIGHTSHIFT_QUEUE"]


def new_job(ledger, task: str = "add", **fields) -> str:
    job_id = str(uuid.uuid4())
    ledger.insert_jobs([{"id": job_id, "task": task, "kwargs": "{}", **fields}], service())
    return job_id


def row(job_id: str):
    from app.models import Job
    return Job.get_or_none(Job.id == job_id)


def history(ledger, job_id: str) -> list[tuple[int, str]]:
    return [(a.number, a.outcome) for a in ledger.attempts(job_id)]


def running(ledger, worker: str = "w1", **fields) -> str:
    """A job whose attempt 1 `worker` has claimed."""
    job_id = new_job(ledger, **fields)
    assert ledger.claim(job_id, 1, worker, LEASE)
    return job_id


def race(*calls, timeout: float = 30.0) -> list:
    """Run each call in its own thread with its own ledger connection, all released at once; their results."""
    from app.db import database
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)
    errors: list[BaseException] = []

    def contender(index: int, call) -> None:
        try:
            database.obj.connect(reuse_if_open=True)  # connected before the start: only the statements race
            barrier.wait(timeout)
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)
        finally:
            database.obj.close()

    threads = [threading.Thread(target=contender, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a contender is stuck"
    assert not errors, errors
    return results


class HeldTransaction(threading.Thread):
    """Runs `first` inside a transaction on its own connection and keeps that transaction open until release():
    a transition another process has written but not yet committed."""

    def __init__(self, first) -> None:
        super().__init__(daemon=True)
        self.first, self.result, self.error = first, None, None
        self.inside, self.go = threading.Event(), threading.Event()

    def run(self) -> None:
        from app.db import database
        try:
            with database.atomic():
                self.result = self.first()
                self.inside.set()
                assert self.go.wait(30), "never released"
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
        finally:
            self.inside.set()
            database.obj.close()

    def __enter__(self) -> "HeldTransaction":
        self.start()
        assert self.inside.wait(30)
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc) -> None:
        self.go.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error


def in_thread(call) -> tuple[threading.Thread, list]:
    """Start `call` in a thread with its own connection; (thread, [result]) once joined."""
    from app.db import database
    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001
            out.append(exc)
        finally:
            database.obj.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def blocked_on_lock() -> bool:
    """PostgreSQL: another connection to this test's database waits for a row lock (a transaction in flight)."""
    from app.db import database
    return bool(database.obj.execute_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND wait_event_type = 'Lock'").fetchone()[0])


def start_waiting_on(held: HeldTransaction, call) -> tuple[threading.Thread, list]:
    """Start `call` while `held` keeps its transaction open, and make sure it waits for it: on PostgreSQL until
    the server shows it blocked on a lock; on SQLite it waits at BEGIN IMMEDIATE (no such signal), so whenever it
    gets there, it runs after the held transaction."""
    thread, out = in_thread(call)
    if USE_PG:
        wait_until(lambda: blocked_on_lock() or not thread.is_alive(), 10, message="the second transition waiting")
        assert thread.is_alive(), f"did not wait for the transaction in flight: {out}"
    return thread, out


def joined(thread: threading.Thread, out: list):
    thread.join(30)
    assert not thread.is_alive() and len(out) == 1
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


# -- claim ----------------------------------------------------------------------------------------------------------

def test_claim_takes_a_waiting_attempt_once(ledger):
    job_id = new_job(ledger)
    before = ledger.now()
    assert ledger.claim(job_id, 1, "w1", LEASE) is True
    job = row(job_id)
    assert (job.state, job.worker, job.attempt) == ("running", "w1", 1)
    assert before <= job.started_at and job.lease_expires_at == job.started_at + datetime.timedelta(seconds=LEASE)
    assert ledger.claim(job_id, 1, "w2", LEASE) is False  # a duplicate delivery of the same attempt
    assert row(job_id).worker == "w1"
    assert ledger.claim(job_id, 2, "w2", LEASE) is False  # an attempt that does not exist yet
    assert ledger.claim("no-such-job", 1, "w2", LEASE) is False
    assert history(ledger, job_id) == []


def test_racing_claims_of_one_attempt_have_one_winner(ledger):
    for _ in range(10):
        job_id = new_job(ledger)
        workers = [f"w{i}" for i in range(4)]
        results = race(*[lambda w=w: ledger.claim(job_id, 1, w, LEASE) for w in workers])
        assert results.count(True) == 1, results
        assert row(job_id).worker == workers[results.index(True)] and row(job_id).state == "running"


def test_a_stale_attempt_is_not_claimed_after_a_retry(ledger):
    job_id = running(ledger)
    assert ledger.mark_retrying(job_id, 1, 0.1, "E: x", "tb", None, retries_left=1, retry_delay=0)
    assert ledger.claim(job_id, 1, "w2", LEASE) is False  # attempt 1's message, delivered again
    assert ledger.claim(job_id, 2, "w2", LEASE) is True   # a retrying job is claimed as its next attempt
    assert (row(job_id).state, row(job_id).attempt, row(job_id).worker) == ("running", 2, "w2")


# -- finishing ----------------------------------------------------------------------------------------------------------

def test_an_attempt_finishes_once(ledger):
    job_id = running(ledger)
    assert ledger.mark_succeeded(job_id, 1, 0.5, '"ok"') is True
    job = row(job_id)
    assert (job.state, job.result, job.duration, job.lease_expires_at) == ("succeeded", '"ok"', 0.5, None)
    assert ledger.mark_succeeded(job_id, 1, 0.7, '"again"') is False
    assert ledger.mark_retrying(job_id, 1, 0.7, "E: x", "tb", None, 1, 0) is False
    assert ledger.mark_dead(job_id, "late", attempt=1) is False
    assert ledger.mark_dead(job_id, "operator, any state") is False  # without attempt: only unfinished jobs
    assert ledger.requeue(job_id, 1, "interrupted", "late shutdown") is None
    assert (row(job_id).state, row(job_id).result, row(job_id).duration) == ("succeeded", '"ok"', 0.5)
    assert history(ledger, job_id) == [(1, "succeeded")]


def test_a_success_is_one_guarded_update_and_the_job_row_is_its_history(ledger):
    """A success writes the job row alone: one UPDATE (in a transaction of its own), no history row under the
    job's random id; the job's history still shows that attempt, from the job row."""
    import peewee
    from app.models import Attempt
    job_id = running(ledger, worker="w7")
    statements = []
    execute_sql = peewee.Database.execute_sql
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peewee.Database, "execute_sql",
                      lambda self, sql, *a, **k: statements.append(sql) or execute_sql(self, sql, *a, **k))
        assert ledger.mark_succeeded(job_id, 1, 0.25, '"ok"') is True
    written = [sql for sql in statements if not sql.lstrip().upper().startswith(("BEGIN", "COMMIT"))]
    assert len(written) == 1 and written[0].lstrip().startswith('UPDATE "nightshift_job"'), statements

    assert Attempt.select().where(Attempt.job_id == job_id).count() == 0
    job = row(job_id)
    [attempt] = ledger.attempts(job_id)
    assert (attempt.number, attempt.outcome, attempt.worker, attempt.error) == (1, "succeeded", "w7", None)
    assert (attempt.started_at, attempt.finished_at, attempt.duration) == (job.started_at, job.finished_at, 0.25)
    assert [(a.number, a.outcome) for a in ledger.attempts(job_id, job)] == [(1, "succeeded")]


def test_a_bulk_insert_writes_the_times_its_rows_share_once_and_as_the_ledger_reads_them(ledger):
    """The rows of one insert share created_at, updated_at and (a delayed bulk submit's) eta. On SQLite they are
    made text once per insert, not by sqlite3's datetime adapter once per row and column (~2 us of a bulk
    submit's ~14 a job); stored as that adapter writes them, and read back as the same datetimes on both ledgers."""
    import sqlite3

    from app import jobids
    from app.db import database
    from app.models import Job
    ids = jobids.new_ids(300)
    eta = ledger.now() + datetime.timedelta(hours=1)
    common = {"task": "bulk_task", "attempt": 1, "retries_left": 0, "retry_delay": 0, "priority": 0, "eta": eta}
    adapted = []
    default = sqlite3.adapters[(datetime.datetime, sqlite3.PrepareProtocol)]
    sqlite3.register_adapter(datetime.datetime, lambda value: adapted.append(value) or default(value))
    try:
        ledger.insert_jobs([{"id": job_id, "kwargs": "{}"} for job_id in ids], service(), common)
    finally:
        sqlite3.register_adapter(datetime.datetime, default)
    if not USE_PG:
        assert adapted == []  # before: 900, three per row

    jobs = list(Job.select().where(Job.id.in_(ids)))
    assert len(jobs) == 300
    assert {(job.created_at, job.updated_at, job.eta) for job in jobs} == {(jobs[0].created_at, jobs[0].created_at,
                                                                            eta)}
    assert abs(jobs[0].created_at - ledger.now()) < datetime.timedelta(minutes=1)
    if not USE_PG:
        raw = database.obj.execute_sql('SELECT "created_at", "eta" FROM "nightshift_job" WHERE "id" = ?',
                                       (ids[0],)).fetchone()
        assert raw == (default(jobs[0].created_at), default(eta)) == (jobs[0].created_at.isoformat(" "),
                                                                       eta.isoformat(" "))


def test_a_success_after_a_failed_attempt_ends_the_history_that_has_its_rows(ledger):
    """The failed attempt keeps its history row; the attempt that succeeded is the job row's, last."""
    from app.models import Attempt
    job_id = running(ledger, worker="w1")
    assert ledger.mark_retrying(job_id, 1, 0.1, "E: boom", "tb", None, 1, 0) is True
    assert ledger.claim(job_id, 2, "w2", LEASE)
    assert ledger.mark_succeeded(job_id, 2, 0.3, None) is True
    assert [(a.number, a.outcome, a.worker, a.error) for a in ledger.attempts(job_id)] == [
        (1, "failed", "w1", "E: boom"), (2, "succeeded", "w2", None)]
    assert [number for (number,) in Attempt.select(Attempt.number).where(Attempt.job_id == job_id).tuples()] == [1]


def test_a_success_recorded_with_its_own_history_row_is_shown_once(ledger):
    """A ledger written by an older version has a history row for each success: it is shown as it is, once."""
    from app.models import Attempt
    job_id = running(ledger, worker="w1")
    assert ledger.mark_succeeded(job_id, 1, 0.5, None) is True
    job = row(job_id)
    Attempt.insert(job_id=job_id, number=1, worker="old-version", started_at=job.started_at,
                   finished_at=job.finished_at, duration=0.5, outcome="succeeded").execute()
    assert [(a.number, a.outcome, a.worker) for a in ledger.attempts(job_id)] == [(1, "succeeded", "old-version")]


def test_a_late_finish_after_a_lease_lost_requeue_changes_nothing(ledger):
    job_id = running(ledger, worker="slow")
    assert ledger.requeue(job_id, 1, "lease-lost", "lease expired", lease_lost=True) == 2
    job = row(job_id)
    assert (job.state, job.attempt, job.worker, job.lease_losses) == ("queued", 2, None, 1)
    # The worker that lost the lease was alive after all, and reports every kind of ending: none lands.
    assert ledger.mark_succeeded(job_id, 1, 9.0, '"late"') is False
    assert ledger.mark_retrying(job_id, 1, 9.0, "E: late", "tb", None, 0, 0) is False
    assert ledger.mark_dead(job_id, "late", attempt=1) is False
    assert ledger.requeue(job_id, 1, "interrupted", "late shutdown") is None
    assert ledger.renew_leases([(job_id, 1)], "slow", LEASE) == 0
    assert ledger.note_lease_lost_alive(job_id, 1, "worker was alive") is True
    assert (row(job_id).state, row(job_id).attempt, row(job_id).result) == ("queued", 2, None)
    assert [(a.number, a.outcome, a.error) for a in ledger.attempts(job_id)] == [(1, "lease-lost", "worker was alive")]

    assert ledger.claim(job_id, 2, "fresh", LEASE)
    assert ledger.mark_succeeded(job_id, 1, 9.0, '"late"') is False  # still stale once attempt 2 runs
    assert ledger.mark_succeeded(job_id, 2, 0.2, '"fresh"') is True
    assert (row(job_id).state, row(job_id).result, row(job_id).worker) == ("succeeded", '"fresh"', "fresh")
    assert history(ledger, job_id) == [(1, "lease-lost"), (2, "succeeded")]


def test_racing_recoveries_requeue_a_lost_attempt_once(ledger):
    job_id = running(ledger)
    results = race(*[lambda: ledger.requeue(job_id, 1, "lease-lost", "lease expired", lease_lost=True)
                     for _ in range(3)])
    assert sorted(results, key=str) == [2, None, None]
    job = row(job_id)
    assert (job.state, job.attempt, job.lease_losses) == ("queued", 2, 1)
    assert history(ledger, job_id) == [(1, "lease-lost")]


def test_a_second_requeue_waits_for_one_in_flight_and_changes_nothing(ledger):
    job_id = running(ledger)
    requeue = lambda: ledger.requeue(job_id, 1, "lease-lost", "lease expired", lease_lost=True)  # noqa: E731
    with HeldTransaction(requeue) as held:
        second = start_waiting_on(held, requeue)
    assert held.result == 2
    assert joined(*second) is None
    job = row(job_id)
    assert (job.state, job.attempt, job.lease_losses) == ("queued", 2, 1)
    assert history(ledger, job_id) == [(1, "lease-lost")]


def test_a_late_success_waits_for_a_requeue_in_flight_and_changes_nothing(ledger):
    """Recovery requeues the attempt (its transaction not yet committed) while the worker, alive after all,
    records success: the success must wait for the requeue and then see its attempt is no longer running."""
    job_id = running(ledger, worker="slow")
    with HeldTransaction(lambda: ledger.requeue(job_id, 1, "lease-lost", "lease expired", lease_lost=True)) as held:
        late = start_waiting_on(held, lambda: ledger.mark_succeeded(job_id, 1, 9.0, '"late"'))
    assert held.result == 2
    assert joined(*late) is False
    job = row(job_id)
    assert (job.state, job.attempt, job.result) == ("queued", 2, None)
    assert history(ledger, job_id) == [(1, "lease-lost")]


def test_retrying_moves_to_the_next_attempt_and_dead_ends_it(ledger):
    job_id = running(ledger)
    eta = ledger.now() + datetime.timedelta(seconds=60)
    assert ledger.mark_retrying(job_id, 1, 0.3, "RuntimeError: x", "Traceback...", eta, retries_left=1,
                                retry_delay=60) is True
    job = row(job_id)
    assert (job.state, job.attempt, job.retries_left, job.eta, job.error) == ("retrying", 2, 1, eta,
                                                                              "RuntimeError: x")
    assert ledger.claim(job_id, 2, "w2", LEASE)
    assert ledger.mark_dead(job_id, "no retries left", "RuntimeError: y", "tb", attempt=2, duration=0.1) is True
    job = row(job_id)
    assert (job.state, job.reason, job.error, job.lease_expires_at) == ("dead", "no retries left",
                                                                        "RuntimeError: y", None)
    assert [(a.number, a.outcome, a.error) for a in ledger.attempts(job_id)] == [
        (1, "failed", "RuntimeError: x"), (2, "failed", "RuntimeError: y")]


def test_expiry_is_guarded_by_attempt_and_waiting_state(ledger):
    job_id = new_job(ledger)
    assert ledger.mark_expired(job_id, 2) is False
    assert ledger.mark_expired(job_id, 1) is True and row(job_id).state == "expired"
    assert ledger.claim(job_id, 1, "w1", LEASE) is False
    busy = running(ledger)
    assert ledger.mark_expired(busy, 1) is False and row(busy).state == "running"


def test_leases_are_renewed_only_for_the_worker_running_the_attempt(ledger):
    job_id = running(ledger, worker="w1")
    before = row(job_id).lease_expires_at
    assert ledger.renew_leases([(job_id, 1)], "w2", LEASE * 10) == 0
    assert ledger.renew_leases([(job_id, 2)], "w1", LEASE * 10) == 0
    assert row(job_id).lease_expires_at == before
    assert ledger.renew_leases([(job_id, 1)], "w1", LEASE * 10) == 1
    assert row(job_id).lease_expires_at > before
    assert ledger.renew_leases([], "w1", LEASE) == 0


# -- cancel -------------------------------------------------------------------------------------------------------------

def test_cancel_of_a_waiting_job_and_its_late_claim(ledger):
    job_id = new_job(ledger)
    assert ledger.mark_canceled(job_id) is True
    assert ledger.mark_canceled(job_id) is False
    assert ledger.claim(job_id, 1, "w1", LEASE) is False
    assert ledger.cancel_running(job_id) is None
    assert (row(job_id).state, row(job_id).reason) == ("canceled", "canceled by operator")


def test_cancel_racing_claim_has_one_winner(ledger):
    winners = set()
    for _ in range(20):
        job_id = new_job(ledger)
        claimed, canceled = race(lambda: ledger.claim(job_id, 1, "w1", LEASE), lambda: ledger.mark_canceled(job_id))
        assert claimed != canceled, (claimed, canceled)  # exactly one of them
        assert row(job_id).state == ("running" if claimed else "canceled")
        winners.add("claim" if claimed else "cancel")
        if claimed:  # the operator's second step (app.cli.ops.cancel): stop it while it runs
            assert ledger.cancel_running(job_id) == 1
            assert ledger.canceled_among([(job_id, 1)]) == [(job_id, 1)]
            assert history(ledger, job_id) == [(1, "canceled")]
        else:
            assert ledger.claim(job_id, 1, "w2", LEASE) is False
            assert history(ledger, job_id) == []
    print(f"cancel racing claim: won by {sorted(winners)}")


def test_a_running_job_canceled_ignores_its_workers_late_outcome(ledger):
    job_id = running(ledger)
    assert ledger.cancel_running(job_id) == 1
    assert ledger.cancel_running(job_id) is None
    assert ledger.mark_succeeded(job_id, 1, 1.0, '"done anyway"') is False
    assert ledger.mark_retrying(job_id, 1, 1.0, "E: x", "tb", None, 1, 0) is False
    assert ledger.mark_dead(job_id, "late", attempt=1) is False
    assert ledger.requeue(job_id, 1, "interrupted", "shutdown") is None
    assert ledger.renew_leases([(job_id, 1)], "w1", LEASE) == 0
    assert ledger.canceled_among([(job_id, 1), (job_id, 2), ("other", 1)]) == [(job_id, 1)]
    job = row(job_id)
    assert (job.state, job.result, job.lease_expires_at) == ("canceled", None, None)
    assert history(ledger, job_id) == [(1, "canceled")]


def test_cancel_racing_the_workers_success_has_one_winner(ledger):
    winners = set()
    for _ in range(20):
        job_id = running(ledger)
        canceled, succeeded = race(lambda: ledger.cancel_running(job_id),
                                   lambda: ledger.mark_succeeded(job_id, 1, 0.1, '"ok"'))
        assert (canceled is not None) != succeeded, (canceled, succeeded)
        assert row(job_id).state == ("succeeded" if succeeded else "canceled")
        assert history(ledger, job_id) == [(1, "succeeded" if succeeded else "canceled")]
        winners.add("success" if succeeded else "cancel")
    print(f"cancel racing success: won by {sorted(winners)}")


def test_a_late_success_waits_for_a_cancel_in_flight_and_changes_nothing(ledger):
    job_id = running(ledger)
    with HeldTransaction(lambda: ledger.cancel_running(job_id)) as held:
        late = start_waiting_on(held, lambda: ledger.mark_succeeded(job_id, 1, 0.1, '"ok"'))
    assert held.result == 1
    assert joined(*late) is False
    assert (row(job_id).state, row(job_id).result) == ("canceled", None)
    assert history(ledger, job_id) == [(1, "canceled")]


# -- dead letters: mark_dead, revive, discard -------------------------------------------------------------------------

def test_mark_dead_without_an_attempt_takes_any_unfinished_job(ledger):
    waiting, busy, done = new_job(ledger), running(ledger), running(ledger)
    assert ledger.mark_succeeded(done, 1, 0.1, None)
    assert ledger.mark_dead(waiting, "cannot recover: unknown task") is True
    assert ledger.mark_dead(busy, "arguments no longer fit") is True
    assert ledger.mark_dead(done, "too late") is False
    assert [row(j).state for j in (waiting, busy, done)] == ["dead", "dead", "succeeded"]
    assert ledger.mark_succeeded(busy, 1, 0.1, None) is False  # its worker's outcome no longer lands


def test_revive_brings_a_dead_job_back_once_as_a_new_attempt(ledger):
    job_id = running(ledger, retries_left=0)
    assert ledger.requeue(job_id, 1, "lease-lost", "lease expired", lease_lost=True) == 2
    assert ledger.claim(job_id, 2, "w1", LEASE)
    assert ledger.mark_dead(job_id, "failed on attempt 2", "E: x", "tb", attempt=2, duration=0.1)
    assert ledger.revive(new_job(ledger), 3, service()) is None  # not dead
    revived = ledger.revive(job_id, 3, service())
    assert revived is not None and revived.id == job_id
    job = row(job_id)
    assert (job.state, job.attempt, job.retries_left, job.lease_losses, job.reason, job.worker, job.finished_at) \
        == ("queued", 3, 3, 0, "retried by operator", None, None)
    assert ledger.revive(job_id, 3, service()) is None  # already queued again
    assert ledger.claim(job_id, 2, "stale", LEASE) is False
    assert ledger.claim(job_id, 3, "w2", LEASE) is True
    assert ledger.mark_succeeded(job_id, 3, 0.1, None)
    assert history(ledger, job_id) == [(1, "lease-lost"), (2, "failed"), (3, "succeeded")]


def test_every_way_back_to_waiting_leaves_no_finish_time_for_the_claim(ledger):
    """The claim does not write `finished_at` (issue 16: that would update its index on every claim, a page more
    per job), so every transition into a waiting state must leave it empty: submit, a retry, a requeue after a
    lost lease or a shutdown, an operator's retry of a dead job. Each waiting attempt is then claimed and run."""
    from app.states import WAITING
    job_id = running(ledger, retries_left=1)
    eta = ledger.now() + datetime.timedelta(seconds=1)
    seen = [row(job_id).finished_at]
    assert ledger.mark_retrying(job_id, 1, 0.2, "E: x", "tb", eta, retries_left=0, retry_delay=1)
    assert row(job_id).state in WAITING
    seen.append(row(job_id).finished_at)
    assert ledger.claim(job_id, 2, "w2", LEASE)
    assert ledger.requeue(job_id, 2, "interrupted", "worker stopped") == 3
    seen.append(row(job_id).finished_at)
    assert ledger.claim(job_id, 3, "w3", LEASE)
    assert ledger.mark_dead(job_id, "no retries left", "E: y", "tb", attempt=3, duration=0.1)
    assert row(job_id).finished_at is not None
    assert ledger.revive(job_id, 1, service()) is not None
    seen.append(row(job_id).finished_at)
    assert ledger.claim(job_id, 4, "w4", LEASE)
    seen.append(row(job_id).finished_at)
    assert seen == [None] * 5
    assert ledger.mark_succeeded(job_id, 4, 0.1, None)
    assert row(job_id).finished_at is not None


def test_racing_revives_queue_a_dead_job_once(ledger):
    job_id = running(ledger)
    assert ledger.mark_dead(job_id, "failed", attempt=1)
    results = race(*[lambda: ledger.revive(job_id, 2, service()) for _ in range(3)])
    assert sum(r is not None for r in results) == 1, results
    assert (row(job_id).state, row(job_id).attempt) == ("queued", 2)


def test_a_poison_message_dead_letter_is_never_revived_and_discard_takes_only_dead_jobs(ledger):
    letter = ledger.record_dead_letter("poison-1", "no_such_task", "unknown task", b"\x00garbage", service())
    assert letter == "poison-1" and row(letter).raw == "\\x00garbage"
    assert ledger.revive(letter, 3, service()) is None and row(letter).state == "dead"
    replaced = ledger.record_dead_letter("x" * 40, "t", "too long", b"...", service())
    assert replaced != "x" * 40 and "replaced" in row(replaced).reason
    waiting = new_job(ledger)
    assert sorted(ledger.discard([letter, replaced, waiting])) == sorted([letter, replaced])
    assert row(letter) is None and row(waiting).state == "queued"


# -- refused messages --------------------------------------------------------------------------------------------------

def test_a_refused_message_flags_its_waiting_job_and_recovery_folds_it_once(ledger, env):
    queue = env["NIGHTSHIFT_QUEUE"]
    job_id = new_job(ledger)
    letter = ledger.record_dead_letter(str(uuid.uuid4()), "add", "signature does not match", b"forged", service())
    assert ledger.flag_refused(job_id, queue + "-other", letter, "bad signature") is False  # another queue's
    assert ledger.flag_refused(job_id, queue, letter, "bad signature") is True
    flag = row(job_id).reason
    assert ledger.is_flagged_refused(flag)
    assert ledger.fold_refused(job_id, 2, flag) is False  # not the waiting attempt
    assert ledger.fold_refused(job_id, 1, flag) is True
    job = row(job_id)
    assert job.state == "dead" and job.error == "refused message: forged" and "not sent again" in job.reason
    assert row(letter) is None  # one dead entry for the job
    assert ledger.fold_refused(job_id, 1, flag) is False
    assert ledger.flag_refused(job_id, queue, letter, "again") is False  # no longer waiting


def test_an_authentic_message_of_an_unknown_task_kills_only_a_waiting_job(ledger, env):
    queue = env["NIGHTSHIFT_QUEUE"]
    job_id, busy = new_job(ledger), running(ledger)
    assert ledger.mark_refused(job_id, queue, "unknown task 'add'", b'{"id": "..."}') is True
    assert row(job_id).state == "dead" and row(job_id).raw is None  # a job, so an operator can retry it
    assert ledger.revive(job_id, 1, service()) is not None
    assert ledger.mark_refused(busy, queue, "unknown task 'add'", b"{}") is False
    assert ledger.mark_refused("x" * 40, queue, "unknown", b"{}") is False


# -- idempotency keys ------------------------------------------------------------------------------------------------

def test_a_finished_job_gives_its_key_up_after_the_window(ledger):
    job_id = running(ledger, key="order-42")
    assert ledger.job_for_key("order-42", 3600).id == job_id  # running: always held
    assert ledger.mark_succeeded(job_id, 1, 0.1, None)
    assert ledger.job_for_key("order-42", 3600).id == job_id  # finished within the window
    from app.models import Job
    Job.update(finished_at=ledger.now() - datetime.timedelta(seconds=10)).where(Job.id == job_id).execute()
    assert ledger.job_for_key("order-42", 5) is None
    assert row(job_id).key is None and ledger.job_for_key("order-42", 3600) is None

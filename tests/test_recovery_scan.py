"""Recovery reads the queue while workers drain it, and never takes a healthy backlog for lost (issue 10, item 9)."""
from __future__ import annotations

import pytest

from conftest import wait_until

pytestmark = pytest.mark.slow  # a backlog of 20,000 jobs drained: about 20 s

BACKLOG = 20_000


def test_recovery_never_resends_a_backlog_that_workers_are_draining(env, start_worker, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import recovery, submit_many
    from app.queue import get_huey
    monkeypatch.setattr(recovery, "SCAN_CHUNK", 500)  # more round trips per scan: more pops between them
    huey = get_huey()
    for _ in range(BACKLOG // 5000):
        submit_many("noop", [{}] * 5000)
    worker = start_worker(NIGHTSHIFT_WORKERS=4)
    resent = runs = 0
    while huey.pending_count() > 2000:
        report = recovery.recover(huey)
        resent += report.resent
        runs += 1
    print(f"recovery ran {runs} times while the worker drained {BACKLOG} jobs; sent again: {resent}")
    assert runs >= 3
    wait_until(lambda: huey.pending_count() == 0, 120, message="the backlog drained")
    sent_again = worker.log().count("message missing from Redis; sent again")
    assert resent == 0 and sent_again == 0, (resent, sent_again)

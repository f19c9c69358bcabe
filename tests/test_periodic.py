"""Periodic tasks with several real consumers: each tick is enqueued once, and a survivor takes over a dead one."""
from __future__ import annotations

import calendar
import json
import re
import signal
import time
from collections import Counter

import pytest

from conftest import cli, wait_until

pytestmark = pytest.mark.slow  # each waits on real ticks: 15-25 s

TICK = 2
WON = re.compile(r"periodic tick (\d+) won by (\S+?): enqueued (\d+)")


def ticks_won(workers) -> dict[int, list[tuple[int, int]]]:
    """tick start -> [(pid of the winner, tasks enqueued)] from every consumer's log."""
    won: dict[int, list[tuple[int, int]]] = {}
    for worker in workers:
        for tick, who, count in WON.findall(worker.log()):
            won.setdefault(int(tick), []).append((int(who.split(":")[1]), int(count)))  # host:pid:nonce
    return won


def probe_ticks() -> Counter:
    """Ledger rows of the periodic task, counted by the tick in which they were created."""
    from app.models import Job
    return Counter(calendar.timegm(job.created_at.timetuple()) // TICK * TICK
                   for job in Job.select().where(Job.task == "tick_probe"))


def wait_ticks(n: int) -> None:
    time.sleep(TICK * n - time.time() % TICK + 1.3)  # + the scheduler's 1 s loop: the last tick is checked


def periodic_env(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,periodic_tasks",
            NIGHTSHIFT_TICK_SECONDS=TICK)


def test_three_consumers_enqueue_each_tick_once_and_a_survivor_takes_over(env, start_worker, monkeypatch):
    from app.models import Job
    periodic_env(env, monkeypatch)
    workers = [start_worker(f"c{i}", wait=False) for i in range(3)]
    for worker in workers:
        worker.wait_started()
    first = (int(time.time()) // TICK + 1) * TICK  # the first tick all three consumers were up for
    wait_ticks(6)

    won = ticks_won(workers)
    assert all(len(winners) == 1 for winners in won.values()), f"a tick was enqueued twice: {won}"
    observed = [t for t in sorted(won) if t >= first]
    last = observed[-1]
    assert observed == list(range(first, last + 1, TICK)), f"a tick was missed: {sorted(won)}"
    assert all(count == 1 for winners in won.values() for _, count in winners)
    # Each periodic run is a ledger job; one per tick, and they run like any job.
    wait_until(lambda: Job.select().where(Job.task == "tick_probe").count() >= len(won), 5, message="ledger rows")
    per_tick = probe_ticks()
    assert max(per_tick.values()) == 1, per_tick
    wait_until(lambda: Job.select().where(Job.task == "tick_probe", Job.state == "succeeded").count()
               >= len(won) - 1, 10, message="periodic jobs succeed")

    # SIGKILL the consumer that won most recent ticks: another one wins the next tick.
    recent = Counter(won[t][0][0] for t in observed[-4:])
    leader_pid = recent.most_common(1)[0][0]
    leader = next(w for w in workers if w.pid == leader_pid)
    leader.kill()
    killed_at = time.time()
    wait_ticks(4)

    won = ticks_won(workers)
    assert all(len(winners) == 1 for winners in won.values()), f"a tick was enqueued twice: {won}"
    after = [t for t in sorted(won) if t > killed_at]
    assert after and after[0] <= killed_at + 2 * TICK, f"no consumer took over within a tick: {sorted(won)}"
    assert after == list(range(after[0], after[-1] + 1, TICK)), f"a tick was missed after the kill: {sorted(won)}"
    assert len(after) >= 3, f"the schedule did not go on after the kill: {sorted(won)}"
    assert all(won[t][0][0] != leader_pid for t in after)
    survivors = {w.pid for w in workers if w.alive()}
    assert {won[t][0][0] for t in after} <= survivors
    assert max(probe_ticks().values()) == 1

    # `nightshift schedule` lists it with its next run and its last run's outcome from the ledger.
    out = cli(env, "schedule", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["tick_seconds"] == TICK
    [probe] = [t for t in data["tasks"] if t["task"] == "tick_probe"]
    assert probe["schedule"] == "every tick" and probe["cron"] is None
    assert probe["last_outcome"] in ("queued", "running", "succeeded") and probe["last_job"]
    assert probe["next_run"] > probe["last_run"]
    for worker in workers:
        if worker.alive():
            assert worker.stop() == 0


def test_a_stalled_consumer_does_not_run_missed_ticks(env, start_worker, monkeypatch):
    periodic_env(env, monkeypatch)
    worker = start_worker("solo")
    wait_ticks(2)
    worker.signal(signal.SIGSTOP)
    stopped_at = time.time()
    time.sleep(3 * TICK)
    resumed_at = time.time()
    worker.signal(signal.SIGCONT)
    wait_ticks(2)

    won = ticks_won([worker])
    assert all(len(w) == 1 for w in won.values()), won
    during = [t for t in won if stopped_at < t and t + TICK <= resumed_at]  # ticks wholly inside the stall
    assert not during, f"ticks missed during the stall were run afterwards: {sorted(won)}"
    assert any(t >= resumed_at - TICK for t in won), "the consumer did not resume its schedule"
    assert max(probe_ticks().values()) == 1
    assert worker.stop() == 0

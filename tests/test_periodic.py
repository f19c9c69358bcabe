"""Periodic tasks with several real consumers: each tick is enqueued once, and a survivor takes over a dead one."""
from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter

import pytest

from conftest import cli, wait_until

pytestmark = pytest.mark.slow  # each waits on real ticks: 15-25 s

TICK = 2
WON = re.compile(r"periodic tick (\d+) won by (\S+?): enqueued (\d+) task\(s\)(?:: (.*))?$")


def ticks_won(workers) -> dict[int, list[tuple[int, list[str]]]]:
    """tick start -> [(pid of the winner, ids of the jobs it enqueued)] from every consumer's (JSON) log."""
    won: dict[int, list[tuple[int, list[str]]]] = {}
    for worker in workers:
        for line in worker.log().splitlines():
            try:
                match = WON.match(json.loads(line).get("message", ""))
            except ValueError:
                continue
            if match:
                tick, who, count, made = match.groups()
                jobs = [entry.split()[1] for entry in made.split(", ")] if made else []
                assert len(jobs) == int(count), line
                won.setdefault(int(tick), []).append((int(who.split(":")[1]), jobs))  # host:pid:nonce
    return won


def assert_one_job_per_tick(workers) -> None:
    """Every tick_probe job in the ledger was enqueued by one won tick, and each won tick made one job.

    The ledger's rows are read first; the won ticks are read until they account for them, since a winner logs
    its tick just after recording the job."""
    from app.models import Job
    rows = [job.id for job in Job.select(Job.id).where(Job.task == "tick_probe")]
    assert len(rows) == len(set(rows))

    def made_by_ticks() -> list[str]:
        return [job for winners in ticks_won(workers).values() for _, jobs in winners for job in jobs]

    wait_until(lambda: set(rows) <= set(made_by_ticks()), 5, message="a ledger job that no won tick enqueued")
    made = made_by_ticks()
    assert len(made) == len(set(made)), "a job was logged by two ticks"
    assert all(len(jobs) == 1 for winners in ticks_won(workers).values() for _, jobs in winners)


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
    # Each periodic run is a ledger job; one per tick, and they run like any job.
    wait_until(lambda: Job.select().where(Job.task == "tick_probe").count() >= len(won), 5, message="ledger rows")
    assert_one_job_per_tick(workers)
    wait_until(lambda: Job.select().where(Job.task == "tick_probe", Job.state == "succeeded").count()
               >= len(won) - 1, 10, message="periodic jobs succeed")

    # SIGKILL the consumer that won most recent ticks: another one wins the next tick.
    recent = Counter(won[t][0][0] for t in observed[-4:])
    leader_pid = recent.most_common(1)[0][0]
    leader = next(w for w in workers if w.pid == leader_pid)
    current = int(time.time()) // TICK * TICK  # killed after this tick is logged, not between its job and its line
    wait_until(lambda: current in ticks_won(workers), TICK, message=f"tick {current} enqueued")
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
    assert_one_job_per_tick(workers)

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
    assert_one_job_per_tick([worker])
    assert worker.stop() == 0

"""Fault injection: SIGKILLed consumers, a Redis that loses everything, and poison messages, all in one run."""
from __future__ import annotations

import random
import time

import pytest

import faults
from conftest import wait_until
from test_reliability import inject_poison

pytestmark = pytest.mark.slow  # 300 jobs through three SIGKILLs and a Redis restart: about 17 s


def test_every_accepted_job_succeeds_exactly_once_through_faults(env, private_redis, start_worker, tmp_path,
                                                                 monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_REDIS_URL=private_redis.url, NIGHTSHIFT_SIGNING_KEY="fault-key",
            NIGHTSHIFT_WORKERS=4, NIGHTSHIFT_LEASE_SECONDS=2, NIGHTSHIFT_RECOVERY_INTERVAL=1,
            NIGHTSHIFT_RECOVERY_GRACE=2)
    from app import submit, submit_many
    from app.models import Job
    from app.queue import get_huey

    seed = random.randrange(1 << 30)
    print(f"fault-injection seed {seed}")
    rng = random.Random(seed)
    effects = tmp_path / "effects"
    effects.mkdir()
    ids = submit_many("record_effect", [{"directory": str(effects), "seconds": round(rng.uniform(0.05, 0.3), 3)}
                                        for _ in range(270)])
    ids += [submit("record_effect", directory=str(effects), seconds=round(rng.uniform(0.05, 0.3), 3),
                   delay=rng.uniform(2, 8)) for _ in range(30)]
    poison = inject_poison(get_huey(), "fault-key")

    worker = start_worker()
    kills = 0
    redis_restarted = False
    while kills < 3 or not redis_restarted:
        time.sleep(rng.uniform(0.8, 2.5))
        assert worker.alive(), f"consumer exited on its own:\n{worker.log()[-3000:]}"
        if kills < 3:
            _, orphans = faults.sigkill_consumer(worker)
            assert not orphans, f"processes outlived their SIGKILLed consumer: {orphans}"
            kills += 1
            worker = start_worker()
        if kills == 1 and not redis_restarted:
            waiting = get_huey().pending_count() + get_huey().scheduled_count()
            print(f"restarting Redis without persistence with {waiting} messages queued or scheduled")
            assert get_huey().scheduled_count() > 0
            private_redis.restart()
            redis_restarted = True

    def done() -> bool:
        return Job.select().where(Job.id.in_(ids), Job.state == "succeeded").count() == len(ids)

    wait_until(done, 120, interval=0.5, message="all 300 jobs succeeded")
    assert worker.alive(), worker.log()[-3000:]

    effect_files = {p.name for p in effects.iterdir() if p.name != "runs.log"}
    assert effect_files == set(ids)  # every job's effect, once (the task records it keyed by job id)
    runs = (effects / "runs.log").read_text().splitlines()
    assert {line.split()[0] for line in runs} == set(ids)
    print(f"{len(runs)} runs for {len(ids)} jobs: {len(runs) - len(ids)} re-runs after kills and data loss")

    dead = list(Job.select().where(Job.state == "dead"))
    assert len(dead) == len(poison)
    for reason in poison.values():
        assert any(reason in job.reason for job in dead), (reason, [j.reason for j in dead])

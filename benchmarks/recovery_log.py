#!/usr/bin/env python
"""A SQLite ledger's log while recovery goes through a big backlog that a worker is draining.

    .venv/bin/python benchmarks/recovery_log.py [--jobs 200000] [--passes 3]

A fresh SQLite ledger (WAL) and a private redis-server; --jobs waiting jobs submitted with `submit_many` (their
messages on Redis). Then, at once:

  worker        a thread claims and finishes the jobs in order (two commits per job, as a worker's), and
                checkpoints the log every 0.2 s as a consumer's maintenance does (app.checkpoints)
  recovery      this thread runs --passes passes of `recovery.recover_lost_messages` back to back
  sampler       a thread reads the log file's size every 20 ms

and prints the longest the log got while recovery ran, how long a pass took, and how many jobs the worker
finished meanwhile. The log file starts empty (checkpointed and truncated after the submits), and its size is
the most it held since (SQLite reuses the file from its start after a checkpoint, and only grows it). A reader's
snapshot keeps every checkpoint from copying the log past it, so the log shows how long recovery's reads held one.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_huey import PrivateRedis, code_revision, compile_project  # noqa: E402
from benchmarks.growth import Ledger, settings_env, use  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    compile_project()
    work = Path(tempfile.mkdtemp(prefix="nightshift-recovery-log-"))
    redis_server = PrivateRedis(work / "redis").start()
    ledger_of_run = Ledger("sqlite", work, "recovery")
    try:
        env = settings_env(redis_server.url, ledger_of_run.url, "bench-recovery")
        env["NIGHTSHIFT_RECOVERY_GRACE"] = "0"
        use(env)
        run(args, Path(ledger_of_run.url.removeprefix("sqlite:///") + "-wal"))
    finally:
        ledger_of_run.drop()
        redis_server.stop()


def run(args: argparse.Namespace, wal: Path) -> None:
    from app import checkpoints, ledger, recovery, submit_many
    from app.db import database
    from app.queue import get_huey
    started = time.perf_counter()
    ids: list[str] = []
    while len(ids) < args.jobs:
        ids += submit_many("bench_noop", [{}] * min(10_000, args.jobs - len(ids)))
    print(f"{args.jobs:,} waiting jobs submitted in {time.perf_counter() - started:.1f} s", flush=True)
    database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the log file starts empty: its size is what follows
    done, stop, sizes = [0], threading.Event(), []

    def worker() -> None:
        maintenance, due = checkpoints.Checkpoints(), time.monotonic()
        for job_id in ids:
            if stop.is_set():
                return
            ledger.claim(job_id, 1, "bench:1:x", 60)
            ledger.mark_succeeded(job_id, 1, 0.0, None)
            done[0] += 1
            if time.monotonic() >= due:
                maintenance.run()
                due = time.monotonic() + maintenance.pause

    def sampler() -> None:
        while not stop.is_set():
            sizes.append(wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.02)

    threads = [threading.Thread(target=worker), threading.Thread(target=sampler)]
    for thread in threads:
        thread.start()
    passes = []
    try:
        for _ in range(args.passes):
            began = time.perf_counter()
            recovery.recover_lost_messages(get_huey(), recovery.Report(), ledger.now())
            passes.append(time.perf_counter() - began)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(f"code {code_revision()}: recovery passes {', '.join(f'{s:.1f}' for s in passes)} s; "
          f"the worker finished {done[0]:,} jobs meanwhile; the ledger's log at most {max(sizes) / 1e6:.1f} MB "
          f"(median {sorted(sizes)[len(sizes) // 2] / 1e6:.1f} MB over {len(sizes)} samples); "
          f"1-min load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()

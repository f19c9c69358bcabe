#!/usr/bin/env python
"""What a worker's claim costs before a task starts, in one process: the evidence behind docs/performance.md.

    .venv/bin/python benchmarks/claim_cost.py [--jobs 2000]
    strace -f -c -o claims.txt .venv/bin/python benchmarks/claim_cost.py --claims-only   # syscalls per claim

On a private redis-server and a fresh SQLite ledger: --jobs `app.submit()` calls, the same number of messages
taken off the queue (Huey's dequeue: read and decode), and each one claimed as the consumer's pre-execute hook
does (`lifecycle.claim_or_skip`), once as their own commits (as in a consumer) and once all inside one
transaction, so that the difference is what the commits cost. Prints µs per job for each step.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_huey import PrivateRedis  # noqa: E402
from benchmarks.growth import settings_env, use  # noqa: E402


def claims(n: int, one_transaction: bool) -> float:
    """µs per claim of n freshly submitted jobs."""
    from app import identity, lifecycle, submit
    from app.db import database
    from app.queue import get_huey
    huey = get_huey()
    for _ in range(n):
        submit("bench_noop")
    tasks = [huey.dequeue() for _ in range(n)]
    identity.worker_id()
    started = time.perf_counter()
    if one_transaction:
        with database.atomic():
            for task in tasks:
                lifecycle.claim_or_skip(huey, task)
    else:
        for task in tasks:
            lifecycle.claim_or_skip(huey, task)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--claims-only", action="store_true", help="only the claims as their own commits")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nightshift-claims-") as work:
        server = PrivateRedis(Path(work) / "redis").start()
        try:
            use(settings_env(server.url, f"sqlite:///{work}/ledger.db", "claims"))
            from app import lifecycle, submit
            from app.queue import get_huey
            lifecycle.install(get_huey())
            started = time.perf_counter()
            for _ in range(args.jobs):
                submit("bench_noop")
            print(f"submit (ledger INSERT + ZADD): {(time.perf_counter() - started) / args.jobs * 1e6:.0f} µs")
            get_huey().flush()
            print(f"claim, each its own commit:    {claims(args.jobs, False):.0f} µs")
            if not args.claims_only:
                print(f"claim, one transaction:        {claims(args.jobs, True):.0f} µs")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

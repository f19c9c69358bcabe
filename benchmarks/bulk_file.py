#!/usr/bin/env python
"""`nightshift submit TASK --file FILE` on big files: lines per second and the command's peak RSS.

    .venv/bin/python benchmarks/bulk_file.py [--lines 300000 1000000] [--redis-url redis://127.0.0.1:6379/12]

Each run writes a JSON-lines file of N lines ({"n": i, "name": "item-i"}), then runs
`python -m app submit bench_item --file FILE` as a child of a small probe process that reports the child's peak
RSS (ru_maxrss); the wall time (and the child's CPU time) covers the whole command (start-up, checking every line, recording every job in a
fresh SQLite ledger, putting every message on Redis). By default a private redis-server (free port, no
persistence) is started and stopped; with --redis-url only this run's queue keys are deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_huey import PrivateRedis, compile_project  # noqa: E402


def write_file(path: Path, lines: int) -> None:
    with open(path, "w") as f:
        for i in range(lines):
            f.write(f'{{"n": {i}, "name": "item-{i}"}}\n')


def run_once(lines: int, redis_url: str, work: Path) -> dict:
    path = work / f"jobs-{lines}.jsonl"
    write_file(path, lines)
    queue = f"bulk{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, NIGHTSHIFT_REDIS_URL=redis_url, NIGHTSHIFT_QUEUE=queue,
               NIGHTSHIFT_DATABASE_URL=f"sqlite:///{work}/ledger-{lines}.db",
               NIGHTSHIFT_TASK_MODULES="benchmarks.nightshift_tasks", PYTHONPATH=str(ROOT))
    # A producer never creates a ledger (a worker does): make this run's empty one first, outside the timing.
    subprocess.run([sys.executable, "-c", "import sys; from app import schema; schema.open_ledger(sys.argv[1])",
                    env["NIGHTSHIFT_DATABASE_URL"]], env=env, cwd=work, check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "app", "submit", "bench_item", "--file", str(path)], env=env,
                         cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0 or out.stdout.strip() != str(lines):
        raise SystemExit(f"submit failed ({out.returncode}): {out.stderr.strip()}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    import redis
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"huey.*{queue}*"))
    on_redis = sum(client.zcard(k) for k in keys if client.type(k) == b"zset")
    if keys:
        client.delete(*keys)
    return {"lines": lines, "seconds": round(seconds, 2), "lines_per_s": round(lines / seconds),
            "cpu_seconds": round(cpu, 2), "lines_per_cpu_s": round(lines / cpu),
            "peak_rss_mb": round(peak_mb, 1), "file_mb": round(path.stat().st_size / 1e6, 1), "on_redis": on_redis}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[300_000, 1_000_000])
    parser.add_argument("--redis-url", help="use this Redis (a dedicated logical db) instead of a private one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    compile_project()
    with tempfile.TemporaryDirectory(prefix="nightshift-bulk-") as tmp:
        work = Path(tmp)
        server = None if args.redis_url else PrivateRedis(work / "redis").start()
        try:
            # Smallest first: ru_maxrss of children is the largest so far, so each figure is that run's own.
            results = [run_once(n, args.redis_url or server.url, work) for n in sorted(args.lines)]
        finally:
            if server:
                server.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'lines':>10} {'seconds':>8} {'lines/s':>9} {'CPU s':>7} {'lines/CPU s':>11} {'peak RSS':>9} "
              f"{'file':>8}")
        for r in results:
            print(f"{r['lines']:>10,} {r['seconds']:>8.2f} {r['lines_per_s']:>9,} {r['cpu_seconds']:>7.2f} "
                  f"{r['lines_per_cpu_s']:>11,} {r['peak_rss_mb']:>7.1f}MB {r['file_mb']:>6.1f}MB")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPU(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Where the time goes on Nightshift's hot paths, next to bare Huey: the evidence behind docs/performance.md.

    .venv/bin/python benchmarks/profile_paths.py [--jobs 10000] [--top 12]

Needs py-spy for the drains (`.venv/bin/pip install py-spy`; a profiling tool, not a project dependency) and the
bare-Huey virtualenv that benchmarks/peers.py makes (.bench-venvs/huey).

  submit, one by one   cProfile of --jobs `app.submit()` calls (fresh SQLite ledger, private redis-server)
  submit_many          cProfile of --jobs jobs in batches of 1,000
  drain                py-spy (500 Hz, on-CPU samples only) of a 1-thread consumer draining --jobs jobs: Nightshift
                       (`python -m app worker`, PostgreSQL driver hidden as on a README install) and bare Huey
                       (`huey_consumer`), each started idle, frozen, given the jobs, thawed

Each profile is summed into buckets by where the time is spent *itself* (self time: the SQLite library, socket
I/O, redis-py's own Python, peewee, json, huey, Nightshift's app/ code, the rest), as a share of the total and as
µs per job, then the top functions by self time.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import signal
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
from benchmarks.growth import settings_env, use  # noqa: E402
from benchmarks.peers import PEER_DIR, VENVS, Consumer, signal_tree  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"
HIDE_PG = "import sys; sys.modules['psycopg2'] = None; from app.cli import main; main(['worker'])"


def bucket(filename: str, function: str) -> str:
    """Where a frame's own time goes."""
    text = f"{filename} {function}"
    # py-spy sees Python frames only: time in a C call shows as the Python function that made it.
    if "sqlite3" in text or "_sqlite" in text or ("peewee" in filename and function.rsplit(".", 1)[-1] in (
            "_execute_cursor", "commit", "begin", "rollback", "_connect")):
        return "SQLite (library calls)"
    if any(word in text for word in ("socket", "recv", "sendall", "select.", "poll", "'select'", "_ssl",
                                     "send_packed_command", "_read_from_socket")):
        return "socket I/O (Redis)"
    for package, name in (("redis/", "redis-py (Python)"), ("peewee", "peewee"), ("json/", "json"),
                          ("huey/", "huey"), ("click/", "click"), ("logging/", "logging"),
                          ("uuid", "uuid"), ("app/", "Nightshift app/"), ("helpers/", "Nightshift app/"),
                          ("config.py", "Nightshift app/"), ("pickle", "pickle"), ("threading", "threads (waits)")):
        if package in text:
            return name
    if "_json" in text or "json" in function:
        return "json"
    if "pickle" in function:
        return "pickle"
    return "other (interpreter, stdlib)"


def report(title: str, buckets: dict[str, float], functions: list[tuple[float, str]], total: float, jobs: int,
           top: int) -> str:
    lines = [f"\n### {title}\n", f"{total / jobs * 1e6:,.0f} µs per job in all ({jobs:,} jobs)\n",
             "| where (self time) | share | µs per job |", "|---|---:|---:|"]
    for name, seconds in sorted(buckets.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {seconds / total:.0%} | {seconds / jobs * 1e6:,.1f} |")
    lines += ["", "| top functions (self) | µs per job |", "|---|---:|"]
    for seconds, name in sorted(functions, reverse=True)[:top]:
        lines.append(f"| `{name}` | {seconds / jobs * 1e6:,.1f} |")
    return "\n".join(lines)


def profile_calls(title: str, call, jobs: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    stats = pstats.Stats(profiler)
    buckets: dict[str, float] = collections.defaultdict(float)
    functions = []
    for (filename, line, function), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        buckets[bucket(filename, function)] += tottime
        short = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        functions.append((tottime, f"{short}:{line} {function}" if line else function))
    return report(title, buckets, functions, stats.total_tt, jobs, top)


def profile_drain(title: str, consumer: Consumer, stage, jobs: int, done, work: Path, top: int) -> str:
    consumer.start()
    try:
        consumer.wait_idle()
        signal_tree(consumer.proc.pid, signal.SIGSTOP)
        stage()
        raw = work / f"{uuid.uuid4().hex[:6]}.txt"
        spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(consumer.proc.pid), "--rate", "500", "--format",
                                "raw", "--nonblocking", "-o", str(raw)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attached
        signal_tree(consumer.proc.pid, signal.SIGCONT)
        started = time.monotonic()
        while not done():
            consumer.alive()
            if time.monotonic() - started > 300:
                raise RuntimeError(f"{title}: drain did not finish")
            time.sleep(0.01)
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    finally:
        consumer.stop()
    buckets: dict[str, float] = collections.defaultdict(float)
    functions: dict[str, float] = collections.defaultdict(float)
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.split(";")[-1]  # "function (file:line)"
        function, _, where = leaf.partition(" (")
        filename = where.rsplit(":", 1)[0]
        n = int(count)
        samples += n
        buckets[bucket(filename, function)] += n
        functions[f"{filename.split('site-packages/')[-1].replace(str(ROOT) + '/', '')} {function}"] += n
    seconds = 1 / 500
    return report(title + f" (py-spy, on-CPU samples, {samples:,} at 500 Hz)",
                  {k: v * seconds for k, v in buckets.items()}, [(v * seconds, k) for k, v in functions.items()],
                  samples * seconds, jobs, top)


def profile_cli(env: dict, work: Path, top: int) -> str:
    """`nightshift submit bench_noop` under cProfile, in a fresh interpreter: cumulative time of the steps."""
    out = work / "cli.prof"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; sys.modules['psycopg2'] = None; import cProfile; "
                    f"cProfile.run('from app.cli import main; main([\"submit\", \"bench_noop\"], "
                    f"standalone_mode=False)', {str(out)!r})"], env=env, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - started
    stats = pstats.Stats(str(out))
    wanted = ("_find_and_load", "main", "invoke", "init", "upgrade", "add_missing_columns", "create",
              "check_signing_key", "check", "submit_tasks", "insert_jobs", "push", "_deliver", "load_task_modules",
              "get", "reload", "setup", "get_huey", "connect", "execute_sql")
    rows = []
    for (filename, line, function), (_cc, nc, _tt, cumtime, _callers) in stats.stats.items():
        if function in wanted and ("app/" in filename or "config.py" in filename or function == "_find_and_load"
                                   or "peewee" in filename):
            short = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
            rows.append((cumtime, f"{short}:{line} {function}", nc))
    lines = [f"\n### `nightshift submit bench_noop` (cProfile in a fresh interpreter; {wall * 1000:.0f} ms wall "
             f"with the profiler)\n", "| step (cumulative) | ms | calls |", "|---|---:|---:|"]
    for cumtime, name, calls in sorted(rows, reverse=True)[:top]:
        lines.append(f"| `{name}` | {cumtime * 1000:.1f} | {calls} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    compile_project()
    n = args.jobs
    work = Path(tempfile.mkdtemp(prefix="nightshift-profile-"))
    server = PrivateRedis(work / "redis").start()
    out = [f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-min load average {os.getloadavg()[0]:.2f}"]
    try:
        import redis
        conn = redis.Redis.from_url(server.url)
        env = settings_env(server.url, f"sqlite:///{work / 'submit.db'}", "psubmit")
        use(env)
        from app import submit, submit_many
        out.append(profile_calls("Nightshift `app.submit()`, one by one", lambda: [submit("bench_noop")
                                                                                for _ in range(n)], n, args.top))
        out.append(profile_calls("Nightshift `app.submit_many()`, batches of 1,000", lambda: [
            submit_many("bench_noop", [{}] * 1000) for _ in range(n // 1000)], n // 1000 * 1000, args.top))

        out.append(profile_cli(env, work, args.top + 6))

        env = settings_env(server.url, f"sqlite:///{work / 'drain.db'}", "pdrain")
        use(env)
        consumer = Consumer("nightshift", [sys.executable, "-c", HIDE_PG], env, work / "ns.log", "started:")
        out.append(profile_drain(
            "Nightshift drain, 1 thread", consumer, lambda: submit_many("bench_noop", [{}] * n),
            n, lambda: conn.zcard("huey.redis.pdrain") == 0 and ledger_left() == 0, work, args.top))

        bare_env = dict(os.environ, BENCH_REDIS_URL=server.url, BENCH_QUEUE="pbare", PYTHONPATH=str(PEER_DIR))
        consumer = Consumer("huey", [str(VENVS / "huey" / "bin" / "huey_consumer"), "huey_peer.huey", "-w", "1",
                                     "-k", "thread"], bare_env, work / "huey.log", "Huey consumer started")
        stage = [str(VENVS / "huey" / "bin" / "python"), str(PEER_DIR / "drive.py"), "huey", "bulk", str(n), "1000"]
        out.append(profile_drain(
            "bare Huey drain, 1 thread", consumer, lambda: subprocess.run(stage, env=bare_env, cwd=PEER_DIR,
                                                                           check=True, capture_output=True),
            n, lambda: conn.zcard("huey.redis.pbare") == 0, work, args.top))
    finally:
        server.stop()
    print("\n".join(out))
    return 0


def ledger_left() -> int:
    from app.models import Job
    return Job.select().where(Job.state.in_(("queued", "running"))).count()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The floors under issue 16's missed targets, each measured beside bare Huey in one run.

    .venv/bin/python benchmarks/floors.py [--jobs 3000] [--cli-runs 15] [--json FILE]

peers.py measures how far Nightshift is from bare Huey; this measures how far any Nightshift could get, with what
the issue keeps (a ledger row committed before `submit` returns) and the stack the product is built on (Huey and
redis-py, peewee, SQLite, click). It uses peers.py's
virtualenvs (bare Huey as pip installs it, Nightshift as the README installs it) and one private redis-server:

* submit: bare Huey's submit, the SQLite commit of one ledger row alone (raw sqlite3, the row `submit` writes, this
  version's schema and pragmas), `ledger.insert_jobs` of that row, and Nightshift's submit. A submit that commits
  the row and then does what Huey's does can reach at best huey / (huey + commit) of bare Huey.
* latency: peers.py's latency step (one job every 50 ms) against both consumers, each run by
  `benchmarks/peers/popped.py` so that it notes when each message came off Redis: the latency splits into sent ->
  off Redis and off Redis -> the task's first line. And the row's commit with 50 ms between commits, as a producer
  that sends a job every 50 ms meets it (its caches gone cold): what any submit that records first adds to sent ->
  off Redis.
* idle RSS: both consumers idle with one thread worker, split by mapping from /proc/PID/smaps; and the RSS of
  Nightshift's imports, one package after the other, in its own venv.
* CLI: wall medians, interleaved, of `python -c pass`, of importing redis-py, Huey, Huey with peewee and click, and
  `app.cli` (each then exiting as `nightshift` does, with `gc.freeze()`), and of `nightshift submit`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_huey import PrivateRedis, code_revision, compile_project, log  # noqa: E402
from benchmarks.peers import (PEER_DIR, VENVS, Consumer, Run, consumer_command, ensure_venv, percentile,  # noqa: E402
                              venv_python)

# Run inside Nightshift's venv: µs per commit of one job row, alone (raw sqlite3) and through the ledger.
RECORD = r"""
import datetime, json, sqlite3, sys, time, uuid
import config
from app import ledger, schema
from app.ledger import sqlite_datetime
n, queue = int(sys.argv[1]), sys.argv[2]
path = config.get().database_url.split(":///", 1)[1]
schema.open_ledger(config.get().database_url)
raw = sqlite3.connect(path, isolation_level=None)  # autocommit: one commit per INSERT, as submit's
for pragma in ("journal_mode=wal", "synchronous=normal", "busy_timeout=30000"):
    raw.execute(f"PRAGMA {pragma}")
sql = ("INSERT INTO nightshift_job (id, task, kwargs, state, attempt, retries_left, retry_delay, priority,"
       " created_at, updated_at, lease_losses, queue) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
def alone():
    stamp = sqlite_datetime(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))
    raw.execute(sql, (str(uuid.uuid4()), "bench_noop", "{}", "queued", 1, 0, 0, 0, stamp, stamp, 0, queue))
def through_ledger():
    ledger.insert_jobs([{"id": str(uuid.uuid4()), "task": "bench_noop", "kwargs": "{}", "attempt": 1,
                         "retries_left": 0, "retry_delay": 0, "priority": 0, "timeout": None, "eta": None,
                         "key": None}], queue)
out = {}
for name, step in (("alone", alone), ("ledger", through_ledger)) * 2:  # the first round warms up
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    out[name] = {"wall_us": (time.perf_counter() - started) / n * 1e6, "cpu_us": (time.process_time() - cpu) / n * 1e6}
apart = []
for _ in range(200):  # one commit every 50 ms, as the latency step sends its jobs
    time.sleep(0.05)
    started = time.perf_counter()
    alone()
    apart.append((time.perf_counter() - started) * 1e6)
out["alone_50ms_apart_us"] = sorted(apart)[len(apart) // 2]
print(json.dumps(out))
"""

# Run inside Nightshift's venv: VmRSS after each import, in the order a consumer meets them.
IMPORT_STEPS = ["huey", "peewee", "click", "config", "app.ledger", "app.cli", "app.consumer", "app.worker",
                "benchmarks.nightshift_tasks"]
IMPORTS = r"""
import importlib, json, sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
steps = [("python", rss())]
for module in sys.argv[1:]:
    importlib.import_module(module)
    steps.append((module, rss()))
print(json.dumps(steps))
"""

CLI_IMPORTS = {
    "python -c pass": "pass",
    "import redis": "import redis",
    "import huey": "import huey",
    "import huey, peewee, click": "import huey, peewee, click",
    "import app.cli": "import app.cli",
}


def smaps(pid: int) -> dict[str, float]:
    """Resident MB of a process by what is mapped: anonymous memory (Python's arenas, thread stacks), the
    malloc heap, and the shared libraries and files that hold the most."""
    by_name: dict[str, int] = {}
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                fields = line.split()
                name = fields[5] if len(fields) > 5 else "anonymous"
            elif first == "Rss:":
                by_name[name] = by_name.get(name, 0) + int(line.split()[1])
    out: dict[str, float] = {"total": sum(by_name.values()) / 1024}
    for key, kib in by_name.items():
        label = key if key in ("anonymous", "[heap]") else os.path.basename(key)
        if kib >= 400:
            out[label] = out.get(label, 0) + kib / 1024
    return out


def idle_consumer(run: Run, system: str) -> dict[str, float]:
    queue = f"{run.tag}{system}idle"
    env = run.env(system, queue, 1)
    if system == "nightshift":
        run.create_ledger(env)
    cmd, ready = consumer_command(system, 1, queue, run.redis_url)
    consumer = Consumer(f"{system} idle", cmd, env, run.work / f"{queue}.log", ready).start()
    try:
        consumer.wait_idle()
        return smaps(consumer.proc.pid)
    finally:
        consumer.stop()


def latency(run: Run, system: str, split: bool) -> dict:
    """peers.py's latency step against the system's own consumer (p50/p99 to the task's first line), or, with
    `split`, against it run by popped.py, which adds the p50 to the moment each message came off Redis (noting it
    costs a file write before the task starts, in both systems)."""
    queue = f"{run.tag}{system}lat{'s' if split else ''}"
    env = run.env(system, queue, 1)
    if system == "nightshift":
        run.create_ledger(env)
    cmd, ready = consumer_command(system, 1, queue, run.redis_url)
    if split:
        cmd = [str(venv_python(system)), str(PEER_DIR / "popped.py"), system]
    consumer = Consumer(f"{system} latency", cmd, env, run.work / f"{queue}.log", ready).start()
    try:
        figures = run.latency(system, consumer, env)
    finally:
        consumer.stop()
    if split:
        popped = Path(env["BENCH_LATENCY_FILE"] + ".popped").read_text().split()[1:]  # the warm-up job's left out
        figures["popped_p50_ms"] = percentile(sorted(float(x) * 1000 for x in popped), 50)
    return figures


def cli_walls(run: Run, runs: int) -> dict[str, float]:
    queue = f"{run.tag}cli"
    env = run.env("nightshift", queue, 1)
    run.create_ledger(env)
    python = str(venv_python("nightshift"))
    commands = {label: [python, "-c", code if code == "pass" else f"{code}; import gc; gc.freeze()"]
                for label, code in CLI_IMPORTS.items()}
    commands["nightshift submit"] = [str(VENVS / "nightshift" / "bin" / "nightshift"), "submit", "bench_noop"]
    walls: dict[str, list[float]] = {label: [] for label in commands}
    for round_ in range(runs + 1):
        for label, cmd in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=PEER_DIR, check=True, capture_output=True)
            if round_:  # the first round warms the page cache
                walls[label].append((time.perf_counter() - started) * 1000)
    return {label: statistics.median(values) for label, values in walls.items()}


def in_venv(run: Run, code: str, *args: str, queue: str = "floors") -> object:
    env = run.env("nightshift", f"{run.tag}{queue}", 1)
    out = subprocess.run([str(venv_python("nightshift")), "-c", code, *args], env=env, cwd=PEER_DIR,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(figures: dict) -> str:
    s = figures["submit"]
    huey, nightshift, record = s["huey"], s["nightshift"], s["record"]
    huey_us = 1e6 / huey["rate"]
    lines = [f"Floors (code {figures['meta']['revision']}, {figures['meta']['date']}, load "
             f"{figures['meta']['loadavg_start']:.2f} -> {figures['meta']['loadavg_end']:.2f})", "",
             f"submit, one by one, {figures['meta']['jobs']:,} jobs (us a job, wall / CPU)",
             f"  bare Huey submit                        {huey_us:7.1f} / {huey['cpu_us']:.1f}",
             f"  SQLite commit of one ledger row, alone   {record['alone']['wall_us']:7.1f} / "
             f"{record['alone']['cpu_us']:.1f}",
             f"  ledger.insert_jobs of that row           {record['ledger']['wall_us']:7.1f} / "
             f"{record['ledger']['cpu_us']:.1f}",
             f"  Nightshift submit                       {1e6 / nightshift['rate']:7.1f} / {nightshift['cpu_us']:.1f}",
             f"  best ratio for a submit that commits first: huey / (huey + commit) = "
             f"{huey_us / (huey_us + record['alone']['wall_us']):.2f}; Nightshift's: "
             f"{nightshift['rate'] / huey['rate']:.2f}; target 0.9", ""]
    lat = figures["latency"]
    huey_lat, ours = lat["huey"], lat["nightshift"]
    huey_split, ours_split = lat["huey_split"], lat["nightshift_split"]
    cold = record["alone_50ms_apart_us"] / 1000
    lines += [f"enqueue->start latency, {huey_lat['jobs']} jobs one every 50 ms (ms)   {'bare Huey':>10} "
              f"{'Nightshift':>10}"]
    for label, a, b in (
            ("p50", huey_lat["p50_ms"], ours["p50_ms"]),
            ("p99", huey_lat["p99_ms"], ours["p99_ms"]),
            ("split run: sent -> off Redis, p50", huey_split["popped_p50_ms"], ours_split["popped_p50_ms"]),
            ("split run: off Redis -> first line, p50 difference", huey_split["p50_ms"] - huey_split["popped_p50_ms"],
             ours_split["p50_ms"] - ours_split["popped_p50_ms"])):
        lines.append(f"  {label:50} {a:10.3f} {b:10.3f}")
    lines += [f"  SQLite commit of one ledger row, one every 50 ms: {cold:.3f} ms",
              f"  best p50 ratio for a submit that commits first: (huey p50 + that commit) / huey p50 = "
              f"{(huey_lat['p50_ms'] + cold) / huey_lat['p50_ms']:.2f}; Nightshift's: "
              f"{ours['p50_ms'] / huey_lat['p50_ms']:.2f}; target 1.2", ""]
    rss = figures["rss"]
    labels = ["total", "anonymous", "[heap]"] + sorted(
        {k for side in rss.values() for k in side} - {"total", "anonymous", "[heap]"},
        key=lambda k: -max(side.get(k, 0) for side in rss.values()))
    lines.append(f"idle consumer, one thread worker (RSS MB)   {'bare Huey':>10} {'Nightshift':>10}   difference")
    for label in labels:
        a, b = rss["huey"].get(label, 0), rss["nightshift"].get(label, 0)
        lines.append(f"  {label:42} {a:10.1f} {b:10.1f}   {b - a:+.1f}")
    lines += ["", "Nightshift's imports, one after the other (VmRSS MB)"]
    previous = None
    for module, mb in figures["imports"]:
        lines.append(f"  {module:42} {mb:6.1f}" + (f"   {mb - previous:+.2f}" if previous is not None else ""))
        previous = mb
    after = dict(figures["imports"])
    running = rss["huey"]["total"] - after["huey"]  # what bare Huey's consumer adds to its imports by running
    lines.append(f"  floor: huey, peewee and click imported ({after['click']:.1f}) + what bare Huey's consumer adds "
                 f"by running ({running:.1f}) = {after['click'] + running:.1f} MB, before any Nightshift module; "
                 f"target 36")
    cli = figures["cli"]
    lines += ["", f"from a shell, Nightshift's venv (ms, median of {figures['meta']['cli_runs']}, interleaved)"]
    for label, ms in cli.items():
        lines.append(f"  {label:42} {ms:6.1f}")
    lines.append(f"  floor: the stack's imports alone take {cli['import huey, peewee, click']:.0f} ms of the 150; "
                 f"Nightshift's modules add {cli['import app.cli'] - cli['import huey, peewee, click']:.0f}, the "
                 f"command {cli['nightshift submit'] - cli['import app.cli']:.0f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="submits and commits per figure (default 3000)")
    parser.add_argument("--cli-runs", type=int, default=15, help="runs of each command from a shell (default 15)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nightshift-floors-"))
    revision = code_revision()
    server = None
    try:
        for system in ("huey", "nightshift"):
            ensure_venv(system, log)
        compile_project(venv_python("nightshift"))
        load_start = os.getloadavg()[0]
        server = PrivateRedis(work / "redis").start()
        options = argparse.Namespace(timeout=900, latency_jobs=200, latency_interval=0.05, drain_cap=60)
        run = Run(options, server.url, work, "f" + uuid.uuid4().hex[:6])
        figures: dict = {"submit": {}}
        log(f"submit one by one, {args.jobs:,} jobs each: bare Huey, the row's commit, Nightshift")
        for system in ("huey", "nightshift"):
            env = run.env(system, f"{run.tag}{system}sub", 1)
            if system == "nightshift":
                run.create_ledger(env)
            figures["submit"][system] = run.drive(system, env, "submit", str(args.jobs))
        env = run.env("nightshift", f"{run.tag}record", 1)
        run.create_ledger(env)
        figures["submit"]["record"] = in_venv(run, RECORD, str(args.jobs), f"{run.tag}record", queue="record")
        log("latency, split where each message comes off Redis")
        figures["latency"] = {f"{system}{'_split' if split else ''}": latency(run, system, split)
                              for split in (False, True) for system in ("huey", "nightshift")}
        log("idle consumers' memory")
        figures["rss"] = {system: idle_consumer(run, system) for system in ("huey", "nightshift")}
        figures["imports"] = in_venv(run, IMPORTS, *IMPORT_STEPS)
        log(f"commands from a shell, {args.cli_runs} runs each")
        figures["cli"] = cli_walls(run, args.cli_runs)
        figures["meta"] = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                           "revision": revision, "jobs": args.jobs, "cli_runs": args.cli_runs,
                           "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0]}
        print(report(figures))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

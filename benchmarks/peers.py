#!/usr/bin/env python
"""Nightshift against bare Huey, Dramatiq, Celery, RQ and arq: one command, one run, one private Redis.

    .venv/bin/python benchmarks/peers.py [--jobs 20000] [--systems huey,nightshift,...] [--json FILE]

Each system runs in a virtualenv of its own, made by this script under .bench-venvs/ (gitignored) with pinned
versions (PEERS below; Nightshift as the README installs it: `pip install -e .`, no PostgreSQL driver, its bytecode
written as a user's first run writes it: compile_project). One private `redis-server` (free port, no persistence)
serves every system, one after the other, with the same no-op task. Per system, the figures are:

  submit, one by one   N calls of the system's enqueue, timed inside the producer (benchmarks/peers/drive.py)
  bulk submit          N jobs through the system's bulk API, when it has one (Nightshift submit_many, RQ
                       enqueue_many; bare Huey: the pipelined ZADD loop its enqueue would write)
  drain, 1 and 4       a consumer with 1 (then 4) workers is started on an empty queue and left until it is idle;
                       it is then frozen (SIGSTOP on its process tree), the N jobs of the submit (bulk) step are
                       queued, and it is thawed (SIGCONT): the clock runs from SIGCONT until every job is done (the
                       system's own bookkeeping says so: see REMAINING)
  latency p50/p99      on the idle 1-worker consumer, `--latency-jobs` jobs sent one every `--latency-interval`
                       s, each carrying time.time() at send; the task notes time.time() - sent as it starts
  RSS                  VmRSS summed over the consumer's process tree: idle, and after the drain
  CPU per job          utime+stime (children included) of the consumer's tree over the drain, divided by N

Then `nightshift submit` from a shell (median wall time of --cli-runs runs) and `python -X importtime` of it.
Ratios are to bare Huey from the same run. The 1-minute load average is printed with each system.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "benchmarks" / "peers"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_huey import PrivateRedis, code_revision, compile_project, log, wait_for  # noqa: E402

VENVS = ROOT / ".bench-venvs"
# What each system's virtualenv holds. redis-py as pinned by Nightshift wherever the system accepts it; arq 0.28
# needs redis<6 (and pulls in hiredis, a C parser the others do without).
PEERS: dict[str, list[str]] = {
    "huey": ["huey==3.5.4", "redis==8.1.0"],
    "nightshift": ["-e", str(ROOT)],
    "dramatiq": ["dramatiq[redis]==2.2.1", "redis==8.1.0"],
    "celery": ["celery[redis]==5.7.0", "redis==8.1.0"],
    "rq": ["rq==2.12.0", "redis==8.1.0"],
    "arq": ["arq==0.28.0"],
}
LABEL = {"huey": "bare Huey", "nightshift": "Nightshift", "dramatiq": "Dramatiq", "celery": "Celery", "rq": "RQ",
         "arq": "arq"}
VERSION_OF = {"huey": "huey", "nightshift": "huey", "dramatiq": "dramatiq", "celery": "celery", "rq": "rq",
              "arq": "arq"}
# Each system's delivery guarantee as it is configured here (its defaults).
GUARANTEE = {
    "huey": "at most once: the message is popped before the task runs; a killed consumer loses it",
    "nightshift": "at least once: recorded in the SQL ledger before submit returns; recovery re-sends lost "
                  "messages and expired leases; a duplicate of an attempt is skipped",
    "dramatiq": "at least once: acked after the task; a dead worker's unacked messages are re-queued",
    "celery": "at most once (acks_late off): acked before the task runs",
    "rq": "at most once: a job whose worker dies goes to the failed registry, not run again",
    "arq": "at least once: the job stays queued while it runs; re-run after the in-progress key expires",
}


# -- virtualenvs -----------------------------------------------------------------------------------------------

def venv_python(system: str) -> Path:
    return VENVS / system / "bin" / "python"


def ensure_venv(system: str, log: Callable[[str], None]) -> dict[str, str]:
    """Make (once) the system's virtualenv with its pinned packages; returns its installed versions."""
    spec = json.dumps(PEERS[system])
    marker = VENVS / system / ".bench-spec"
    if not (marker.exists() and marker.read_text() == spec):
        log(f"making virtualenv .bench-venvs/{system}: {' '.join(PEERS[system])}")
        shutil.rmtree(VENVS / system, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(VENVS / system)], check=True)
        subprocess.run([str(venv_python(system)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *PEERS[system]], check=True, stdout=subprocess.DEVNULL)
        marker.write_text(spec)
    frozen = subprocess.run([str(venv_python(system)), "-m", "pip", "freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True).stdout
    versions = {}
    for line in frozen.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            versions[name.lower()] = version
    return versions


# -- process trees and /proc -----------------------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def rss_mb(pid: int) -> float:
    total = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_ticks(pid: int) -> int:
    """utime+stime+cutime+cstime of the tree (RQ's work horses end as children: their time lands in cutime)."""
    total = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except OSError:
            pass
    return total


def signal_tree(pid: int, signum: int) -> None:
    for member in tree(pid):
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass


class Consumer:
    """A consumer process with its log in a file; started in its own session, stopped by its own PID."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path, ready: str | None) -> None:
        self.name, self.cmd, self.env, self.log_path, self.ready = name, cmd, env, log_path, ready
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Consumer":
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=PEER_DIR, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} consumer exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_idle(self, timeout: float = 90) -> None:
        """Until its log says it is ready, and its tree used at most 1 CPU tick in 0.75 s."""
        if self.ready:
            def ready() -> bool:
                self.alive()
                return self.ready in self.log_path.read_text(errors="replace")
            wait_for(ready, timeout, f"{self.name} consumer to start")
        samples = [cpu_ticks(self.proc.pid)]

        def idle() -> bool:
            self.alive()
            time.sleep(0.25)
            samples.append(cpu_ticks(self.proc.pid))
            return len(samples) >= 4 and samples[-1] - samples[-4] <= 1
        wait_for(idle, timeout, f"{self.name} consumer to go idle", interval=0)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            signal_tree(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                signal_tree(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        self.proc = None


# -- per-system details ----------------------------------------------------------------------------------------

def consumer_command(system: str, workers: int, queue: str, redis_url: str) -> tuple[list[str], str | None]:
    """The system's own consumer command line, with `workers` workers (threads where the system has them)."""
    bin_dir = VENVS / system / "bin"
    if system == "huey":
        return [str(bin_dir / "huey_consumer"), "huey_peer.huey", "-w", str(workers), "-k", "thread"], \
            "Huey consumer started"
    if system == "nightshift":
        return [str(bin_dir / "nightshift"), "worker"], "started:"
    if system == "dramatiq":
        return [str(bin_dir / "dramatiq"), "dramatiq_peer", "--processes", "1", "--threads", str(workers)], \
            "Worker process is ready"
    if system == "celery":
        return [str(bin_dir / "celery"), "-A", "celery_peer", "worker", "--pool", "threads", "-c", str(workers),
                "-Q", queue, "--loglevel", "INFO"], "ready."
    if system == "rq":
        if workers == 1:
            return [str(bin_dir / "rq"), "worker", queue, "--url", redis_url], "Listening on"
        return [str(bin_dir / "rq"), "worker-pool", queue, "-n", str(workers), "--url", redis_url], None
    if system == "arq":
        return [str(bin_dir / "arq"), "arq_peer.WorkerSettings"], "Starting worker"
    raise ValueError(system)


def huey_queue_key(queue: str) -> str:
    return f"huey.redis.{queue}"  # PriorityRedisStorage: "huey.redis." + the name with non-word chars removed


def remaining(system: str, conn, queue: str, n: int, ledger: Path | None) -> int:
    """How many of the drain's n jobs are not done yet, by the system's own bookkeeping."""
    if system == "huey":
        return conn.zcard(huey_queue_key(queue))
    if system == "nightshift":
        left = conn.zcard(huey_queue_key(queue))
        return left if left else n - ledger_count(ledger, "succeeded")
    if system == "dramatiq":
        return conn.hlen(f"dramatiq:{queue}.msgs")  # a message leaves the hash when it is acked
    if system == "celery":
        return conn.llen(queue) + conn.hlen("unacked")
    if system == "rq":
        return n - conn.zcard(f"rq:finished:{queue}")
    if system == "arq":
        return conn.zcard(f"arq:queue:{queue}")  # a job leaves the queue when it has finished
    raise ValueError(system)


def ledger_count(path: Path, state: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM nightshift_job WHERE state = ?", (state,)).fetchone()[0]
    finally:
        conn.close()


class Run:
    """One benchmark run: the private Redis, the work directory, the options."""

    def __init__(self, args: argparse.Namespace, redis_url: str, work: Path, tag: str) -> None:
        self.args, self.redis_url, self.work, self.tag = args, redis_url, work, tag
        import redis
        self.conn = redis.Redis.from_url(redis_url)

    def env(self, system: str, queue: str, workers: int) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NIGHTSHIFT_", "SENTRY_", "BENCH_", "PYTHON", "VIRTUAL_ENV"))}
        env.update({"BENCH_REDIS_URL": self.redis_url, "BENCH_QUEUE": queue,
                    "BENCH_LATENCY_FILE": str(self.work / f"latency-{queue}.txt"),
                    "BENCH_ARQ_MAX_JOBS": str(workers), "PYTHONPATH": str(PEER_DIR)})
        if system == "nightshift":
            env.update({
                "PYTHONPATH": f"{PEER_DIR}{os.pathsep}{ROOT}",
                "NIGHTSHIFT_REDIS_URL": self.redis_url, "NIGHTSHIFT_QUEUE": queue,
                "NIGHTSHIFT_DATABASE_URL": f"sqlite:///{self.work / f'ledger-{queue}.db'}",
                "NIGHTSHIFT_TASK_MODULES": "benchmarks.nightshift_tasks",
                "NIGHTSHIFT_WORKERS": str(workers), "NIGHTSHIFT_WORKER_TYPE": "thread",
            })
        return env

    def drive(self, system: str, env: dict, *step: str) -> dict:
        out = subprocess.run([str(venv_python(system)), str(PEER_DIR / "drive.py"), system, *step], env=env,
                             cwd=PEER_DIR, capture_output=True, text=True, timeout=self.args.timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{system} {' '.join(step)} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def drain(self, system: str, consumer: Consumer, queue: str, n: int, ledger: Path | None) -> dict:
        pid = consumer.proc.pid
        ticks = cpu_ticks(pid)
        signal_tree(pid, signal.SIGCONT)
        started = time.perf_counter()
        cap = time.monotonic() + self.args.drain_cap
        left, log_bytes = n, 0
        while left > 0:
            if time.monotonic() > cap:  # too slow to finish in reasonable time: the rate of what it did so far
                break
            consumer.alive()
            time.sleep(0.003)
            left = remaining(system, self.conn, queue, n, ledger)
            if ledger is not None and os.path.exists(f"{ledger}-wal"):  # how far the ledger's log grew
                log_bytes = max(log_bytes, os.path.getsize(f"{ledger}-wal"))
        elapsed = time.perf_counter() - started
        done = n - left
        cpu = (cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK")
        return {"rate": done / elapsed, "seconds": elapsed, "cpu_us": cpu / max(done, 1) * 1e6, "done": done,
                "partial": left > 0, "rss_after_mb": rss_mb(pid),
                **({"ledger_log_mb": log_bytes / 2**20} if ledger is not None else {})}

    def system(self, system: str) -> dict:
        n, result = self.args.jobs, {"loadavg": os.getloadavg()[0]}
        for workers, submit_step in ((1, ("submit", str(n))), (4, ("bulk", str(n), str(self.args.batch)))):
            queue = f"{self.tag}{system}{workers}"
            env = self.env(system, queue, workers)
            if system == "nightshift":  # a worker would create the ledger; producers never do
                self.create_ledger(env)
            cmd, ready = consumer_command(system, workers, queue, self.redis_url)
            consumer = Consumer(f"{system} x{workers}", cmd, env, self.work / f"{queue}.log", ready).start()
            try:
                consumer.wait_idle()
                if workers == 1:
                    result["rss_idle_mb"] = rss_mb(consumer.proc.pid)
                signal_tree(consumer.proc.pid, signal.SIGSTOP)
                log(f"{LABEL[system]}: {submit_step[0]} {n:,} jobs (consumer x{workers} frozen)")
                submitted = self.drive(system, env, *submit_step)
                if submitted.get("unsupported"):
                    result["bulk"] = None
                    submitted = self.drive(system, env, "submit", str(n))
                else:
                    result["submit" if workers == 1 else "bulk"] = submitted
                log(f"{LABEL[system]}: drain with {workers} worker(s)")
                ledger = self.work / f"ledger-{queue}.db" if system == "nightshift" else None
                result[f"drain{workers}"] = self.drain(system, consumer, queue, n, ledger)
            finally:
                consumer.stop()
            self.conn.delete(*[k for k in self.conn.scan_iter(f"*{queue}*", count=5000)] or ["-"])
        # Latency on a queue of its own, so that jobs a capped drain left behind cannot delay it.
        queue = f"{self.tag}{system}lat"
        env = self.env(system, queue, 1)
        if system == "nightshift":
            self.create_ledger(env)
        cmd, ready = consumer_command(system, 1, queue, self.redis_url)
        consumer = Consumer(f"{system} latency", cmd, env, self.work / f"{queue}.log", ready).start()
        try:
            result["latency"] = self.latency(system, consumer, env)
        finally:
            consumer.stop()
        result["loadavg_end"] = os.getloadavg()[0]
        return result

    def create_ledger(self, env: dict) -> None:
        code = "import config; from app import schema; schema.open_ledger(config.get().database_url)"
        subprocess.run([str(venv_python("nightshift")), "-c", code], env=env, cwd=PEER_DIR, check=True)

    def latency(self, system: str, consumer: Consumer, env: dict) -> dict:
        consumer.wait_idle()
        count = self.args.latency_jobs
        path = Path(env["BENCH_LATENCY_FILE"])
        log(f"{LABEL[system]}: latency, {count} jobs one every {self.args.latency_interval * 1000:g} ms")
        self.drive(system, env, "latency", str(count), str(self.args.latency_interval))

        deadline = time.monotonic() + self.args.drain_cap
        while not (path.exists() and len(path.read_text().splitlines()) >= count + 1):
            if time.monotonic() > deadline:  # a consumer slower than the sending rate: what started so far
                break
            consumer.alive()
            time.sleep(0.05)
        lags = sorted(float(x) * 1000 for x in path.read_text().splitlines()[1:]) if path.exists() else []
        if not lags:  # (the first line is the warm-up job's, left out)
            return {"jobs": 0, "partial": True}
        return {"p50_ms": percentile(lags, 50), "p99_ms": percentile(lags, 99), "max_ms": lags[-1],
                "jobs": len(lags), "partial": len(lags) < count}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, min(len(values), int(round(q / 100 * len(values) + 0.5))))
    return values[rank - 1]


# -- the CLI ---------------------------------------------------------------------------------------------------

def cli_wall(run: Run, runs: int) -> dict:
    """`nightshift submit bench_noop` from a shell, as the README installs it: median wall of `runs` runs, and
    the heaviest imports (`python -X importtime`)."""
    queue = f"{run.tag}cli"
    env = run.env("nightshift", queue, 1)
    run.create_ledger(env)
    nightshift = str(VENVS / "nightshift" / "bin" / "nightshift")
    walls = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        subprocess.run([nightshift, "submit", "bench_noop"], env=env, cwd=PEER_DIR, check=True,
                       capture_output=True)
        walls.append((time.perf_counter() - started) * 1000)
    walls = walls[1:]  # the first run warms the page cache
    bare = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(venv_python("nightshift")), "-c", "pass"], env=env, check=True)
        bare.append((time.perf_counter() - started) * 1000)
    trace = subprocess.run([str(venv_python("nightshift")), "-X", "importtime", "-m", "app", "submit", "bench_noop"],
                           env=env, cwd=PEER_DIR, capture_output=True, text=True, check=True).stderr
    imports = []
    for line in trace.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|", 2)
        imports.append((int(cumulative), int(self_us), name.rstrip()))
    # A package's own line (not a submodule's) carries everything imported under it: the cost of needing it.
    packages: dict[str, tuple[int, int, str]] = {}
    for cumulative, self_us, name in imports:
        module = name.strip()
        if "." not in module and module != "app" and cumulative > packages.get(module, (0,))[0]:
            packages[module] = (cumulative, self_us, module)
    top_level = sorted(packages.values(), reverse=True)[:12]
    run.conn.delete(*[k for k in run.conn.scan_iter(f"*{queue}*")] or ["-"])
    return {"median_ms": statistics.median(walls), "min_ms": min(walls), "runs": runs,
            "python_startup_ms": statistics.median(bare),
            "imports_total_ms": sum(i[1] for i in imports) / 1000,
            "top_imports": [{"module": name.strip(), "cumulative_ms": c / 1000, "self_ms": s / 1000}
                            for c, s, name in top_level]}


# -- report ----------------------------------------------------------------------------------------------------

def fmt_rate(figure: dict | None) -> str:
    return "—" if not figure else f"{figure['rate']:,.0f}"


def partial(result: dict, label: str) -> bool:
    """Was the figure on this row cut short by --drain-cap?"""
    key = "drain1" if "1 worker" in label else "drain4" if "4 workers" in label else \
        "latency" if label.startswith("latency") else None
    return bool(key and (result.get(key) or {}).get("partial"))


def table(report: dict) -> str:
    systems = [s for s in report["systems"] if "error" not in report["systems"][s]]
    base = report["systems"].get("huey", {})
    rows: list[tuple[str, Callable[[dict], float | None], str]] = [
        ("submit, one by one (jobs/s)", lambda r: r.get("submit", {}).get("rate"), "{:,.0f}"),
        ("  CPU per job, producer (µs)", lambda r: r.get("submit", {}).get("cpu_us"), "{:,.0f}"),
        ("bulk submit (jobs/s)", lambda r: (r.get("bulk") or {}).get("rate"), "{:,.0f}"),
        ("drain, 1 worker (jobs/s)", lambda r: r.get("drain1", {}).get("rate"), "{:,.0f}"),
        ("  CPU per job, consumer (µs)", lambda r: r.get("drain1", {}).get("cpu_us"), "{:,.0f}"),
        ("drain, 4 workers (jobs/s)", lambda r: r.get("drain4", {}).get("rate"), "{:,.0f}"),
        ("  CPU per job, consumer (µs)", lambda r: r.get("drain4", {}).get("cpu_us"), "{:,.0f}"),
        ("latency p50 (ms)", lambda r: r.get("latency", {}).get("p50_ms"), "{:.2f}"),
        ("latency p99 (ms)", lambda r: r.get("latency", {}).get("p99_ms"), "{:.2f}"),
        ("RSS idle (MB)", lambda r: r.get("rss_idle_mb"), "{:.1f}"),
        ("RSS after 1-worker drain (MB)", lambda r: r.get("drain1", {}).get("rss_after_mb"), "{:.1f}"),
        ("RSS after 4-worker drain (MB)", lambda r: r.get("drain4", {}).get("rss_after_mb"), "{:.1f}"),
        ("ledger's log, longest in a 1-worker drain (MB)", lambda r: r.get("drain1", {}).get("ledger_log_mb"),
         "{:.1f}"),
        ("ledger's log, longest in a 4-worker drain (MB)", lambda r: r.get("drain4", {}).get("ledger_log_mb"),
         "{:.1f}"),
        ("1-min load average", lambda r: r.get("loadavg"), "{:.2f}"),
    ]
    head = "| figure | " + " | ".join(f"{LABEL[s]} {report['versions'].get(s, '')}".strip() for s in systems) + " |"
    lines = [head, "|---|" + "---:|" * len(systems)]
    for label, get, fmt in rows:
        cells = []
        for system in systems:
            value = get(report["systems"][system])
            if value is None:
                cells.append("—")
                continue
            cell = fmt.format(value) + ("*" if partial(report["systems"][system], label) else "")
            reference = get(base) if base and system != "huey" and "load" not in label else None
            if reference:
                cell += f" ({value / reference:.2f})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for system, result in report["systems"].items():
        if "error" in result:
            lines.append(f"\n{LABEL[system]}: FAILED: {result['error'].splitlines()[0]}")
    lines.append("")
    lines.append(f"(ratio to bare Huey from this run in brackets; * cut short after {report['meta']['drain_cap']:g} s: "
                 f"the rate of the jobs done until then, or the latency of the jobs started until then)")
    lines.append("")
    for system in systems:
        how = (report["systems"][system].get("bulk") or {}).get("how")
        lines.append(f"- {LABEL[system]}: {GUARANTEE[system]}" + (f"; bulk: {how}" if how else ""))
    cli = report.get("cli")
    if cli:
        lines.append("")
        lines.append(f"`nightshift submit bench_noop` from a shell: median {cli['median_ms']:.0f} ms wall over "
                     f"{cli['runs']} runs (min {cli['min_ms']:.0f} ms; `python -c pass` alone "
                     f"{cli['python_startup_ms']:.0f} ms; imports {cli['imports_total_ms']:.0f} ms in all)")
        lines.append("heaviest packages it imports (cumulative ms, submodules included): " + ", ".join(
            f"{i['module']} {i['cumulative_ms']:.1f}" for i in cli["top_imports"]))
    meta = report["meta"]
    lines.append("")
    lines.append(f"{meta['date']}, code {meta['revision']}, {meta['jobs']:,} jobs per figure, bulk batches of "
                 f"{meta['batch']:,}, latency {meta['latency_jobs']} jobs at {meta['latency_interval'] * 1000:g} ms "
                 f"intervals; {meta['cpus']} CPUs, Python {meta['python']}, {meta['redis_server']}; 1-min load "
                 f"average {meta['loadavg_start']:.2f} at start, {meta['loadavg_end']:.2f} at end")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per figure (default 20000)")
    parser.add_argument("--batch", type=int, default=1000, help="bulk batch size (default 1000)")
    parser.add_argument("--systems", default=",".join(PEERS), help=f"comma-separated, of {','.join(PEERS)}")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--latency-interval", type=float, default=0.05,
                        help="seconds between latency jobs (default 0.05: 20 jobs/s, below every system's drain rate "
                             "but RQ's and arq's with one worker)")
    parser.add_argument("--cli-runs", type=int, default=15, help="runs of `nightshift submit` (0: skip)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one step may take")
    parser.add_argument("--drain-cap", type=float, default=60,
                        help="seconds after which a drain (or the latency run) is cut short and its rate is what it "
                             "did so far (default 60; RQ's fork-per-job worker and arq with max_jobs=1 need it)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledgers)")
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(PEERS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")

    work = Path(tempfile.mkdtemp(prefix="nightshift-peers-"))
    revision = code_revision()  # now: the tree may change while the run goes on
    server = None
    try:
        versions = {}
        for system in systems + (["nightshift"] if args.cli_runs and "nightshift" not in systems else []):
            installed = ensure_venv(system, log)
            if system == "nightshift":
                compile_project(venv_python(system))
            versions[system] = installed.get(VERSION_OF[system], "?") if system != "nightshift" else \
                f"(huey {installed.get('huey', '?')})"
        load_start = os.getloadavg()[0]
        server = PrivateRedis(work / "redis").start()
        run = Run(args, server.url, work, "b" + uuid.uuid4().hex[:6])
        results = {}
        for system in systems:
            try:
                results[system] = run.system(system)
            except Exception as exc:  # noqa: BLE001 - one system failing must not lose the others' figures
                log(f"{LABEL[system]} failed: {exc}")
                results[system] = {"error": str(exc)}
        report = {
            "meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "revision": revision, "jobs": args.jobs, "batch": args.batch,
                     "latency_jobs": args.latency_jobs, "drain_cap": args.drain_cap,
                     "latency_interval": args.latency_interval,
                     "cpus": os.cpu_count(), "python": platform.python_version(),
                     "redis_server": "redis-server " + run.conn.info("server")["redis_version"],
                     "loadavg_start": load_start},
            "versions": versions, "systems": results,
        }
        if args.cli_runs:
            log(f"nightshift submit from a shell, {args.cli_runs} runs")
            report["cli"] = cli_wall(run, args.cli_runs)
        report["meta"]["loadavg_end"] = os.getloadavg()[0]
        print(table(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        return 0
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

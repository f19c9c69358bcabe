"""Fault injectors and process-tree checks shared by the fault tests (test_faults.py, test_chaos.py).

Processes are found by scanning /proc for parent pids (no psutil; /proc/<pid>/task/*/children is not in every
kernel). A process is identified by (pid, start time) so a reused pid is never taken for a survivor.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of `pid`, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ...; starttime is field 22
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> set[Process]:
    """Every living process under `pid` (children, their children, ...)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] != "Z":
                children.setdefault(stat[0], []).append((int(entry), stat[2]))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def alive(process: Process) -> bool:
    """Still running (a zombie waiting for a reaper counts as gone: it runs nothing)."""
    stat = _stat(process[0])
    return stat is not None and stat[2] == process[1] and stat[1] != "Z"


def survivors(processes: set[Process], timeout: float) -> set[Process]:
    """The processes of `processes` still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in processes if alive(p)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def processes_with_env(entry: str) -> set[Process]:
    """Every living process (but this one) whose environment holds `entry` ("NAME=value")."""
    wanted, found = entry.encode() + b"\0", set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes() + b"\0"
        except OSError:
            continue
        stat = _stat(int(name))
        if stat is not None and stat[1] != "Z" and (b"\0" + wanted in b"\0" + environ):
            found.add((int(name), stat[2]))
    return found


def kill_processes(processes: set[Process]) -> None:
    """SIGKILL what is left of `processes` (only these pids, each checked against its start time)."""
    for process in processes:
        if alive(process):
            try:
                os.kill(process[0], signal.SIGKILL)
            except ProcessLookupError:
                pass


def sigkill_consumer(worker, orphan_timeout: float = 5.0) -> tuple[set[Process], set[Process]]:
    """SIGKILL a consumer; return (its processes, those still alive `orphan_timeout` s after it died)."""
    processes = descendants(worker.pid)
    worker.kill()
    return processes, survivors(processes, orphan_timeout)


def terminate_database_connections(database) -> int:
    """Kill every other connection to the ledger's PostgreSQL database, as a restart or failover would.
    Run on the caller's own ledger connection, which is spared."""
    cursor = database.execute_sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return cursor.fetchone()[0]


_LOCK_SQLITE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def lock_sqlite(path: str, seconds: float) -> None:
    """Hold the SQLite file's write lock from another process (BEGIN IMMEDIATE) for `seconds`; return once
    it is released."""
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_SQLITE, path, str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert holder.wait(seconds + 30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

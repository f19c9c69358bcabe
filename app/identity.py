"""Who this process is, and which attempts it runs now: the worker id and the running table.

The keeper renews the running attempts' leases, the lifecycle hooks add and remove them, `nightshift cancel`
finds them here. The id is made again after a fork, so each process worker has its own.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import secrets
import socket
import threading

WORKER_ID = ""
_id_pid = 0


def worker_id() -> str:
    """Identity of this process: host:pid:nonce (made again after a fork, for process workers). The nonce keeps
    two consumers apart that share a hostname and a pid, as containers on the host network running as pid 1 do."""
    global WORKER_ID, _id_pid
    if _id_pid != os.getpid():
        WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        _id_pid = os.getpid()
    return WORKER_ID


worker_id()


@dataclasses.dataclass(frozen=True)
class Running:
    """An attempt this process runs now."""
    task: str
    lease: float              # seconds, renewed by the keeper
    started: float            # monotonic
    since: datetime.datetime  # wall clock (shared clock), for status
    slot: tuple[str, str] | None = None  # concurrency slot held (app.flow), renewed with the lease
    thread: int = 0           # the thread running it, for an operator's cancel (app.canceling)


# (job id, attempt) -> Running. Keyed by attempt too: a process can run two attempts of one job at once (the first
# outlived its lease, recovery queued the second, and this process took it), and each must end as itself.
running: dict[tuple[str, int], Running] = {}
interrupted: set[tuple[str, int]] = set()  # attempts a cancel was raised in
jobs_done = 0
lock = threading.Lock()

"""Relief consumers: how a thread consumer over NIGHTSHIFT_MAX_MEMORY_MB restarts without stalling its queues.

Threads share one process, so only a new process image frees what a leaking task kept, and exec ends every
thread at once: the consumer must drain (its running jobs finish) before it can exec. A relief covers that time:

1. Over the limit, the consumer starts a relief, the same command and environment as a child process, and goes
   on working.
2. The relief says on a pipe when its workers take jobs; only then does the consumer stop taking jobs, let its
   running ones finish and exec itself in place (same pid: systemd's main process, Docker's PID 1, a shell's
   job), passing the relief's pid on in the environment.
3. The restarted consumer, once its own workers take jobs, sends the relief SIGTERM (it drains like any consumer)
   and reaps it.

The relief dies with the consumer (parent-death signal, armed by app.consumer), and a consumer that stops for
good stops its relief first (systemd's KillMode=mixed and `docker stop` signal only the main process). A relief
that does not start within START_SECONDS is let go and the consumer restarts alone, as before reliefs: jobs then
wait for the restart. A relief over the limit itself just stops: it is about to be let go anyway.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("nightshift.worker")

PARENT_ENV = "_NIGHTSHIFT_RELIEF_OF"  # in a relief: "<consumer pid>:<fd of the pipe to say it takes jobs on>"
RELIEFS_ENV = "_NIGHTSHIFT_RELIEFS"   # across a restart's exec: pids of the reliefs to let go, comma-separated
START_SECONDS = 30.0

_reapers: dict[int, threading.Thread] = {}  # reliefs of this process image, until they exited
_relieved = os.environ.get(PARENT_ENV, "")  # read once: say_ready takes it out of the environment


def command() -> list[str]:
    """This consumer's own command line (as the restart's exec uses it)."""
    return [sys.executable, *sys.orig_argv[1:]]


def parent_pid() -> int | None:
    """In a relief: the pid of the consumer it relieves; None in any other consumer."""
    return int(_relieved.split(":")[0]) if _relieved else None


def say_ready() -> None:
    """In a relief whose workers started: tell the consumer it may drain now (once)."""
    if not os.environ.pop(PARENT_ENV, None):
        return
    parent, fd = (int(part) for part in _relieved.split(":"))
    try:
        os.write(fd, b"ready")
        os.close(fd)
    except OSError as exc:  # the consumer is gone: the parent-death signal ends this process soon
        log.warning("relief: could not tell consumer pid %d it takes jobs: %s", parent, exc)
    log.info("relief consumer pid %d takes jobs while consumer pid %d drains and restarts", os.getpid(), parent)


class Relief:
    """A relief this consumer started, until it said it takes jobs (ready), exited, or took too long."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != RELIEFS_ENV}
        env[PARENT_ENV] = f"{os.getpid()}:{write_fd}"
        try:  # from the main thread: the relief's parent-death signal follows the thread that forked it
            self.proc = subprocess.Popen(command(), env=env, pass_fds=(write_fd,), stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.read_fd = read_fd
        self.pid = self.proc.pid
        self.since = time.monotonic()
        _watch(self.pid, self.proc)

    def ready(self) -> bool | None:
        """True once the relief takes jobs, False if it exited or did not start in time, None while it starts."""
        try:
            said = os.read(self.read_fd, 16)
        except BlockingIOError:
            if time.monotonic() - self.since < START_SECONDS:
                return None
            log.warning("relief consumer pid %d did not start within %gs: letting it go", self.pid, START_SECONDS)
            _terminate(self.pid)
            said = b""
        os.close(self.read_fd)
        return bool(said)  # b"" is end of file: the relief exited without a word


def _watch(pid: int, proc: subprocess.Popen | None = None) -> None:
    """Reap a relief when it exits, in a thread (a consumer that is PID 1 must reap its children)."""
    def reap() -> None:
        try:
            _, status = os.waitpid(pid, 0)
            if proc is not None:
                proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
        _reapers.pop(pid, None)
    reaper = threading.Thread(target=reap, name=f"nightshift-relief-{pid}", daemon=True)
    _reapers[pid] = reaper
    reaper.start()


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def hand_on() -> None:
    """Before a restart's exec: name the reliefs still running, for the restarted image to let go."""
    running = [str(pid) for pid in list(_reapers)]
    if running:
        os.environ[RELIEFS_ENV] = ",".join(running)
    else:
        os.environ.pop(RELIEFS_ENV, None)


def let_go_inherited() -> list[int]:
    """In a consumer that just restarted and takes jobs: SIGTERM the reliefs it inherited (each drains and
    exits) and reap them. Only its own children: a pid that is not one is left alone."""
    value = os.environ.pop(RELIEFS_ENV, "")
    let_go = []
    for pid in (int(part) for part in value.split(",") if part):
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                continue  # it exited already (and is reaped now)
        except ChildProcessError:
            continue
        _terminate(pid)
        _watch(pid)
        let_go.append(pid)
    return let_go


def stop_all(timeout: float) -> None:
    """A consumer that stops for good (not a restart) stops its reliefs and waits for them, within `timeout`."""
    deadline = time.monotonic() + timeout
    for pid in list(_reapers):
        _terminate(pid)
    for pid, reaper in list(_reapers.items()):
        reaper.join(max(0.0, deadline - time.monotonic()))

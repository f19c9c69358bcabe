"""The consumer: Huey's consumer plus the keeper (leases, heartbeat) and the maintenance loop (recovery).

Both SIGTERM and SIGINT are graceful: stop taking jobs, let running ones finish within
NIGHTSHIFT_SHUTDOWN_TIMEOUT, then queue whatever is still running again as a new attempt.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

import redis
from huey.consumer import BaseProcess, Consumer, ConsumerStopped, Scheduler, Worker, WorkerRecycle

from app import (canceling, checkpoints, clock, db, flow, identity, keys, leader, ledger, lifecycle, pausing, recovery,
                 relief)
from app.schedule import tick_start

log = logging.getLogger("nightshift.worker")
scheduler_log = logging.getLogger("nightshift.scheduler")

PR_SET_PDEATHSIG = 1
CLOCK_SYNC_SECONDS = 30.0


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Keeper(threading.Thread):
    """Renews the leases of the jobs this process runs and records its heartbeat: one per process, whatever the
    number of queues it serves (the beat's queue column lists them, "mail,default")."""

    def __init__(self, hueys: list) -> None:
        super().__init__(name="nightshift-keeper", daemon=True)
        self.hueys = hueys
        self.huey = hueys[0]  # the Redis connection (one Redis for every queue)
        self.queue = ",".join(h.name for h in hueys)
        self.redis = self.huey.storage.conn
        self.stop_event = threading.Event()
        self.started_at = ledger.now()

    def run(self) -> None:
        settings = self.huey.settings
        next_beat, next_sync = 0.0, time.monotonic() + CLOCK_SYNC_SECONDS  # start_keeper has just synced
        outage = db.Outage("keeper", on_end=lambda: [recovery.hold_leases(h) for h in self.hueys])
        while not self.stop_event.is_set():
            now = list(identity.running.items())
            shortest = min([entry.lease for _, entry in now] + [settings.lease_seconds])
            try:
                if time.monotonic() >= next_sync:
                    self.sync_clock()
                    next_sync = time.monotonic() + CLOCK_SYNC_SECONDS
                self.renew(now)
                if time.monotonic() >= next_beat:
                    self.beat()
                    next_beat = time.monotonic() + settings.heartbeat_seconds
                outage.ended()
            except Exception as exc:  # noqa: BLE001 - a database blip must not stop lease renewal for good
                if db.is_unreachable(exc):
                    outage.failed(exc)
                else:
                    log.exception("keeper: could not renew leases or record the heartbeat")
            self.stop_event.wait(min(shortest / 3, settings.heartbeat_seconds))

    def sync_clock(self) -> None:
        try:
            clock.sync(self.redis)
        except redis.RedisError as exc:
            log.warning("keeper: could not read Redis's clock (%s); leases keep the last offset", exc)

    def renew(self, now: list) -> None:
        by_lease: dict[float, list[tuple[str, int]]] = {}
        for pair, entry in now:
            by_lease.setdefault(entry.lease, []).append(pair)
        renewed = sum(ledger.renew_leases(pairs, identity.WORKER_ID, lease) for lease, pairs in by_lease.items())
        if renewed < len(now):  # some attempt is no longer running: canceled by an operator, or its lease lost
            for job_id, attempt in ledger.canceled_among(pair for pair, _ in now):
                lifecycle.stop_canceled(job_id, attempt)
        try:
            flow.renew(self.huey, [(entry.slot, entry.lease) for _, entry in now if entry.slot is not None])
        except redis.RedisError as exc:
            log.warning("keeper: could not renew concurrency slots (%s)", exc)

    def beat(self, stopped: str | None = None) -> None:
        """Record this process's heartbeat; `stopped` ("stopped", "recycled") says it said goodbye, and why."""
        stamp = ledger.now()
        current = [{"id": job_id, "task": entry.task, "attempt": attempt, "since": entry.since.isoformat()}
                   for (job_id, attempt), entry in list(identity.running.items())]
        fields = dict(host=socket.gethostname(), pid=os.getpid(), queue=self.queue, started_at=self.started_at,
                      last_seen=stamp, rss_bytes=rss_bytes(), jobs_done=identity.jobs_done,
                      current=json.dumps(current), stopped_at=stamp if stopped else None, stop_reason=stopped)
        ledger.record_beat(identity.WORKER_ID, **fields)


_keeper: Keeper | None = None
_keeper_pid: int | None = None


def start_keeper(hueys: list) -> None:
    """Once per process that runs jobs (the consumer, or each forked process worker), for all its queues."""
    global _keeper, _keeper_pid
    if _keeper_pid == os.getpid():
        return
    identity.worker_id()
    _keeper_pid = os.getpid()
    _keeper = Keeper(hueys)
    _keeper.sync_clock()
    _keeper.start()
    canceling.install_wakeup_handler()
    for huey in hueys:  # an operator's cancel is published on the channel of the job's queue
        canceling.Listener(huey, lifecycle.stop_canceled).start()


def stop_keeper(reason: str = "stopped") -> None:
    """Stop this process's keeper and record its goodbye beat (a beat in flight must not land after it)."""
    if _keeper is None or _keeper_pid != os.getpid():
        return
    _keeper.stop_event.set()
    _keeper.join(5)
    try:
        _keeper.beat(stopped=reason)
    except Exception as exc:  # noqa: BLE001 - the row then ages into "gone", which is still true enough
        log.warning("could not record that worker %s %s: %s", identity.WORKER_ID, reason, exc)


class LeavingNotices:
    """A pipe on which a worker says it leaves (its last job taken, or over the memory limit), so the consumer's
    loop starts its replacement at once instead of noticing the exit at the next health check. A pipe reaches the
    consumer from forked worker processes and from threads alike; both ends never block (a notice that does not
    fit is dropped, and the health check replaces that worker after it exits, as Huey does)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.partial = b""

    def say(self, ident: int) -> None:
        try:
            os.write(self.write_fd, b"%d\n" % ident)  # shorter than PIPE_BUF: never interleaved with another
        except OSError:
            pass

    def wait(self, timeout: float) -> None:
        """Until a notice arrives or `timeout` passes (a signal ends the wait no later)."""
        select.select([self.read_fd], [], [], timeout)

    def read(self) -> list[int]:
        """The idents (pid of a worker process, thread id of a worker thread) that said they leave."""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.partial += chunk
        *lines, self.partial = self.partial.split(b"\n")
        return [int(line) for line in lines if line]


class NightshiftWorker(Worker):
    """Huey's worker that takes no message while its queue is paused, and is recycled past
    NIGHTSHIFT_MAX_TASKS_PER_WORKER jobs (Huey's max_tasks) or NIGHTSHIFT_MAX_MEMORY_MB of resident memory.

    A worker that leaves says so on the consumer's LeavingNotices as soon as it knows: on taking its last job
    (max tasks), or after a job that left it over the memory limit; the consumer starts its replacement at once,
    so the replacement takes work while the old one finishes. Threads share their process's memory, so thread
    workers over the limit do not leave: they ask the consumer to restart (`release_memory`, app.relief)."""
    recycled = False         # a process worker's own copy of the class: one per process
    max_memory = 0           # bytes; set by the consumer
    release_memory = None    # callable(rss); set by the consumer of thread workers
    notices: LeavingNotices | None = None  # set by the consumer
    forked = False           # process workers: a worker is known to the consumer by its pid, else its thread id

    def loop(self, now=None) -> None:
        """Huey's Worker.loop (take a message, run it, count it), plus the pause, the early notice and the
        memory limit."""
        if pausing.is_paused(self.huey):
            self.stop_flag.wait(pausing.CHECK_SECONDS)
            return
        try:
            task = self.huey.dequeue()
        except Exception:  # noqa: BLE001 - as Huey's loop: Redis away, try again after a pause
            log.exception("could not read from queue %r", self.huey.name)
            self.sleep()
            return
        if task is None:
            if not self.huey.storage.blocking:
                self.sleep()
            return
        self.delay = self.default_delay
        self.task_count += 1
        leaving = bool(self.max_tasks) and self.task_count >= self.max_tasks
        if leaving:
            self.say_leaving()  # the replacement starts while this last job runs
        try:
            self.huey.execute(task, now)
        except Exception:  # noqa: BLE001 - as Huey's loop: the hooks recorded the outcome
            log.exception("unhandled error while running task %s", task.id)
        if self.max_memory and (rss := rss_bytes()) > self.max_memory:
            if NightshiftWorker.release_memory is not None:
                NightshiftWorker.release_memory(rss)
            elif not leaving:
                log.warning("worker %s uses %d MB, over NIGHTSHIFT_MAX_MEMORY_MB=%d: recycling it",
                            identity.WORKER_ID, rss // 2**20, self.max_memory // 2**20)
                self.say_leaving()
                leaving = True
        if leaving:
            NightshiftWorker.recycled = True
            log.info("worker %s %s is recycled after %d job(s)", identity.WORKER_ID,
                     "process" if self.forked else threading.current_thread().name, self.task_count)
            raise WorkerRecycle()

    def say_leaving(self) -> None:
        if NightshiftWorker.notices is not None:
            NightshiftWorker.notices.say(os.getpid() if self.forked else threading.get_ident())


_consumer_pid: int | None = None  # set in a consumer of process workers: its own children die with it
_hook_registered = False


def arm_children_to_die_with(consumer_pid: int) -> None:
    """Make every process the consumer forks (worker processes, schedulers) die with it. At-fork hooks are
    inherited, so the hook disarms itself in each child: a fork made inside a worker process (a task's
    os.fork, fork-start multiprocessing, subprocess with preexec_fn) is the worker's child, not the consumer's,
    and must live on."""
    global _consumer_pid, _hook_registered
    _consumer_pid = consumer_pid
    if not _hook_registered:
        os.register_at_fork(after_in_child=_arm_in_direct_child)
        _hook_registered = True


def _arm_in_direct_child() -> None:
    global _consumer_pid
    parent, _consumer_pid = _consumer_pid, None
    if parent is not None:
        die_with_parent(parent)


def die_with_parent(parent_pid: int) -> None:
    """In a forked worker process: be killed when the consumer dies, however it dies (SIGKILL included), so no
    orphan keeps taking jobs with old code. Linux's parent-death signal; a polling thread elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="nightshift-orphan-watch",
                         daemon=True).start()
    if os.getppid() != parent_pid:  # the consumer died before the signal was armed
        os._exit(1)


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


class Maintenance(BaseProcess):
    """Runs recovery every NIGHTSHIFT_RECOVERY_INTERVAL for each queue this consumer serves, in one consumer at a
    time per queue (a Redis lock per queue and run), and between runs checkpoints a SQLite ledger's log
    (app.checkpoints) so that no job's commit has to.

    The lock (SET NX PX 0.9 x interval) is the same once-per-period-across-consumers rule as the periodic
    tick key (app.schedule): whichever consumer takes it runs recovery for that interval; if it dies the lock
    expires and another consumer runs the next one. Recovery stays here rather than being a periodic task
    because it must run even when the queue is too blocked to deliver a periodic job.

    Run by the consumer's environment, as Huey's scheduler is: a thread beside thread workers, a process of its
    own beside process workers. A consumer that forks must have no other thread: fork() copies only the calling
    thread, so a lock a recovery thread held at that moment (SQLite's, peewee's) would stay held in the new worker
    process, which would hang before taking its first job."""
    process_name = "Maintenance"

    def __init__(self, huey, stop_flag, hueys: list) -> None:
        super().__init__(huey, stop_flag)
        self.hueys = hueys
        self.interval = hueys[0].settings.recovery_interval
        self.outage = db.Outage("recovery", on_end=lambda: [recovery.hold_leases(h) for h in self.hueys])
        self.checkpoints = checkpoints.Checkpoints()
        self.next_recovery = 0.0

    def loop(self, now=None) -> None:
        if time.monotonic() >= self.next_recovery:
            self.recover()
            self.next_recovery = time.monotonic() + self.interval
        if self.outage.since is None:
            self.checkpoints.run()
        self.stop_flag.wait(max(0.0, min(self.checkpoints.pause, self.next_recovery - time.monotonic())))

    def recover(self) -> None:
        try:
            if self.outage.since is not None:  # back? then leases are held (outage.on_end) before recovery runs
                db.database.obj.execute_sql("SELECT 1")
                self.outage.ended()
            for huey in self.hueys:
                # Held for most of an interval, and at least as long as one run can take with its
                # confirmation pause, so two consumers' runs of one queue never overlap.
                if leader.take(huey.storage.conn, keys.recovery_lock(huey.name), identity.WORKER_ID,
                               max(self.interval * 0.9, recovery.CONFIRM_SECONDS + 1)):
                    recovery.recover(huey)
                    self.outage.ended()
        except redis.RedisError as exc:
            log.warning("recovery skipped: Redis unreachable (%s)", exc)
        except Exception as exc:  # noqa: BLE001
            if db.is_unreachable(exc):
                self.outage.failed(exc)
            else:
                log.exception("recovery failed; will try again")


class TickScheduler(Scheduler):
    """Huey's scheduler, but a tick's periodic tasks are enqueued by one consumer only.

    Huey runs a scheduler in every consumer, so with three consumers every periodic task would be enqueued three
    times per tick. This keeps Huey's scheduler (its loop, its skipping of checks missed during a stall, its
    `read_periodic`) and adds one thing before enqueueing: the tick's leadership key (app.leader,
    keys.tick). Only the consumer that takes it enqueues that tick; when it dies, the next tick's key is free for
    any other consumer. Ticks are aligned to wall-clock multiples of NIGHTSHIFT_TICK_SECONDS so every consumer on
    every host agrees on which tick it is, and periodic tasks are validated against the tick's start time.
    """

    def __init__(self, huey, stop_flag, interval, periodic) -> None:
        super().__init__(huey, stop_flag, interval, periodic)
        self.tick = huey.settings.tick_seconds
        self.periodic_task_seconds = self.tick
        # Huey would check at start-up and then every tick measured from start-up; a check per wall-clock
        # tick makes all consumers compete for the same key.
        self.interval = max(1, min(self.interval, self.tick))
        self.won = 0

    def _align_next_check(self) -> None:
        now = time.time()
        self._next_periodic = time.monotonic() + (tick_start(now, self.tick) + self.tick - now)  # Huey private

    def enqueue_periodic_tasks(self, now) -> None:
        """Take this tick's key; only the winner enqueues (missed ticks are skipped, never caught up)."""
        self._align_next_check()
        start = tick_start(time.time(), self.tick)
        try:
            won = leader.take(self.huey.storage.conn, keys.tick(self.huey.name, start), identity.WORKER_ID,
                              max(3 * self.tick, 10))
        except Exception as exc:  # noqa: BLE001 - Redis down: no consumer can enqueue anyway; try next tick
            scheduler_log.warning("periodic tick %d skipped: Redis unreachable (%s)", start, exc)
            return
        if not won:
            return
        self.won += 1
        stamp = now or datetime.datetime.fromtimestamp(start, datetime.UTC).replace(tzinfo=None)
        tasks = self.huey.read_periodic(stamp)
        enqueued = []
        for task in tasks:
            try:
                self.huey.enqueue(task)  # attempt is None: recorded in the ledger first, like any job
                enqueued.append(task)
            except Exception:  # noqa: BLE001
                scheduler_log.exception("could not enqueue periodic task %s", type(task).__name__)
        # Each task with its job id: which ledger job a tick made is read from the log, not guessed from times.
        made = ", ".join(f"{type(t).__name__} {t.id}" for t in enqueued)
        scheduler_log.info("periodic tick %d won by %s: enqueued %d task(s)%s", start, identity.WORKER_ID,
                           len(enqueued), f": {made}" if made else "",
                           extra={"tick": start, "enqueued": len(enqueued)})


class NightshiftConsumer(Consumer):
    """Huey's consumer of `huey` (the service's queue, whose scheduler enqueues periodic tasks), plus the worker
    threads of other queues (`others`: (Huey of the queue, workers) pairs) run under the same loop, signals and
    graceful shutdown: one process, one scheduler, one keeper and one maintenance, and each queue its own
    workers, so long jobs on one queue never hold up another. `huey` may have 0 workers (a consumer of other
    queues only)."""
    # Periodic tasks: one consumer per tick enqueues them, however many consumers run (app.schedule).
    scheduler_class = TickScheduler
    worker_class = NightshiftWorker
    NOTICE_SECONDS = 0.1  # the loop's wait, cut short by a worker's notice (it replaces Huey's own 0.1 s wait)

    def __init__(self, huey, max_memory_mb: int = 0, others: list | tuple = (), **options) -> None:
        options.setdefault("graceful_signal", "TERM")
        # A dead worker is replaced within this many seconds (Huey's default is 10 s, during which its share of
        # the queue waits); the check is a few is_alive() calls. A recycled one is replaced at its notice.
        options.setdefault("health_check_interval", 0.25)
        super().__init__(huey, **options)
        # Huey private: Huey's loop would wait 0.1 s more on the stop flag, during which a notice waits too.
        self._stop_flag_timeout = 0
        if others and self.environment.forks:
            raise ValueError("one consumer serves several queues with thread workers only "
                             "(NIGHTSHIFT_WORKER_TYPE=thread); start one process consumer per queue instead")
        self.served = ([(huey, self.workers)] if self.workers else []) + [(h, n) for h, n in others if n]
        hueys = [h for h, _ in self.served] or [huey]
        for other, count in others:
            other._timeout_handler = self.environment.timeout  # Huey private: as Consumer.__init__ does for huey
            for index in range(count):
                worker = self._worker_for(other)
                self.worker_threads.append((worker, self._create_process(worker, f"Worker-{other.name}-{index + 1}")))
            # Each queue has its own schedule (delayed jobs, retries that wait): a plain Huey scheduler moves its
            # due messages to its queue; periodic tasks stay with the one TickScheduler above.
            schedule = self._schedule_mover(other)
            self.worker_threads.append((schedule, self._create_process(schedule, f"Scheduler-{other.name}")))
        # Both SIGTERM and SIGINT drain gracefully; a second one stops at once.
        self._signal_actions[signal.SIGINT] = (False, True)
        self._signal_actions[signal.SIGTERM] = (False, True)
        self.maintained = hueys
        self.maintenance = self._maintenance_process()
        for served in hueys:
            served.on_startup("nightshift_keeper")(lambda: start_keeper(hueys))
        NightshiftWorker.max_memory = max_memory_mb * 2**20
        self.notices = LeavingNotices()
        self.leaving: set = set()  # worker processes or threads that said they leave, replaced already
        NightshiftWorker.notices, NightshiftWorker.forked = self.notices, self.environment.forks
        self.over_memory = False   # thread workers: this process is over NIGHTSHIFT_MAX_MEMORY_MB
        self.relief: relief.Relief | None = None
        if not self.environment.forks:
            NightshiftWorker.release_memory = self.release_memory
        if relief.parent_pid() is not None:  # a relief dies with the consumer it relieves
            die_with_parent(relief.parent_pid())
        if self.environment.forks:
            arm_children_to_die_with(os.getpid())
            # Each worker process has a keeper of its own; its goodbye says whether it was recycled.
            huey.on_shutdown("nightshift_keeper")(
                lambda: stop_keeper("recycled" if NightshiftWorker.recycled else "stopped"))

    def _worker_for(self, huey) -> NightshiftWorker:
        return self.worker_class(huey=huey, stop_flag=self.stop_flag, default_delay=self.default_delay,
                                 max_delay=self.max_delay, backoff=self.backoff, max_tasks=self.max_tasks)

    def _maintenance_process(self):
        return self._create_process(Maintenance(self.huey, self.stop_flag, self.maintained), "Maintenance")

    def _schedule_mover(self, huey) -> Scheduler:
        return Scheduler(huey, self.stop_flag, self.scheduler_interval, periodic=False)

    def loop(self, health_check_ts=None):
        """Huey's loop (signals, stop flag, health check every 0.25 s), after waiting up to NOTICE_SECONDS for a
        worker's notice that it leaves (its replacement starts the moment it arrives); and the memory handover of
        thread workers."""
        self.notices.wait(self.NOTICE_SECONDS)
        self.replace_leaving_workers()
        health_check_ts = super().loop(health_check_ts)
        self.hand_over_to_release_memory()
        return health_check_ts

    def replace_leaving_workers(self) -> None:
        """Start a replacement for each worker that said it leaves, at once: it takes work while the old one
        runs its last job and says goodbye. The old one stays listed (a graceful stop waits for it) until the
        health check sees it gone."""
        leaving = self.notices.read()
        if self._signum is not None or self.stop_flag.is_set():
            return  # stopping: no replacement; the graceful stop waits for the ones that leave
        for ident in leaving:
            for worker, process in list(self.worker_threads):
                if getattr(process, "ident", None) == ident and isinstance(worker, NightshiftWorker) \
                        and process not in self.leaving:
                    self.leaving.add(process)
                    replacement = self._worker_for(worker.huey)
                    started = self._create_process(replacement, process.name)
                    started.start()
                    self.worker_threads.append((replacement, started))
                    break

    def check_worker_health(self) -> bool:
        """Huey's health check (dead workers and scheduler replaced), except a dead worker is replaced by one of
        the same queue, and one that left as it said it would is only removed (its replacement runs already)."""
        self.replace_leaving_workers()
        restarted = False
        kept = []
        for index, (worker, process) in enumerate(self.worker_threads):
            if self.environment.is_alive(process):
                kept.append((worker, process))
            elif process in self.leaving:
                self.leaving.discard(process)
            else:
                log.warning("%s %d of queue %r died, restarting it", type(worker).__name__, index + 1,
                            worker.huey.name)
                worker = (self._schedule_mover(worker.huey) if isinstance(worker, Scheduler)
                          else self._worker_for(worker.huey))
                kind = "Scheduler" if isinstance(worker, Scheduler) else "Worker"
                process = self._create_process(worker, f"{kind}-{worker.huey.name}-{index + 1}")
                process.start()
                kept.append((worker, process))
                restarted = True
        self.worker_threads = kept
        # Huey's own check would also see a worker that left since (and replace it with one of the service's
        # queue, whatever its queue): only its scheduler check, then.
        if not self.environment.is_alive(self.scheduler):
            log.warning("the scheduler died, restarting it")
            self.scheduler = self._create_process(self.scheduler_class(
                huey=self.huey, stop_flag=self.stop_flag, interval=self.scheduler_interval, periodic=self.periodic),
                "Scheduler")
            self.scheduler.start()
            restarted = True
        if not self.environment.is_alive(self.maintenance):
            log.warning("the maintenance %s died, restarting it", self.worker_type)
            self.maintenance = self._maintenance_process()
            self.maintenance.start()
            restarted = True
        return not restarted

    def start(self) -> None:
        for huey, _ in self.served:
            paused = pausing.is_paused_in_ledger(huey.name)
            pausing.publish(huey, huey.name, paused)  # the ledger's state, also after Redis lost its data
            if paused:
                log.warning("queue %r is paused: no job starts until `nightshift resume %s`", huey.name, huey.name)
        super().start()
        self.maintenance.start()
        log.info("consumer %s started: %s %s worker(s)", identity.WORKER_ID,
                 ", ".join(f"{n} on queue {h.name!r}" for h, n in self.served) or "no", self.worker_type)
        relief.say_ready()  # in a relief: its consumer may drain now
        for pid in relief.let_go_inherited():  # after a memory restart: this image takes jobs, the relief may go
            log.info("consumer %s took over: let its relief (pid %d) go", identity.WORKER_ID, pid)

    def stop(self, graceful: bool = False) -> None:
        if graceful:  # said at once: Huey's own lines come only when the wait is over
            jobs = (f"{len(identity.running)} running job(s)" if self.worker_type != "process" else
                    f"the jobs of {len(self.worker_threads)} worker process(es)")
            log.info("stopping: waiting up to %gs for %s", self.shutdown_timeout or 0, jobs)
        super().stop(graceful)

    def release_memory(self, rss: int) -> None:
        """A thread worker's job left this process over NIGHTSHIFT_MAX_MEMORY_MB (from that worker's thread): the
        consumer's loop hands over to a relief and restarts (app.relief). A relief over the limit just stops."""
        if self.over_memory:
            return
        self.over_memory = True
        log.warning("consumer %s uses %d MB, over NIGHTSHIFT_MAX_MEMORY_MB=%d: %s", identity.WORKER_ID,
                    rss // 2**20, NightshiftWorker.max_memory // 2**20,
                    "this relief stops" if relief.parent_pid() is not None else
                    "starting a relief, then restarting in a fresh process image")

    def hand_over_to_release_memory(self) -> None:
        """From the consumer's loop (the main thread: the relief's parent-death signal follows the thread that
        forked it): start a relief, keep working until it takes jobs, then drain and restart (Huey's restart: the
        SIGHUP path, exec in run()). Without a relief that starts, restart alone: jobs wait for the restart."""
        if not self.over_memory or self._signum is not None:
            return
        if relief.parent_pid() is not None:  # its goodbye says recycled (run)
            self._signum, self._restart, self._graceful = signal.SIGTERM, False, True
            return
        if self.relief is None:
            try:
                self.relief = relief.Relief()
            except OSError as exc:
                log.warning("could not start a relief consumer (%s): restarting without one", exc)
            else:
                log.info("consumer %s started relief consumer pid %d", identity.WORKER_ID, self.relief.pid)
                return
        elif (ready := self.relief.ready()) is None:
            return
        elif ready:
            log.info("relief consumer pid %d takes jobs: consumer %s drains and restarts", self.relief.pid,
                     identity.WORKER_ID)
        else:
            log.warning("relief consumer pid %d did not start: restarting without one", self.relief.pid)
        self._signum = signal.SIGHUP if hasattr(signal, "SIGHUP") else signal.SIGTERM
        self._restart, self._graceful = True, True

    def run(self) -> None:
        """Huey's Consumer.run, with the goodbye beat written before a restart's exec (which never returns)."""
        try:
            self.start()
            health_check_ts = time.monotonic()
            while True:
                try:
                    health_check_ts = self.loop(health_check_ts)
                except ConsumerStopped:
                    break
            self.huey.notify_interrupted_tasks()
        finally:
            self.stop_flag.set()
            if self.maintenance.ident is not None:  # started: a run under way ends, its next never starts
                self.maintenance.join(recovery.CONFIRM_SECONDS + 5)
            recycled = self._restart or (self.over_memory and relief.parent_pid() is not None)
            stop_keeper("recycled" if recycled else "stopped")
            if not self._restart:  # KillMode=mixed and `docker stop` signal only this process
                relief.stop_all(self.shutdown_timeout or 30.0)
            log.info("consumer %s %s", identity.WORKER_ID, "restarts" if self._restart else "stopped")
        if self._restart:
            relief.hand_on()
            os.execv(sys.executable, relief.command())

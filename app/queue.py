"""The one place that builds the Huey instance: Redis storage, the JSON codec and Nightshift's message shape.

`NightshiftHuey` changes Huey in narrow places: new tasks are handed to the producer to be recorded in the ledger
before they are queued, a message that cannot be read is handed to the dead-letter callback instead of raising,
Huey's revoke is the ledger's cancel, locks record their holder. The claim before a run is not here: it is a
pre-execute hook installed by app.lifecycle. Every Huey private name Nightshift relies on is listed in
HUEY_PRIVATE and pinned by tests/test_huey_contract.py.
"""
from __future__ import annotations

import copy
import datetime
import inspect
import struct
import time
from typing import Any, Callable, Iterable

from huey import Huey
from huey.api import PeriodicTask, Result, Task, TaskLock, TaskWrapper
from huey.consumer import ThreadEnvironment
from huey.exceptions import HueyException, RateLimitExceeded, RetryTask, TaskLockedException
from huey.registry import Registry
from huey.storage import PriorityRedisExpireStorage
from huey.utils import ChordConfig, normalize_time

import config
from app import identity, ledger, timelimits
from app.codec import JSONCodec, PoisonMessage, dumps_text

MESSAGE_VERSION = 1
ID_LENGTH = 36  # the ledger's job id column (app.models.Job.id)
_ORDER = struct.Struct(">Q")  # PriorityRedisStorage's ordering prefix
# Stand-ins that no job id or arguments contain: where message_maker splices each job's own.
_ID_MARK = "\x00id"
_ARGUMENTS_MARK = {"\x00arguments": None}


def _dt(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def _parse_dt(value: Any) -> Any:
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


class MessageRegistry(Registry):
    """Tasks are named by their catalog name and travel as plain JSON objects that carry the attempt number."""

    def task_to_string(self, task_class: type) -> str:
        return task_class.__name__

    def create_message(self, task: Task) -> dict:
        name = self.task_to_string(type(task))
        if name not in self._registry:
            raise HueyException(f"{name} is not a registered task")
        if task.kwargs and task.kwargs.get("task") is task:
            task.kwargs.pop("task")
        message = {
            "v": MESSAGE_VERSION, "id": task.id, "task": name, "attempt": getattr(task, "attempt", None),
            "args": list(task.args), "kwargs": task.kwargs, "eta": _dt(task.eta), "retries": task.retries,
            "retry_delay": task.retry_delay, "retry_backoff": task.retry_backoff, "priority": task.priority,
            "expires": task.expires if not isinstance(task.expires, datetime.datetime) else _dt(task.expires),
            "expires_resolved": _dt(task.expires_resolved), "timeout": task.timeout,
        }
        if task.on_complete is not None:
            message["on_complete"] = self.create_message(task.on_complete)
        if task.on_error is not None:
            message["on_error"] = self.create_message(task.on_error)
        if task.chord_config is not None:
            cc = task.chord_config
            message["chord"] = [cc.cid, cc.size, cc.idx, self.create_message(cc.callback)]
        return message

    def create_task(self, message: Any) -> Task:
        if not isinstance(message, dict) or not isinstance(message.get("task"), str) \
                or not isinstance(message.get("id"), str) or not isinstance(message.get("kwargs", {}), dict) \
                or not isinstance(message.get("args", []), list):
            raise PoisonMessage("message is JSON but not a Nightshift task message")
        if not is_ledger_id(message["id"]):
            raise PoisonMessage(f"message id {message['id'][:60]!r}{'...' if len(message['id']) > 60 else ''} "
                                f"({len(message['id'])} characters) cannot be a job id")
        task_class = self._registry.get(message["task"])
        if task_class is None:
            raise UnknownTask(message["task"])
        chord = message.get("chord")
        task = task_class(
            args=tuple(message.get("args") or ()), kwargs=message.get("kwargs") or {}, id=message["id"],
            eta=_parse_dt(message.get("eta")), retries=message.get("retries"),
            retry_delay=message.get("retry_delay"), priority=message.get("priority"),
            expires=message.get("expires"),
            on_complete=self.create_task(message["on_complete"]) if message.get("on_complete") else None,
            on_error=self.create_task(message["on_error"]) if message.get("on_error") else None,
            expires_resolved=_parse_dt(message.get("expires_resolved")), timeout=message.get("timeout"),
            chord_config=ChordConfig(chord[0], chord[1], chord[2], self.create_task(chord[3])) if chord else None,
            retry_backoff=message.get("retry_backoff"))
        task.attempt = message.get("attempt")
        return task


def is_ledger_id(job_id: str) -> bool:
    """Could `job_id` key a ledger row as it is? (Nightshift's own ids are 36-character uuids.)"""
    return 0 < len(job_id) <= ID_LENGTH and job_id.isprintable()


class UnknownTask(PoisonMessage):
    def __init__(self, name: str) -> None:
        shown = repr(name[:200]) + ("..." if len(name) > 200 else "")
        super().__init__(f"unknown task {shown}: no task module loaded by this consumer defines it")
        self.task_name = name


class AttemptTask(Task):
    """Huey's task, told apart from its job's other attempts. Huey keeps the tasks a process runs in a set
    (Huey._tasks_in_flight) and hands them to the interrupted signal at shutdown; by Huey's own equality (id,
    eta, class) two attempts of one job in one process are one member, so the first to end took the other out
    and a SIGTERM never handed that attempt back (its lease had to expire). Hashed by id as Huey does: the
    attempt changes after a run (a retry), never while the task is in flight."""

    def __eq__(self, rhs: object) -> bool:
        return super().__eq__(rhs) and getattr(self, "attempt", None) == getattr(rhs, "attempt", None)

    __hash__ = Task.__hash__


class AttemptPeriodicTask(AttemptTask, PeriodicTask):
    """A periodic task (Huey's PeriodicTask, which it reads the schedule from) told apart by its attempt."""


def attempt_base(task_base: type | None) -> type:
    """The base of a task class Huey is about to build (TaskWrapper.task_base), made an AttemptTask."""
    if task_base is None or task_base is Task:
        return AttemptTask
    if task_base is PeriodicTask:
        return AttemptPeriodicTask
    if issubclass(task_base, AttemptTask):
        return task_base
    return type(task_base.__name__, (AttemptTask, task_base), {"__module__": task_base.__module__})


# The keywords Huey's TaskWrapper.s() takes as options of a direct call (`my_task(x, retries=2)`).
CALL_OPTIONS = ("eta", "delay", "id", "retries", "retry_delay", "retry_backoff", "priority", "expires", "timeout")


class ArgumentsFirstTaskWrapper(TaskWrapper):
    """Huey's task wrapper, except that a keyword naming one of the task's own parameters is an argument, even
    when Huey would take it as an option (`import_records(path, key="sku")`, `my_task(retries=7)`), and whose
    task classes are AttemptTasks (two attempts of one job are two tasks in flight)."""

    def __init__(self, huey: Huey, func: Callable, context: bool = False, name: str | None = None,
                 task_base: type | None = None, **settings: Any) -> None:
        super().__init__(huey, func, context=context, name=name, task_base=attempt_base(task_base), **settings)

    def s(self, *args, **kwargs):
        own = [name for name in CALL_OPTIONS if name in kwargs and name in self._parameters()]
        taken = {name: kwargs.pop(name) for name in own}
        task = super().s(*args, **kwargs)
        if taken:
            task.kwargs = {**task.kwargs, **taken}
        return task

    def _parameters(self) -> set[str]:
        names = getattr(self, "_parameter_names", None)
        if names is None:
            names = self._parameter_names = set(inspect.signature(self.func).parameters)
        return names


class HolderLock(TaskLock):
    """Huey's TaskLock whose value records the holding worker and when it was taken (see app.locks)."""

    def acquire(self) -> bool:
        holder = {"holder": identity.WORKER_ID, "since": time.time()}
        if not self._huey.put_if_empty(self._key, holder, self._ttl):  # Huey private: TaskLock's fields
            raise TaskLockedException(f"unable to acquire lock {self._name}")
        return True


class NightshiftHuey(Huey):
    """Huey with JSON messages that carry the attempt, dead letters instead of exceptions, ledger cancellation,
    holder-recording locks and thread time limits. Mechanism only: what to do with a new task or an unreadable
    message is passed in by the layers above (`submit_new`, set by app.producer; `on_unreadable`, set by
    app.lifecycle.install in the consumer). The claim before a run is a public pre-execute hook (app.lifecycle).

    Every use of a Huey private name in Nightshift is in this module or in app.consumer, listed in HUEY_PRIVATE
    and pinned by tests/test_huey_contract.py."""

    # How a task never seen before (a direct call, a periodic run, a pipeline step) is recorded and queued.
    submit_new: Callable[[Task], None] | None = None
    # The service's queue (NIGHTSHIFT_QUEUE): what names the service's cross-queue keys (flow limits, ticks).
    service: str = ""
    # The settings it was built with (build_huey): what the hooks, maintenance and tasks run by it go by.
    settings: config.Settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = self.name
        self._registry = MessageRegistry()  # Huey private: the registry is built in Huey.__init__
        # What becomes of a message that cannot be read (data, error, queue); None: the error propagates.
        self.on_unreadable: Callable[[bytes, BaseException, str], None] | None = None

    def get_task_wrapper_class(self) -> type:
        return ArgumentsFirstTaskWrapper

    def registered(self) -> dict[str, type]:
        """Catalog name -> task class, for every task registered on this instance."""
        return dict(self._registry._registry)

    def _timeout_context(self, task: Task):
        """Huey's time limit, and in thread workers (where Huey has none) the watchdog's of app.timelimits."""
        if task.timeout and isinstance(getattr(self._timeout_handler, "__self__", None), ThreadEnvironment):
            return timelimits.limit(task.timeout)
        return super()._timeout_context(task)

    def enqueue(self, task: Task):
        """Huey's enqueue, except a task never seen before is recorded in the ledger first (direct calls)."""
        if getattr(task, "attempt", None) is None and not self._immediate:
            if NightshiftHuey.submit_new is None:
                raise RuntimeError("import app (its producer records new tasks) before enqueueing tasks")
            NightshiftHuey.submit_new(task)
            return Result(self, task)
        return super().enqueue(task)

    def push(self, tasks: Iterable[Task]) -> None:
        """Put already-recorded tasks on Redis in one round trip (push_serialized)."""
        self.push_serialized((self.serialize_task(task), task.eta, task.priority) for task in tasks)

    def push_serialized(self, messages: Iterable[tuple[bytes, datetime.datetime | None, int | None]]) -> None:
        """Put the messages of already-recorded jobs, as (serialized task, eta, priority), on Redis in one round
        trip: due ones on the queue (one ZADD, in order), later ones on the schedule. Writes PriorityRedisStorage's
        own layout (an 8-byte ordering prefix, score -priority), pinned by tests/test_huey_contract.py."""
        storage = self.storage
        now = self._get_timestamp()
        first = int(time.time() * 1e6)  # Huey's priority queue orders equal priorities by this prefix
        order = _ORDER.pack
        queued: dict[bytes, float] = {}
        scheduled: dict[bytes, float] = {}
        for index, (data, eta, priority) in enumerate(messages):
            if eta is not None and eta > now:
                scheduled[data] = storage.convert_ts(eta)
            else:
                queued[order(first + index) + data] = -(priority or 0)
        if queued and scheduled:
            pipe = storage.conn.pipeline(transaction=False)
            pipe.zadd(storage.queue_key, queued)
            pipe.zadd(storage.schedule_key, scheduled)
            pipe.execute()
        elif queued:
            storage.conn.zadd(storage.queue_key, queued)
        elif scheduled:
            storage.conn.zadd(storage.schedule_key, scheduled)

    def message_maker(self, prototype: Task) -> Callable[[str, str], bytes]:
        """`serialize_task` for many jobs alike (bulk submits): a function (job id, arguments as
        codec.dumps_text writes them) -> the bytes serialize_task writes for `prototype` with that id and those
        arguments. They are spliced into `prototype`'s own message, so the wire format is serialize_task's by
        construction, without a task object, a message dict and an encoding per job. The id must need no JSON
        escaping (Nightshift's ids are uuids)."""
        probe = copy.copy(prototype)
        probe.id, probe.kwargs = _ID_MARK, dict(_ARGUMENTS_MARK)
        text = self.serializer.unsign(self.serialize_task(probe)).decode()
        id_mark, arguments_mark = dumps_text(_ID_MARK), dumps_text(_ARGUMENTS_MARK)
        if text.count(id_mark) != 1 or text.count(arguments_mark) != 1 \
                or text.index(id_mark) > text.index(arguments_mark):
            raise HueyException(f"cannot make messages alike from {text[:200]!r}")
        head, rest = text.split(id_mark)
        middle, tail = rest.split(arguments_mark)
        head, middle = head + '"', '"' + middle
        seal = self.serializer.seal

        def message(job_id: str, arguments: str) -> bytes:
            return seal(f"{head}{job_id}{middle}{arguments}{tail}".encode())

        return message

    def dequeue(self):
        data = self.storage.dequeue()
        if data is None:
            return None
        return self._read_or_dead_letter(data)

    def _read_or_dead_letter(self, data: bytes):
        try:
            return self.deserialize_task(data)
        except Exception as exc:  # noqa: BLE001 - any unreadable message is a dead letter, never a crash
            if self.on_unreadable is None:
                raise
            self.on_unreadable(data, exc, self.name)
            return None

    def _deserialize_all(self, messages: Iterable[bytes]) -> list:
        return [task for task in map(self._read_or_dead_letter, messages) if task is not None]

    # Cancellation is the ledger's: a worker's claim refuses a canceled job. Huey's per-job revoke flags are
    # neither read before nor cleared after each job, which saves two Redis round trips per job.
    def is_revoked(self, task: Any, timestamp: datetime.datetime | None = None, peek: bool = True) -> bool:
        return False

    def delete(self, key: str) -> bool:
        if isinstance(key, str) and key.startswith("r:"):
            return False
        return super().delete(key)

    def revoke(self, task: Any, revoke_until: Any = None, revoke_once: bool = False) -> None:
        ledger.mark_canceled(task.id if isinstance(task, Task) else task.task.id, "revoked through Huey's API")

    def revoke_by_id(self, id: str, revoke_until: Any = None, revoke_once: bool = False) -> None:
        ledger.mark_canceled(id, "revoked through Huey's API")

    def revoke_all(self, task_class: Any, revoke_until: Any = None, revoke_once: bool = False) -> None:
        raise NotImplementedError("Nightshift cancels jobs in the ledger: use `nightshift cancel JOB...`")

    def lock_task(self, lock_name: str, ttl: int | None = None) -> HolderLock:
        """Huey's task lock, recording which worker holds it so cleanup can free it when that worker dies."""
        return HolderLock(self, lock_name, ttl)


def next_retry(task: Task, exc: BaseException, now: datetime.datetime) -> tuple[datetime.datetime | None, float]:
    """When Huey will run the next attempt of `task` after it failed with `exc`, and the retry delay after
    that: Huey's own arithmetic (Huey._execute and Huey._requeue_task), mirrored here because the ledger must
    say "retrying until ETA" before Huey puts the message back. Pinned by tests/test_huey_contract.py."""
    delay = task.retry_delay or 0
    if task.retry_backoff and delay and not isinstance(exc, (RetryTask, RateLimitExceeded)):
        delay *= task.retry_backoff
    if isinstance(exc, RetryTask) and (exc.eta or exc.delay is not None):
        return normalize_time(exc.eta, exc.delay, True), delay
    if isinstance(exc, RateLimitExceeded):
        return normalize_time(None, task.retry_delay or exc.delay, True), delay
    if task.retry_delay:
        return now + datetime.timedelta(seconds=task.retry_delay), delay
    return None, delay


# Every Huey private name Nightshift uses, where, and why; tests/test_huey_contract.py checks each one.
HUEY_PRIVATE = {
    "Huey._registry / Registry._registry": "queue: the message registry, and the catalog's list of tasks",
    "Huey._timeout_context / Huey._timeout_handler": "queue: time limits in thread workers (app.timelimits)",
    "Huey._immediate": "queue: immediate mode enqueues without the ledger",
    "Huey._get_timestamp": "queue.push_serialized: 'due now' as Huey judges it",
    "Huey._deserialize_all": "queue: unreadable scheduled messages become dead letters",
    "Huey._requeue_task (mirrored)": "queue.next_retry: the retry ETA, recorded before Huey requeues",
    "PriorityRedisStorage queue layout": "queue.push_serialized: one ZADD for many tasks",
    "TaskLock._huey/_key/_ttl/_name": "queue.HolderLock: the lock's value names its holder",
    "Consumer._signal_actions": "consumer: SIGINT drains like SIGTERM",
    "Consumer._signum/_restart/_graceful": "consumer: a restart to release memory, and the goodbye beat",
    "Consumer._stop_flag_timeout": "consumer: the loop waits on leaving notices instead of the stop flag",
    "Consumer._create_process": "consumer: the workers of a consumer's other queues run under its loop",
    "Scheduler._next_periodic": "consumer.TickScheduler: ticks aligned to the wall clock",
    "Huey._tasks_in_flight (a set of tasks)": "queue.AttemptTask: both attempts of one job in flight are handed "
                                              "back at shutdown",
}


def check_queue_name(name: object) -> str:
    """A queue name as given, or ValueError: printable, no spaces, commas or '=' (a consumer records the queues it
    serves as "mail,default" and `--queues` reads "mail=2"), at most the ledger's 200 characters."""
    if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable() \
            or any(c in name for c in " ,=") :
        raise ValueError(f"a queue name is 1 to 200 printable characters without spaces, ',' or '=', got {name!r}")
    return name


def build_huey(settings: config.Settings, name: str | None = None) -> NightshiftHuey:
    """The Huey instance of queue `name` (default: the service's queue, NIGHTSHIFT_QUEUE). All of a service's
    queues share one Redis, codec and signing key; each has its own Redis keys. The instance carries `settings`
    (`huey.settings`): what runs with it (hooks, recovery, maintenance, tasks) reads them there."""
    huey = NightshiftHuey(
        name or settings.queue,
        results=False,  # results are stored by the lifecycle, only for tasks that ask (store_result=True)
        utc=True,
        serializer=JSONCodec(settings.signing_key),
        storage_class=PriorityRedisExpireStorage,
        url=settings.redis_url,
        expire_time=settings.result_ttl,
        read_timeout=1,
    )
    huey.service = settings.queue
    huey.settings = settings
    return huey


_huey: NightshiftHuey | None = None
_others: dict[str, NightshiftHuey] = {}


def configure(settings: config.Settings) -> NightshiftHuey:
    """Give the process's Huey instance the settings an entry point read (the CLI, the worker; tests and
    embedding apps too): built with them, or, when task modules already registered on it, pointed at them."""
    global _huey
    if _huey is None:
        _huey = build_huey(settings)
        return _huey
    if _huey.settings is settings:
        return _huey
    fresh = build_huey(settings)
    _huey.name, _huey.storage, _huey.serializer = fresh.name, fresh.storage, fresh.serializer
    _huey.service, _huey.settings = fresh.service, settings
    _others.clear()
    return _huey


def get_huey(name: str | None = None) -> NightshiftHuey:
    """The process's Huey instance of queue `name` (default: the service's queue, on which task decorators
    register). Every queue's instance shares that registry and the settings, so any queue can carry any task.

    The Python API's boundary: task modules register on this instance when they are imported, which in a
    program that only submits (`app.submit`, a direct task call) is before, or without, any entry point. Such a
    program gets the process's settings from the environment here (config.get), once; every entry point
    configures the instance first (`configure`)."""
    global _huey
    if _huey is None:
        _huey = build_huey(config.get())
    if name is None or name == _huey.name:
        return _huey
    huey = _others.get(name)
    if huey is None:
        huey = build_huey(_huey.settings, name=check_queue_name(name))
        huey._registry = _huey._registry  # Huey private: one registry for all queues
        _others[name] = huey
    return huey

"""The Huey internals Nightshift relies on (app.queue.HUEY_PRIVATE), pinned: each test fails on a Huey version
that renames, removes or changes one, so an upgrade is caught here and not in production.

The installed Huey is the one pyproject.toml pins; the tests use it on the test's own Redis namespace."""
from __future__ import annotations

import datetime
import inspect
import signal
import struct

import pytest
from huey.api import Huey, Task, TaskLock, TaskWrapper
from huey.consumer import Consumer, Scheduler
from huey.exceptions import CancelExecution, RetryTask
from huey.registry import Registry
from huey.storage import RedisPriorityQueue


def test_every_private_name_is_listed_with_its_reason():
    from app.queue import HUEY_PRIVATE
    assert len(HUEY_PRIVATE) == 14 and all(HUEY_PRIVATE.values())


def test_the_registry_keeps_task_classes_by_name_in_a_dict(env):
    from app.queue import MessageRegistry, get_huey
    huey = get_huey()
    assert isinstance(huey._registry, MessageRegistry) and isinstance(Registry()._registry, dict)
    assert huey.registered()["count_primes"].__name__ == "count_primes"


def test_time_limits_go_through_timeout_context_and_the_timeout_handler():
    source = inspect.getsource(Huey._execute)
    assert "self._timeout_context(task)" in source
    assert "_timeout_handler" in inspect.getsource(Huey)
    huey = Huey("contract", immediate=True)
    assert hasattr(huey, "_timeout_handler") and hasattr(huey, "_immediate") and huey._immediate is True


def test_get_timestamp_is_naive_utc_for_a_utc_huey(env):
    from app.queue import get_huey
    stamp = get_huey()._get_timestamp()
    assert stamp.tzinfo is None
    utc_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((stamp - utc_now).total_seconds()) < 5


def test_read_schedule_reads_messages_through_deserialize_all():
    assert "_deserialize_all" in inspect.getsource(Huey.read_schedule)
    assert list(inspect.signature(Huey._deserialize_all).parameters) == ["self", "messages"]


def test_pre_execute_cancel_execution_means_do_not_run(env):
    """The claim is a pre-execute hook: CancelExecution there must skip the task, other errors are swallowed."""
    from app.queue import get_huey
    source = inspect.getsource(Huey._execute)
    assert "except CancelExecution:" in source.split("start = time.monotonic()")[0]
    assert inspect.signature(Huey.pre_execute).parameters.keys() >= {"name"}


def test_task_takes_the_keywords_messages_are_built_with():
    parameters = inspect.signature(Task.__init__).parameters
    for name in ("args", "kwargs", "id", "eta", "retries", "retry_delay", "priority", "expires", "on_complete",
                 "on_error", "expires_resolved", "timeout", "chord_config", "retry_backoff"):
        assert name in parameters, name


@pytest.mark.parametrize("exc, delay, backoff", [
    (ValueError("boom"), 0, None), (ValueError("boom"), 3, None), (ValueError("boom"), 2, 2.0),
    (RetryTask(delay=7), 2, 2.0), (RetryTask(), 4, None),
])
def test_next_retry_mirrors_what_huey_requeue_task_does(env, exc, delay, backoff):
    """queue.next_retry must give the ETA and next delay Huey's own _requeue_task will use."""
    from app.queue import get_huey, next_retry
    huey = get_huey()
    task = huey.registered()["count_primes"]((), {"limit": 10}, retries=2, retry_delay=delay, retry_backoff=backoff)
    now = huey._get_timestamp()
    eta, next_delay = next_retry(task, exc, now)
    retry_eta = None
    if isinstance(exc, RetryTask) and (exc.eta or exc.delay is not None):
        retry_eta = eta  # Huey._execute computes it from the exception with normalize_time, as next_retry does
    huey._requeue_task(task, now, retry_eta)
    assert task.retries == 1
    if eta is None:
        assert task.eta is None and huey.pending_count() == 1
    else:
        assert abs((task.eta - eta).total_seconds()) < 1
        assert huey.scheduled_count() == 1
    if not isinstance(exc, RetryTask):
        assert (task.retry_delay or 0) == next_delay


def test_push_writes_the_priority_queue_layout_huey_reads(env):
    """queue.push writes many tasks with one ZADD in RedisPriorityQueue's layout; Huey dequeues them in
    priority order, then submission order, and Huey's own enqueue writes the same layout."""
    from app.queue import get_huey
    huey = get_huey()
    assert isinstance(huey.storage, RedisPriorityQueue)
    cls = huey.registered()["count_primes"]
    tasks = [cls((), {"limit": n}, priority=p) for n, p in ((1, 0), (2, 5), (3, 0), (4, 5))]
    for t in tasks:
        t.attempt = 1
    huey.push(tasks)
    order = [huey.dequeue().kwargs["limit"] for _ in tasks]
    assert order == [2, 4, 1, 3]
    huey.storage.enqueue(b"x", priority=3)
    member, score = huey.storage.conn.zrange(huey.storage.queue_key, 0, -1, withscores=True)[0]
    assert len(member) == struct.calcsize(">Q") + 1 and score == -3
    huey.storage.conn.delete(huey.storage.queue_key)


def test_task_lock_fields_and_key(env):
    from app.queue import HolderLock, get_huey
    huey = get_huey()
    lock = TaskLock(huey, "contract", 5)
    assert (lock._huey, lock._name, lock._ttl) == (huey, "contract", 5)
    assert lock._key == f"{huey.name}.lock.contract"
    holder = huey.lock_task("contract-holder", 5)
    assert isinstance(holder, HolderLock)
    with holder:
        assert huey.storage.conn.exists(huey.storage.result_prefix + f"{huey.name}.lock.contract-holder".encode())


def test_consumer_signal_actions_and_restart_fields(env):
    from app.queue import get_huey
    consumer = Consumer(get_huey(), workers=1)
    assert set(consumer._signal_actions) >= {signal.SIGINT, signal.SIGTERM}
    assert all(isinstance(v, tuple) and len(v) == 2 for v in consumer._signal_actions.values())
    assert consumer._signum is None and consumer._restart is False and isinstance(consumer._graceful, bool)
    assert "self._restart" in inspect.getsource(Consumer.run)


def test_the_consumer_loop_waits_stop_flag_timeout_on_the_stop_flag(env):
    """NightshiftConsumer sets it to 0 and waits on its leaving notices instead (a notice cuts that wait short)."""
    from app.queue import get_huey
    assert Consumer(get_huey(), workers=1)._stop_flag_timeout == 0.1
    assert "self.stop_flag.wait(timeout=self._stop_flag_timeout)" in inspect.getsource(Consumer.loop)


def test_scheduler_next_periodic_decides_when_periodic_tasks_are_enqueued(env):
    from app.queue import get_huey
    scheduler = Scheduler(get_huey(), None, 1, True)
    assert isinstance(scheduler._next_periodic, float)
    loop = inspect.getsource(Scheduler.loop)
    assert "self._next_periodic <= time.monotonic()" in loop and "self.enqueue_periodic_tasks(now)" in loop


def test_cancel_execution_from_pre_execute_skips_the_task(env):
    """Behaviour, not just source: a task whose pre-execute hook raises CancelExecution does not run."""
    from app.queue import get_huey
    huey = get_huey()
    ran = []
    cls = huey.registered()["count_primes"]
    task = cls((), {"limit": 10})
    task.execute = lambda: ran.append(1)
    huey.pre_execute("contract_skip")(lambda t: (_ for _ in ()).throw(CancelExecution(retry=False)))
    try:
        assert huey.execute(task) is None and ran == []
    finally:
        huey.unregister_pre_execute("contract_skip")


def test_create_process_wraps_a_process_loop_for_the_environment():
    """app.consumer runs the workers and schedule movers of a consumer's other queues through
    Consumer._create_process(process, name), as Consumer.__init__ does for its own workers."""
    assert list(inspect.signature(Consumer._create_process).parameters) == ["self", "process", "name"]
    assert "self._create_process(worker, " in inspect.getsource(Consumer.__init__)
    assert "process.loop()" in inspect.getsource(Consumer._create_process)


def test_tasks_in_flight_is_a_set_of_tasks_that_shutdown_hands_to_the_interrupted_signal(env):
    """Huey adds a task to _tasks_in_flight before it runs and discards it after; at shutdown
    notify_interrupted_tasks pops each one left to SIGNAL_INTERRUPTED. Membership is task equality, so
    queue.AttemptTask tells two attempts of one job apart (Huey's own equality would not), and every task class
    Nightshift builds, periodic ones included, is an AttemptTask through TaskWrapper's task_base."""
    from huey import signals
    from huey.api import PeriodicTask

    from app.queue import AttemptTask, build_huey, get_huey
    source = inspect.getsource(Huey._execute)
    assert "self._tasks_in_flight.add(task)" in source and "self._tasks_in_flight.discard(task)" in source
    notify = inspect.getsource(Huey.notify_interrupted_tasks)
    assert "self._tasks_in_flight.pop()" in notify and "S.SIGNAL_INTERRUPTED" in notify
    assert "task_base" in inspect.signature(TaskWrapper.__init__).parameters
    assert "task_base=PeriodicTask" in inspect.getsource(Huey.periodic_task)
    assert "(self.task_base,)" in inspect.getsource(TaskWrapper.create_task)
    huey = build_huey(get_huey().settings, name="contract-in-flight")
    assert isinstance(huey._tasks_in_flight, set)
    cls = huey.task(name="contract_job")(lambda: None).task_class
    periodic = huey.periodic_task(lambda stamp: False, name="contract_periodic")(lambda: None).task_class
    assert issubclass(cls, AttemptTask) and issubclass(periodic, AttemptTask) and issubclass(periodic, PeriodicTask)
    first, second = cls(id="contract-job"), cls(id="contract-job")
    first.attempt, second.attempt = 1, 2
    assert Task.__eq__(first, second), "Huey's own equality holds two attempts for one task"
    interrupted = []
    huey.signal(signals.SIGNAL_INTERRUPTED)(lambda signal, task, *a: interrupted.append(task.attempt))
    huey._tasks_in_flight.update((first, second))
    huey._tasks_in_flight.discard(first)
    huey.notify_interrupted_tasks()
    assert interrupted == [2] and not huey._tasks_in_flight


@pytest.mark.parametrize("signing_key", ["", "contract-key"])
def test_message_maker_writes_what_serialize_task_writes(env, signing_key):
    """Bulk submits splice each job's id and arguments into one prototype's message (queue.message_maker)
    instead of building a Huey message per job: the bytes must be serialize_task's, signed or not, and read
    back by Huey as the same task."""
    import dataclasses
    from app.codec import dumps_text
    from app.queue import build_huey, get_huey
    huey = build_huey(dataclasses.replace(get_huey().settings, signing_key=signing_key))
    huey._registry = get_huey()._registry  # the same tasks (as get_huey does for other queues)
    cls = huey.registered()["count_primes"]
    for eta, priority, retries in ((None, None, None), (datetime.datetime(2031, 2, 3, 4, 5, 6, 789), -7, 4)):
        prototype = cls((), {}, eta=eta, priority=priority, retries=retries)
        prototype.attempt = 1
        message = huey.message_maker(prototype)
        for job_id, kwargs in (("0b6f7e0a-3d4c-4a1b-9e2f-5a6b7c8d9e0f", {"limit": 10}),
                               ("x", {"limit": 1.5, "note": "caf\u00e9 \"\\\u0000\u2028", "nested": [{"a": None}]}),
                               ("7d1e2f3a-0000-4000-8000-000000000000", {})):
            task = cls((), dict(kwargs), id=job_id, eta=eta, priority=priority, retries=retries)
            task.attempt = 1
            data = message(job_id, dumps_text(kwargs))
            assert data == huey.serialize_task(task)
            back = huey.deserialize_task(data)
            assert (back.id, back.kwargs, back.eta, back.priority, back.retries, back.attempt) == \
                (job_id, kwargs, eta, task.priority, task.retries, 1)

"""Consumer start-up: load the task modules, connect the hooks, run Huey's consumer (the `worker` command has
checked that Redis and the ledger answer). The settings are the command's: the process's Huey instance gets them
here, and everything the consumer runs reads them from it (`huey.settings`)."""
from __future__ import annotations

import logging
import os

import config
from app import catalog, db, keycheck, lifecycle, logs, monitoring
from app.consumer import NightshiftConsumer
from app.queue import check_queue_name, configure, get_huey

log = logging.getLogger("nightshift.worker")


def served_queues(settings: config.Settings, queues: str | None = None,
                  workers: int | None = None) -> list[tuple[str, int]]:
    """(queue, worker threads) pairs this consumer serves: `--queues`, else NIGHTSHIFT_QUEUES, else
    NIGHTSHIFT_QUEUE with `--workers` or NIGHTSHIFT_WORKERS. A name given without a count gets the latter."""
    default = workers or settings.workers
    pairs = config.parse_queues(queues if queues is not None else settings.queues)
    served = [(name, count or default) for name, count in pairs] or [(settings.queue, default)]
    for name, _ in served:
        check_queue_name(name)
    if len(served) > 1 and settings.worker_type != "thread":
        raise config.ConfigError(
            f"one consumer serves several queues ({', '.join(n for n, _ in served)}) with thread workers only; "
            f"with NIGHTSHIFT_WORKER_TYPE={settings.worker_type} start one consumer per queue "
            f"(NIGHTSHIFT_QUEUES=name or --queues name)")
    return served


def run(settings: config.Settings, workers: int | None = None, queues: str | None = None) -> None:
    """Serve `queues` (see served_queues) with `settings` until SIGTERM or SIGINT."""
    served = served_queues(settings, queues, workers)
    logs.setup(settings.log_level, settings.log_format)
    if settings.files_root == config.default_files_root(os.environ):
        os.makedirs(settings.files_root[0], exist_ok=True)  # only the default, beside the default ledger
    configure(settings)
    db.use_small_page_cache()  # a connection per worker thread, keeper and maintenance
    catalog.load_task_modules(settings.task_modules)
    huey = get_huey()  # the service's queue: its scheduler enqueues periodic tasks, wherever they are routed
    counts = dict(served)
    others = [(get_huey(name), count) for name, count in served if name != huey.name]
    for served_huey in [huey] * (huey.name in counts) + [h for h, _ in others]:
        lifecycle.install(served_huey)
        # producers compare theirs with it
        keycheck.publish(served_huey.storage.conn, served_huey.name, settings.signing_key)
    keycheck.publish(huey.storage.conn, settings.queue, settings.signing_key)
    monitoring.setup_sentry(settings)
    consumer = NightshiftConsumer(
        huey,
        others=others,
        workers=counts.get(huey.name, 0),
        worker_type=settings.worker_type,
        periodic=True,
        scheduler_interval=1,
        shutdown_timeout=settings.shutdown_timeout,
        max_tasks=settings.max_tasks_per_worker or None,
        max_memory_mb=settings.max_memory_mb,
        check_worker_health=True,
        initial_delay=0.05,
        max_delay=2.0,
    )
    consumer.run()

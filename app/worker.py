"""Consumer start-up: check that Redis and the ledger answer, load the task modules, run Huey's consumer."""
from __future__ import annotations

import logging
import os

import config
from app import catalog, keycheck, lifecycle, logs, monitoring
from app.consumer import NightshiftConsumer
from app.queue import get_huey

log = logging.getLogger("nightshift.worker")


def run(workers: int | None = None) -> None:
    settings = config.get()
    logs.setup(settings.log_level, settings.log_format)
    if settings.files_root == config.default_files_root(os.environ):
        os.makedirs(settings.files_root[0], exist_ok=True)  # only the default, beside the default ledger
    catalog.load_task_modules()
    huey = get_huey()
    lifecycle.install(huey)
    keycheck.publish(huey.storage.conn, settings.queue, settings.signing_key)  # producers compare theirs with it
    monitoring.setup_sentry(settings)
    consumer = NightshiftConsumer(
        huey,
        workers=workers or settings.workers,
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

"""Consumer start-up: check that Redis and the ledger answer, load the task modules, run Huey's consumer."""
from __future__ import annotations

import logging
import os

import peewee
import redis

import config
from app import catalog, keycheck, lifecycle, logs, monitoring
from app.consumer import NightshiftConsumer
from app.db import init as init_db
from app.queue import get_huey
from helpers.masking import mask_text, mask_url, secret_values

log = logging.getLogger("nightshift.worker")


def _detail(exc: BaseException, settings: config.Settings) -> str:
    """A driver's error message, which may quote the URL or its password, made safe to print."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    return mask_text(text, secret_values(settings))


def check_redis(settings: config.Settings) -> str | None:
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return (f"cannot reach Redis at {mask_url(settings.redis_url)} ({_detail(exc, settings)}); start Redis or "
                f"set NIGHTSHIFT_REDIS_URL to a Redis that answers")
    return None


def check_database(settings: config.Settings) -> str | None:
    try:
        init_db(settings.database_url)
    except (peewee.PeeweeException, OSError) as exc:
        return (f"ledger unreachable: cannot open the database at {mask_url(settings.database_url)} "
                f"({_detail(exc, settings)}); "
                f"start the database or set NIGHTSHIFT_DATABASE_URL to one that answers")
    return None


def preflight(settings: config.Settings) -> list[str]:
    return [problem for problem in (check_redis(settings), check_database(settings)) if problem]


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

"""Consumer start-up: check that Redis and the ledger answer, load the task modules, run Huey's consumer."""
from __future__ import annotations

import logging
import re

import peewee
import redis

import config
from app import catalog, lifecycle, logs
from app.db import init as init_db
from app.queue import get_huey

log = logging.getLogger("nightshift.worker")


def redact(url: str) -> str:
    """A URL with its password replaced, fit for logs and error lines."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def check_redis(settings: config.Settings) -> str | None:
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return (f"cannot reach Redis at {redact(settings.redis_url)} ({exc}); start Redis or set "
                f"NIGHTSHIFT_REDIS_URL to a Redis that answers")
    return None


def check_database(settings: config.Settings) -> str | None:
    try:
        init_db(settings.database_url)
    except (peewee.PeeweeException, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"cannot open the ledger database at {redact(settings.database_url)} ({detail}); start the "
                f"database or set NIGHTSHIFT_DATABASE_URL to one that answers")
    return None


def preflight(settings: config.Settings) -> list[str]:
    return [problem for problem in (check_redis(settings), check_database(settings)) if problem]


def run(workers: int | None = None) -> None:
    settings = config.get()
    logs.setup(settings.log_level, settings.log_format)
    catalog.load_task_modules()
    huey = get_huey()
    lifecycle.install(huey)
    from app import monitoring
    monitoring.setup_sentry(settings)
    consumer = huey.create_consumer(
        workers=workers or settings.workers,
        worker_type=settings.worker_type,
        periodic=True,
        scheduler_interval=1,
        shutdown_timeout=settings.shutdown_timeout,
        max_tasks=settings.max_tasks_per_worker or None,
        check_worker_health=True,
        initial_delay=0.05,
        max_delay=2.0,
    )
    consumer.run()

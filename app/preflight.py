"""Does Redis answer, does the ledger answer: one line each that says what is wrong and what to do.

Used by the worker before it starts, by `nightshift health` and by the CLI; the ledger check opens the ledger
(once per process, app.schema)."""
from __future__ import annotations

import peewee
import redis

import config
from app.schema import open_ledger
from helpers.masking import mask_text, mask_url, secret_values


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
        open_ledger(settings.database_url)
    except (peewee.PeeweeException, OSError) as exc:
        return (f"ledger unreachable: cannot open the database at {mask_url(settings.database_url)} "
                f"({_detail(exc, settings)}); "
                f"start the database or set NIGHTSHIFT_DATABASE_URL to one that answers")
    return None


def problems(settings: config.Settings) -> list[str]:
    return [problem for problem in (check_redis(settings), check_database(settings)) if problem]

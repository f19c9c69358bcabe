"""What every command shares: turning known failures into one clear line and an exit code, and output helpers."""
from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import click
import peewee
import redis

import config
from app.catalog import BadArguments, TaskModuleError, UnknownTaskName
from app.codec import NotJSON

EXIT_FAILED = 1      # the job failed / an operation could not be done
EXIT_USAGE = 2       # bad input: nothing was accepted
EXIT_TIMEOUT = 124   # --wait gave up (like timeout(1))


class cli(click.Group):
    """A click group whose commands report expected errors in one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            from app import logs
            settings = config.get()
            # Log lines (e.g. "submitted") go to stderr in NIGHTSHIFT_LOG_FORMAT at NIGHTSHIFT_LOG_LEVEL; stdout
            # stays the command's output.
            logs.setup(settings.log_level, settings.log_format)
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except config.ConfigError as exc:
            fail(f"invalid configuration: {exc}", EXIT_USAGE)
        except TaskModuleError as exc:
            fail(str(exc), EXIT_USAGE)
        except (UnknownTaskName, BadArguments, NotJSON) as exc:
            fail(f"{str(exc).rstrip('.')}{'' if str(exc).endswith('?') else '.'} Nothing was queued.", EXIT_USAGE)
        except peewee.PeeweeException as exc:
            from app.worker import redact
            fail(f"the ledger database at {redact(config.get().database_url)} failed: "
                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. "
                 f"Check NIGHTSHIFT_DATABASE_URL and that the database is up.", EXIT_FAILED)
        except redis.RedisError as exc:
            from app.worker import redact
            fail(f"Redis at {redact(config.get().redis_url)} failed: {exc}. Check NIGHTSHIFT_REDIS_URL and that "
                 f"Redis is up.", EXIT_FAILED)


def fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"nightshift: {message}", err=True)
    sys.exit(code)


def iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned table that stays readable at 80 columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")

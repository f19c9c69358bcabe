"""The `nightshift` command group, which every command module adds its commands to.

The group is the CLI's entry point: it reads the settings once (config.get), gives them to the process's Huey
instance (app.queue.configure) and hands them to every command as the click context's object
(`@click.pass_obj`), and it turns known failures into one clear line and an exit code."""
from __future__ import annotations

import importlib
from typing import Any

import click
import peewee
import redis

import config
from app import logs, queue
from app.catalog import BadArguments, TaskModuleError, UnknownTaskName
from app.cli.common import EXIT_FAILED, EXIT_USAGE, fail
from app.codec import NotJSON
from app.db import LedgerMissing
from app.keycheck import SigningKeyMismatch
from app.producer import BadOption
from helpers.masking import mask_text, mask_url, secret_values


# The module (app.cli.NAME) that defines each command. It is imported when the command runs, or when the help lists
# the commands: `nightshift worker` loads no submit, `nightshift submit` no console or status code.
COMMANDS = {
    "submit": "jobs", "show": "jobs", "list": "jobs", "tasks": "jobs",
    "schedule": "maintenance", "cleanup": "maintenance", "backlog": "maintenance",
    "status": "monitor", "health": "monitor", "metrics": "monitor",
    "dead": "ops", "retry": "ops", "discard": "ops", "cancel": "ops",
    "pause": "queues", "resume": "queues",
    "worker": "service", "init": "service", "recover": "service", "config": "service",
    "web": "web",
}


class cli(click.Group):
    """A click group whose commands get the settings (ctx.obj) and report expected errors in one line instead of
    a traceback; each command's module is imported when the command is looked up (COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"app.cli.{COMMANDS[cmd_name]}")  # its commands add themselves to `main`
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        settings: config.Settings | None = None
        try:
            settings = ctx.obj = config.get()
            queue.configure(settings)
            # A command prints what was asked for (stdout) and warnings and errors (stderr), not the job
            # lifecycle's INFO lines: those are the worker's (which sets its own level), or DEBUG's.
            logs.setup(settings.log_level if settings.log_level == "debug" else
                       max(settings.log_level, "warning", key=logs.LEVELS.index), settings.log_format)
            return super().invoke(ctx)
        except click.UsageError as exc:
            # A submit checks all its input before it writes anything: say so, as its other refusals do.
            nothing = " Nothing was queued." if exc.ctx is not None and exc.ctx.command.name == "submit" else ""
            message = " ".join(exc.format_message().split())
            fail(message + ("" if message.endswith((".", "?")) else ".") + nothing + _usage_hint(exc), EXIT_USAGE)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except config.ConfigError as exc:
            fail(f"invalid configuration: {exc}", EXIT_USAGE)
        except TaskModuleError as exc:
            fail(str(exc), EXIT_USAGE)
        except BadOption as exc:
            fail(f"{exc}. Nothing was queued.", EXIT_USAGE)
        except (UnknownTaskName, BadArguments, NotJSON) as exc:
            fail(f"{str(exc).rstrip('.')}{'' if str(exc).endswith('?') else '.'} Nothing was queued.", EXIT_USAGE)
        except LedgerMissing as exc:
            fail(f"{exc}. Nothing was queued.", EXIT_FAILED)
        except SigningKeyMismatch as exc:
            fail(f"{exc}. Nothing was queued.", EXIT_USAGE)
        except peewee.PeeweeException as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fail(f"the ledger database at {mask_url(settings.database_url)} failed: "
                 f"{mask_text(detail, secret_values(settings))}. "
                 f"Check NIGHTSHIFT_DATABASE_URL and that the database is up.", EXIT_FAILED)
        except redis.RedisError as exc:
            fail(f"Redis at {mask_url(settings.redis_url)} failed: {mask_text(str(exc), secret_values(settings))}. "
                 f"Check NIGHTSHIFT_REDIS_URL and that Redis is up.", EXIT_FAILED)


def _usage_hint(exc: click.UsageError) -> str:
    command = exc.ctx.command_path if exc.ctx is not None else "nightshift"
    return f" (see `{command} --help`)"


@click.group(cls=cli)
@click.version_option(package_name="nightshift")
def main() -> None:
    """Nightshift: submit background jobs, run the worker, and operate the queue."""

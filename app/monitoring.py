"""Error reporting to Sentry, when SENTRY_DSN is set (imported lazily: sentry-sdk costs memory).

Task exceptions reach Sentry through sentry-sdk's own Huey integration, which patches `Huey._execute` (and
`Huey.enqueue`); NightshiftHuey's overrides call them through `super()`, so both stay patched. Around each run,
`job_scope` adds Nightshift's tags (job_id, task, attempt, queue) and, unless NIGHTSHIFT_SENTRY_EVERY_ATTEMPT is
set, drops the report of an attempt that Huey will retry, so only the final failure is reported.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import config

# Huey's control-flow exceptions, which the integration does not report: a job that dies of one (a task that
# gave up with CancelExecution, e.g. a permanent error) is reported through its "dead" log line instead.
CONTROL_FLOW = ("CancelExecution", "RetryTask", "TaskLockedException")
_enabled = False
_every_attempt = False


def enabled() -> bool:
    return _enabled


def setup_sentry(settings: config.Settings) -> bool:
    """Start the Sentry SDK with the Huey integration; False (and nothing imported) without SENTRY_DSN."""
    global _enabled, _every_attempt
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.huey import HueyIntegration
    from sentry_sdk.integrations.logging import ignore_logger

    # Huey logs every task exception at ERROR: the integration reports the exception itself, once.
    ignore_logger("huey")
    sentry_sdk.init(dsn=settings.sentry_dsn, environment=settings.sentry_environment or None,
                    integrations=[HueyIntegration()], traces_sample_rate=0, before_send=_before_send)
    _every_attempt = settings.sentry_every_attempt
    _enabled = True
    return True


def _before_send(event: dict, hint: dict) -> dict | None:
    """Drop the log line of a job that failed with an exception the integration reported already. Other error
    lines (dead letters, lease lost too often, permanent failures, keeper or recovery errors) are kept."""
    record = hint.get("log_record") if hint else None
    job = getattr(record, "job", None)
    if isinstance(job, dict):
        error = job.get("error") or ""
        if error and job.get("event") in ("dead", "retrying") and not error.startswith(CONTROL_FLOW):
            return None
        tags = event.setdefault("tags", {})
        for key in ("job_id", "task", "attempt"):
            if job.get(key) is not None:
                tags.setdefault(key, str(job[key]))
    return event


def is_final(task: Any, exc: BaseException | None) -> bool:
    """Whether this failed attempt is the last one (Huey retries while task.retries > 0)."""
    from huey.exceptions import RateLimitExceeded, RetryTask
    if isinstance(exc, (RetryTask,)) or (isinstance(exc, RateLimitExceeded) and exc.retry):
        return False
    return not task.retries


def job_scope(huey: Any, task: Any) -> ContextManager:
    """A Sentry scope for one run of a job: tags, and the every-attempt filter. A no-op without Sentry."""
    if not _enabled:
        return contextlib.nullcontext()
    return _job_scope(huey, task)


@contextlib.contextmanager
def _job_scope(huey: Any, task: Any):
    import sentry_sdk

    def only_final(event: dict, hint: dict) -> dict | None:
        exc_info = (hint or {}).get("exc_info")
        if exc_info and not _every_attempt and not is_final(task, exc_info[1]):
            return None
        return event

    with sentry_sdk.new_scope() as scope:
        scope.set_tag("job_id", task.id)
        scope.set_tag("task", type(task).__name__)
        scope.set_tag("attempt", str(getattr(task, "attempt", None)))
        scope.set_tag("queue", huey.name)
        scope.add_event_processor(only_final)
        yield scope

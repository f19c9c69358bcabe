"""Error reporting to Sentry, when SENTRY_DSN is set (imported lazily: sentry-sdk costs memory).

Task exceptions reach Sentry through sentry-sdk's own Huey integration, which patches `Huey._execute` (and
`Huey.enqueue`); NightshiftHuey's enqueue calls it through `super()`, so both stay patched. In each run,
`tag_job` adds Nightshift's tags (job_id, task, attempt, queue) and, unless NIGHTSHIFT_SENTRY_EVERY_ATTEMPT is
set, drops the report of an attempt that Huey will retry, so only the final failure is reported.

No secret leaves in an event (docs/security.md): frame variables are kept (they make tracebacks useful), but
sentry-sdk's EventScrubber removes variables and keys named like secrets or like the settings object, and
`scrub_event` masks every string left -- URLs with passwords or tokens, `name=value` secrets, and the literal
values of every secret setting and of the running job's secret arguments -- with the rules the logs use.
"""
from __future__ import annotations

from typing import Any, Iterable

import config
from helpers.masking import holds_headers, is_secret_key, is_secret_name, mask_text, secret_values, url_secrets

# Huey's control-flow exceptions, which the integration does not report: a job that dies of one (a task that
# gave up with CancelExecution, e.g. a permanent error) is reported through its "dead" log line instead.
CONTROL_FLOW = ("CancelExecution", "RetryTask", "TaskLockedException")
_enabled = False
_every_attempt = False
_settings_secrets: tuple[str, ...] = ()
FILTERED = "[Filtered]"
# Variables and keys sentry-sdk's scrubber drops whole, besides its own list: Nightshift's settings object and
# the names its code gives to headers, URLs with credentials and keys.
EXTRA_DENYLIST = ["settings", "_current", "headers", "all_headers", "signing_key", "webhook_secret", "secret",
                  "redis_url", "database_url", "smtp_url", "sentry_dsn", "dsn", "key", "x-api-key", "x_api_key",
                  "api-key", "password", "pwd", "url_password", "signature", "mac"]


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

    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    global _settings_secrets
    _settings_secrets = tuple(secret_values(settings))
    # Huey logs every task exception at ERROR: the integration reports the exception itself, once.
    ignore_logger("huey")
    # send_default_pii stays at its default (off; the option itself is deprecated in this sentry-sdk), so the Huey
    # integration sends no job arguments; the scrubber then runs on frames, request, extra and breadcrumbs.
    sentry_sdk.init(dsn=settings.sentry_dsn, environment=settings.sentry_environment or None,
                    integrations=[HueyIntegration()], traces_sample_rate=0, before_send=_before_send,
                    before_breadcrumb=_before_breadcrumb, include_local_variables=True,
                    event_scrubber=EventScrubber(denylist=DEFAULT_DENYLIST + EXTRA_DENYLIST, recursive=True))
    _every_attempt = settings.sentry_every_attempt
    _enabled = True
    return True


def scrub_event(value: Any, secrets: Iterable[str], headers: bool = False) -> Any:
    """`value` (an event or part of one) with secret-named keys filtered (header names by the header rules, as
    helpers.masking.mask does) and every string masked, at any depth."""
    secrets = tuple(secrets)
    if isinstance(value, dict):
        return {k: FILTERED if is_secret_key(k, headers) and isinstance(value[k], str) and value[k]
                else scrub_event(v, secrets, holds_headers(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_event(v, secrets) for v in value]
    if isinstance(value, str):
        return mask_text(value, secrets)
    return value


def argument_secrets(value: Any, secret: bool = False) -> list[str]:
    """The secret values in a job's arguments: values under secret-looking names, and credentials in URLs."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in argument_secrets(v, secret or is_secret_name(k, short=True))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in argument_secrets(v, secret)]
    if isinstance(value, str):
        return [value] if secret and value else (url_secrets(value) if "://" in value else [])
    return []


def _before_breadcrumb(crumb: dict, hint: dict) -> dict:
    return scrub_event(crumb, _settings_secrets)


def _before_send(event: dict, hint: dict) -> dict | None:
    """Drop the log line of a job that failed with an exception the integration reported already. Other error
    lines (dead letters, lease lost too often, permanent failures, keeper or recovery errors) are kept. Then
    mask what is left (see the module's docstring)."""
    event = _keep(event, hint)
    return None if event is None else scrub_event(event, _settings_secrets)


def _keep(event: dict, hint: dict) -> dict | None:
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


def tag_job(huey: Any, task: Any) -> None:
    """Tag Sentry's scope for this run of a job (job_id, task, attempt, queue) and add the every-attempt filter.

    Called from the claim (a pre-execute hook), which runs inside the isolation scope sentry-sdk's Huey
    integration opens around each run, so the tags and the filter end with the run. A no-op without Sentry."""
    if not _enabled:
        return
    import sentry_sdk

    job_secrets = tuple(argument_secrets(task.kwargs) + argument_secrets(list(task.args or ())))

    def only_final(event: dict, hint: dict) -> dict | None:
        exc_info = (hint or {}).get("exc_info")
        if exc_info and not _every_attempt and not is_final(task, exc_info[1]):
            return None
        return scrub_event(event, job_secrets) if job_secrets else event

    scope = sentry_sdk.get_isolation_scope()
    scope.set_tag("job_id", task.id)
    scope.set_tag("task", type(task).__name__)
    scope.set_tag("attempt", str(getattr(task, "attempt", None)))
    scope.set_tag("queue", huey.name)
    scope.add_event_processor(only_final)

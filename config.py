"""All of Nightshift's settings, read from the environment in one place.

Every setting is a field of `Settings` with the environment variable that sets it, a default and a parser.
`load()` validates everything at once and reports a bad value by its variable's name, so a typo fails at
start-up rather than in the middle of the night.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import zoneinfo
from typing import Any, Callable, Mapping


class ConfigError(ValueError):
    """A setting in the environment has a value Nightshift cannot use."""


def _int(minimum: int = 0) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    parse.__doc__ = f"an integer >= {minimum}"
    return parse


def _float(minimum: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not value >= minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    parse.__doc__ = f"a number >= {minimum}"
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    parse.__doc__ = "one of " + ", ".join(choices)
    return parse


def _bool(raw: str) -> bool:
    """true/false, yes/no, on/off or 1/0"""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _str(raw: str) -> str:
    return raw.strip()


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in schemes:
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value
    parse.__doc__ = "a URL: " + ", ".join(s + "://..." for s in schemes)
    return parse


def _list(raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ValueError("must name at least one module")
    return items


def parse_queues(raw: str) -> tuple[tuple[str, int], ...]:
    """queues a consumer serves, with their worker threads: mail=2,default=4 (a name alone: NIGHTSHIFT_WORKERS)"""
    served: dict[str, int] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, _, count = (part.strip() for part in item.partition("="))
        if not name or " " in name or not name.isprintable() or len(name) > 200:
            raise ValueError(f"{item!r}: a queue name is 1 to 200 printable characters without spaces")
        if name in served:
            raise ValueError(f"queue {name!r} is named twice")
        try:
            served[name] = int(count) if count else 0
        except ValueError:
            raise ValueError(f"{item!r}: the number of workers after '=' must be a whole number") from None
        if count and served[name] < 1:
            raise ValueError(f"{item!r}: a queue needs at least 1 worker")
    return tuple(served.items())


def _queues(raw: str) -> str:
    """queue=workers pairs separated by commas, e.g. mail=2,default=4"""
    return ",".join(f"{name}={count}" if count else name for name, count in parse_queues(raw))


def _cron(raw: str) -> str:
    """five crontab fields (minute hour day month weekday), or off"""
    value = " ".join(raw.split())
    if value.lower() in ("off", "none", "never"):
        return "off"
    fields = value.split(" ")
    if len(fields) != 5:
        raise ValueError("must have five fields: minute hour day month weekday")
    from huey import crontab  # strict parsing, the same the scheduler uses
    crontab(*fields, strict=True)
    return value


def _webhook_secret(raw: str) -> str:
    """whsec_ followed by base64 (Standard Webhooks), or empty for unsigned deliveries"""
    value = raw.strip()
    if not value:
        return ""
    if not value.startswith("whsec_"):
        raise ValueError("must start with whsec_ (a Standard Webhooks secret); make one with: python3 -c "
                         "\"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"")
    try:
        key = base64.b64decode(value[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ must be base64") from None
    if len(key) < 16:
        raise ValueError("the key after whsec_ must be at least 16 bytes (24 base64 characters)")
    return value


def _directories(raw: str) -> tuple[str, ...]:
    """one or more directories separated by ':' (relative ones are taken from the working directory)"""
    items = tuple(os.path.abspath(part.strip()) for part in raw.split(":") if part.strip())
    if not items:
        raise ValueError("must name at least one directory")
    if any(os.path.realpath(item) == os.path.sep for item in items):
        raise ValueError("must not be / (that would let file tasks read and write anything the worker can)")
    return items


def _timezone(raw: str) -> str:
    """an IANA time zone name such as UTC or Europe/Berlin"""
    value = raw.strip()
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not a time zone this system knows") from None
    return value


def setting(env: str, default: Any, parse: Callable[[str], Any], help: str, secret: bool = False,
            separator: str = ",", default_from: Callable[[Mapping[str, str]], Any] | None = None,
            shown: str | None = None) -> Any:
    """A field of Settings; `secret` ones (or ones that may carry a password) are never shown as they are;
    `separator` joins a list setting's items when it is shown. `default_from` computes the default from the
    environment when it depends on it; `shown` is how `nightshift config` and the docs state such a default."""
    return dataclasses.field(default=default, repr=not secret,
                             metadata={"env": env, "parse": parse, "help": help, "secret": secret,
                                       "separator": separator, "default_from": default_from, "shown": shown})


def default_data_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the default ledger lives: $XDG_DATA_HOME/nightshift, else ~/.local/share/nightshift (the XDG base
    directory rule), so the default does not depend on the working directory (a cron line runs from $HOME, a
    shell from anywhere)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "share")
    return os.path.join(base, "nightshift")


def default_database_url(environ: Mapping[str, str]) -> str:
    return "sqlite:///" + os.path.join(default_data_dir(environ), "nightshift.db")


def default_files_root(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Beside the default ledger, not in the working directory: the producer and the worker agree on it wherever
    each was started."""
    return (os.path.join(default_data_dir(environ), "files"),)


@dataclasses.dataclass(frozen=True)
class Settings:
    redis_url: str = setting("NIGHTSHIFT_REDIS_URL", "redis://localhost:6379/0",
                             _url("redis", "rediss", "unix"), "Redis that carries the queue", secret=True)
    database_url: str = setting("NIGHTSHIFT_DATABASE_URL", default_database_url(os.environ),
                                _url("sqlite", "postgresql", "postgres"),
                                "job ledger: sqlite:////abs/path.db, sqlite:///relative/path.db (to the working "
                                "directory) or postgresql://; the worker creates a missing SQLite ledger, a "
                                "producer refuses to", secret=True, default_from=default_database_url,
                                shown="sqlite:///$XDG_DATA_HOME/nightshift/nightshift.db "
                                      "($XDG_DATA_HOME defaults to ~/.local/share)")
    queue: str = setting("NIGHTSHIFT_QUEUE", "nightshift", _str,
                         "queue name (several services can share a Redis and a ledger; each recovers and lists "
                         "its own queue's jobs)")
    task_modules: tuple = setting("NIGHTSHIFT_TASK_MODULES", ("tasks",), _list,
                                  "comma-separated modules that define tasks")
    signing_key: str = setting("NIGHTSHIFT_SIGNING_KEY", "", _str,
                               "when set, messages are signed with HMAC-SHA256 and unsigned ones refused", secret=True)
    workers: int = setting("NIGHTSHIFT_WORKERS", 2, _int(1), "worker threads or processes per consumer")
    queues: str = setting("NIGHTSHIFT_QUEUES", "", _queues,
                            "queues one consumer serves, each with its own worker threads: mail=2,default=4 "
                            "(empty: NIGHTSHIFT_QUEUE with NIGHTSHIFT_WORKERS)")
    worker_type: str = setting("NIGHTSHIFT_WORKER_TYPE", "thread", _choice("thread", "process", "greenlet"),
                               "how workers run")
    max_tasks_per_worker: int = setting("NIGHTSHIFT_MAX_TASKS_PER_WORKER", 0, _int(0),
                                        "a worker (process or thread) is replaced after this many jobs (0: never)")
    max_memory_mb: int = setting("NIGHTSHIFT_MAX_MEMORY_MB", 0, _int(0),
                                 "a worker process over this resident memory (MB) is replaced after its job; with "
                                 "thread workers the consumer restarts in place while a relief takes jobs (0: never)")
    result_ttl: int = setting("NIGHTSHIFT_RESULT_TTL", 3600, _int(1), "seconds a stored result is kept")
    log_level: str = setting("NIGHTSHIFT_LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"),
                             "log level")
    log_format: str = setting("NIGHTSHIFT_LOG_FORMAT", "text", _choice("text", "json"), "log line format")
    shutdown_timeout: float = setting("NIGHTSHIFT_SHUTDOWN_TIMEOUT", 30.0, _float(0),
                                      "seconds running jobs get to finish on SIGTERM/SIGINT")
    lease_seconds: float = setting("NIGHTSHIFT_LEASE_SECONDS", 60.0, _float(0.5),
                                   "a running job's lease; renewed by its worker every third of it")
    max_lease_losses: int = setting("NIGHTSHIFT_MAX_LEASE_LOSSES", 3, _int(0),
                                    "a job whose lease expires more often than this goes dead")
    recovery_interval: float = setting("NIGHTSHIFT_RECOVERY_INTERVAL", 30.0, _float(0.5),
                                       "seconds between recovery runs in the consumer")
    recovery_grace: float = setting("NIGHTSHIFT_RECOVERY_GRACE", 30.0, _float(0),
                                    "a queued job missing from Redis this long is sent again")
    idempotency_window: int = setting("NIGHTSHIFT_IDEMPOTENCY_WINDOW", 86400, _int(0),
                                      "seconds a finished job still claims its idempotency key")
    heartbeat_seconds: float = setting("NIGHTSHIFT_HEARTBEAT_SECONDS", 10.0, _float(0.2),
                                       "how often a consumer records that it is alive")
    tick_seconds: int = setting("NIGHTSHIFT_TICK_SECONDS", 60, _int(1),
                                "length of a periodic-task tick (60 in production; shorter in tests)")
    timezone: str = setting("NIGHTSHIFT_TIMEZONE", "UTC", _timezone,
                            "time zone whose wall clock periodic tasks' crontabs follow (a task's tz= overrides)")
    cleanup_cron: str = setting("NIGHTSHIFT_CLEANUP_CRON", "0 * * * *", _cron,
                                "when the built-in cleanup runs (crontab: minute hour day month weekday; off)")
    cleanup_batch: int = setting("NIGHTSHIFT_CLEANUP_BATCH", 1000, _int(1),
                                 "rows per transaction and keys per SCAN/UNLINK in cleanup")
    retain_succeeded_days: float = setting("NIGHTSHIFT_RETAIN_SUCCEEDED_DAYS", 7.0, _float(0),
                                           "days a succeeded job stays in the ledger")
    retain_failed_days: float = setting("NIGHTSHIFT_RETAIN_FAILED_DAYS", 30.0, _float(0),
                                        "days a dead, canceled or expired job stays in the ledger")
    retain_preview_days: float = setting("NIGHTSHIFT_RETAIN_PREVIEW_DAYS", 7.0, _float(0),
                                         "days a dead letter keeps the preview of its raw message")
    retain_workers_days: float = setting("NIGHTSHIFT_RETAIN_WORKERS_DAYS", 7.0, _float(0),
                                         "days the heartbeat row of a stopped or vanished worker is kept")
    lock_max_age: float = setting("NIGHTSHIFT_LOCK_MAX_AGE", 21600.0, _float(0),
                                  "seconds after which a task lock counts as stale even if its holder lives")
    backlog_cron: str = setting("NIGHTSHIFT_BACKLOG_CRON", "* * * * *", _cron,
                                "when the built-in backlog watch runs (crontab, or off)")
    alert_queue_depth: int = setting("NIGHTSHIFT_ALERT_QUEUE_DEPTH", 1000, _int(0),
                                     "alert when more jobs than this wait to run (0: off)")
    alert_oldest_age: float = setting("NIGHTSHIFT_ALERT_OLDEST_AGE", 600.0, _float(0),
                                      "alert when the oldest due job has waited longer (seconds; 0: off)")
    alert_failure_rate: float = setting("NIGHTSHIFT_ALERT_FAILURE_RATE", 0.5, _float(0),
                                        "alert when this share of attempts in the window failed (0-1; 0: off)")
    alert_dead_letters: int = setting("NIGHTSHIFT_ALERT_DEAD_LETTERS", 10, _int(0),
                                      "alert when more jobs than this went dead in the window (0: off)")
    alert_window: float = setting("NIGHTSHIFT_ALERT_WINDOW", 900.0, _float(1),
                                  "seconds over which failure rate and dead letters are counted")
    smtp_url: str = setting("NIGHTSHIFT_SMTP_URL", "smtp://localhost:25", _url("smtp", "smtps"),
                            "SMTP server for e-mail tasks: smtp://user:pass@host:port?starttls=1, or smtps://",
                            secret=True)
    email_from: str = setting("NIGHTSHIFT_EMAIL_FROM", "nightshift@localhost", _str,
                              "default From address of e-mail tasks")
    email_rate: float = setting("NIGHTSHIFT_EMAIL_RATE", 10.0, _float(0),
                                "e-mails per second a batch is spread over, and per worker process (0: no limit)")
    webhook_secret: str = setting("NIGHTSHIFT_WEBHOOK_SECRET", "", _webhook_secret,
                                  "whsec_<base64 key>: signs webhook deliveries the Standard Webhooks way "
                                  "(unsigned when empty)", secret=True)
    webhook_legacy_signature: bool = setting("NIGHTSHIFT_WEBHOOK_LEGACY_SIGNATURE", False, _bool,
                                             "also send the old X-Nightshift-Signature/-Timestamp/-Delivery "
                                             "headers, for receivers not yet moved to Standard Webhooks")
    webhook_allow_private: bool = setting("NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE", False, _bool,
                                          "let webhooks reach private, loopback and link-local addresses")
    webhook_timeout: float = setting("NIGHTSHIFT_WEBHOOK_TIMEOUT", 10.0, _float(0.1),
                                     "seconds a webhook receiver gets to answer")
    pull_rate: float = setting("NIGHTSHIFT_PULL_RATE", 5.0, _float(0),
                               "requests per second an API pull makes (0: no limit)")
    pull_allow_private: bool = setting("NIGHTSHIFT_PULL_ALLOW_PRIVATE", False, _bool,
                                       "let API pulls reach private, loopback and link-local addresses")
    files_root: tuple = setting("NIGHTSHIFT_FILES_ROOT", (), _directories,
                                "directories (':'-separated) file tasks may read and write; relative task paths "
                                "start in the first", separator=":", default_from=default_files_root,
                                shown="$XDG_DATA_HOME/nightshift/files ($XDG_DATA_HOME defaults to ~/.local/share)")
    web_token: str = setting("NIGHTSHIFT_WEB_TOKEN", "", _str,
                             "the console's token (`nightshift web`): when set, every page and API call needs it "
                             "(Bearer header or login); required to listen beyond loopback", secret=True)
    web_readonly: bool = setting("NIGHTSHIFT_WEB_READONLY", False, _bool,
                                 "the console shows everything but offers and accepts no action")
    sentry_dsn: str = setting("SENTRY_DSN", "", _str, "send task errors to Sentry when set", secret=True)
    sentry_every_attempt: bool = setting("NIGHTSHIFT_SENTRY_EVERY_ATTEMPT", False, _bool,
                                         "report every failed attempt, not only the final failure")
    sentry_environment: str = setting("SENTRY_ENVIRONMENT", "", _str, "Sentry environment tag")

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting, for docs and `nightshift config`."""
    rows = []
    for field in dataclasses.fields(Settings):
        default = field.metadata["shown"] or field.default
        if isinstance(default, tuple):
            default = field.metadata["separator"].join(default)
        rows.append((field.metadata["env"], str(default), field.metadata["help"]))
    return rows


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; report all bad values at once."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    errors: list[str] = []
    for field in dataclasses.fields(Settings):
        env = field.metadata["env"]
        raw = environ.get(env)
        if raw is None:
            if field.metadata["default_from"] is not None:
                values[field.name] = field.metadata["default_from"](environ)
            continue
        parse = field.metadata["parse"]
        try:
            values[field.name] = parse(raw)
        except ValueError as exc:
            expected = (parse.__doc__ or "").strip()
            shown = env if field.metadata["secret"] else f"{env}={raw!r}"  # a secret is not echoed back
            errors.append(f"{shown} is invalid: {exc}" + (f" (expected {expected})" if expected else ""))
    if errors:
        raise ConfigError("; ".join(errors))
    return Settings(**values)


_current: Settings | None = None


def get() -> Settings:
    """The process's settings, loaded on first use."""
    global _current
    if _current is None:
        _current = load()
    return _current


def reload(environ: Mapping[str, str] | None = None) -> Settings:
    """Re-read the environment (tests, and commands that change settings from options)."""
    global _current
    _current = load(environ)
    return _current

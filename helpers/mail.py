"""E-mail batches: read recipients, render a template per recipient, send each one at most once.

Named `mail` so it does not shadow the standard library's `email` package.

At most once per (batch, recipient): a marker row is claimed in the database right before the message is
handed to the SMTP server and marked sent right after. A retried or redelivered job finds the marker and
does not send again; two copies running at once cannot both claim it. If a worker dies in the instant
between handing the message over and marking it sent, the claim stays "sending": later attempts wait while
it may still be in flight and then fail with `DeliveryUncertain` instead of risking a second copy.
"""
from __future__ import annotations

import csv
import datetime
import re
import smtplib
import socket
import ssl
import string
import urllib.parse
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import peewee

from helpers import db as dbh
from helpers.errors import PermanentError, TemporaryError
from helpers.rows import read_rows


class SmtpPermanentError(PermanentError):
    """The SMTP server refused with a 5xx reply (unknown user, policy, bad credentials): do not retry."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class BadAddressError(PermanentError):
    """The recipient address cannot be an e-mail address; only this recipient fails."""


class DeliveryUncertain(PermanentError):
    """A previous attempt died while handing this message to the server; not resent to stay at most once."""


class EmailSent(dbh.HelperModel):
    """One row per (batch, recipient): claimed ("sending") before the SMTP hand-over, "sent" after."""

    batch = peewee.CharField(max_length=200)
    recipient = peewee.CharField(max_length=320)
    state = peewee.CharField(max_length=16)
    claimed_at = peewee.DateTimeField()
    sent_at = peewee.DateTimeField(null=True)
    message_id = peewee.CharField(max_length=300, null=True)
    claim = peewee.CharField(max_length=36)

    class Meta:
        table_name = "nightshift_email_sent"
        primary_key = peewee.CompositeKey("batch", "recipient")


# ---------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    implicit_tls: bool = False
    timeout: float = 30.0


def parse_smtp_url(url: str) -> SmtpConfig:
    """smtp://user:pass@host:port?starttls=1 (or smtps:// for TLS from the start); login when a user is given."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise PermanentError(f"SMTP URL must start with smtp:// or smtps://, not {parts.scheme or 'nothing'}://")
    if not parts.hostname:
        raise PermanentError("SMTP URL has no host")
    query = urllib.parse.parse_qs(parts.query)

    def flag(name: str) -> bool:
        return query.get(name, ["0"])[-1].lower() in ("1", "true", "yes", "on")

    implicit = parts.scheme == "smtps"
    try:
        timeout = float(query.get("timeout", ["30"])[-1])
        port = parts.port or (465 if implicit else 25)
    except ValueError as exc:
        raise PermanentError(f"invalid SMTP URL: {exc}") from None
    return SmtpConfig(
        host=parts.hostname, port=port,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password else None,
        starttls=flag("starttls"), implicit_tls=implicit, timeout=timeout)


# ---------------------------------------------------------------------------------------------- addresses

_ADDRESS = re.compile(r"^[^@\s\"(),:;<>\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def validate_address(address: Any) -> str:
    """The bare address, checked for the usual shape; raises BadAddressError."""
    if not isinstance(address, str) or not address.strip():
        raise BadAddressError("recipient address is empty")
    if "\r" in address or "\n" in address:
        raise BadAddressError(f"recipient address contains a line break: {address!r}")
    _, bare = parseaddr(address.strip())
    if not bare or len(bare) > 254 or not _ADDRESS.match(bare) or len(bare.split("@")[0]) > 64:
        raise BadAddressError(f"not a valid e-mail address: {address!r}")
    local, domain = bare.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


def recipient_key(address: str) -> str:
    """The identity used for "once per batch": the bare address, lower-cased."""
    return validate_address(address).lower()


# ---------------------------------------------------------------------------------------------- templates

def check_template(template: str) -> list[str]:
    """The placeholder names in `template` ({name} style); only plain names are allowed."""
    names = []
    try:
        for _, field, spec, conversion in string.Formatter().parse(template):
            if field is None:
                continue
            if not field.isidentifier() or spec or conversion:
                raise PermanentError(f"placeholder {{{field}}} is not allowed: use plain {{name}} placeholders")
            names.append(field)
    except ValueError as exc:
        raise PermanentError(f"template is not valid: {exc} (write {{{{ and }}}} for literal braces)") from None
    return names


def render(template: str, values: Mapping[str, Any]) -> str:
    """`template` with every {name} replaced; a missing value fails this recipient (PermanentError)."""
    missing = [name for name in check_template(template) if name not in values]
    if missing:
        raise PermanentError(f"no value for placeholder(s) {', '.join(sorted(set(missing)))}")
    return template.format_map({k: "" if v is None else v for k, v in values.items()})


# ---------------------------------------------------------------------------------------------- recipients

@dataclass
class Recipient:
    line: int
    email: str
    values: dict[str, Any]


def read_recipients(path: str | Path, email_field: str = "email") -> Iterator[Recipient | tuple[int, str]]:
    """Rows of a CSV (with header) or JSON-lines file: a Recipient, or (line, error) for an unusable row."""
    path = Path(path)
    if not path.is_file():
        raise PermanentError(f"recipient file not found: {path}")
    fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"
    if fmt == "csv":
        with open(path, encoding="utf-8-sig", newline="", errors="replace") as handle:
            if email_field not in next(csv.reader(handle), []):
                raise PermanentError(f"{path.name}: the CSV header has no {email_field!r} column")
    for number, row in read_rows(path, fmt):
        yield (number, row) if isinstance(row, str) else _recipient(number, row, email_field)


def _recipient(number: int, row: dict[str, Any], email_field: str) -> Recipient | tuple[int, str]:
    if email_field not in row:
        return number, f"no {email_field!r} field"
    return Recipient(number, str(row[email_field] or "").strip(), dict(row))


def plan_batch(path: str | Path, subject: str, body: str, email_field: str = "email",
               defaults: Mapping[str, Any] | None = None, html: str | None = None) -> dict[str, Any]:
    """Read and render the whole batch before anything is sent.

    Returns {"messages": [{"to", "subject", "body", "html", "line"}], "rejected": [{"line", "error"}],
    "duplicates": n}. A row with a bad address or a missing placeholder value is rejected alone; a broken
    template fails the batch.
    """
    check_template(subject)
    check_template(body)
    if html is not None:
        check_template(html)
    messages: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: set[str] = set()
    duplicates = 0
    for item in read_recipients(path, email_field):
        if isinstance(item, tuple):
            rejected.append({"line": item[0], "error": item[1]})
            continue
        try:
            address = validate_address(item.email)
            values = {**(defaults or {}), **item.values, email_field: address}
            rendered_subject = render(subject, values)
            rendered_body = render(body, values)
            rendered_html = render(html, values) if html is not None else None
        except PermanentError as exc:
            rejected.append({"line": item.line, "error": str(exc)})
            continue
        if "\r" in rendered_subject or "\n" in rendered_subject:
            rejected.append({"line": item.line, "error": "subject would contain a line break"})
            continue
        key = address.lower()
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        messages.append({"to": address, "subject": rendered_subject, "body": rendered_body, "html": rendered_html,
                         "line": item.line})
    return {"messages": messages, "rejected": rejected, "duplicates": duplicates}


# ---------------------------------------------------------------------------------------------- sending

def build_message(sender: str, to: str, subject: str, body: str, batch_id: str,
                  html: str | None = None, reply_to: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    if reply_to:
        message["Reply-To"] = reply_to
    message["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1].strip("> ") or None)
    message["X-Nightshift-Batch"] = batch_id
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    return message


def _connect(config: SmtpConfig) -> smtplib.SMTP:
    """An SMTP session, logged in when the URL has a user; errors classified."""
    try:
        if config.implicit_tls:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                                 context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        try:
            smtp.ehlo()
            if config.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if config.username:
                smtp.login(config.username, config.password or "")
        except BaseException:
            _quit(smtp)
            raise
        return smtp
    except BaseException as exc:
        raise _classify(exc, "connecting to SMTP server") from exc


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _classify(exc: BaseException, doing: str) -> BaseException:
    """SMTP 5xx -> SmtpPermanentError; 4xx, timeouts and connection problems -> TemporaryError."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        code = max(codes) if codes else 550
        text = "; ".join(f"{r}: {c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
                         for r, (c, m) in exc.recipients.items())
        if 400 <= code < 500:
            return TemporaryError(f"recipient deferred while {doing}: {text}")
        return SmtpPermanentError(f"recipient refused while {doing}: {text}", code)
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        if 400 <= exc.smtp_code < 500:
            return TemporaryError(f"SMTP {exc.smtp_code} while {doing}: {message}")
        return SmtpPermanentError(f"SMTP {exc.smtp_code} while {doing}: {message}", exc.smtp_code)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentError(f"TLS certificate not valid while {doing}: {exc.verify_message}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError(f"SMTP server does not support what the URL asks ({doing}): {exc}")
    if isinstance(exc, (smtplib.SMTPException, OSError, socket.timeout)):
        return TemporaryError(f"{exc.__class__.__name__} while {doing}: {exc}")
    return exc


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def send_email(database: peewee.Database, smtp_url: str, batch_id: str, to: str, subject: str, body: str,
               sender: str, html: str | None = None, reply_to: str | None = None,
               in_flight_seconds: float | None = None, throttle: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Send one message to `to` unless this batch already did; returns {"status": "sent"|"skipped", ...}.

    Raises BadAddressError / SmtpPermanentError / DeliveryUncertain (PermanentError) or TemporaryError.
    `in_flight_seconds` is how long a "sending" claim by another attempt is trusted to still be in
    progress (default: twice the SMTP timeout plus a minute). `throttle` (a rate limiter's wait) is called just
    before connecting, so recipients already sent cost no waiting.
    """
    address = validate_address(to)
    key = address.lower()
    try:
        validate_address(parseaddr(sender)[1] or sender)
    except BadAddressError as exc:
        raise PermanentError(f"sender: {exc}") from None
    if "\r" in subject or "\n" in subject:
        raise PermanentError("subject contains a line break")
    config = parse_smtp_url(smtp_url)
    in_flight = in_flight_seconds if in_flight_seconds is not None else 2 * config.timeout + 60
    Sent = dbh.bind(EmailSent, database)

    existing = Sent.get_or_none((Sent.batch == batch_id) & (Sent.recipient == key))
    if existing is not None:
        return _already(existing, in_flight)

    message = build_message(sender, address, subject, body, batch_id, html, reply_to)
    if throttle is not None:
        throttle()
    smtp = _connect(config)
    try:
        claim = str(uuid.uuid4())
        try:
            with dbh.writing(database):
                Sent.create(batch=batch_id, recipient=key, state="sending", claimed_at=_now(), claim=claim)
        except peewee.IntegrityError:
            existing = Sent.get_or_none((Sent.batch == batch_id) & (Sent.recipient == key))
            if existing is None:
                raise TemporaryError("could not claim the recipient marker; will try again") from None
            return _already(existing, in_flight)
        try:
            smtp.send_message(message, from_addr=parseaddr(sender)[1] or sender, to_addrs=[address])
        except BaseException as exc:
            error = _classify(exc, "sending")
            # The server answered with an error code, so it did not take the message: release the claim so
            # a retry may send. A lost connection is ambiguous but almost always happens before the final
            # reply, and keeping the claim would strand the recipient; release it too.
            Sent.delete().where((Sent.batch == batch_id) & (Sent.recipient == key) & (Sent.claim == claim)).execute()
            raise error from exc
        Sent.update(state="sent", sent_at=_now(), message_id=message["Message-ID"]).where(
            (Sent.batch == batch_id) & (Sent.recipient == key) & (Sent.claim == claim)).execute()
    finally:
        _quit(smtp)
    return {"status": "sent", "to": address, "batch": batch_id, "message_id": message["Message-ID"]}


def _already(marker: EmailSent, in_flight: float) -> dict[str, Any]:
    if marker.state == "sent":
        return {"status": "skipped", "to": marker.recipient, "batch": marker.batch,
                "reason": "already sent in this batch", "sent_at": str(marker.sent_at)}
    age = (_now() - marker.claimed_at).total_seconds()
    if age < in_flight:
        raise TemporaryError(f"another attempt is sending to {marker.recipient} right now",
                             retry_after=max(1.0, in_flight - age))
    raise DeliveryUncertain(
        f"an attempt that started sending to {marker.recipient} at {marker.claimed_at} UTC never finished; "
        "the message may or may not have been delivered, so it is not sent again. Delete its row from "
        f"{EmailSent._meta.table_name} to allow a resend.")


def sent_count(database: peewee.Database, batch_id: str) -> int:
    """How many recipients of `batch_id` are marked sent."""
    Sent = dbh.bind(EmailSent, database)
    return Sent.select().where((Sent.batch == batch_id) & (Sent.state == "sent")).count()

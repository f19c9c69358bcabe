"""Pull a paginated JSON API into the database, resumable page by page.

Each page's records are upserted (keyed by pull name and record id, so none is stored twice) and the
cursor -- the URL of the next page -- is saved in the same transaction. A job killed half-way resumes at
the first page it had not committed; a page fetched but not committed is simply fetched again.

Pagination: the page is a JSON object with its records in `records_key` (or a bare JSON list), and the next
page is named by the `next_key` field -- a URL (absolute or relative) or, when `cursor_param` is given, a
cursor value sent as that query parameter -- or by a `Link: <...>; rel="next"` header. No next: done.

Credentials (`headers`) go only to the origin (scheme, host, port) of the first URL. A next page on another
origin is refused as a permanent error, or, with `follow_other_origins`, fetched without any of `headers`.
"""
from __future__ import annotations

import datetime
import json
import re
import urllib.parse
from typing import Any, Callable

import peewee

from helpers import db as dbh
from helpers import http
from helpers.backoff import backoff_delay
from helpers.errors import PermanentError, TemporaryError
from helpers.masking import mask_url
from helpers.ratelimit import RateLimiter

Progress = Callable[[int, "int | None", str], None]


class PullCursor(dbh.HelperModel):
    """Where a named pull is: the next URL to fetch, or done."""

    name = peewee.CharField(max_length=500, primary_key=True)
    start_url = peewee.TextField()
    next_url = peewee.TextField(null=True)
    done = peewee.BooleanField(default=False)
    pages = peewee.IntegerField(default=0)
    records = peewee.IntegerField(default=0)
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "nightshift_pull_cursors"


class PulledRecord(dbh.HelperModel):
    """One record of a pull, stored as JSON text (portable between SQLite and PostgreSQL)."""

    pull = peewee.CharField(max_length=500)
    record_id = peewee.CharField(max_length=500)
    data = peewee.TextField()
    fetched_at = peewee.DateTimeField()

    class Meta:
        table_name = "nightshift_pulled_records"
        primary_key = peewee.CompositeKey("pull", "record_id")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


_LINK_NEXT = re.compile(r'<([^>]*)>\s*;[^,]*\brel="?next"?', re.IGNORECASE)


def next_page_url(current: str, page: Any, headers: Any, next_key: str, cursor_param: str | None) -> str | None:
    """The URL of the page after `current`, or None when this was the last."""
    value = page.get(next_key) if isinstance(page, dict) else None
    if value not in (None, "", False):
        if cursor_param:
            parts = urllib.parse.urlsplit(current)
            query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                     if k != cursor_param]
            query.append((cursor_param, str(value)))
            return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        if not isinstance(value, str):
            raise PermanentError(f"{next_key!r} is not a URL: {value!r} (pass cursor_param for cursor values)")
        return urllib.parse.urljoin(current, value)
    match = _LINK_NEXT.search(headers.get("Link", "") or "") if headers is not None else None
    return urllib.parse.urljoin(current, match.group(1)) if match else None


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `url`: where credentials given for it may go."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def headers_for(url: str, first_url: str, headers: dict[str, str] | None,
                follow_other_origins: bool) -> dict[str, str] | None:
    """The caller's headers when `url` is on the first URL's origin; none (or a refusal) elsewhere."""
    if not headers or origin(url) == origin(first_url):
        return headers
    if follow_other_origins:
        return None
    scheme, host, port = origin(first_url)
    raise PermanentError(f"next page {mask_url(url)} is on another origin than {scheme}://{host}:{port}, the only "
                         "one the pull's headers are sent to; refused (pass follow_other_origins=true to follow "
                         "it without them)")


def page_records(page: Any, records_key: str) -> list[Any]:
    if isinstance(page, list):
        return page
    if isinstance(page, dict) and isinstance(page.get(records_key), list):
        return page[records_key]
    raise PermanentError(f"page has no {records_key!r} list of records")


def fetch_page(url: str, timeout: float, allow_private: bool, headers: dict[str, str] | None,
               limiter: RateLimiter, max_retries: int) -> tuple[Any, Any]:
    """GET one page as JSON, retrying 429/5xx/timeouts a few times here so one hiccup does not end the pull."""
    attempt = 0
    while True:
        limiter.wait()
        try:
            response = http.request("GET", url, headers=headers, timeout=timeout, allow_private=allow_private)
            break
        except TemporaryError as exc:
            attempt += 1
            if attempt > max_retries:
                raise
            delay = backoff_delay(attempt, base=0.5, cap=30, retry_after=exc.retry_after)
            if exc.retry_after is not None and exc.retry_after > 60:
                raise  # a long wait is better spent as a scheduled retry than a held worker
            limiter.defer(delay)
    if not 200 <= response.status < 300:
        raise PermanentError(f"GET {url} answered {response.status}: {response.text(200)}")
    try:
        return json.loads(response.body), response.headers
    except ValueError as exc:
        raise PermanentError(f"GET {url} did not return JSON: {exc}") from None


def pull_pages(database: peewee.Database, url: str, name: str | None = None, id_key: str = "id",
               records_key: str = "records", next_key: str = "next", cursor_param: str | None = None,
               rate: float | None = None, max_pages: int | None = None, restart: bool = False,
               timeout: float = 30.0, allow_private: bool = False, headers: dict[str, str] | None = None,
               max_retries: int = 3, progress: Progress | None = None,
               follow_other_origins: bool = False) -> dict[str, Any]:
    """Fetch pages from where pull `name` (default: the URL) left off until the last page or `max_pages`.

    `rate`: at most this many requests per second. A pull that already finished does nothing unless
    `restart`, which starts again from `url` (records are upserted, so nothing is duplicated).
    Returns {"name", "pages", "records", "rejected", "done", "total_pages", "stored_records"}: this run's pages
    and records, records skipped for lacking an id, and the pull's totals so far.
    """
    http.check_url(url)
    name = name or url
    Cursor = dbh.bind(PullCursor, database)
    Record = dbh.bind(PulledRecord, database)
    limiter = RateLimiter(rate)

    with dbh.writing(database):
        cursor = Cursor.get_or_none(Cursor.name == name)
        if cursor is None:
            cursor = Cursor.create(name=name, start_url=url, next_url=url, updated_at=_now())
        elif cursor.start_url != url and not restart:
            raise PermanentError(f"pull {name!r} was started from {cursor.start_url}; pass restart=true to start "
                                 f"over from {url}, or give this pull another name")
        elif restart or (cursor.done is False and cursor.next_url is None):
            cursor.next_url, cursor.done, cursor.start_url, cursor.updated_at = url, False, url, _now()
            cursor.save()
    pages = records = rejected = 0
    next_url = cursor.next_url
    if cursor.done:
        next_url = None

    while next_url and (max_pages is None or pages < max_pages):
        sent = headers_for(next_url, url, headers, follow_other_origins)
        page, page_headers = fetch_page(next_url, timeout, allow_private, sent, limiter, max_retries)
        items = page_records(page, records_key)
        following = next_page_url(next_url, page, page_headers, next_key, cursor_param)
        if following == next_url:
            raise PermanentError(f"page {next_url} names itself as the next page")
        rows, bad = _rows(name, items, id_key)
        with dbh.writing(database):
            for start in range(0, len(rows), 500):
                (Record.insert_many(rows[start:start + 500])
                 .on_conflict(conflict_target=[Record.pull, Record.record_id],
                              preserve=[Record.data, Record.fetched_at])
                 .execute())
            updated = (Cursor.update(next_url=following, done=following is None, pages=Cursor.pages + 1,
                                     records=Cursor.records + len(rows), updated_at=_now())
                       .where((Cursor.name == name) & (Cursor.next_url == next_url))
                       .execute())
            if updated != 1:
                # Another copy of this pull committed this page first; its cursor wins.
                raise TemporaryError(f"pull {name!r} moved on under us (another job runs it); retry to resume")
        pages += 1
        records += len(rows)
        rejected += bad
        next_url = following
        if progress:
            progress(pages, None, f"page {pages}: {len(rows)} records" + (f", {bad} without id" if bad else ""))

    final = Cursor.get(Cursor.name == name)
    stored = Record.select().where(Record.pull == name).count()
    return {"name": name, "pages": pages, "records": records, "rejected": rejected, "done": final.done,
            "total_pages": final.pages, "stored_records": stored}


def _rows(name: str, items: list[Any], id_key: str) -> tuple[list[dict[str, Any]], int]:
    """Insert rows for a page, last copy winning when a page repeats an id; records without an id are counted."""
    now = _now()
    by_id: dict[str, dict[str, Any]] = {}
    bad = 0
    for item in items:
        if not isinstance(item, dict) or item.get(id_key) in (None, ""):
            bad += 1
            continue
        record_id = str(item[id_key])
        by_id[record_id] = {"pull": name, "record_id": record_id, "fetched_at": now,
                            "data": json.dumps(item, sort_keys=True, separators=(",", ":"))}
    return list(by_id.values()), bad


def pulled_records(database: peewee.Database, name: str) -> list[dict[str, Any]]:
    """All stored records of pull `name`, decoded (for reports and tests)."""
    Record = dbh.bind(PulledRecord, database)
    return [json.loads(r.data) for r in Record.select().where(Record.pull == name).order_by(Record.record_id)]

"""Paginated pulls from a real HTTP API on 127.0.0.1 into real SQLite/PostgreSQL tables."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import peewee
import pytest

from helpers import api_pull
from helpers.errors import PermanentError, TemporaryError
from helper_fixtures import database, http_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
PAGES, PER_PAGE = 8, 25


def records(page: int) -> list[dict[str, Any]]:
    return [{"id": page * PER_PAGE + i, "name": f"item {page * PER_PAGE + i}"} for i in range(PER_PAGE)]


def paged_api(style: str = "next", delay: float = 0.0, faults: dict[int, list[tuple[int, dict]]] | None = None):
    """An API of PAGES pages; `faults[page]` lists (status, headers) answers to give before the real page."""
    faults = {k: list(v) for k, v in (faults or {}).items()}

    def respond(handler) -> tuple[int, dict, bytes]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
        key = "cursor" if style == "cursor" else "page"
        page = int(query.get(key, ["0"])[0])
        if faults.get(page):
            status, headers = faults[page].pop(0)
            return status, headers, b'{"error": "not now"}'
        if delay:
            time.sleep(delay)
        if page >= PAGES:
            return 404, {}, b'{"error": "no such page"}'
        more = page + 1 < PAGES
        headers = {"Content-Type": "application/json"}
        if style == "next":
            body: Any = {"records": records(page), "next": f"/items?page={page + 1}" if more else None}
        elif style == "cursor":
            body = {"records": records(page), "next": page + 1 if more else None}
        else:  # "link": a bare list and a Link header
            body = records(page)
            if more:
                headers["Link"] = f'<{handler.server.url}/items?page={page + 1}>; rel="next"'
        return 200, headers, json.dumps(body).encode()
    return respond


def pages_requested(server) -> list[int]:
    return [int(urllib.parse.parse_qs(urllib.parse.urlsplit(r["path"]).query).get("page", ["0"])[0])
            for r in server.requests]


@pytest.mark.parametrize("style", ["next", "cursor", "link"])
def test_pulls_every_page_once(database, http_server, style: str) -> None:
    server = http_server(paged_api(style))
    seen: list[int] = []
    result = api_pull.pull_pages(database, server.url + "/items", name="items",
                                 records_key="records", cursor_param="cursor" if style == "cursor" else None,
                                 allow_private=True, progress=lambda done, total, note: seen.append(done))
    assert result == {"name": "items", "pages": PAGES, "records": PAGES * PER_PAGE, "rejected": 0, "done": True,
                      "total_pages": PAGES, "stored_records": PAGES * PER_PAGE}
    assert seen == list(range(1, PAGES + 1))
    stored = api_pull.pulled_records(database, "items")
    assert sorted(r["id"] for r in stored) == list(range(PAGES * PER_PAGE))
    # A finished pull does nothing when run again; restart fetches again without duplicating anything.
    assert api_pull.pull_pages(database, server.url + "/items", name="items", allow_private=True,
                               cursor_param="cursor" if style == "cursor" else None)["pages"] == 0
    again = api_pull.pull_pages(database, server.url + "/items", name="items", allow_private=True, restart=True,
                                cursor_param="cursor" if style == "cursor" else None)
    assert again["pages"] == PAGES and again["stored_records"] == PAGES * PER_PAGE


def test_resumes_where_it_stopped(database, http_server) -> None:
    server = http_server(paged_api())
    url = server.url + "/items"
    first = api_pull.pull_pages(database, url, max_pages=3, allow_private=True)
    assert (first["pages"], first["done"]) == (3, False)
    rest = api_pull.pull_pages(database, url, allow_private=True)
    assert (rest["pages"], rest["done"], rest["stored_records"]) == (PAGES - 3, True, PAGES * PER_PAGE)
    assert pages_requested(server) == list(range(PAGES))


def test_transient_errors_are_retried_in_place_honouring_retry_after(database, http_server) -> None:
    server = http_server(paged_api(faults={2: [(503, {}), (429, {"Retry-After": "0.4"})]}))
    started = time.monotonic()
    result = api_pull.pull_pages(database, server.url + "/items", allow_private=True)
    assert result["done"] and result["stored_records"] == PAGES * PER_PAGE
    assert time.monotonic() - started >= 0.4
    assert pages_requested(server) == [0, 1, 2, 2, 2, 3, 4, 5, 6, 7]


def test_persistent_errors_end_the_attempt_and_keep_the_cursor(database, http_server) -> None:
    server = http_server(paged_api(faults={3: [(500, {})] * 3}))
    url = server.url + "/items"
    with pytest.raises(TemporaryError):
        api_pull.pull_pages(database, url, allow_private=True, max_retries=2)
    assert len(api_pull.pulled_records(database, url)) == 3 * PER_PAGE
    result = api_pull.pull_pages(database, url, allow_private=True)
    assert result["pages"] == PAGES - 3 and result["stored_records"] == PAGES * PER_PAGE


def test_rate_limit(database, http_server) -> None:
    server = http_server(paged_api())
    started = time.monotonic()
    api_pull.pull_pages(database, server.url + "/items", rate=20, allow_private=True)
    assert time.monotonic() - started >= (PAGES - 1) / 20


def test_bad_answers_are_permanent(database, http_server) -> None:
    server = http_server(lambda handler: (200, {}, b"<html>not json</html>"))
    with pytest.raises(PermanentError, match="JSON"):
        api_pull.pull_pages(database, server.url, allow_private=True)
    server = http_server(lambda handler: (200, {}, b'{"items": []}'))
    with pytest.raises(PermanentError, match="records"):
        api_pull.pull_pages(database, server.url, allow_private=True)
    server = http_server(lambda handler: (403, {}, b"{}"))
    with pytest.raises(PermanentError, match="403"):
        api_pull.pull_pages(database, server.url, allow_private=True)
    with pytest.raises(PermanentError, match="private"):
        api_pull.pull_pages(database, server.url)


def test_records_without_id_are_counted_not_stored(database, http_server) -> None:
    body = {"records": [{"id": 1}, {"name": "no id"}, "junk", {"id": 1, "v": 2}, {"id": ""}], "next": None}
    server = http_server(lambda handler: (200, {}, json.dumps(body).encode()))
    result = api_pull.pull_pages(database, server.url, name="x", allow_private=True)
    assert (result["records"], result["rejected"]) == (1, 3)
    assert api_pull.pulled_records(database, "x") == [{"id": 1, "v": 2}]


PULL_IN_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import peewee
from helpers import api_pull
spec = json.loads(sys.argv[2])
if spec["kind"] == "sqlite":
    db = peewee.SqliteDatabase(spec["path"], timeout=10)
else:
    db = peewee.PostgresqlDatabase(**spec["params"])
api_pull.pull_pages(db, spec["url"], name="killed", allow_private=True,
                    progress=lambda done, total, note: print(done, flush=True))
"""


def _spec(database: peewee.Database, url: str) -> str:
    if isinstance(database, peewee.SqliteDatabase):
        return json.dumps({"kind": "sqlite", "path": database.database, "url": url})
    return json.dumps({"kind": "postgres", "params": {"database": database.database, **database.connect_params},
                       "url": url})


def test_killed_pull_resumes_and_stores_every_record_once(database, http_server) -> None:
    server = http_server(paged_api(delay=0.15))
    url = server.url + "/items"
    child = subprocess.Popen([sys.executable, "-c", PULL_IN_CHILD, str(ROOT), _spec(database, url)],
                             stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # three pages committed, then kill it in the middle of the fourth
        assert child.stdout.readline().strip()
    time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    committed = len(api_pull.pulled_records(database, "killed")) // PER_PAGE
    assert 3 <= committed < PAGES
    result = api_pull.pull_pages(database, url, name="killed", allow_private=True)
    assert result["done"] and result["stored_records"] == PAGES * PER_PAGE
    assert result["pages"] == PAGES - committed
    ids = [r["id"] for r in api_pull.pulled_records(database, "killed")]
    assert sorted(ids) == list(range(PAGES * PER_PAGE))
    requested = pages_requested(server)
    assert requested[-(PAGES - committed):] == list(range(committed, PAGES))  # resumed, not restarted


def test_same_name_with_another_url_needs_restart(database, http_server) -> None:
    server = http_server(paged_api())
    api_pull.pull_pages(database, server.url + "/items", name="n", max_pages=1, allow_private=True)
    with pytest.raises(PermanentError, match="restart"):
        api_pull.pull_pages(database, server.url + "/other", name="n", allow_private=True)

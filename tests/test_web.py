"""The operator console over HTTP: every page, the JSON API, actions, the token, CSRF and read-only mode.

Most tests call the console's WSGI application in this process (with a small cookie-keeping client) against the
test's real ledger and real Redis; the ones about serving (binding, the token over a socket, memory, imports) run
`nightshift web` as a real process. Nothing is mocked.
"""
from __future__ import annotations

import dataclasses
import datetime
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest
import redis

from conftest import ROOT, free_port, wait_until

pytest.importorskip("jinja2", reason="the console's extra is not installed: pip install -e '.[web]'")

SECRET = "hunter2-secret"


# -- a WSGI client that keeps cookies --------------------------------------------------------------------------

@dataclasses.dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self):
        return json.loads(self.body)


class Client:
    def __init__(self, app, host: str = "127.0.0.1:8080") -> None:
        self.app = app
        self.host = host
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> Answer:
        path, _, query = path.partition("?")
        environ = {"REQUEST_METHOD": method, "PATH_INFO": urllib.parse.unquote(path).encode().decode("latin-1"),
                   "QUERY_STRING": query, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
                   "HTTP_HOST": self.host, "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http"}
        for name, value in (headers or {}).items():
            if name.lower() == "content-type":
                environ["CONTENT_TYPE"] = value
            else:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        if self.cookies:
            environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        captured = {}

        def start_response(status, response_headers):
            captured["status"] = int(status.split()[0])
            captured["headers"] = response_headers
        body_out = b"".join(self.app(environ, start_response))
        headers_out: dict[str, str] = {}
        for name, value in captured["headers"]:
            if name == "Set-Cookie":
                cookie_name, _, rest = value.partition("=")
                cookie_value = rest.split(";", 1)[0]
                if "Max-Age=0" in value:
                    self.cookies.pop(cookie_name, None)
                else:
                    self.cookies[cookie_name] = cookie_value
            headers_out[name] = value
        return Answer(captured["status"], headers_out, body_out)

    def get(self, path: str, **headers) -> Answer:
        return self.request("GET", path, headers=headers)

    def post_form(self, path: str, fields: dict | list, **headers) -> Answer:
        body = urllib.parse.urlencode(fields, doseq=True).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded", **headers})

    def post_json(self, path: str, data, **headers) -> Answer:
        return self.request("POST", path, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})

    def csrf(self, page: str = "/") -> str:
        answer = self.get(page)
        match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', answer.text)
        assert match, f"no CSRF field on {page}: {answer.status} {answer.text[:500]}"
        return match.group(1)

    def act(self, action: str, fields: list, confirm: bool = True) -> Answer:
        """An action as the page's two forms send it: the button's form, then the confirmation's."""
        token = self.csrf()
        first = self.post_form(f"/actions/{action}", [("csrf", token)] + fields)
        assert first.status == 200 and "Yes," in first.text, first.text[:800]
        if not confirm:
            return first
        return self.post_form(f"/actions/{action}", [("csrf", token), ("confirm", "yes")] + fields)


def console(**overrides):
    import config
    from app.web.app import create_app
    settings = dataclasses.replace(config.get(), **overrides)
    return create_app(settings)


@pytest.fixture
def client(env):
    return Client(console())


# -- ledger fixtures -----------------------------------------------------------------------------------------------

def submit(task: str, key: str | None = None, **arguments) -> str:
    from app import producer
    return producer.submit_tasks([producer.build_task(task, arguments)], key=key).ids[0]


def make_dead(task: str = "always_fails", error: str = f"ValueError: password={SECRET} refused", **arguments) -> str:
    from app import ledger
    job_id = submit(task, **arguments)
    assert ledger.claim(job_id, 1, "host:1:abcd", 60)
    assert ledger.mark_dead(job_id, "failed on attempt 1", error, f"Traceback (most recent call last):\n  {error}",
                            attempt=1, duration=0.25)
    return job_id


def make_running(task: str = "sleep_for", **arguments) -> str:
    from app import ledger
    job_id = submit(task, **(arguments or {"seconds": 30}))
    assert ledger.claim(job_id, 1, "host:1:abcd", 60)
    return job_id


def state_of(job_id: str) -> str | None:
    from app import ledger
    return ledger.state_of(job_id)


def on_redis(env, job_id: str) -> bool:
    import config
    client = redis.Redis.from_url(env["NIGHTSHIFT_REDIS_URL"])
    queue = config.get().queue
    return any(job_id.encode() in message for key in client.scan_iter(f"huey.*{queue}*")
               if client.type(key) == b"zset" for message in client.zrange(key, 0, -1))


# -- pages ---------------------------------------------------------------------------------------------------------

def test_every_page_renders_and_masks_secrets(env, client):
    dead = make_dead(message="x")
    running = make_running()
    from app import ledger
    ledger.record_progress(running, 30, 120, f"page 3 token={SECRET}")
    keyed = submit("add", key="order-4711", a=1)
    with_url = submit("checksum_file", path=f"https://user:{SECRET}@files.example/x?token={SECRET}")

    overview = client.get("/")
    assert overview.status == 200
    assert "Queues" in overview.text and env["NIGHTSHIFT_QUEUE"] in overview.text and "<svg" in overview.text
    assert client.get("/?fragment=1").text.lstrip().startswith("<p class=\"muted\">As of")

    jobs = client.get("/jobs")
    assert jobs.status == 200 and all(i[:13] in jobs.text for i in (dead, running, keyed, with_url))
    assert dead[:13] in client.get("/jobs?state=dead").text and keyed[:13] not in client.get("/jobs?state=dead").text
    assert "found by" not in client.get("/jobs").text.lower()
    assert keyed[:13] in client.get("/jobs?q=order-4711").text
    assert "idempotency key" in client.get("/jobs?q=order-4711").text
    assert dead[:13] in client.get(f"/jobs?q={dead[:13]}").text
    assert with_url[:13] in client.get("/jobs?q=files.example").text
    assert keyed[:13] in client.get("/jobs?task=add").text and dead[:13] not in client.get("/jobs?task=add").text

    page = client.get(f"/jobs/{dead}")
    assert page.status == 200 and "Traceback" in page.text and "host:1:abcd" in page.text and "Retry" in page.text
    progress = client.get(f"/jobs/{running}")
    assert '<progress id="progress" max="100" value="25.0"' in progress.text and "Cancel" in progress.text
    assert client.get("/jobs/" + str(uuid.uuid4())).status == 404
    schedule = client.get("/schedule")
    assert schedule.status == 200 and "Schedule" in schedule.text

    for path in ("/", "/jobs", f"/jobs/{dead}", f"/jobs/{running}", f"/jobs/{with_url}", "/jobs?q=files.example",
                 "/api/overview", "/api/jobs", f"/api/jobs/{dead}", f"/api/jobs/{running}", f"/api/jobs/{with_url}"):
        answer = client.get(path)
        assert answer.status == 200, path
        assert SECRET not in answer.text, f"{path} shows a secret"
    assert "***" in client.get(f"/jobs/{with_url}").text

    headers = client.get("/").headers
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    assert client.get("/static/console.js").status == 200 and client.get("/static/../config.py").status == 404


def test_a_consumer_of_several_queues_shows_each_of_its_queues(env, client, start_worker):
    """A consumer serving two queues records them as one list ("mail,default"): the console names each queue, by
    the rule cleanup and the metrics follow (status.every_queue), and lists the consumer once."""
    queue = env["NIGHTSHIFT_QUEUE"]
    mail = queue + "-mail"
    worker = start_worker(NIGHTSHIFT_QUEUES=f"{mail}=1,{queue}=1")
    wait_until(lambda: client.get("/api/overview").json()["workers"], 10, message="the consumer's heartbeat")
    overview = client.get("/api/overview").json()
    names = [q["name"] for q in overview["queues"]]
    assert not [name for name in names if "," in name] and names.count(mail) == names.count(queue) == 1, names
    served = overview["workers"][0]["queue"]  # the consumer's own list: the service's queue first
    assert sorted(served.split(",")) == sorted([mail, queue]) and len(overview["workers"]) == 1, overview["workers"]
    jobs = client.get("/jobs").text
    assert re.search(rf"<option[^>]*>{re.escape(mail)}</option>", jobs) and served not in jobs
    assert worker.alive()


def test_job_list_pages_by_key_through_ties_and_filters(env, client, monkeypatch):
    from app import ledger
    from app.web import queries
    # 130 jobs with the same created_at (as a bulk submit writes them): paging must still see each one once.
    rows = [{"id": str(uuid.uuid4()), "task": "add", "kwargs": json.dumps({"a": i})} for i in range(130)]
    ledger.insert_jobs(rows, env["NIGHTSHIFT_QUEUE"])
    seen, before = [], None
    while True:
        answer = client.get("/api/jobs?limit=50" + (f"&before={urllib.parse.quote(before)}" if before else "")).json()
        seen += [job["id"] for job in answer["jobs"]]
        before = answer["next"]
        if before is None:
            break
    assert sorted(seen) == sorted(row["id"] for row in rows) and len(seen) == 130
    assert seen == sorted(seen, reverse=True)  # ties broken by id, newest (largest) first

    # A filter that is applied on the fly ends a page at the scan budget, with a cursor that goes on from there.
    monkeypatch.setattr(queries, "SCAN_BUDGET", 40)
    monkeypatch.setattr(queries, "WINDOW", 20)
    target = sorted(rows, key=lambda r: r["id"])[5]["id"]  # far down the newest-first order
    found, before, pages = [], None, 0
    while True:
        page = queries.job_page(queries.Filters(q=f'"a": {json.loads(dict((r["id"], r["kwargs"]) for r in rows)[target])["a"]}}}'),
                                [], before, 10)
        pages += 1
        found += [job["id"] for job in page.jobs]
        assert page.scanned <= 40
        if page.next is None:
            break
        before = page.next
    assert found == [target] and pages >= 3

    api = client.get(f"/api/jobs?queue={env['NIGHTSHIFT_QUEUE']}&task=add&state=queued&limit=5").json()
    assert len(api["jobs"]) == 5 and {job["state"] for job in api["jobs"]} == {"queued"}
    assert client.get("/api/jobs?state=nonsense").status == 400
    assert client.get("/api/jobs?limit=abc").status == 400
    assert client.get("/jobs?before=garbage").status == 200


# -- the JSON API --------------------------------------------------------------------------------------------------

def test_api_submit_get_list_retry_cancel(env, client):
    answer = client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 2, "b": 3}, "key": "k-1"})
    assert answer.status == 201, answer.text
    job_id = answer.json()["id"]
    assert state_of(job_id) == "queued" and on_redis(env, job_id)
    again = client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 2}, "key": "k-1"})
    assert again.status == 200 and again.json() == {"id": job_id, "existing": True}
    later = client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 1}, "delay": 3600})
    assert later.status == 201
    from app import ledger
    assert ledger.get(later.json()["id"]).eta is not None

    assert client.post_json("/api/jobs", {"task": "nope"}).status == 400
    assert "unexpected keyword" in client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 1, "z": 1}}).json()["error"]
    assert client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 1}, "delay": -1}).status == 400
    assert client.post_json("/api/jobs", {"task": "add", "arguments": [1]}).status == 400
    assert client.post_json("/api/jobs", {"task": "add", "bogus": 1}).status == 400
    assert client.request("POST", "/api/jobs", b'{"task": "add"}', {"Content-Type": "text/plain"}).status == 415
    assert client.request("POST", "/api/jobs", b"{", {"Content-Type": "application/json"}).status == 400

    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["task"] == "add" and job["args"] == {"a": 2, "b": 3} and job["state"] == "queued"
    assert client.get("/api/jobs/" + str(uuid.uuid4())).status == 404
    listed = client.get(f"/api/jobs?state=queued&task=add&queue={env['NIGHTSHIFT_QUEUE']}&limit=10").json()
    assert job_id in [j["id"] for j in listed["jobs"]]

    dead = make_dead()
    assert client.post_json(f"/api/jobs/{job_id}/retry", {}).status == 409  # not dead
    retried = client.post_json(f"/api/jobs/{dead}/retry", {})
    assert retried.status == 200 and retried.json()["done"] == [dead]
    assert state_of(dead) == "queued" and on_redis(env, dead)

    assert client.post_json(f"/api/jobs/{job_id}/cancel", {}).json()["done"] == [job_id]
    assert state_of(job_id) == "canceled"
    assert client.post_json(f"/api/jobs/{job_id}/cancel", {}).status == 409

    running = make_running()
    listener = redis.Redis.from_url(env["NIGHTSHIFT_REDIS_URL"]).pubsub(ignore_subscribe_messages=True)
    from app import keys
    listener.subscribe(keys.cancel_channel(env["NIGHTSHIFT_QUEUE"]))
    assert client.post_json(f"/api/jobs/{running}/cancel", {}).status == 200
    assert state_of(running) == "canceled"
    message = wait_until(lambda: listener.get_message(timeout=0.2), 5, message="the cancel on the channel")
    assert message["data"] == running.encode()

    other = make_dead()
    assert client.post_json(f"/api/jobs/{other}/discard", {}).status == 200 and state_of(other) is None

    paused = client.post_json(f"/api/queues/{env['NIGHTSHIFT_QUEUE']}/pause", {})
    assert paused.json() == {"queue": env["NIGHTSHIFT_QUEUE"], "paused": True, "was_paused": False}
    from app import pausing
    assert pausing.is_paused_in_ledger(env["NIGHTSHIFT_QUEUE"])
    client.post_json(f"/api/queues/{env['NIGHTSHIFT_QUEUE']}/resume", {})
    assert not pausing.is_paused_in_ledger(env["NIGHTSHIFT_QUEUE"])

    actions = client.get("/api/actions").json()["actions"]
    assert {a["action"] for a in actions} >= {"retry", "cancel", "discard", "pause", "resume"}
    assert all(a["who"] == "web from 127.0.0.1" for a in actions)
    assert client.get("/api/schedule").json()["tasks"] == [] or True  # no periodic task in this catalog
    overview = client.get("/api/overview").json()
    mine = [q for q in overview["queues"] if q["name"] == env["NIGHTSHIFT_QUEUE"]][0]
    assert mine["waiting"] >= 1 and len(mine["hourly"]) == 12


def test_run_a_periodic_task_now(env, monkeypatch, client):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,periodic_tasks")
    client = Client(console())
    rows = client.get("/api/schedule").json()["tasks"]
    assert "tick_probe" in [r["task"] for r in rows]
    assert "tick_probe" in client.get("/schedule").text
    answer = client.act("run-now", [("task", "tick_probe"), ("next", "/schedule")])
    assert answer.status == 303 and answer.headers["Location"].startswith("/schedule?message=")
    from app import ledger
    ran = ledger.list_jobs(task="tick_probe")
    assert len(ran) == 1 and on_redis(env, ran[0].id)
    assert client.post_json("/api/schedule/tick_probe/run", {}).status == 201
    assert client.post_json("/api/schedule/add/run", {}).status == 404  # not periodic
    assert ledger.actions("tick_probe")[0].action == "run-now"


# -- actions through the pages ---------------------------------------------------------------------------------------

def test_actions_need_confirmation_and_are_recorded(env, client):
    dead = make_dead()
    first = client.act("retry", [("id", dead), ("next", f"/jobs/{dead}")], confirm=False)
    assert state_of(dead) == "dead", "the first POST only asks for confirmation"
    assert dead[:13] in first.text
    done = client.act("retry", [("id", dead), ("next", f"/jobs/{dead}")])
    assert done.status == 303 and done.headers["Location"].startswith(f"/jobs/{dead}?message=retried+1+job")
    assert state_of(dead) == "queued" and on_redis(env, dead)
    page = client.get(done.headers["Location"])
    assert "retried 1 job(s)" in page.text and "web from 127.0.0.1" in page.text  # message, audit row

    queued = submit("add", a=1)
    client.act("cancel", [("id", queued)])
    assert state_of(queued) == "canceled"
    running = make_running()
    client.act("cancel", [("id", running)])
    assert state_of(running) == "canceled"
    gone = make_dead()
    client.act("discard", [("id", gone)])
    assert state_of(gone) is None
    refused = client.act("retry", [("id", queued), ("next", "/")])
    assert "refused+1" in refused.headers["Location"]

    queue = env["NIGHTSHIFT_QUEUE"]
    client.act("pause", [("queue", queue)])
    assert 'badge warn">paused' in client.get("/").text
    client.act("resume", [("queue", queue)])
    assert 'badge warn">paused' not in client.get("/").text

    # Bulk: what the filter shows (only dead jobs), after a confirmation that counts them.
    bulk = [make_dead(message=f"bulk-{i}") for i in range(3)]
    keep = make_dead(task="gives_up")
    filters = [("task", "always_fails"), ("state", "dead"), ("queue", queue)]
    confirm = client.act("bulk-retry", filters, confirm=False)
    assert "3 dead job(s) match" in confirm.text
    client.act("bulk-retry", filters)
    assert [state_of(i) for i in bulk] == ["queued"] * 3 and state_of(keep) == "dead"
    client.act("bulk-discard", [("task", "gives_up"), ("state", "dead")])
    assert state_of(keep) is None

    from app import ledger
    recorded = {(a.action, a.target) for a in ledger.actions(limit=100)}
    assert {("retry", dead), ("cancel", queued), ("cancel", running), ("discard", gone), ("pause", queue),
            ("resume", queue), ("discard", keep)} <= recorded
    assert all(("retry", i) in recorded for i in bulk)
    assert ("retry", queued) in recorded  # refused ones too, with why
    assert ledger.actions(queued)[0].detail.startswith("refused: it is canceled")


def test_cli_actions_are_recorded_too(env):
    from conftest import cli
    dead = make_dead()
    assert cli(env, "retry", dead).returncode == 0
    from app import ledger
    action = ledger.actions(dead)[0]
    assert action.action == "retry" and "@" in action.who and action.detail == "queued again"


def test_csrf_is_required_and_checked(env, client):
    dead = make_dead()
    fields = [("id", dead), ("confirm", "yes")]
    assert client.post_form("/actions/retry", fields).status == 403
    token = client.csrf()
    assert client.post_form("/actions/retry", fields + [("csrf", "0" * 64)]).status == 403
    other = Client(client.app)
    other_token = other.csrf()  # valid for another browser's cookie only
    assert client.post_form("/actions/retry", fields + [("csrf", other_token)]).status == 403
    assert client.post_form("/actions/retry", fields + [("csrf", token)], Origin="https://evil.example").status == 403
    assert state_of(dead) == "dead"
    assert client.post_form("/actions/retry", fields + [("csrf", token)], Origin="http://127.0.0.1:8080").status == 303
    assert state_of(dead) == "queued"
    assert client.post_form("/actions/explode", [("csrf", token)]).status == 404
    assert client.get("/actions/retry").status == 405
    # A local console without a token answers only to loopback names (no DNS rebinding).
    assert Client(client.app, host="evil.example:8080").get("/").status == 421
    assert Client(client.app, host="[::1]:8080").get("/").status == 200


def test_token_protects_pages_and_api(env):
    token = "s3cret-console-token"
    client = Client(console(web_token=token), host="console.example:8080")
    login = client.get("/jobs?state=dead")
    assert login.status == 303 and login.headers["Location"] == "/login?next=%2Fjobs%3Fstate%3Ddead"
    for path in ("/", "/schedule", f"/jobs/{uuid.uuid4()}"):
        assert client.get(path).status == 303
    api = client.get("/api/jobs")
    assert api.status == 401 and api.headers["WWW-Authenticate"].startswith("Bearer") and "error" in api.json()
    assert client.get("/api/jobs", Authorization="Bearer wrong").status == 401
    assert client.get("/api/jobs", Authorization=f"Basic {token}").status == 401
    assert client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 1}}).status == 401
    assert client.get("/api/jobs", Authorization=f"Bearer {token}").status == 200
    created = client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 1}}, Authorization=f"Bearer {token}")
    assert created.status == 201
    assert client.get("/healthz").status == 200 and client.get("/static/console.css").status == 200

    page = client.get("/login?next=/jobs")
    assert page.status == 200 and 'type="password"' in page.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    wrong = client.post_form("/login", {"csrf": csrf, "token": "nope", "next": "/jobs"})
    assert wrong.status == 401 and "nightshift_session" not in client.cookies
    assert client.post_form("/login", {"token": token, "next": "/jobs"}).status == 403  # no CSRF token
    right = client.post_form("/login", {"csrf": csrf, "token": token, "next": "//evil.example/x"})
    assert right.status == 303 and right.headers["Location"] == "/"  # never an open redirect
    assert "HttpOnly" in right.headers["Set-Cookie"] and "SameSite=Strict" in right.headers["Set-Cookie"]
    assert client.get("/").status == 200 and client.get("/api/overview").status == 200
    assert token not in client.get("/").text and token not in client.get("/api/overview").text

    # A session (not a bearer token) writes through the API only with the page's CSRF token in a header.
    job = client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 1}})
    assert job.status == 403
    csrf = client.csrf()
    assert client.post_json("/api/jobs", {"task": "add", "arguments": {"a": 1}}, **{"X-CSRF-Token": csrf}).status == 201

    forged = Client(client.app, host="console.example:8080")
    forged.cookies["nightshift_session"] = "9999999999." + "0" * 64
    assert forged.get("/").status == 303
    client.post_form("/logout", {"csrf": csrf})
    assert client.get("/").status == 303


def test_read_only_hides_and_refuses_every_action(env):
    client = Client(console(web_readonly=True))
    dead = make_dead()
    queued = submit("add", a=1)
    for path in ("/", f"/jobs/{dead}", f"/jobs/{queued}", "/jobs?state=dead", "/schedule"):
        text = client.get(path).text
        assert "/actions/" not in text and "read-only" in text, path
    token = client.csrf()
    for action, fields in (("retry", [("id", dead)]), ("discard", [("id", dead)]), ("cancel", [("id", queued)]),
                           ("pause", [("queue", env["NIGHTSHIFT_QUEUE"])]), ("bulk-retry", [("state", "dead")]),
                           ("run-now", [("task", "nightshift_cleanup")])):
        for confirm in ("", "yes"):
            assert client.post_form(f"/actions/{action}", [("csrf", token), ("confirm", confirm)] + fields).status == 403
    for path in ("/api/jobs", f"/api/jobs/{dead}/retry", f"/api/jobs/{queued}/cancel", f"/api/jobs/{dead}/discard",
                 f"/api/queues/{env['NIGHTSHIFT_QUEUE']}/pause", "/api/schedule/x/run"):
        assert client.post_json(path, {"task": "add", "arguments": {"a": 1}}).status == 403, path
    assert state_of(dead) == "dead" and state_of(queued) == "queued"
    from app import ledger, pausing
    assert not pausing.is_paused_in_ledger(env["NIGHTSHIFT_QUEUE"]) and ledger.actions() == []


# -- the ledger upgrade ------------------------------------------------------------------------------------------

def test_an_older_ledger_gets_the_console_indexes_and_the_audit_table(env):
    from app import db, schema
    from app.models import Action, Job
    database = db.database.obj
    new_indexes = ["job_created_at_id", "job_state_created_at_id", "job_task_created_at_id"]  # the console's
    assert set(new_indexes) <= {index._name for index in Job._meta.fields_to_index()}
    for name in new_indexes:
        database.execute_sql(f'DROP INDEX "{name}"')
    database.execute_sql(f'DROP TABLE "{Action._meta.table_name}"')
    schema._url = None
    schema.open_ledger(env["NIGHTSHIFT_DATABASE_URL"], create=False)  # a producer's upgrade path
    present = {index.name for index in database.get_indexes(Job._meta.table_name)}
    assert set(new_indexes) <= present and database.table_exists(Action._meta.table_name)


# -- the real server -------------------------------------------------------------------------------------------

def start_console(env, *args: str, **overrides) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app", "web", "--port", str(port), *args],
                            env=env.full(**overrides), cwd=env.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"console exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
    wait_until(up, 20, 0.1, "the console to answer")
    return proc, port


def fetch(port: int, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
    response = conn.getresponse()
    return response.status, response.read()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_server_process_serves_refuses_open_binds_and_stays_small(env):
    refused = subprocess.run([sys.executable, "-m", "app", "web", "--bind", "0.0.0.0", "--port", "0"],
                             env=env.full(), cwd=env.tmp, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "without a token" in refused.stderr and "NIGHTSHIFT_WEB_TOKEN" in refused.stderr

    dead = make_dead()
    proc, port = start_console(env, "--bind", "0.0.0.0", NIGHTSHIFT_WEB_TOKEN="tok-" + "x" * 20)
    try:
        assert fetch(port, "/api/jobs")[0] == 401
        status, body = fetch(port, f"/api/jobs/{dead}", {"Authorization": "Bearer tok-" + "x" * 20})
        assert status == 200 and json.loads(body)["state"] == "dead"
        status, body = fetch(port, "/api/jobs", {"Authorization": "Bearer tok-" + "x" * 20,
                                                 "Content-Type": "application/json"}, "POST",
                             json.dumps({"task": "add", "arguments": {"a": 1}}).encode())
        assert status == 201 and state_of(json.loads(body)["id"]) == "queued"
        for _ in range(20):
            for path in ("/", "/jobs", f"/jobs/{dead}", "/schedule", "/api/overview"):
                fetch(port, path, {"Authorization": "Bearer tok-" + "x" * 20})
        assert rss_mb(proc.pid) < 60, f"console RSS {rss_mb(proc.pid):.1f} MB"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_consumer_and_submit_never_import_the_web_stack(env):
    code = ("import sys; import app.cli, app.worker, app.consumer, app.producer; from app.cli import main; "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('jinja2', 'waitress', 'markupsafe') "
            "or m.startswith('app.web')]; print(loaded); sys.exit(1 if loaded else 0)")
    proc = subprocess.run([sys.executable, "-c", code], env=env.full(), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ...and nothing in app/ outside the CLI's web command imports it.
    for path in (ROOT / "app").rglob("*.py"):
        if "web" in path.parts or path.name == "web.py":
            continue
        imports = re.search(r"^\s*(from app\.web|import app\.web|from app import .*\bweb\b)", path.read_text(), re.M)
        assert not imports, f"{path} imports the console"

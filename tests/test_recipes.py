"""The recipe tasks end to end: submitted like a user would, run by a real worker process, against real servers
(aiosmtpd, http.server) on 127.0.0.1, real images and the test's ledger database."""
from __future__ import annotations

import datetime
import json
import subprocess
import time
import urllib.parse

import pytest
from PIL import Image

from conftest import cli, wait_until
from servers import MailSink, scripted, start_http_server, start_smtp, stop_http_server

SECRET = "whsec_cmVjaXBlcy13ZWJob29rLXNlY3JldA=="  # a Standard Webhooks secret: whsec_ + base64


def job(job_id: str):
    from app.models import Job
    return Job.get_by_id(job_id)


def finished(job_id: str, timeout: float = 30, state: str | None = None):
    """Wait for the job to finish; return its row (asserting `state` when given)."""
    from app.models import FINISHED
    row = wait_until(lambda: (j := job(job_id)).state in FINISHED and j, timeout, message=f"job {job_id} to finish")
    if state is not None:
        assert row.state == state, (row.state, row.reason, row.error)
    return row


def outcomes(job_id: str) -> list[str]:
    from app import ledger
    return [a.outcome for a in ledger.attempts(job_id)]


def submitted(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def ledger_database():
    from app.db import database
    return database.obj


@pytest.fixture
def http_server():
    servers = []

    def start(respond):
        servers.append(start_http_server(respond))
        return servers[-1]
    yield start
    for server in servers:
        stop_http_server(server)


@pytest.fixture
def smtp():
    sink = MailSink()
    controller, port = start_smtp(sink)
    yield sink, f"smtp://127.0.0.1:{port}?timeout=5"
    controller.stop()


# -- e-mail ---------------------------------------------------------------------------------------------------------

def test_email_batch_sends_each_recipient_exactly_once_despite_redelivery(env, start_worker, smtp, tmp_path):
    from app import submit
    from app.models import Job
    from helpers import mail
    sink, smtp_url = smtp
    recipients = tmp_path / "recipients.csv"
    rows = ["email,name,code"] + [f"user{i}@example.com,User {i},C{i:03d}" for i in range(200)]
    rows[51:51] = ["not-an-address,Broken,X"]           # line 52: rejected
    rows.append("USER7@example.com,Seven again,C007")      # duplicate: sent once
    recipients.write_text("\n".join(rows) + "\n")
    start_worker(NIGHTSHIFT_SMTP_URL=smtp_url, NIGHTSHIFT_EMAIL_RATE="200", NIGHTSHIFT_WORKERS="4",
                 NIGHTSHIFT_EMAIL_FROM="Team <team@example.com>")

    batch_id = submit("send_email_batch", recipients=str(recipients), subject="Hello {name}",
                      body="Hi {name}, your code is {code}.")
    batch = finished(batch_id, state="succeeded")
    result = json.loads(batch.result)
    assert (result["batch_id"], result["queued"], result["rejected"], result["duplicates"]) == (batch_id, 200, 1, 1)
    assert result["errors"][0]["line"] == 52

    sends = lambda: list(Job.select().where(Job.task == "send_email"))  # noqa: E731
    wait_until(lambda: len(sends()) == 200 and all(j.state == "succeeded" for j in sends()), 60,
               message="200 e-mails sent")
    assert len(sink.messages) == 200

    # Forced redelivery: the ledger is told a send's worker died after sending, before recording success.
    # Recovery runs it again as a new attempt; the sent marker keeps the recipient from a second copy.
    redelivered = sends()[0]
    Job.update(state="running", worker="ghost:1", finished_at=None,
               lease_expires_at=datetime.datetime.utcnow() - datetime.timedelta(seconds=1)).where(
        Job.id == redelivered.id).execute()
    again = wait_until(lambda: (j := job(redelivered.id)).state == "succeeded" and j.attempt == 2 and j, 20,
                       message="the redelivered send to finish")
    assert json.loads(again.result)["status"] == "skipped"

    # And the whole batch submitted again under the same batch id: nobody gets a second copy.
    second = submit("send_email_batch", recipients=str(recipients), subject="Hello {name}",
                    body="Hi {name}, your code is {code}.", batch_id=batch_id)
    finished(second, state="succeeded")
    wait_until(lambda: len(sends()) == 400 and all(j.state == "succeeded" for j in sends()), 60,
               message="the repeated batch to finish")
    assert sum(json.loads(j.result)["status"] == "skipped" for j in sends()) == 201

    by_recipient: dict[str, int] = {}
    for message in sink.messages:
        for address in message["to"]:
            by_recipient[address.lower()] = by_recipient.get(address.lower(), 0) + 1
    assert by_recipient == {f"user{i}@example.com": 1 for i in range(200)}
    seven = sink.to("user7@example.com")[0]["message"]
    assert seven["Subject"] == "Hello User 7" and "your code is C007." in seven.get_content()
    assert seven["From"] == "Team <team@example.com>"
    assert mail.sent_count(ledger_database(), batch_id) == 200


def test_email_refused_recipient_fails_alone_without_retries(env, start_worker, smtp):
    from app import submit
    sink, smtp_url = smtp
    sink.rules["gone@example.com"] = ["550 5.1.1 No such user"]
    start_worker(NIGHTSHIFT_SMTP_URL=smtp_url)
    gone = submit("send_email", batch_id="b1", to="gone@example.com", subject="s", body="b")
    ok = submit("send_email", batch_id="b1", to="ok@example.com", subject="s", body="b")
    dead = finished(gone, state="dead")
    assert "SmtpPermanentError" in dead.error and "550" in dead.error and "not retried" in dead.reason
    assert outcomes(gone) == ["failed"]
    finished(ok, state="succeeded")
    assert [m["to"] for m in sink.messages] == [["ok@example.com"]]


# -- webhooks -------------------------------------------------------------------------------------------------------

def test_webhook_retries_500_and_429_then_delivers_signed_with_one_delivery_id(env, start_worker, http_server):
    from helpers import webhooks
    receiver = http_server(scripted((500, {}, b"oops"), (429, {"Retry-After": "3"}, b"slow down"), (200, {}, b"ok")))
    start_worker(NIGHTSHIFT_WEBHOOK_SECRET=SECRET, NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE="true",
                 NIGHTSHIFT_WEBHOOK_LEGACY_SIGNATURE="true")  # the old headers, while receivers move
    job_id = submitted(cli(env, "submit", "deliver_webhook", "--arg", f"url={receiver.url}/hooks",
                           "--arg", 'payload={"order": 7, "status": "paid"}', "--arg", "event=order.paid"))
    row = finished(job_id, 40, state="succeeded")
    assert outcomes(job_id) == ["failed", "failed", "succeeded"]
    assert json.loads(row.result)["status"] == 200

    requests = receiver.requests
    assert len(requests) == 3
    assert {r["headers"]["X-Nightshift-Delivery"] for r in requests} == {job_id}
    for request in requests:
        assert json.loads(request["body"]) == {"order": 7, "status": "paid"}
        assert webhooks.verify_signature(SECRET, request["body"], request["headers"]["X-Nightshift-Timestamp"],
                                         request["headers"]["X-Nightshift-Signature"])
    from app import ledger
    tries = ledger.attempts(job_id)
    assert (tries[2].started_at - tries[1].finished_at).total_seconds() >= 2.9  # honoured Retry-After: 3


def test_webhook_client_errors_and_private_addresses_are_final(env, start_worker, http_server):
    from app import submit
    receiver = http_server(scripted((404, {}, b"no such hook")))
    strict = start_worker(NIGHTSHIFT_WEBHOOK_SECRET=SECRET, NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE="false")
    refused = submit("deliver_webhook", url=receiver.url, payload={"a": 1})
    dead = finished(refused, state="dead")
    assert "private or loopback" in dead.error and outcomes(refused) == ["failed"]
    assert receiver.requests == []
    strict.stop()
    start_worker(NIGHTSHIFT_WEBHOOK_SECRET=SECRET, NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE="true")
    missing = submit("deliver_webhook", url=receiver.url + "/gone", payload={"a": 1})
    assert "404" in finished(missing, state="dead").error and outcomes(missing) == ["failed"]


# -- thumbnails -----------------------------------------------------------------------------------------------------

def test_thumbnails_of_expected_size_and_bad_input_fails_once(env, start_worker, tmp_path):
    from app import submit
    Image.new("RGB", (800, 600), "red").save(tmp_path / "a.jpg")
    Image.new("RGBA", (300, 900), (0, 0, 255, 100)).save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_text("not an image")
    start_worker()
    a = submit("make_thumbnail", path=str(tmp_path / "a.jpg"), width=200)
    b = submit("make_thumbnail", path=str(tmp_path / "b.png"), width=100, output=str(tmp_path / "b-small.png"))
    c = submit("make_thumbnail", path=str(tmp_path / "c.jpg"), width=100)
    assert json.loads(finished(a, state="succeeded").result)["height"] == 150
    finished(b, state="succeeded")
    with Image.open(tmp_path / "a.thumb-200.jpg") as image:
        assert image.size == (200, 150)
    with Image.open(tmp_path / "b-small.png") as image:
        assert image.size == (100, 300)
    dead = finished(c, state="dead")
    assert "not an image" in dead.error and outcomes(c) == ["failed"]


def test_killed_thumbnail_leaves_no_partial_file_and_recovers(env, start_worker, tmp_path):
    from app import submit
    source = tmp_path / "big.tiff"
    Image.effect_noise((3000, 2000), 80).convert("RGB").save(source)  # its PNG takes a second or two to write
    target = tmp_path / "big.thumb-3000.png"
    worker = start_worker()
    job_id = submit("make_thumbnail", path=str(source), width=3000)
    wait_until(lambda: list(tmp_path.glob(".big.thumb-3000.png.*.tmp")), 20, interval=0.01,
               message="the thumbnail to be written")
    time.sleep(0.3)
    worker.kill()
    assert not target.exists()  # only the hidden temporary file; never a half-written thumbnail
    start_worker()
    finished(job_id, 40, state="succeeded")
    assert outcomes(job_id) == ["lease-lost", "succeeded"]
    with Image.open(target) as image:
        image.load()
        assert image.size == (3000, 2000)


# -- API pull -------------------------------------------------------------------------------------------------------

PAGES, PER_PAGE = 10, 25


def paged_api(handler):
    page = int(urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query).get("page", ["0"])[0])
    time.sleep(0.25)
    records = [{"id": page * PER_PAGE + i, "value": f"v{page}-{i}"} for i in range(PER_PAGE)]
    body = {"records": records, "next": f"/items?page={page + 1}" if page + 1 < PAGES else None}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def test_api_pull_killed_and_resumed_stores_every_record_once(env, start_worker, http_server):
    from app import submit
    from helpers import api_pull
    api = http_server(paged_api)
    overrides = {"NIGHTSHIFT_PULL_ALLOW_PRIVATE": "true", "NIGHTSHIFT_PULL_RATE": "0"}
    worker = start_worker(**overrides)
    job_id = submit("pull_pages", url=api.url + "/items", name="catalog")
    wait_until(lambda: (p := job(job_id).progress) and json.loads(p)["done"] >= 3, 20, interval=0.02,
               message="three pages pulled")
    worker.kill()
    committed = len(api_pull.pulled_records(ledger_database(), "catalog")) // PER_PAGE
    assert 3 <= committed < PAGES
    start_worker(**overrides)
    row = finished(job_id, 40, state="succeeded")
    assert outcomes(job_id) == ["lease-lost", "succeeded"]
    result = json.loads(row.result)
    assert result["done"] and result["pages"] == PAGES - committed
    ids = [r["id"] for r in api_pull.pulled_records(ledger_database(), "catalog")]
    assert ids and sorted(ids) == list(range(PAGES * PER_PAGE))
    pages = [int(urllib.parse.parse_qs(urllib.parse.urlsplit(r["path"]).query).get("page", ["0"])[0])
             for r in api.requests]
    assert pages[-(PAGES - committed):] == list(range(committed, PAGES))  # resumed, not started over
    assert len(pages) <= PAGES + 1  # at most the page in flight at the kill was fetched twice


# -- bulk records -------------------------------------------------------------------------------------------------

def test_bulk_import_100k_rows_twice(env, start_worker, tmp_path):
    from app import submit
    from helpers import records
    source = tmp_path / "people.csv"
    bad = 0
    with open(source, "w") as handle:
        handle.write("id,name,score\n")
        for i in range(100_000):
            if i % 1000 == 999:
                handle.write(f",no id,{i}\n")
                bad += 1
            else:
                handle.write(f"{i},Person {i},{i % 97}\n")
    start_worker()
    started = time.monotonic()
    first = submit("import_records", path=str(source))
    row = finished(first, 60, state="succeeded")
    report = json.loads(row.result)
    assert (report["rows"], report["inserted"], report["updated"], report["unchanged"], report["rejected"]) == (
        100_000, 100_000 - bad, 0, 0, bad)
    assert report["errors"][0] == {"line": 1001, "error": "missing or unusable 'id'"}
    assert json.loads(row.progress)["done"] == 100_001

    second = submit("import_records", path=str(source))
    report = json.loads(finished(second, 60, state="succeeded").result)
    assert (report["inserted"], report["updated"], report["unchanged"], report["rejected"]) == (0, 0, 100_000 - bad,
                                                                                               bad)
    assert records.dataset_count(ledger_database(), "people") == 100_000 - bad
    assert time.monotonic() - started < 90  # ~17 s on an idle machine


# -- long computation -----------------------------------------------------------------------------------------------

def test_long_computation_reports_progress_in_the_ledger(env, start_worker):
    from app import submit
    start_worker()
    job_id = submit("count_primes", limit=300_000_000)
    seen = wait_until(lambda: (j := job(job_id)).progress and j.state == "running" and json.loads(j.progress), 30,
                      interval=0.02, message="progress while running")
    assert seen["total"] == 300_000_000 and 0 < seen["done"] < 300_000_000
    row = finished(job_id, 120, state="succeeded")
    assert json.loads(row.result) == 16_252_325
    assert json.loads(row.progress)["done"] == 300_000_000


def test_webhook_temporary_errors_use_up_retries_then_go_dead(env, start_worker, http_server):
    receiver = http_server(scripted((503, {}, b"down")))
    start_worker(NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE="true")
    job_id = submitted(cli(env, "submit", "deliver_webhook", "--retries", "1", "--arg", f"url={receiver.url}",
                           "--arg", "payload=[1, 2]"))
    dead = finished(job_id, 30, state="dead")
    assert outcomes(job_id) == ["failed", "failed"] and len(receiver.requests) == 2
    assert "503" in dead.error and "no retries left" in dead.reason

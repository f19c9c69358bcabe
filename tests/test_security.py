"""Nothing leaks (issue 11): secrets masked everywhere they could be shown, log lines bounded, credentials and
files confined, private addresses refused, webhooks signed the Standard Webhooks way, a wrong signing key told at
submit time. Real servers throughout: a Redis with requirepass, local HTTP receivers, a Sentry receiver."""
from __future__ import annotations

import json

import pytest

from conftest import PrivateRedis, cli, free_port, wait_until

REDIS_PASSWORD = "R@dis-pw"          # a raw "@" in the password: redis-py and psycopg accept it
QUERY_PASSWORD = "Qs-pw-4711"
DB_PASSWORD = "Db-pw-0815"
SSL_PASSWORD = "Ssl-pw-1234"
DSN_KEY = "dsnkey0123456789abcdef"
URL_TOKEN = "Tok-sec-9876"


def job_state(job_id: str) -> str | None:
    from app import ledger
    job = ledger.get(job_id)
    return job.state if job else None


@pytest.fixture
def locked_redis(tmp_path):
    server = PrivateRedis(tmp_path / "locked-redis", password=REDIS_PASSWORD).start()
    yield server
    server.stop()


def test_secrets_in_urls_dsn_and_arguments_are_masked_by_structure_everywhere(env, monkeypatch, locked_redis,
                                                                              start_worker):
    """Item 4: a raw '@' in a Redis password, ?password= in a URL, SENTRY_DSN's key and a token in a URL argument
    appear nowhere: not in `config`, start-up errors, the producer's and worker's logs, `show`, `dead`, `status`,
    `health`."""
    redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    env.set(monkeypatch, NIGHTSHIFT_REDIS_URL=redis_url, NIGHTSHIFT_LOG_FORMAT="text")
    secrets = [REDIS_PASSWORD, "dis-pw", QUERY_PASSWORD, DB_PASSWORD, SSL_PASSWORD, DSN_KEY, URL_TOKEN]
    shown: dict[str, str] = {}

    out = cli(env, "config", SENTRY_DSN=f"https://{DSN_KEY}@o1.ingest.example.com/42",
              NIGHTSHIFT_DATABASE_URL=f"postgresql://ns:{DB_PASSWORD}@127.0.0.1:1/x?sslpassword={SSL_PASSWORD}",
              NIGHTSHIFT_SMTP_URL=f"smtp://mailer:{QUERY_PASSWORD}@127.0.0.1:25")
    assert out.returncode == 0, out.stderr
    shown["config"] = out.stdout + out.stderr
    assert f"NIGHTSHIFT_REDIS_URL=redis://***@127.0.0.1:{locked_redis.port}/0" in out.stdout
    assert "SENTRY_DSN=https://***@o1.ingest.example.com/42" in out.stdout

    closed = free_port()
    failed = start_worker("bad-redis", wait=False, NIGHTSHIFT_REDIS_URL=f"redis://127.0.0.1:{closed}/0?password="
                                                                        f"{QUERY_PASSWORD}")
    assert failed.proc.wait(30) == 1
    shown["start-up error"] = failed.log()
    assert "cannot reach Redis at" in failed.log() and "password=***" in failed.log()

    worker = start_worker(NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE="true")
    hook = f"http://127.0.0.1:{closed}/hook?token={URL_TOKEN}&page=1"
    out = cli(env, "submit", "deliver_webhook", "--arg", f"url={hook}", "--arg", 'payload={"a": 1}',
              "--retries", "0", NIGHTSHIFT_LOG_LEVEL="debug")  # a command logs its "submitted" line only at debug
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    shown["submit"] = out.stderr
    wait_until(lambda: job_state(job_id) == "dead", 20, message="the delivery to a closed port to fail")
    for command in (("show", job_id), ("show", job_id, "--json"), ("dead",), ("dead", "--json"),
                    ("status", "--json"), ("status",), ("health",), ("list", "--json")):
        out = cli(env, *command)
        shown[" ".join(command)] = out.stdout + out.stderr
    assert worker.stop() == 0
    shown["worker log"] = worker.log()

    assert "token=***&page=1" in shown["show " + job_id]  # the argument is shown, its secret is not
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} shown by {where}:\n{text[:3000]}"


HEADER_SECRETS = {"Auth": "Auth-hdr-1357", "X-Client-Key": "Client-key-2468", "Sig": "Sig-hdr-9753",
                  "Proxy-Authorization": "Basic cHJveHk6cHc=", "X-Upload-Token": "Upload-tok-8642"}


def test_header_names_are_masked_by_the_rules_of_query_parameters(env):
    """Item 4: header names are structural. `headers={"Auth": ...}` in a job's arguments is masked in the
    "submitted" log line, `show`, `show --json` and `list --json`, as `?auth=` is in a URL; the short names are
    masked only as header names (an argument called `key` stays readable), and harmless headers stay shown."""
    headers = {**HEADER_SECRETS, "Content-Type": "application/json"}
    out = cli(env, "submit", "deliver_webhook", "--arg", "url=http://127.0.0.1:9/hook?auth=Url-auth-1122",
              "--arg", 'payload={"key": "customer_id"}', "--arg", f"headers={json.dumps(headers)}",
              NIGHTSHIFT_LOG_LEVEL="debug")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    shown = {"submitted log line": out.stderr}
    for command in (("show", job_id), ("show", job_id, "--json"), ("list", "--json")):
        listed = cli(env, *command)
        assert listed.returncode == 0, listed.stderr
        shown[" ".join(command)] = listed.stdout + listed.stderr
    [args] = [job["args"] for job in json.loads(shown["list --json"])]
    assert args["headers"] == {**{name: "***" for name in HEADER_SECRETS}, "Content-Type": "application/json"}
    assert args["payload"] == {"key": "customer_id"} and args["url"].endswith("?auth=***")
    for where, text in shown.items():
        assert '"Content-Type": "application/json"' in text or "'Content-Type': 'application/json'" in text, where
        for secret in [*HEADER_SECRETS.values(), "cHJveHk6cHc", "Url-auth-1122"]:
            assert secret not in text, f"{secret!r} shown by {where}:\n{text[:3000]}"


def test_every_value_in_a_log_line_is_bounded_with_its_size_noted(env, monkeypatch, start_worker):
    """Item 5: a 3 MB argument makes neither a 3 MB "submitted" line nor a 3 MB "started" or failure line."""
    big = "x" * (3 * 1024 * 1024)
    jobs = env.tmp / "big.jsonl"
    jobs.write_text(json.dumps({"message": big}) + "\n")
    out = cli(env, "submit", "always_fails", "--file", str(jobs), "--retries", "0", NIGHTSHIFT_LOG_LEVEL="debug")
    assert out.returncode == 0, out.stderr
    [submitted] = [json.loads(line) for line in out.stderr.splitlines() if '"submitted"' in line]
    job_id = submitted["job_id"]
    assert "3.0 MB" in submitted["args"]["message"] and len(out.stderr) < 5000

    worker = start_worker()
    wait_until(lambda: job_state(job_id) == "dead", 20, message="dead")
    assert worker.stop() == 0
    lines = worker.log().splitlines()
    started = [json.loads(line) for line in lines if '"started"' in line and job_id in line]
    assert started and "3.0 MB" in started[0]["args"]["message"]
    longest = max(len(line) for line in lines)
    assert longest < 30000, f"a {longest}-character log line"  # a traceback keeps up to 20000 characters


# -- item 1: Sentry ------------------------------------------------------------------------------------------------

API_KEY = "Api-key-55aa77"
SIGNING_KEY = "Signing-key-31337"
WEBHOOK_SECRET = "whsec_" + __import__("base64").b64encode(b"webhook-secret-bytes-0123").decode()
SMTP_PASSWORD = "Smtp-pw-2468"


def test_no_secret_reaches_sentry_from_a_failed_job(env, monkeypatch, locked_redis, start_worker):
    """Item 1: a real worker reports a failed delivery (frame variables on): neither the settings' secrets nor the
    job's X-Api-Key header nor the token in its URL is in any serialized event."""
    from servers import scripted, start_http_server, stop_http_server
    from test_monitoring import SentryStub
    from conftest import USE_PG

    receiver = start_http_server(scripted((500, {}, b"receiver is down")))
    sentry = SentryStub()
    try:
        values = {"NIGHTSHIFT_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{locked_redis.port}/0",
                  "NIGHTSHIFT_SIGNING_KEY": SIGNING_KEY, "NIGHTSHIFT_WEBHOOK_SECRET": WEBHOOK_SECRET,
                  "NIGHTSHIFT_SMTP_URL": f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:25",
                  "NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE": "true"}
        secrets = [REDIS_PASSWORD, "dis-pw", SIGNING_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET[6:], SMTP_PASSWORD,
                   DSN_KEY, API_KEY, URL_TOKEN]
        if USE_PG:  # a password PostgreSQL (trust auth) ignores, but the URL carries
            url = env["NIGHTSHIFT_DATABASE_URL"].replace("postgres@", f"postgres:{DB_PASSWORD}@")
            values["NIGHTSHIFT_DATABASE_URL"] = url
            secrets.append(DB_PASSWORD)
        env.set(monkeypatch, **values)
        from app import submit
        job_id = submit("deliver_webhook", retries=0, url=f"{receiver.url}/hook?token={URL_TOKEN}",
                        payload={"order": 1}, headers={"X-Api-Key": API_KEY})
        dsn = f"http://{DSN_KEY}@127.0.0.1:{sentry.server.server_port}/1"
        worker = start_worker(SENTRY_DSN=dsn)
        wait_until(lambda: job_state(job_id) == "dead", 20, message="the delivery to fail")
        mine = lambda: [e for e in sentry.events if e.get("tags", {}).get("job_id") == job_id]  # noqa: E731
        wait_until(mine, 15, message="the failure's Sentry event")
        assert worker.stop() == 0
        assert receiver.requests[0]["headers"]["X-Api-Key"] == API_KEY  # the job did send its secret...
        [event] = [e for e in mine() if e.get("exception")]
        frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
        assert any(f.get("vars") for f in frames)  # ...frame variables are still reported...
        serialized = json.dumps(sentry.events)
        for secret in secrets:  # ...but no secret is in any event
            assert secret not in serialized, f"{secret!r} sent to Sentry"
        assert "Settings(" not in serialized and "/hook?token=***" in serialized
    finally:
        sentry.close()
        stop_http_server(receiver)


# -- item 3: the files root --------------------------------------------------------------------------------------

def test_file_tasks_read_and_write_only_under_the_files_root(env, monkeypatch, start_worker):
    """Item 3: /etc/passwd, a symlink out of the root and a `../` output are refused as permanent errors that say
    so; a relative path starts in the root."""
    from PIL import Image

    from app import ledger, submit
    root = env.tmp / "files"
    root.mkdir()
    env.set(monkeypatch, NIGHTSHIFT_FILES_ROOT=f"{root}:{env.tmp / 'more-files'}")
    (root / "ok.txt").write_text("hello")
    (root / "link.txt").symlink_to("/etc/passwd")
    Image.new("RGB", (40, 30), "red").save(root / "a.png")
    outside = {
        submit("checksum_file", path="/etc/passwd"): "path '/etc/passwd'",
        submit("checksum_file", path=str(root / "link.txt")): "link.txt",
        submit("checksum_file", path="../ledger.db"): "'../ledger.db'",
        submit("import_records", path="/etc/passwd"): "path '/etc/passwd'",
        submit("send_email_batch", recipients="/etc/passwd", subject="s", body="b"): "recipients '/etc/passwd'",
        submit("make_thumbnail", path=str(root / "a.png"), width=10, output=str(root / ".." / "escape.png")):
            "output ",
    }
    inside = submit("checksum_file", path="ok.txt")
    thumb = submit("make_thumbnail", path="a.png", width=10)
    worker = start_worker()
    wait_until(lambda: all(job_state(j) in ("dead", "succeeded") for j in [*outside, inside, thumb]), 20,
               message="every file job to end")
    assert worker.stop() == 0
    for job_id, quoted in outside.items():
        job = ledger.get(job_id)
        assert job.state == "dead" and job.attempt == 1, (job.task, job.state, job.error)  # not retried
        assert "outside NIGHTSHIFT_FILES_ROOT" in job.error and quoted in job.error, job.error
    assert not (env.tmp / "escape.png").exists()
    assert ledger.get(inside).state == "succeeded" and ledger.get(thumb).state == "succeeded"
    assert (root / "a.thumb-10.png").exists()

    out = cli(env, "status", NIGHTSHIFT_FILES_ROOT="/")
    assert out.returncode == 2 and "NIGHTSHIFT_FILES_ROOT='/' is invalid: must not be /" in out.stderr


# -- item 2: credentials only to the first origin -------------------------------------------------------------------

def test_pull_sends_credentials_only_to_the_first_urls_origin(tmp_path):
    """Item 2: page 1 names a next page on another server: refused (nothing sent there), or, when the task asks,
    followed without the caller's headers."""
    import peewee

    from helpers import api_pull
    from helpers.errors import PermanentError
    from servers import scripted, start_http_server, stop_http_server

    other = start_http_server(scripted((200, {"Content-Type": "application/json"},
                                        json.dumps({"records": [{"id": 2}], "next": None}).encode())))
    first = start_http_server(scripted((200, {"Content-Type": "application/json"},
                                        json.dumps({"records": [{"id": 1}],
                                                    "next": f"{other.url}/collect"}).encode())))
    database = peewee.SqliteDatabase(str(tmp_path / "pull.db"))
    secret = {"Authorization": f"Bearer {URL_TOKEN}", "X-Api-Key": API_KEY}
    try:
        with pytest.raises(PermanentError, match="another origin"):
            api_pull.pull_pages(database, f"{first.url}/items", name="p1", headers=secret, allow_private=True)
        assert other.requests == []
        result = api_pull.pull_pages(database, f"{first.url}/items", name="p2", headers=secret,
                                     allow_private=True, follow_other_origins=True)
        assert result["done"] and result["stored_records"] == 2
        [sent] = other.requests
        assert "Authorization" not in sent["headers"] and "X-Api-Key" not in sent["headers"]
        assert all(r["headers"]["X-Api-Key"] == API_KEY for r in first.requests)  # the first origin still gets them
    finally:
        stop_http_server(first)
        stop_http_server(other)


# -- item 6: the private-address guard -----------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["64:ff9b::7f00:1", "64:ff9b::a00:1", "2002:7f00:1::1", "::127.0.0.1",
                                  "::ffff:127.0.0.1", "::ffff:a9fe:a9fe", "2002:c0a8:101::1"])
def test_ipv6_addresses_that_embed_a_private_ipv4_are_refused(host):
    """Item 6: NAT64, 6to4, IPv4-compatible and IPv4-mapped forms of loopback/private/link-local addresses are
    refused before any connection, as a permanent error."""
    from helpers import http
    from helpers.errors import PermanentError
    with pytest.raises(PermanentError, match="private or loopback"):
        http.request("GET", f"http://[{host}]:{free_port()}/", timeout=2)


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(tmp_path):
    """Item 6: the connection goes to the address that was checked, and TLS still checks the certificate against
    the URL's host name (a certificate for another name is refused)."""
    import http.server
    import ssl
    import threading

    import trustme

    from helpers import http as nhttp
    from helpers.errors import PermanentError

    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    servers = []

    def serve(name: str) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(name).configure_cert(context)

        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_port

    try:
        good, wrong = serve("localhost"), serve("other.example")
        response = nhttp.request("GET", f"https://localhost:{good}/", allow_private=True, ssl_context=client)
        assert response.status == 200 and response.body == b"ok"
        with pytest.raises(PermanentError, match="certificate"):
            nhttp.request("GET", f"https://localhost:{wrong}/", allow_private=True, ssl_context=client)
        with pytest.raises(PermanentError, match="private or loopback"):
            nhttp.request("GET", f"https://localhost:{good}/", ssl_context=client)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# -- item 8: Standard Webhooks ----------------------------------------------------------------------------------

def test_webhook_deliveries_verify_with_the_standardwebhooks_library(env, monkeypatch, start_worker):
    """Item 8: a real delivery verifies with the `standardwebhooks` package and the whsec_ secret; the old
    X-Nightshift-* headers come only while NIGHTSHIFT_WEBHOOK_LEGACY_SIGNATURE asks for them."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from app import submit
    from servers import scripted, start_http_server, stop_http_server
    receiver = start_http_server(scripted((200, {}, b"ok")))
    try:
        env.set(monkeypatch, NIGHTSHIFT_WEBHOOK_SECRET=WEBHOOK_SECRET, NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE="true")
        job_id = submit("deliver_webhook", url=f"{receiver.url}/hook", payload={"order": 7, "note": "café"})
        worker = start_worker()
        wait_until(lambda: job_state(job_id) == "succeeded", 20, message="the delivery")
        assert worker.stop() == 0
        [request] = receiver.requests
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["webhook-id"] == job_id
        assert Webhook(WEBHOOK_SECRET).verify(request["body"], headers) == {"order": 7, "note": "café"}
        other = "whsec_" + __import__("base64").b64encode(b"another-secret-entirely!").decode()
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(request["body"], headers)
        assert not any(k.startswith("x-nightshift-") and k != "x-nightshift-event" for k in headers)

        out = cli(env, "status", NIGHTSHIFT_WEBHOOK_SECRET="not-a-whsec-secret")
        assert out.returncode == 2 and "NIGHTSHIFT_WEBHOOK_SECRET is invalid: must start with whsec_" in out.stderr
        assert "not-a-whsec-secret" not in out.stderr
    finally:
        stop_http_server(receiver)


# -- item 7, producer side: a wrong signing key is told at submit time ----------------------------------------------

def test_a_producer_with_another_signing_key_is_refused_at_submit_and_records_nothing(env, monkeypatch,
                                                                                      start_worker, ledger_db):
    """Item 7: once a consumer published its key's fingerprint, a producer with another key (or none) exits
    non-zero and nothing is recorded; the consumers' own key is accepted and its job runs."""
    from app import keycheck, keys
    env.set(monkeypatch, NIGHTSHIFT_SIGNING_KEY=SIGNING_KEY)
    worker = start_worker()
    published = keycheck.fingerprint(SIGNING_KEY)
    import redis
    conn = redis.Redis.from_url(env["NIGHTSHIFT_REDIS_URL"])
    assert conn.get(keys.signing_key_fingerprint(env["NIGHTSHIFT_QUEUE"])).decode() == published
    assert SIGNING_KEY not in published

    wrong = cli(env, "submit", "add", "--arg", "a=1", NIGHTSHIFT_SIGNING_KEY="another-key")
    missing = cli(env, "submit", "add", "--arg", "a=2", NIGHTSHIFT_SIGNING_KEY="")
    for out, says in ((wrong, "is not the key the consumers"), (missing, "accept only signed messages")):
        assert out.returncode == 2 and says in out.stderr and "Nothing was queued" in out.stderr, out.stderr
        assert out.stdout == ""
    assert ledger_db.Job.select().count() == 0

    right = cli(env, "submit", "add", "--arg", "a=3", "--wait", "--timeout", "20")
    assert right.returncode == 0, right.stderr
    assert ledger_db.Job.select().count() == 1
    assert worker.stop() == 0


def test_a_long_running_producer_reads_the_fingerprint_once_per_check_window_and_never_remembers_a_refusal(
        env, monkeypatch, ledger_db):
    """Issue 16: a program submitting job after job reads the consumers' fingerprint at most every CHECK_SECONDS
    while it matches (here: a fingerprint changed after the first submit is not seen inside the window), and once
    the window is over a mismatch is refused, every time, with nothing recorded."""
    import redis
    from app import keycheck, submit
    env.set(monkeypatch, NIGHTSHIFT_SIGNING_KEY=SIGNING_KEY)
    conn = redis.Redis.from_url(env["NIGHTSHIFT_REDIS_URL"])
    keycheck.publish(conn, env["NIGHTSHIFT_QUEUE"], SIGNING_KEY)
    submit("add", a=1)
    keycheck.publish(conn, env["NIGHTSHIFT_QUEUE"], "the-consumers-new-key")
    submit("add", a=2)  # inside the window: not read again
    assert ledger_db.Job.select().count() == 2

    monkeypatch.setattr(keycheck, "CHECK_SECONDS", 0.0)
    for a in (3, 4):
        with pytest.raises(keycheck.SigningKeyMismatch):
            submit("add", a=a)
    assert ledger_db.Job.select().count() == 2


def test_the_connection_goes_to_the_checked_address_without_resolving_the_name_again():
    """Item 6: the connection dials the address that was checked; the host name is only sent (Host header, TLS
    name), never resolved again -- a name that would now resolve elsewhere (here: not at all) changes nothing."""
    from helpers import http as nhttp
    from servers import scripted, start_http_server, stop_http_server
    server = start_http_server(scripted((200, {}, b"ok")))
    try:
        conn = nhttp._CheckedHTTPConnection("rebinding.invalid", server.server_address[1], "127.0.0.1", timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
        assert server.requests[0]["headers"]["Host"].startswith("rebinding.invalid")
    finally:
        stop_http_server(server)

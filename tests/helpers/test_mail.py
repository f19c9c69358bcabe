"""E-mail helpers against a real aiosmtpd server and real SQLite/PostgreSQL marker tables."""
from __future__ import annotations

import datetime
import socket
import threading
from pathlib import Path

import pytest

from helpers import db as dbh
from helpers import mail
from helpers.errors import PermanentError, TemporaryError
from helper_fixtures import database, smtp_server, tls_cert  # noqa: F401  (fixtures)

SENDER = "Nightshift <noreply@example.com>"


def test_parse_smtp_url() -> None:
    config = mail.parse_smtp_url("smtp://us%40er:p%3Ass@mail.example.com:2525?starttls=1")
    assert (config.host, config.port, config.username, config.password, config.starttls) == (
        "mail.example.com", 2525, "us@er", "p:ss", True)
    assert mail.parse_smtp_url("smtps://mail.example.com").port == 465
    assert mail.parse_smtp_url("smtp://mail.example.com").username is None
    with pytest.raises(PermanentError):
        mail.parse_smtp_url("http://mail.example.com")


@pytest.mark.parametrize("address", ["", "plain", "a@", "@b.com", "a b@c.com", "a@b..com", "x@-y.com",
                                     "a@b.com\r\nBcc: c@d.com", None, 42])
def test_bad_addresses_are_refused(address: object) -> None:
    with pytest.raises(mail.BadAddressError):
        mail.validate_address(address)


def test_good_addresses() -> None:
    assert mail.validate_address("Ann <Ann.Lee+x@Example.COM>") == "Ann.Lee+x@example.com"
    assert mail.recipient_key("Ann.Lee@Example.com") == "ann.lee@example.com"


def test_templates_allow_plain_names_only() -> None:
    assert mail.render("Hi {name}, {{literal}}", {"name": "Ann"}) == "Hi Ann, {literal}"
    for bad in ("{0}", "{name.__class__}", "{name[0]}", "{name!r}", "{name:>10}", "{unclosed"):
        with pytest.raises(PermanentError):
            mail.check_template(bad)
    with pytest.raises(PermanentError, match="plan"):
        mail.render("{plan}", {"name": "x"})


def test_plan_batch_rejects_bad_rows_only(tmp_path: Path) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text("email,name,plan\n"
                        "ann@example.com,Ann,gold\n"
                        "not-an-address,Bob,silver\n"
                        "ANN@example.com,Ann again,gold\n"
                        "cy@example.com,Cy\n"
                        "di@example.com,\"Di, Jr.\",free\n", encoding="utf-8")
    plan = mail.plan_batch(csv_file, "Your {plan} plan", "Dear {name},\nthanks.")
    assert [m["to"] for m in plan["messages"]] == ["ann@example.com", "di@example.com"]
    assert plan["messages"][1] == {"to": "di@example.com", "subject": "Your free plan", "html": None,
                                   "body": "Dear Di, Jr.,\nthanks.", "line": 6}
    assert [r["line"] for r in plan["rejected"]] == [3, 5]
    assert plan["duplicates"] == 1

    jsonl = tmp_path / "people.jsonl"
    jsonl.write_text('{"email": "ann@example.com", "name": "Ann"}\n\nnot json\n[1]\n{"name": "no address"}\n'
                     '{"email": "bo@example.com"}\n', encoding="utf-8")
    plan = mail.plan_batch(jsonl, "Hello", "Hi {name}", defaults={"name": "friend"}, html="<p>Hi {name}</p>")
    assert plan["messages"][0]["html"] == "<p>Hi Ann</p>"
    assert [(m["to"], m["body"]) for m in plan["messages"]] == [("ann@example.com", "Hi Ann"),
                                                                ("bo@example.com", "Hi friend")]
    assert [r["line"] for r in plan["rejected"]] == [3, 4, 5]


def test_plan_batch_fails_whole_batch_for_bad_template_or_file(tmp_path: Path) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text("email\nann@example.com\n")
    with pytest.raises(PermanentError):
        mail.plan_batch(csv_file, "Hi {0}", "body")
    with pytest.raises(PermanentError, match="not found"):
        mail.plan_batch(tmp_path / "missing.csv", "s", "b")
    (tmp_path / "noheader.csv").write_text("address\nann@example.com\n")
    with pytest.raises(PermanentError, match="'email' column"):
        mail.plan_batch(tmp_path / "noheader.csv", "s", "b")


def test_sends_once_per_batch(database, smtp_server) -> None:
    sink, url = smtp_server()
    first = mail.send_email(database, url, "batch-1", "ann@example.com", "Hello Ann", "Body text", SENDER)
    assert first["status"] == "sent"
    again = mail.send_email(database, url, "batch-1", "ANN@example.com", "Hello Ann", "Body text", SENDER)
    assert again["status"] == "skipped"
    other_batch = mail.send_email(database, url, "batch-2", "ann@example.com", "Hello Ann", "Body text", SENDER)
    assert other_batch["status"] == "sent"
    assert len(sink.to("ann@example.com")) == 2
    message = sink.messages[0]["message"]
    assert message["Subject"] == "Hello Ann"
    assert message["X-Nightshift-Batch"] == "batch-1"
    assert message.get_content().strip() == "Body text"
    assert sink.messages[0]["from"] == "noreply@example.com"
    assert mail.sent_count(database, "batch-1") == 1


def test_starttls_and_login(database, smtp_server, tls_cert, monkeypatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))  # trust the test server's self-signed certificate
    sink, url = smtp_server(tls=True)
    assert mail.send_email(database, url, "b", "ann@example.com", "s", "b", SENDER)["status"] == "sent"
    assert sink.messages[0]["tls"] is True
    wrong = url.replace("s3cr%3At", "wrong")
    with pytest.raises(mail.SmtpPermanentError):
        mail.send_email(database, wrong, "b", "bob@example.com", "s", "b", SENDER)
    no_tls = url.replace("starttls=1", "starttls=0")
    with pytest.raises(PermanentError):  # the server insists on STARTTLS before anything else
        mail.send_email(database, no_tls, "b", "cy@example.com", "s", "b", SENDER)
    assert len(sink.messages) == 1


def test_permanent_refusal_is_not_retried_and_fails_only_that_recipient(database, smtp_server) -> None:
    sink, url = smtp_server()
    sink.rules["gone@example.com"] = ["550 5.1.1 No such user"]
    with pytest.raises(mail.SmtpPermanentError) as info:
        mail.send_email(database, url, "b", "gone@example.com", "s", "b", SENDER)
    assert info.value.code == 550
    assert mail.send_email(database, url, "b", "ok@example.com", "s", "b", SENDER)["status"] == "sent"
    with pytest.raises(mail.BadAddressError):
        mail.send_email(database, url, "b", "not an address", "s", "b", SENDER)
    assert [m["to"] for m in sink.messages] == [["ok@example.com"]]
    assert mail.sent_count(database, "b") == 1


def test_temporary_refusal_releases_the_claim_so_a_retry_sends(database, smtp_server) -> None:
    sink, url = smtp_server()
    sink.rules["busy@example.com"] = ["451 4.7.1 Try again later", "250 OK"]
    with pytest.raises(TemporaryError):
        mail.send_email(database, url, "b", "busy@example.com", "s", "b", SENDER)
    assert mail.send_email(database, url, "b", "busy@example.com", "s", "b", SENDER)["status"] == "sent"
    assert len(sink.to("busy@example.com")) == 1


def test_unreachable_server_is_temporary(database) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TemporaryError):
        mail.send_email(database, f"smtp://127.0.0.1:{port}?timeout=2", "b", "a@example.com", "s", "b",
                        SENDER)


def test_concurrent_duplicates_send_once(database, smtp_server) -> None:
    sink, url = smtp_server()
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            outcomes.append(mail.send_email(database, url, "race", "ann@example.com", "s", "b", SENDER)["status"])
        except TemporaryError:
            outcomes.append("in flight")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("sent") == 1
    assert len(sink.to("ann@example.com")) == 1


def test_interrupted_send_is_not_repeated(database, smtp_server) -> None:
    sink, url = smtp_server()
    Sent = dbh.bind(mail.EmailSent, database)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    Sent.create(batch="b", recipient="fresh@example.com", state="sending", claimed_at=now, claim="x")
    Sent.create(batch="b", recipient="stale@example.com", state="sending", claim="y",
                claimed_at=now - datetime.timedelta(hours=1))
    with pytest.raises(TemporaryError) as info:
        mail.send_email(database, url, "b", "fresh@example.com", "s", "b", SENDER)
    assert info.value.retry_after and info.value.retry_after > 1
    with pytest.raises(mail.DeliveryUncertain):
        mail.send_email(database, url, "b", "stale@example.com", "s", "b", SENDER)
    assert sink.messages == []


def test_throttle_is_skipped_for_recipients_already_sent(database, smtp_server) -> None:
    sink, url = smtp_server()
    calls: list[int] = []
    throttle = lambda: calls.append(1)  # noqa: E731
    mail.send_email(database, url, "t", "ann@example.com", "s", "b", SENDER, throttle=throttle)
    mail.send_email(database, url, "t", "ann@example.com", "s", "b", SENDER, throttle=throttle)
    assert len(calls) == 1 and len(sink.messages) == 1

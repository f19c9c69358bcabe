"""Webhook delivery against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import email.utils
import json
import socket
import time

import pytest

from helpers import http, webhooks
from helpers.backoff import backoff_delay
from helpers.errors import PermanentError, TemporaryError
from helper_fixtures import http_server  # noqa: F401  (fixture)

SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1rZXk="  # whsec_ + base64, as Standard Webhooks has it


def scripted(*answers: tuple[int, dict, bytes]):
    """A respond() that gives `answers` in order, then repeats the last."""
    queue = list(answers)

    def respond(handler):
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return respond


def test_signed_delivery_with_stable_id_across_retries(http_server) -> None:
    server = http_server(scripted((500, {}, b"oops"), (429, {"Retry-After": "7"}, b"slow down"),
                                  (200, {}, b"ok")))
    url = server.url + "/hooks/orders"
    payload = {"order": 42, "items": ["a", "b"], "note": "café"}
    with pytest.raises(TemporaryError) as first:
        webhooks.deliver_webhook(url, payload, "job-123", SECRET, allow_private=True, legacy_signature=True)
    assert first.value.retry_after is None
    with pytest.raises(TemporaryError) as second:
        webhooks.deliver_webhook(url, payload, "job-123", SECRET, allow_private=True, legacy_signature=True)
    assert second.value.retry_after == 7
    result = webhooks.deliver_webhook(url, payload, "job-123", SECRET, allow_private=True, event="order.paid",
                                      legacy_signature=True)
    assert result["status"] == 200 and result["delivery_id"] == "job-123"

    assert len(server.requests) == 3
    assert {r["headers"]["X-Nightshift-Delivery"] for r in server.requests} == {"job-123"}
    assert {r["body"] for r in server.requests} == {server.requests[0]["body"]}
    last = server.requests[-1]
    assert last["method"] == "POST" and last["path"] == "/hooks/orders"
    assert last["headers"]["Content-Type"] == "application/json"
    assert last["headers"]["X-Nightshift-Event"] == "order.paid"
    assert json.loads(last["body"]) == payload
    for request in server.requests:
        assert webhooks.verify_signature(SECRET, request["body"], request["headers"]["X-Nightshift-Timestamp"],
                                         request["headers"]["X-Nightshift-Signature"])
    assert not webhooks.verify_signature("other", last["body"], last["headers"]["X-Nightshift-Timestamp"],
                                         last["headers"]["X-Nightshift-Signature"])
    assert not webhooks.verify_signature(SECRET, last["body"] + b" ", last["headers"]["X-Nightshift-Timestamp"],
                                         last["headers"]["X-Nightshift-Signature"])


def test_signature_refuses_old_timestamps() -> None:
    body = b'{"a":1}'
    old = int(time.time()) - 3600
    signature = webhooks.sign(SECRET, old, body)
    assert not webhooks.verify_signature(SECRET, body, str(old), signature)
    assert webhooks.verify_signature(SECRET, body, str(old), signature, tolerance=None)
    assert not webhooks.verify_signature(SECRET, body, "nope", signature)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 301])
def test_other_statuses_are_final(http_server, status: int) -> None:
    server = http_server(scripted((status, {"Location": "/elsewhere"}, b"no")))
    with pytest.raises(PermanentError, match=str(status)):
        webhooks.deliver_webhook(server.url, {"a": 1}, "d1", SECRET, allow_private=True)
    assert len(server.requests) == 1


def test_timeout_and_refused_connection_are_temporary(http_server) -> None:
    def slow(handler):
        time.sleep(1.5)
        return 200, {}, b"late"
    server = http_server(slow)
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        webhooks.deliver_webhook(server.url, {}, "d1", SECRET, timeout=0.3, allow_private=True)
    assert time.monotonic() - started < 1.4
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TemporaryError):
        webhooks.deliver_webhook(f"http://127.0.0.1:{port}/", {}, "d1", SECRET, allow_private=True)


def test_private_and_loopback_addresses_can_be_forbidden(http_server) -> None:
    server = http_server(scripted((200, {}, b"ok")))
    for url in (server.url, server.url.replace("127.0.0.1", "localhost"), "http://10.1.2.3/",
                "http://[::1]:9/", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(PermanentError, match="private or loopback"):
            webhooks.deliver_webhook(url, {}, "d1", SECRET, allow_private=False)
    assert server.requests == []


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x", "http://",
                                 "/relative", "http://example.com:99999/"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(PermanentError):
        webhooks.deliver_webhook(url, {}, "d1", SECRET, allow_private=True)


def test_bad_arguments_are_permanent(http_server) -> None:
    server = http_server(scripted((200, {}, b"ok")))
    with pytest.raises(PermanentError, match="delivery id"):
        webhooks.deliver_webhook(server.url, {}, "", SECRET, allow_private=True)
    with pytest.raises(PermanentError, match="JSON"):
        webhooks.deliver_webhook(server.url, {"x": float("nan")}, "d", SECRET, allow_private=True)
    with pytest.raises(PermanentError, match="cannot be overridden"):
        webhooks.deliver_webhook(server.url, {}, "d", SECRET, allow_private=True,
                                 headers={"X-Nightshift-Delivery": "forged"})
    result = webhooks.deliver_webhook(server.url, {}, "d", SECRET, allow_private=True,
                                      headers={"Authorization": "Bearer t"})
    assert result["status"] == 200 and server.requests[-1]["headers"]["Authorization"] == "Bearer t"


def test_public_address_rules() -> None:
    assert http.is_public_address("93.184.216.34")
    assert http.is_public_address("2606:2800:220:1:248:1893:25c8:1946")
    for address in ("127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "0.0.0.0",
                    "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "100.64.0.1", "224.0.0.1"):
        assert not http.is_public_address(address), address


def test_retry_after_and_backoff() -> None:
    assert http.parse_retry_after("120") == 120
    assert http.parse_retry_after(None) is None
    assert http.parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= http.parse_retry_after(date, now=now) <= 31
    for attempt in range(1, 8):
        delay = backoff_delay(attempt, base=1, cap=60)
        assert min(60, 2 ** (attempt - 1)) / 2 <= delay <= min(60, 2 ** (attempt - 1))
    assert backoff_delay(1, retry_after=45) == 45
    assert backoff_delay(1, cap=60, retry_after=10**6) == 60
    assert backoff_delay(3, jitter=False) == 4


@pytest.mark.parametrize("headers", [{"X-A": 1}, {"X-A": "a\r\nX-Injected: 1"}, {"Bad Name": "x"}, {"": "x"},
                                     ["X-A", "x"]])
def test_bad_extra_headers_are_permanent(http_server, headers) -> None:
    server = http_server(scripted((200, {}, b"ok")))
    with pytest.raises(PermanentError, match="header"):
        webhooks.deliver_webhook(server.url, {}, "d", SECRET, allow_private=True, headers=headers)
    assert server.requests == []

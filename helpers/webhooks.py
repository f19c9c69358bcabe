"""Webhook delivery: POST a JSON payload, signed, with a delivery id the receiver can deduplicate on.

Signed the Standard Webhooks way (https://www.standardwebhooks.com), so receivers verify with the spec's own
library in their language instead of copying ours:
- `webhook-id`: the delivery id, the same on every retry of one delivery (the job id), so a receiver that saw
  it already can answer 2xx and do nothing.
- `webhook-timestamp`: Unix seconds of this attempt (signed, so receivers can refuse replays of old requests).
- `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, the key being the base64 part
  of a `whsec_...` secret.
With `legacy_signature`, the old headers are sent too, for receivers not yet moved: `X-Nightshift-Delivery`,
`X-Nightshift-Timestamp` and `X-Nightshift-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
(keyed with the whole secret string; see `verify_signature`).

2xx is success; timeouts, connection errors, 429 and 5xx raise TemporaryError (with Retry-After); any other
status raises PermanentError.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Mapping

from helpers import http
from helpers.errors import PermanentError

DELIVERY_HEADER = "X-Nightshift-Delivery"
TIMESTAMP_HEADER = "X-Nightshift-Timestamp"
SIGNATURE_HEADER = "X-Nightshift-Signature"
STANDARD_ID = "webhook-id"
STANDARD_TIMESTAMP = "webhook-timestamp"
STANDARD_SIGNATURE = "webhook-signature"
SECRET_PREFIX = "whsec_"


def standard_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (as Standard Webhooks libraries derive it)."""
    if not secret.startswith(SECRET_PREFIX):
        raise PermanentError("the webhook secret must be whsec_ followed by base64 (Standard Webhooks)")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError("the webhook secret after whsec_ is not base64") from None


def standard_signature(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"."""
    signed = f"{delivery_id}.{timestamp}.".encode("utf-8") + body
    return "v1," + base64.b64encode(hmac.new(standard_key(secret), signed, hashlib.sha256).digest()).decode("ascii")


def encode_payload(payload: Any) -> bytes:
    """The exact bytes sent: compact JSON with sorted keys, identical on every retry."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"payload is not JSON-serializable: {exc}") from None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The legacy X-Nightshift-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, body: bytes, timestamp: str | None, signature: str | None,
                     tolerance: float | None = 300.0, now: float | None = None) -> bool:
    """For receivers of the legacy headers: True when `signature` is ours for `body` and `timestamp` is recent
    enough. (New receivers verify the webhook-* headers with a Standard Webhooks library.)"""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if tolerance is not None and abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature.strip())


def deliver_webhook(url: str, payload: Any, delivery_id: str, secret: str = "", timeout: float = 10.0,
                    allow_private: bool = False, headers: Mapping[str, str] | None = None,
                    event: str | None = None, legacy_signature: bool = False) -> dict[str, Any]:
    """POST `payload` to `url` once; returns {"status", "delivery_id", "elapsed", "response"} on 2xx.

    Unsigned when `secret` is empty (receivers should insist on a secret; the task passes the setting).
    """
    if not delivery_id:
        raise PermanentError("a delivery id is required so the receiver can drop duplicates")
    body = encode_payload(payload)
    timestamp = int(time.time())
    all_headers = {"Content-Type": "application/json", STANDARD_ID: str(delivery_id),
                   STANDARD_TIMESTAMP: str(timestamp)}
    if event:
        all_headers["X-Nightshift-Event"] = event
    if secret:
        all_headers[STANDARD_SIGNATURE] = standard_signature(secret, str(delivery_id), timestamp, body)
    if legacy_signature:
        all_headers[DELIVERY_HEADER] = str(delivery_id)
        all_headers[TIMESTAMP_HEADER] = str(timestamp)
        if secret:
            all_headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    if headers is not None and not isinstance(headers, dict):
        raise PermanentError("headers must be an object of header names to string values")
    for name, value in (headers or {}).items():
        if not isinstance(value, str) or not name or any(c in name + value for c in "\r\n\0") \
                or any(c in name for c in " :"):
            raise PermanentError(f"header {name!r} must be a name without spaces or colons and a one-line string")
        if name.lower().startswith(("x-nightshift-", "webhook-")) \
                or name.lower() in ("content-type", "host", "content-length"):
            raise PermanentError(f"header {name!r} is set by Nightshift and cannot be overridden")
        all_headers[name] = value
    started = time.monotonic()
    response = http.request("POST", url, body=body, headers=all_headers, timeout=timeout,
                            allow_private=allow_private)
    elapsed = round(time.monotonic() - started, 3)
    if not 200 <= response.status < 300:
        raise PermanentError(f"POST {url} answered {response.status}: {response.text(200)} "
                             "(not retried: only timeouts, connection errors, 429 and 5xx are)")
    return {"status": response.status, "delivery_id": str(delivery_id), "elapsed": elapsed,
            "response": response.text(200)}

"""JSON messages on the wire, optionally signed with HMAC-SHA256.

Huey pickles by default, which lets anyone who can write to Redis run code in the consumer. Nightshift's codec
writes JSON only: the registry turns a task into a plain dict (see `app.queue`), and this module turns dicts and
results into bytes and back. With a signing key every message is `<hex sha256 hmac>:<json>`; a consumer with a key
refuses anything else.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import math
import re
from typing import Any

from huey.serializer import Serializer


class PoisonMessage(ValueError):
    """A message the consumer cannot trust or read; it goes to the dead letters, never to a task."""


class BadSignature(PoisonMessage):
    pass


class NotJSON(TypeError):
    """An argument that is not a JSON value (names where it is, so the user can fix it)."""


_HEX = re.compile(rb"[0-9a-f]{64}")
_SCALARS = (str, int, float, bool, type(None))


def ensure_json(value: Any, where: str) -> None:
    """Refuse anything but JSON values: dicts with string keys, lists, str, int, finite float, bool, None."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSON(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            ensure_json(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSON(f"{where} has a non-string key {key!r}; JSON object keys are strings")
            ensure_json(item, f"{where}[{key!r}]")
        return
    hint = " (pass an ISO-8601 string)" if isinstance(value, (datetime.date, datetime.time)) else \
        " (pass a list)" if isinstance(value, (tuple, set, frozenset)) else " (pass an id, not an object)"
    raise NotJSON(f"{where} is a {type(value).__name__}, not a JSON value{hint}")


def _default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"$td": value.total_seconds()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _hook(obj: dict) -> Any:
    if len(obj) == 1:
        if "$dt" in obj:
            return datetime.datetime.fromisoformat(obj["$dt"])
        if "$td" in obj:
            return datetime.timedelta(seconds=obj["$td"])
    return obj


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_default, allow_nan=False, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    return json.loads(data, object_hook=_hook)


class JSONCodec(Serializer):
    """Huey serializer that writes JSON and signs it when given a key."""

    def __init__(self, signing_key: str = "") -> None:
        super().__init__()
        self._key = signing_key.encode() if signing_key else None

    def sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode() + b":" + payload

    def unsign(self, data: bytes) -> bytes:
        """The JSON payload of `data`, verified when this codec has a key."""
        signature, payload = data[:64], data[65:]
        if data[64:65] != b":" or not _HEX.fullmatch(signature):
            if self._key:
                raise BadSignature("message is not signed but NIGHTSHIFT_SIGNING_KEY is set")
            return data
        if self._key and not hmac.compare_digest(
                signature, hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode()):
            raise BadSignature("message signature does not match NIGHTSHIFT_SIGNING_KEY")
        return payload

    def serialize(self, data: Any) -> bytes:
        payload = dumps(data)
        return self.sign(payload) if self._key else payload

    def deserialize(self, data: bytes) -> Any:
        payload = self.unsign(bytes(data))
        try:
            return loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PoisonMessage(f"message is not valid JSON: {exc}") from None

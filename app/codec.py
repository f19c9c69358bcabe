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
MAX_DEPTH = 100  # nesting levels of lists and objects in an argument (deeper ones hit Python's recursion limit)


def ensure_json(value: Any, where: str, depth: int = 0) -> None:
    """Refuse anything but JSON values: dicts with string keys, lists, str, int, finite float, bool, None."""
    if depth > MAX_DEPTH:
        raise NotJSON(f"{where} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSON(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            ensure_json(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJSON(f"{where} has a non-string key {key!r}; JSON object keys are strings")
            ensure_json(item, f"{where}[{key!r}]", depth + 1)
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


_ENCODER = json.JSONEncoder(default=_default, allow_nan=False, separators=(",", ":"))  # made once: json.dumps
# with these options would build a new encoder for every message


def dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def dumps_text(value: Any) -> str:
    """`dumps` as text: how a value appears inside a message (bulk submits splice arguments into messages)."""
    return _ENCODER.encode(value)


def loads(data: bytes) -> Any:
    return json.loads(data, object_hook=_hook)


MAX_ID_PARSE = 1 << 20  # a refused message larger than this is not parsed for its job id


def job_id_of(data: bytes) -> str | None:
    """The "id" a refused message names, if it can be read at all: signed or not, JSON-tolerant, bounded in size
    and depth; None when there is no usable id. Used only to attribute a refused message to its job."""
    data = bytes(data)
    if data[64:65] == b":" and _HEX.fullmatch(data[:64]):
        data = data[65:]
    if len(data) > MAX_ID_PARSE:
        return None
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    job_id = message.get("id") if isinstance(message, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


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

    def seal(self, payload: bytes) -> bytes:
        """A JSON payload as it goes on the wire: signed when this codec has a key."""
        return self.sign(payload) if self._key else payload

    def serialize(self, data: Any) -> bytes:
        return self.seal(dumps(data))

    def deserialize(self, data: bytes) -> Any:
        payload = self.unsign(bytes(data))
        try:
            return loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PoisonMessage(f"message is not valid JSON: {exc}") from None

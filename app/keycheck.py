"""Telling a producer at submit time that its signing key is not the one the consumers use.

Consumers publish a fingerprint of their NIGHTSHIFT_SIGNING_KEY -- HMAC-SHA256(key, "nightshift-key-check"),
never the key -- in Redis under `nightshift:<queue>:signing-key-fingerprint` when they start. Before recording
a job, the producer compares it with its own: a mismatch is refused (nothing recorded, non-zero exit), because
the consumers would refuse every message it sends.

Not checked (the job is accepted): when no consumer of the queue has published yet, and when Redis cannot be
read at submit time (the job is recorded and delivered later, as any submit while Redis is down). A consumer
without a key accepts signed and unsigned messages, so it publishes "unsigned" and any producer matches it.
One key per queue: consumers with different keys on one queue overwrite each other's fingerprint.

A check that passed is remembered for CHECK_SECONDS per process and queue: a program that submits many jobs
reads the fingerprint once every few seconds instead of once per job (a round trip to Redis that was a third of
a one-by-one submit), so consumers restarted with another key are noticed by a long-running producer within
CHECK_SECONDS. A refusal is never remembered.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from app import keys

CHECK_MESSAGE = b"nightshift-key-check"
UNSIGNED = "unsigned"
CHECK_SECONDS = 5.0

_passed: dict[tuple[str, str], float] = {}  # (queue, our fingerprint) -> monotonic time the check last passed


class SigningKeyMismatch(Exception):
    """This producer's NIGHTSHIFT_SIGNING_KEY is not the consumers'; its messages would all be refused."""


def fingerprint(signing_key: str) -> str:
    """What a consumer publishes about its key: enough to compare keys, useless to sign with."""
    if not signing_key:
        return UNSIGNED
    return hmac.new(signing_key.encode("utf-8"), CHECK_MESSAGE, hashlib.sha256).hexdigest()


def publish(conn: Any, queue: str, signing_key: str) -> None:
    """Called by a consumer at start: record the fingerprint of the key it verifies messages with."""
    conn.set(keys.signing_key_fingerprint(queue), fingerprint(signing_key))


def check(conn: Any, queue: str, signing_key: str) -> None:
    """Raise SigningKeyMismatch when the consumers of `queue` published a key fingerprint other than ours (read
    at most every CHECK_SECONDS while it matches)."""
    ours = fingerprint(signing_key)
    remembered = (queue, ours)
    if time.monotonic() - _passed.get(remembered, -CHECK_SECONDS) < CHECK_SECONDS:
        return
    published = conn.get(keys.signing_key_fingerprint(queue))
    if published is not None:
        published = published.decode("ascii", "replace") if isinstance(published, bytes) else str(published)
    if published is None or published == UNSIGNED or hmac.compare_digest(published, ours):
        _passed[remembered] = time.monotonic()
        return
    _passed.pop(remembered, None)
    if not signing_key:
        raise SigningKeyMismatch(f"the consumers of queue {queue!r} accept only signed messages and "
                                 "NIGHTSHIFT_SIGNING_KEY is not set here: set it to the consumers' key")
    raise SigningKeyMismatch(f"NIGHTSHIFT_SIGNING_KEY here is not the key the consumers of queue {queue!r} use "
                             "(their published fingerprint differs): the consumers would refuse these messages")

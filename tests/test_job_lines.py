"""A worker's job lines (issue 16): two per job, so what each costs is paid by every job. The lines stay what they
were (masked, bounded, the same text and JSON); they are made without logging's search of the call stack, and a
short text is masked by the patterns once, not once per line. No server is needed: the lines go to a buffer."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest

from app import events, logs
from helpers import masking

WORKER = "host-1:4242:ab12"
JOB = "0b6c1b3e-3f0e-4b53-9d61-2f0c7d2d1a11"


@pytest.fixture
def lines():
    """Job lines as the consumer writes them, in the format asked for (JSON ones parsed), without timestamps."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()

    def written(fmt: str, emit) -> list[str]:
        out.seek(0)
        out.truncate()
        logs.setup("debug", fmt, out)
        emit()
        if fmt == "json":
            return [{k: v for k, v in json.loads(line).items() if k != "ts"} for line in out.getvalue().splitlines()]
        return [line.split(" ", 2)[2] for line in out.getvalue().splitlines()]

    yield written
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def a_job_runs() -> None:
    events.emit("started", JOB, "fetch", attempt=1, worker=WORKER,
                args={"url": "https://user:pw-123@example.com/x?token=t0k3n", "password": "hunter22", "n": 3,
                      "ok": True, "note": 'say "hi" ü', "big": "y" * 600})
    events.emit("succeeded", JOB, "fetch", attempt=1, duration=0.25, worker=WORKER, flag=False)
    events.emit("dead", JOB, "fetch", logging.ERROR, reason="Authorization: Bearer abc.def; api_key=zzz",
                error="E" * 2500)


def test_job_lines_say_what_they_said_masked_and_bounded(lines):
    """The text and JSON forms of a job's lines, exactly: secrets masked by structure, numbers and booleans as
    Python shows them in text and as JSON in JSON, strings quoted as JSON, long values cut with their size."""
    text = lines("text", a_job_runs)
    big = "y" * 300 + '... [600 B, 600 chars]'
    assert text[0] == (
        f'INFO    nightshift.jobs: started   fetch {JOB} attempt=1 worker="{WORKER}" '
        f'args={{"url": "https://user:***@example.com/x?token=***", "password": "***", "n": 3, "ok": true, '
        f'"note": "say \\"hi\\" \\u00fc", "big": "{big}"}}')
    assert text[1] == (f'INFO    nightshift.jobs: succeeded fetch {JOB} attempt=1 duration=0.25 worker="{WORKER}" '
                       f'flag=False')
    assert text[2].startswith(f'ERROR   nightshift.jobs: dead      fetch {JOB} '
                              f'reason="Authorization: *** ***; api_key=***" error="{"E" * 2000}... [2.4 kB, 2500 chars]"')

    started, succeeded, dead = lines("json", a_job_runs)
    assert started["args"]["url"] == "https://user:***@example.com/x?token=***"
    assert started["args"]["password"] == "***" and started["args"]["ok"] is True
    assert started["worker"] == WORKER and started["logger"] == "nightshift.jobs" and started["level"] == "info"
    assert succeeded == {"level": "info", "logger": "nightshift.jobs", "event": "succeeded", "job_id": JOB,
                         "task": "fetch", "attempt": 1, "duration": 0.25, "worker": WORKER, "flag": False}
    assert dead["reason"] == "Authorization: *** ***; api_key=***"


def test_job_lines_do_not_search_the_call_stack_for_their_origin(lines, monkeypatch):
    """logging finds a record's caller by walking the stack at every line; a job line's origin is always
    events.emit, which the record says without the walk."""
    walks = []
    original = logging.Logger.findCaller
    monkeypatch.setattr(logging.Logger, "findCaller", lambda self, *a, **k: walks.append(1) or original(self, *a, **k))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("nightshift.jobs").addHandler(handler)
    try:
        lines("text", a_job_runs)
    finally:
        logging.getLogger("nightshift.jobs").removeHandler(handler)
    assert walks == []
    assert [(r.funcName, r.pathname, r.module) for r in records] == [("emit", events.__file__, "events")] * 3
    assert records[0].getMessage() == f"started fetch {JOB}"


class CountingPattern:
    """A compiled pattern that counts its substitutions."""

    def __init__(self, pattern: re.Pattern) -> None:
        self.pattern, self.subs = pattern, 0

    def sub(self, *args, **kwargs):
        self.subs += 1
        return self.pattern.sub(*args, **kwargs)


def test_a_short_text_is_masked_by_the_patterns_once(monkeypatch):
    """The worker id, the task name: the same short texts in every line. Masked once and remembered; a text
    with known secrets to hide, or a long one, is masked every time."""
    counting = CountingPattern(masking._URL)
    monkeypatch.setattr(masking, "_URL", counting)
    remembered = getattr(masking, "_mask_by_rules_remembered", None)
    if remembered is not None:
        remembered.cache_clear()

    assert masking.mask_text(WORKER) == WORKER
    assert masking.mask_text("password=hunter22 at redis://:pw@h/0") == "password=*** at redis://***@h/0"
    assert counting.subs == 2
    assert masking.mask_text(WORKER) == WORKER
    assert masking.mask_text("password=hunter22 at redis://:pw@h/0") == "password=*** at redis://***@h/0"
    assert counting.subs == 2

    assert masking.mask_text("sent s3cr3t-value", secrets=["s3cr3t-value"]) == "sent ***"
    assert masking.mask_text("sent s3cr3t-value") == "sent s3cr3t-value"
    long_text = "x=1 " * 40
    masking.mask_text(long_text)
    masking.mask_text(long_text)
    assert counting.subs == 6

"""The command line and Python API as a person meets them (issue 12): options never take over arguments, a
command prints what was asked for, bad input is one line and exit 2, and what the operator reads is true."""
from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import cli, free_port, wait_until


@pytest.fixture
def trust_env(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,trust_tasks")
    return env


def queued_nothing() -> bool:
    from app.models import Job
    from app.queue import get_huey
    return Job.select().count() == 0 and get_huey().pending_count() + get_huey().scheduled_count() == 0


def row(job_id):
    from app.models import Job
    return Job.get_by_id(job_id)


# -- 1. submit options never take over task arguments -------------------------------------------------------------

def test_arguments_beside_options_and_clashes_refused(trust_env):
    import trust_tasks
    from app import submit, submit_many
    from app.catalog import BadArguments

    with pytest.raises(BadArguments, match=r"parameter named 'key'.*arguments=\{"):
        submit("takes_options", key="customer_id")
    with pytest.raises(BadArguments, match="arguments="):
        submit("import_records", path="/tmp/x.csv", key="customer_id")
    assert queued_nothing()

    job_id = submit("takes_options", arguments={"key": "sku", "retries": 7, "delay": 1.5}, key="k1", retries=1,
                    priority=4)
    job = row(job_id)
    assert json.loads(job.kwargs) == {"key": "sku", "retries": 7, "delay": 1.5}
    assert (job.key, job.retries_left, job.priority, job.eta) == ("k1", 1, 4, None)
    assert submit("takes_options", {"key": "positional"}) != job_id
    [many] = submit_many("takes_options", arguments=[{"key": "a", "priority": 9}], priority=2)
    assert json.loads(row(many).kwargs) == {"key": "a", "priority": 9} and row(many).priority == 2
    # A direct call: the task's own parameters are arguments, not Huey's options.
    direct = trust_tasks.takes_options("b", retries=7, priority=3, delay=2.0)
    assert json.loads(row(direct.id).kwargs) == {"key": "b", "retries": 7, "priority": 3, "delay": 2.0}
    assert row(direct.id).eta is None and row(direct.id).retries_left == 0
    # No clash: options stay options.
    plain = submit("add", a=1, key="order-1", priority=5)
    assert row(plain).key == "order-1" and row(plain).priority == 5
    # The CLI never mixed them: --arg is an argument, --key the option.
    out = cli(trust_env, "submit", "takes_options", "--arg", "key=sku", "--key", "k2")
    assert out.returncode == 0, out.stderr
    assert json.loads(row(out.stdout.strip()).kwargs) == {"key": "sku"} and row(out.stdout.strip()).key == "k2"


def test_submit_many_errors_name_the_item(env):
    from app import submit_many
    from app.catalog import BadArguments
    from app.codec import NotJSON
    with pytest.raises(BadArguments, match=r"^item 2: add: .*unexpected keyword argument 'c'"):
        submit_many("add", [{"a": 1}, {"a": 2}, {"a": 3, "c": 1}])
    with pytest.raises(NotJSON, match=r"^item 1: argument 'a' is a set"):
        submit_many("add", [{"a": 1}, {"a": {1}}])
    with pytest.raises(BadArguments, match=r"^item 0: expected a dict"):
        submit_many("add", [[1]])
    assert queued_nothing()


# -- 2. a command prints what was asked for ------------------------------------------------------------------------

def test_submit_prints_the_id_and_nothing_else(env, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_LOG_FORMAT="text")
    out = cli(env, "submit", "add", "--arg", "a=1")
    assert out.returncode == 0 and out.stderr == ""
    assert re.fullmatch(r"[0-9a-f-]{36}\n", out.stdout)
    listed = cli(env, "list")
    assert listed.returncode == 0 and listed.stderr == ""


# -- 3. every bad input: one line on stderr, exit 2, no traceback, nothing queued ---------------------------------

BAD_CRONTAB = "from app import crontab, periodic_task\n\n@periodic_task(crontab(minute='75'))\ndef every_75th():\n    pass\n"
MISSING_DEPENDENCY = "import no_such_dependency_xyz\n"
DEEP_JSON = '{"a": ' + "[" * 990 + "]" * 990 + "}"
NOT_UTF8 = os.fsdecode(b"\xff")   # what a shell's $'\xff' reaches Python as

BAD_INPUTS = {
    "file missing": ["submit", "add", "--file", "does-not-exist.jsonl"],
    "delay with eta": ["submit", "add", "--arg", "a=1", "--delay", "5", "--eta", "2030-01-01T00:00:00Z"],
    "huge priority": ["submit", "add", "--arg", "a=1", "--priority", "99999999999999999999999"],
    "huge retries": ["submit", "add", "--arg", "a=1", "--retries", "99999999999999999999999"],
    "huge delay": ["submit", "add", "--arg", "a=1", "--delay", "1e300"],
    "deep json": ["submit", "add", "--json", DEEP_JSON],
    "deep json argument": ["submit", "add", "--json", '{"a": ' + "[" * 200 + "]" * 200 + "}"],
    "key not utf-8": ["submit", "add", "--arg", "a=1", "--key", os.fsdecode(b"\xff")],
    "timeout without wait": ["submit", "add", "--arg", "a=1", "--timeout", "5"],
    "repeated arg": ["submit", "add", "--arg", "a=1", "--arg", "a=2"],
    "wrong type": ["submit", "add", "--arg", "a=abc"],
    "bad eta": ["submit", "add", "--arg", "a=1", "--eta", "tomorrow"],
    "unknown command": ["sumbit", "add"],
    "bad crontab in a task module": ["submit", "add", "--arg", "a=1"],
    "task module's dependency missing": ["submit", "add", "--arg", "a=1"],
    # The same class beyond submit: ids and names that are not UTF-8, numbers past any column, NaN, huge text.
    "show id not utf-8": ["show", NOT_UTF8],
    "cancel id not utf-8": ["cancel", NOT_UTF8],
    "retry id not utf-8": ["retry", NOT_UTF8],
    "discard id not utf-8": ["discard", NOT_UTF8],
    "list task not utf-8": ["list", "--task", NOT_UTF8],
    "dead task not utf-8": ["dead", "--task", NOT_UTF8],
    "retry all task not utf-8": ["retry", "--all", "--task", NOT_UTF8],
    "list queue not utf-8": ["list", "--queue", NOT_UTF8],
    "status bad queue name": ["status", "--queue", "a b"],
    "pause queue not utf-8": ["pause", NOT_UTF8],
    "resume bad queue name": ["resume", "a b"],
    "submit task not utf-8": ["submit", NOT_UTF8, "--arg", "a=1"],
    "submit arg not utf-8": ["submit", "always_fails", "--arg", "message=" + NOT_UTF8],
    "submit queue not utf-8": ["submit", "add", "--arg", "a=1", "--queue", NOT_UTF8],
    "huge list limit": ["list", "--limit", "99999999999999999999999"],
    "huge dead limit": ["dead", "--limit", "99999999999999999999999"],
    "5000-digit limit": ["list", "--limit", "9" * 5000],
    "5000-digit priority": ["submit", "add", "--arg", "a=1", "--priority", "9" * 5000],
    "5000-digit argument": ["submit", "add", "--arg", "a=" + "9" * 5000],
    "huge status window": ["status", "--window", "1e300"],
    "nan status window": ["status", "--window", "nan"],
    "nan status watch": ["status", "--watch", "nan"],
    "huge status watch": ["status", "--watch", "1e300"],
    "nan timeout": ["submit", "add", "--arg", "a=1", "--wait", "--timeout", "nan"],
    "infinite timeout": ["submit", "add", "--arg", "a=1", "--wait", "--timeout", "inf"],
    "negative timeout": ["submit", "add", "--arg", "a=1", "--wait", "--timeout", "-1"],
    "nan delay": ["submit", "add", "--arg", "a=1", "--delay", "nan"],
    "100k-character id": ["show", "x" * 100_000],
    "100k-character eta": ["submit", "add", "--arg", "a=1", "--eta", "x" * 100_000],
    "metrics host not utf-8": ["metrics", "--port", "0", "--host", NOT_UTF8],
    "web bind not utf-8": ["web", "--port", "0", "--bind", NOT_UTF8],
    "huge metrics port": ["metrics", "--port", "9" * 5000],
    "huge worker count": ["worker", "--workers", "99999999999999999999999"],
}


@pytest.mark.any_ledger  # each is refused before the ledger is opened
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_every_bad_input_is_one_line_and_exit_2(env, case):
    overrides = {}
    if case == "bad crontab in a task module":
        (env.tmp / "cron_typo_tasks.py").write_text(BAD_CRONTAB)
        overrides["NIGHTSHIFT_TASK_MODULES"] = "tasks,sample_tasks,cron_typo_tasks"
    if case == "task module's dependency missing":
        (env.tmp / "needs_dep_tasks.py").write_text(MISSING_DEPENDENCY)
        overrides["NIGHTSHIFT_TASK_MODULES"] = "tasks,sample_tasks,needs_dep_tasks"
    out = cli(env, *BAD_INPUTS[case], timeout=30, **overrides)
    assert out.returncode == 2, (out.returncode, out.stderr[:3000])
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr[:3000]
    assert len(out.stderr) < 600, f"a {len(out.stderr)}-character error line"  # a huge value is a preview
    assert out.stderr.startswith("nightshift: ") and out.stdout == ""
    assert queued_nothing()
    if case == "task module's dependency missing":
        assert "'needs_dep_tasks'" in out.stderr and "failed to import 'no_such_dependency_xyz'" in out.stderr
        assert "check the name" not in out.stderr
    if case == "bad crontab in a task module":
        assert "cron_typo_tasks.py:3" in out.stderr and "75" in out.stderr
    if case.startswith("5000-digit") or case.startswith("100k-character"):
        assert re.search(r"'(9|x)+'\.\.\. \[\d+\.\d kB, (5000|100000) chars\]", out.stderr), out.stderr


def test_python_api_refuses_bad_options_before_anything_is_written(env):
    from app import submit
    from app.catalog import BadArguments
    from app.codec import NotJSON
    from app.producer import BadOption
    for options, words in [(dict(delay=1e300), "delay must be"), (dict(priority=10**30), "priority must be"),
                           (dict(retries=-1), "retries must be"), (dict(delay=1, eta=datetime.datetime(2030, 1, 1)),
                                                                   "not both"),
                           (dict(key="\udcff"), "not valid UTF-8"), (dict(key="x" * 300), "1 to 255")]:
        with pytest.raises(BadOption, match=words):
            submit("add", a=1, **options)
    deep: list = []
    for _ in range(500):
        deep = [deep]
    with pytest.raises(NotJSON, match="nested deeper than"):
        submit("add", a=deep)
    with pytest.raises(BadArguments, match="must be int"):
        submit("add", a="1")
    assert queued_nothing()


# -- 4. --eta without an offset is UTC -----------------------------------------------------------------------------

def test_eta_without_offset_is_utc_whatever_the_local_zone(env):
    from app import submit
    plain = cli(env, "submit", "add", "--arg", "a=1", "--eta", "2030-01-01T00:00:00", TZ="America/New_York")
    offset = cli(env, "submit", "add", "--arg", "a=1", "--eta", "2030-01-01T00:00:00+02:00", TZ="America/New_York")
    assert plain.returncode == 0 and offset.returncode == 0, plain.stderr + offset.stderr
    assert row(plain.stdout.strip()).eta == datetime.datetime(2030, 1, 1)
    assert row(offset.stdout.strip()).eta == datetime.datetime(2029, 12, 31, 22)
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        job_id = submit("add", a=1, eta=datetime.datetime(2030, 1, 1))
    finally:
        del os.environ["TZ"]
        time.tzset()
    assert row(job_id).eta == datetime.datetime(2030, 1, 1)


# -- 5. no silent surprises: simple type hints are checked at submit -----------------------------------------------

def test_simple_type_hints_are_checked_at_submit(trust_env):
    from app import submit
    from app.catalog import BadArguments
    refused = [dict(limit="abc"), dict(limit=True), dict(limit=1.5), dict(limit=1, ratio="x"), dict(limit=1, name=7),
               dict(limit=1, flag=1), dict(limit=1, items={}), dict(limit=1, opts=[])]
    for kwargs in refused:
        with pytest.raises(BadArguments, match="must be"):
            submit("typed", **kwargs)
    assert queued_nothing()
    for kwargs in [dict(limit=1), dict(limit=2, ratio=3), dict(limit=3, ratio=0.5, name="n", flag=False, items=[1],
                                                                opts={"a": 1}), dict(limit=4, items=None, opts=None)]:
        submit("typed", **kwargs)
    out = cli(trust_env, "submit", "count_primes", "--arg", "limit=abc")
    assert out.returncode == 2 and "argument 'limit' must be int, got str 'abc'" in out.stderr
    # A str parameter keeps the text typed, even when it reads as a JSON number.
    out = cli(trust_env, "submit", "typed", "--arg", "limit=5", "--arg", "name=007")
    assert out.returncode == 0, out.stderr
    assert json.loads(row(out.stdout.strip()).kwargs) == {"limit": 5, "name": "007"}


# -- 6. time limits in thread workers ------------------------------------------------------------------------------

def test_thread_worker_stops_a_task_at_its_time_limit(trust_env, start_worker):
    from app import submit
    job_id = submit("spin", seconds=10)
    worker = start_worker(NIGHTSHIFT_WORKER_TYPE="thread")
    started = time.monotonic()
    wait_until(lambda: row(job_id).state == "dead", 8, message="time limit")
    assert time.monotonic() - started < 6
    job = row(job_id)
    assert "timed out after 2" in job.reason and job.error.startswith("TaskTimeout")
    assert job.duration < 3.5
    after = submit("add", a=1)  # the worker thread goes on
    wait_until(lambda: row(after).state == "succeeded", 10, message="next job")
    assert worker.alive()


# -- 7. what the operator reads -------------------------------------------------------------------------------------

def test_dead_shows_the_error_and_show_says_whose_traceback(env, start_worker):
    from app import submit
    dead = submit("always_fails", message="disk on fire")
    healed = submit("fails_first", times=1)
    start_worker()
    wait_until(lambda: row(dead).state == "dead" and row(healed).state == "succeeded", 15, message="outcomes")
    out = cli(env, "dead")
    assert "RuntimeError: disk on fire" in out.stdout, out.stdout
    shown = cli(env, "show", healed).stdout
    assert "traceback of attempt 1 (failed; the job succeeded on attempt 2):" in shown, shown
    assert "error     attempt 1: RuntimeError: attempt 1 fails on purpose" in shown


def test_status_shows_a_running_job_before_the_next_heartbeat(env, start_worker):
    from app import submit
    from app.models import WorkerBeat
    start_worker(NIGHTSHIFT_HEARTBEAT_SECONDS=60)
    wait_until(lambda: WorkerBeat.select().count() == 1, 10, message="first heartbeat")  # the next is 60 s away
    job_id = submit("sleep_for", seconds=6)
    wait_until(lambda: row(job_id).state == "running", 10, message="running")

    def current():
        data = json.loads(cli(env, "status", "--json").stdout)
        return [job["id"] for w in data["workers"] for job in w["current"]]
    assert wait_until(lambda: job_id in current(), 3, message="CURRENT shows the job")
    assert json.loads(WorkerBeat.get().current) == []  # not from a heartbeat: the only one was before the job


def test_sigterm_is_logged_at_once(env, start_worker):
    from app import submit
    job_id = submit("sleep_for", seconds=3)
    worker = start_worker()
    wait_until(lambda: row(job_id).state == "running", 10, message="running")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "stopping: waiting up to 5s for 1 running job(s)" in worker.log(), 2, message="stop line")
    assert worker.proc.wait(15) == 0


def test_recovery_summary_is_readable_text(env, monkeypatch, caplog):
    env.set(monkeypatch, NIGHTSHIFT_RECOVERY_GRACE=0)
    from app import recovery, submit
    from app.queue import get_huey
    submit("add", a=1)
    get_huey().storage.flush_queue()
    import logging
    with caplog.at_level(logging.WARNING, logger="nightshift.recovery"):
        recovery.recover(get_huey())
    [line] = [r.getMessage() for r in caplog.records if r.name == "nightshift.recovery"]
    assert line == "recovery: sent 1 waiting job(s) again (missing from Redis)", line


def test_every_recovery_pass_ends_with_a_debug_line(env, caplog):
    """Whether recovery runs at all, and how long a pass takes; the tests' negative checks wait on it too."""
    import logging

    from app import recovery
    from app.queue import get_huey
    with caplog.at_level(logging.DEBUG, logger="nightshift.recovery"):
        recovery.recover(get_huey())
    [line] = [r.getMessage() for r in caplog.records if r.name == "nightshift.recovery"]
    assert re.fullmatch(rf"recovery of queue '{env['NIGHTSHIFT_QUEUE']}': nothing to do in \d+\.\d{{3}} s", line), line


def test_periodic_jobs_log_submitted_before_started(env, start_worker, monkeypatch):
    env.set(monkeypatch, NIGHTSHIFT_TASK_MODULES="tasks,sample_tasks,periodic_tasks", NIGHTSHIFT_TICK_SECONDS=1)
    worker = start_worker(NIGHTSHIFT_WORKERS=4)
    wait_until(lambda: worker.log().count('"event": "succeeded"') >= 4, 15, message="four periodic runs")
    worker.stop()
    events = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    order: dict[str, list[str]] = {}
    for e in events:
        if e.get("task") == "tick_probe" and e.get("event") in ("submitted", "started"):
            order.setdefault(e["job_id"], []).append(e["event"])
    assert len(order) >= 4
    assert all(seen[:2] == ["submitted", "started"] for seen in order.values()), order


def test_redis_down_submit_warns_once(env):
    out = cli(env, "submit", "add", "--arg", "a=1", NIGHTSHIFT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
              NIGHTSHIFT_LOG_FORMAT="text")
    assert out.returncode == 0
    assert len(out.stderr.strip().splitlines()) == 1 and "Redis is unreachable" in out.stderr, out.stderr


# -- 8. --file streams -----------------------------------------------------------------------------------------------

def test_file_from_stdin_with_a_bad_line_queues_nothing(env):
    lines = [json.dumps({"a": i}) for i in range(5000)]
    lines[4321] = '{"a": "x"}'
    out = cli(env, "submit", "add", "--file", "-", input="\n".join(lines) + "\n")
    assert out.returncode == 2 and "line 4322: add: argument 'a' must be int" in out.stderr
    assert queued_nothing()
    lines[4321] = '{"a": 1}'
    out = cli(env, "submit", "add", "--file", "-", input="\n".join(lines) + "\n")
    assert out.returncode == 0 and out.stdout.strip() == "5000", out.stderr
    from app.models import Job
    from app.queue import get_huey
    assert Job.select().count() == 5000 and get_huey().pending_count() == 5000


def run_measured(env, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m app ARGS` under a small parent that reports the child's peak RSS (MB) alone."""
    probe = ("import resource, subprocess, sys; p = subprocess.run([sys.executable, '-m', 'app', *sys.argv[1:]]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")
    out = subprocess.run([sys.executable, "-c", probe, *args], env=env.full(), cwd=env.tmp, capture_output=True,
                         text=True, timeout=120)
    *stderr, peak_kb = out.stderr.strip().splitlines()
    out.stderr = "\n".join(stderr)
    return out, int(peak_kb) / 1024


def test_file_memory_stays_flat(env):
    """Peak RSS does not grow with the file: 100,000 lines cost what 25,000 do (one chunk of jobs at a time)."""
    peaks = {}
    for lines in (25_000, 100_000):
        path = env.tmp / f"jobs-{lines}.jsonl"
        with open(path, "w") as f:
            for i in range(lines):
                f.write(f'{{"a": {i}, "b": {i % 7}}}\n')
        out, peaks[lines] = run_measured(env, "submit", "add", "--file", str(path))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(lines)
    assert peaks[100_000] < 150, peaks
    assert peaks[100_000] - peaks[25_000] < 10, f"memory grows with the file: {peaks}"

"""The default ledger does not depend on the working directory, and a producer never creates a ledger: a job
accepted with exit 0 reaches the worker (issue 10, item 10). Through the real CLI, run from other directories."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from conftest import PG_ADMIN, USE_PG, wait_until


def run(env, cwd, *args, **overrides):
    """`python -m app ARGS` from `cwd`, with NIGHTSHIFT_DATABASE_URL unset unless given."""
    environ = env.full(**overrides)
    if "NIGHTSHIFT_DATABASE_URL" not in overrides:
        environ.pop("NIGHTSHIFT_DATABASE_URL")
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "app", *args], env=environ, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_default_ledger_is_the_same_from_any_directory(env, tmp_path):
    xdg = tmp_path / "xdg"
    environ = env.full(XDG_DATA_HOME=str(xdg))
    environ.pop("NIGHTSHIFT_DATABASE_URL")
    (tmp_path / "service").mkdir()
    worker = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=environ, cwd=tmp_path / "service",
                              stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"started" in (tmp_path / "worker.log").read_bytes() or worker.poll() is not None, 15,
                   message="worker start")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert (xdg / "nightshift" / "nightshift.db").exists()
        out = run(env, tmp_path / "home", "submit", "add", "--arg", "a=2", XDG_DATA_HOME=str(xdg))  # like cron
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.strip()
        wait_until(lambda: json.loads(run(env, tmp_path / "elsewhere", "show", job_id, "--json",
                                          XDG_DATA_HOME=str(xdg)).stdout)["state"] == "succeeded", 15,
                   message="the job runs")
        assert not (tmp_path / "home" / "data").exists() and not (tmp_path / "service" / "data").exists()
        shown = run(env, tmp_path, "config", XDG_DATA_HOME=str(xdg)).stdout
        assert f"NIGHTSHIFT_DATABASE_URL=sqlite:///{xdg}/nightshift/nightshift.db" in shown
    finally:
        worker.kill()
        worker.wait(10)


def test_default_without_xdg_is_under_home(env, tmp_path):
    out = run(env, tmp_path, "config", "--json", HOME=str(tmp_path / "h"), XDG_DATA_HOME="")
    rows = {row["variable"]: row["value"] for row in json.loads(out.stdout)}
    assert rows["NIGHTSHIFT_DATABASE_URL"] == f"sqlite:///{tmp_path}/h/.local/share/nightshift/nightshift.db"


@pytest.mark.parametrize("where", ["missing file", "missing directory"])
def test_a_producer_does_not_create_a_sqlite_ledger(env, tmp_path, where):
    path = tmp_path / "nowhere.db" if where == "missing file" else tmp_path / "no" / "such" / "dir" / "x.db"
    url = f"sqlite:///{path}"
    for args in (["submit", "add", "--arg", "a=1"], ["submit", "add", "--file", "-"]):
        out = subprocess.run([sys.executable, "-m", "app", *args], env=env.full(NIGHTSHIFT_DATABASE_URL=url),
                             cwd=tmp_path, capture_output=True, text=True, input='{"a": 1}\n', timeout=60)
        assert out.returncode == 1 and out.stdout == "", out
        assert out.stderr.startswith(f"nightshift: no ledger at {path}") and len(out.stderr.splitlines()) == 1
        assert "start a worker first or set NIGHTSHIFT_DATABASE_URL" in out.stderr
        assert not path.exists() and not (tmp_path / "no").exists()
    code = ("import sys, app; from app.db import LedgerMissing\n"
            "try:\n    app.submit('add', a=1)\nexcept LedgerMissing as exc:\n    print(exc); sys.exit(3)")
    out = subprocess.run([sys.executable, "-c", code], env=env.full(NIGHTSHIFT_DATABASE_URL=url), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout.startswith(f"no ledger at {path}"), out
    assert not path.exists()
    from app.queue import get_huey
    assert get_huey().pending_count() == 0


def test_the_worker_creates_a_ledger_file_but_not_a_typoed_directory(env, tmp_path):
    url = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    out = subprocess.run([sys.executable, "-m", "app", "worker"], env=env.full(NIGHTSHIFT_DATABASE_URL=url),
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and f"directory {tmp_path}/no/such/dir does not exist" in out.stderr
    assert not (tmp_path / "no").exists()
    fresh = tmp_path / "fresh.db"
    out = subprocess.run([sys.executable, "-m", "app", "init"],
                         env=env.full(NIGHTSHIFT_DATABASE_URL=f"sqlite:///{fresh}"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and fresh.exists() and str(fresh) in out.stdout, out
    ok = subprocess.run([sys.executable, "-m", "app", "submit", "add", "--arg", "a=1"],
                        env=env.full(NIGHTSHIFT_DATABASE_URL=f"sqlite:///{fresh}"), cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and len(ok.stdout.strip()) == 36, ok


@pytest.mark.skipif(not USE_PG, reason="PostgreSQL ledger")
def test_a_producer_does_not_create_postgresql_tables(env, tmp_path):
    import psycopg2
    name = f"nightshift_t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    try:
        out = subprocess.run([sys.executable, "-m", "app", "submit", "add", "--arg", "a=1"],
                             env=env.full(NIGHTSHIFT_DATABASE_URL=url), cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 1 and out.stdout == "", out
        assert out.stderr.startswith(f"nightshift: no ledger at database '{name}'") and \
            "start a worker first" in out.stderr and len(out.stderr.splitlines()) == 1
        conn = psycopg2.connect(url)
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert cur.fetchone()[0] == 0
        conn.close()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

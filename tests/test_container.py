"""The Docker image, for real: build it with podman and run a consumer, a producer and the console from it.

Uses ../shared/tools/container (podman, host network; no Docker engine needed) and the Redis on the host's
loopback (logical db 13, a queue name of its own). The ledger is SQLite in a host directory mounted at /data, or
PostgreSQL (a database of its own on postgresql://postgres@127.0.0.1:5432/) when NIGHTSHIFT_TEST_DATABASE=postgres.

    .venv/bin/python -m pytest -m container -rA tests/test_container.py      # ~1-3 min; prints the image size

Skipped when the container tool is absent or NIGHTSHIFT_SKIP_CONTAINER=1. The image is built from this checkout's
working tree, like `docker build .`; NIGHTSHIFT_CONTAINER_TOOL names the tool when it is elsewhere.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
TOOL = Path(os.environ.get("NIGHTSHIFT_CONTAINER_TOOL", ROOT.parent / "shared" / "tools" / "container"))
IMAGE = os.environ.get("NIGHTSHIFT_TEST_IMAGE", "localhost/nightshift:test")
REDIS_URL = "redis://127.0.0.1:6379/13"          # this test's own logical db
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432/"
SHUTDOWN_TIMEOUT = 30                            # the consumer's default; the job below needs a few seconds of it
FINISHED = ("succeeded", "dead", "canceled", "expired")

pytestmark = [
    pytest.mark.container,
    pytest.mark.serial,  # the image build takes both cores for a minute
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("NIGHTSHIFT_SKIP_CONTAINER") == "1",
                       reason="container test disabled by NIGHTSHIFT_SKIP_CONTAINER=1"),
    pytest.mark.skipif(not os.access(TOOL, os.X_OK),
                       reason=f"{TOOL} is absent: no way to build and run the image here"),
]


def sh(*argv: str, timeout: float = 120, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def podman(*argv: str, **kw) -> subprocess.CompletedProcess:
    return sh("podman", *argv, **kw)


@pytest.fixture(scope="module")
def image():
    # Docker format keeps HEALTHCHECK (the OCI format podman defaults to has no field for it).
    sh(TOOL, "build", IMAGE, ROOT, timeout=1200, env={"BUILDAH_FORMAT": "docker"})
    return IMAGE


@pytest.fixture
def ledger(tmp_path):
    """(NIGHTSHIFT_DATABASE_URL as the containers see it, extra `run` flags)."""
    if os.environ.get("NIGHTSHIFT_TEST_DATABASE", "sqlite") == "postgres":
        import psycopg2
        name = f"nightshift_ct_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(POSTGRES_SERVER + "postgres")
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_SERVER + name, []
        finally:
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()
    else:
        data = tmp_path / "data"
        data.mkdir()
        os.chown(data, 10001, 10001)       # the image's unprivileged user owns the ledger directory
        yield "sqlite:////data/nightshift.db", ["-v", f"{data}:/data"]


def wait_for_state(cli, job_id: str, states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = json.loads(cli("show", job_id, "--json").stdout)
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def test_image_builds_small_and_non_root(image, capsys):
    inspect = json.loads(podman("image", "inspect", image).stdout)[0]
    size, config = inspect["Size"], inspect["Config"]
    with capsys.disabled():
        print(f"\n[container] image {image}: {size / 1e6:.1f} MB ({size} bytes, podman image inspect)")
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["run_worker.sh"]
    healthcheck = inspect.get("Healthcheck") or config.get("Healthcheck") or {}     # podman puts it at the top
    assert healthcheck.get("Test") == ["CMD", "nightshift", "health", "--this-host"], inspect
    assert "NIGHTSHIFT_DATABASE_URL=sqlite:////data/nightshift.db" in config["Env"]
    assert "/data" in config["Volumes"]
    # Nothing from the repository beyond the package: no tests, no .git, no venv, no data.
    listing = sh(TOOL, "run", "--rm", "--no-healthcheck", "--entrypoint", "sh", image, "-c",
                 "id -u; ls -A /opt/venv/lib/python3*/site-packages | tr '\\n' ' '; "
                 "find / -xdev \\( -name .git -o -name tests -o -name .venv \\) -path '*nightshift*' 2>/dev/null; "
                 "command -v pip || true")
    uid, packages, *rest = listing.stdout.splitlines()
    assert uid == "10001"
    assert "huey" in packages and "app" in packages and "tasks.py" in packages
    assert "psycopg2" in packages, "the image must carry the PostgreSQL driver (the `postgres` extra)"
    assert not [line for line in rest if line.strip()], f"unexpected files or pip in the image: {rest}"
    # The entry point passes a given command through (the producer side of the same image).
    version = sh(TOOL, "run", "--rm", "--no-healthcheck", image, "nightshift", "--version")
    assert "0.1.0" in version.stdout
    # ...and options alone go to the consumer (`docker run IMAGE --workers 4`).
    worker_help = sh(TOOL, "run", "--rm", "--no-healthcheck", image, "--help")
    assert "Run the consumer" in worker_help.stdout and "--workers" in worker_help.stdout


def test_consumer_and_producer_containers(image, ledger, capsys):
    database_url, mounts = ledger
    queue = f"nsct{uuid.uuid4().hex[:10]}"      # Huey keeps only [a-z0-9] of a name: keep it findable for clean-up
    env = ["-e", f"NIGHTSHIFT_REDIS_URL={REDIS_URL}", "-e", f"NIGHTSHIFT_DATABASE_URL={database_url}",
           "-e", f"NIGHTSHIFT_QUEUE={queue}", "-e", "NIGHTSHIFT_HEARTBEAT_SECONDS=1",
           "-e", f"NIGHTSHIFT_SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT}", "-e", "NIGHTSHIFT_LOG_FORMAT=json",
           "-e", "NIGHTSHIFT_FILES_ROOT=/etc"]  # checksum_file reads /etc/hostname: allow that directory
    name = f"nightshift-ct-consumer-{uuid.uuid4().hex[:8]}"

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A one-off producer/CLI container sharing the consumer's Redis and ledger."""
        return sh(TOOL, "run", "--rm", "--no-healthcheck", *mounts, *env, image, "nightshift", *args,
                  check=check, timeout=120)

    try:
        # The consumer: the image's default command (run_worker.sh -> nightshift worker).
        sh(TOOL, "run", "-d", "--name", name, *mounts, *env, image)

        deadline = time.monotonic() + 60
        while "started" not in (logs := podman("logs", name, check=False)).stdout + logs.stderr:
            state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
            assert state == "running" and time.monotonic() < deadline, \
                f"consumer did not start ({state}):\n{logs.stdout}{logs.stderr}"
            time.sleep(0.5)

        # The producer: the same image with a command.
        job_id = cli("submit", "checksum_file", "--arg", "path=/etc/hostname").stdout.strip().splitlines()[-1]
        assert job_id

        job = wait_for_state(cli, job_id, FINISHED, 90)
        assert job["state"] == "succeeded", job
        assert job["result"]["path"] == "/etc/hostname" and len(job["result"]["sha256"]) == 64

        # The console from the same image (`nightshift web`, the alternative command), beside the live consumer.
        check_console(image, mounts, env, queue, job_id, name)

        # The image's HEALTHCHECK (`nightshift health`) against a live consumer; podman runs it in the container.
        health = podman("healthcheck", "run", name, check=False)
        has_health = cli("health", "--help", check=False).returncode == 0

        # SIGTERM, as `docker stop` sends it, while a job runs (a few seconds of CPU): the consumer lets the job
        # finish, then exits 0 with a log line saying so.
        long_job = cli("submit", "count_primes", "--arg", "limit=200000000").stdout.strip().splitlines()[-1]
        assert wait_for_state(cli, long_job, ("running", *FINISHED), 60)["state"] == "running"
        started = time.monotonic()
        podman("kill", "--signal", "TERM", name)
        exit_code = int(podman("wait", name, timeout=SHUTDOWN_TIMEOUT + 30).stdout.strip())
        took = time.monotonic() - started
        out = podman("logs", name)
        logs = out.stdout + out.stderr
        with capsys.disabled():
            print(f"\n[container] consumer drained a running job and stopped on SIGTERM in {took:.1f}s, "
                  f"exit code {exit_code}")
        assert exit_code == 0, logs[-3000:]
        assert re.search(r"consumer \S+ stopped", logs), logs[-3000:]
        assert took < SHUTDOWN_TIMEOUT, f"graceful stop took {took:.1f}s"
        drained = json.loads(cli("show", long_job, "--json").stdout)
        assert drained["state"] == "succeeded" and drained["result"] == 11078937, drained
        assert [a["outcome"] for a in drained["attempts"]] == ["succeeded"], drained["attempts"]

        if not has_health:
            pytest.skip("everything else passed, but the CLI has no `nightshift health` yet: HEALTHCHECK not exercised")
        assert health.returncode == 0, f"HEALTHCHECK failed on a live consumer: {health.stdout}{health.stderr}"
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
        delete_queue_keys(queue)


def http(url: str, token: str | None = None) -> tuple[int, dict, str]:
    """(status, headers, body) of a GET, redirects not followed (the console's login redirect is checked)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def check_console(image: str, mounts: list[str], env: list[str], queue: str, job_id: str, consumer: str) -> None:
    """`nightshift web --bind 0.0.0.0` in a container of the image (host network: its port is the host's): it
    refuses to listen beyond loopback without a token; with one, /healthz and the login page answer anyone, the
    API only the token's bearer, and it shows the consumer's job and queue. It stops on SIGTERM with exit 0."""
    refused = sh(TOOL, "run", "--rm", "--no-healthcheck", *mounts, *env, image, "nightshift", "web",
                 "--bind", "0.0.0.0", check=False, timeout=120)
    assert refused.returncode == 2 and "without a token" in refused.stderr, refused.stderr
    token = uuid.uuid4().hex
    port = free_port()
    name = f"nightshift-ct-web-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{port}"
    try:
        sh(TOOL, "run", "-d", "--name", name, "--no-healthcheck", *mounts, *env, "-e", f"NIGHTSHIFT_WEB_TOKEN={token}",
           image, "nightshift", "web", "--bind", "0.0.0.0", "--port", str(port))
        deadline = time.monotonic() + 60
        while True:
            try:
                health = http(f"{base}/healthz")
                break
            except OSError:  # not listening yet
                state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
                logs = podman("logs", name, check=False)
                assert state == "running" and time.monotonic() < deadline, \
                    f"console did not start ({state}):\n{logs.stdout}{logs.stderr}"
                time.sleep(0.5)
        assert health[0] == 200 and health[2] == "ok\n", health
        status, headers, _ = http(f"{base}/")
        assert status in (302, 303) and headers["Location"].startswith("/login"), (status, headers)
        status, _, page = http(f"{base}/login")
        assert status == 200 and "<form" in page and 'name="token"' in page, page[:2000]
        assert http(f"{base}/api/jobs/{job_id}")[0] == 401
        assert http(f"{base}/api/jobs/{job_id}", token=uuid.uuid4().hex)[0] == 401
        status, _, body = http(f"{base}/api/jobs/{job_id}", token=token)
        assert status == 200 and json.loads(body)["state"] == "succeeded", body[:2000]
        status, _, body = http(f"{base}/api/overview", token=token)
        overview = json.loads(body)
        assert status == 200 and queue in [q["name"] for q in overview["queues"]], body[:2000]
        assert [w["status"] for w in overview["workers"] if w["queue"] == queue] == ["alive"], overview["workers"]
        podman("kill", "--signal", "TERM", name)
        assert podman("wait", name, timeout=30).stdout.strip() == "0", podman("logs", name, check=False).stderr
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
    assert podman("inspect", consumer, "--format", "{{.State.Status}}").stdout.strip() == "running"


def delete_queue_keys(queue: str) -> None:
    """Remove this test's keys (its queue, results, locks) from its Redis db; nothing else is touched."""
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    keys = [k for pattern in (f"huey.*{queue}*", f"nightshift:{queue}:*") for k in client.scan_iter(pattern)]
    if keys:
        client.delete(*keys)

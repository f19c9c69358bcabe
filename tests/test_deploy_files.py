"""Static checks of the deployment files: Dockerfile, .dockerignore, compose.yaml, deploy/.

These do not run Docker, Compose or systemd (tests/test_container.py builds and runs the image with podman);
they check the structure and the numbers that must agree with each other and with config.py: pinned
dependencies, the stop grace periods against the consumer's shutdown timeout, the settings named in the examples.
compose.yaml is parsed with PyYAML when it is installed; without it that test is skipped.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import config

ROOT = Path(__file__).resolve().parent.parent
SHUTDOWN_TIMEOUT = config.Settings().shutdown_timeout          # the consumer's default graceful-shutdown timeout
KNOWN_SETTINGS = {env for env, _default, _help in config.describe()}


def _seconds(value) -> float:
    """'40s', '1m30s', '45', 45 -> seconds (Compose durations and systemd time spans, the forms we use)."""
    if isinstance(value, (int, float)):
        return float(value)
    total, text = 0.0, str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|min|sec)?", text)
    assert parts and "".join(n + (u or "") for n, u in parts) == text.replace(" ", ""), f"unparsed duration {value!r}"
    for number, unit in parts:
        total += float(number) * {"ms": 0.001, "": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit or ""]
    return total


def _dockerfile_instructions() -> list[tuple[str, str]]:
    # As Docker parses it: whole-line comments go first (also inside continuations), then lines ending in a
    # backslash are joined.
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not pinned with ==: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


# --- Dockerfile ---------------------------------------------------------------------------------------------------

def test_dockerfile_base_user_signal_health_entrypoint():
    stage = _final_stage()
    keywords = dict(stage)                                      # last one of each kind wins, as in Docker
    arg_default = dict(_dockerfile_instructions())["ARG"]
    assert arg_default == "PYTHON_IMAGE=python:3.11-slim"
    assert keywords["FROM"] == "${PYTHON_IMAGE}"

    user = keywords["USER"]
    assert user.split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert keywords["STOPSIGNAL"] == "SIGTERM"
    assert re.search(r'CMD \["nightshift", "health", "--this-host"\]$', keywords["HEALTHCHECK"])
    assert keywords["ENTRYPOINT"] == '["run_worker.sh"]'
    assert keywords["VOLUME"] == '["/data"]'
    assert "NIGHTSHIFT_DATABASE_URL=sqlite:////data/nightshift.db" in keywords["ENV"]
    # The only NIGHTSHIFT_* setting baked in is the ledger location; the rest comes from the environment.
    baked = re.findall(r"(NIGHTSHIFT_[A-Z_]+|SENTRY_[A-Z_]+)=", " ".join(v for k, v in stage if k == "ENV"))
    assert baked == ["NIGHTSHIFT_DATABASE_URL"]
    # /data is created and handed to the unprivileged user before it becomes a volume.
    runs = " ".join(v for k, v in stage if k == "RUN")
    assert "chown nightshift:nightshift /data" in runs and "--uid 10001" in runs and user == "10001:10001"


def test_dockerfile_installs_from_project_metadata_into_a_venv():
    instructions = _dockerfile_instructions()
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert "python3 -m venv /opt/venv" in runs
    assert 'tomllib.load(open("pyproject.toml", "rb"))["project"]' in runs
    assert 'project["dependencies"] + project["optional-dependencies"]["postgres"]' in runs
    assert 'project["optional-dependencies"]["web"]' in runs  # the console: `nightshift web` in the same image
    assert "--constraint deploy/constraints.txt" in runs
    assert "/opt/venv/bin/pip install --no-deps ." in runs
    assert not re.search(r"(^|\s)pip3? install", runs.replace("/opt/venv/bin/pip install", "")), \
        "never pip install into the system interpreter"
    assert "COPY --from=build /opt/venv /opt/venv" in [f"COPY {v}" for k, v in instructions if k == "COPY"]


def test_constraints_pin_exactly_what_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["postgres"]
                     + project["optional-dependencies"]["web"])
    constrained = _pins((ROOT / "deploy" / "constraints.txt").read_text().splitlines())
    for name, version in declared.items():
        assert constrained.get(name) == version, (
            f"deploy/constraints.txt pins {name}=={constrained.get(name)} but pyproject.toml pins {version}")


def test_dockerignore_keeps_junk_and_secrets_out():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for required in (".git", ".venv", "data", "tests", "**/__pycache__", ".pytest_cache", ".env", "*.db"):
        assert required in patterns, f".dockerignore lacks {required}"
    # ...and nothing the build needs.
    for needed in ("pyproject.toml", "run_worker.sh", "config.py", "tasks.py", "app", "helpers", "deploy",
                   "deploy/constraints.txt"):
        assert needed not in patterns


# --- compose.yaml -------------------------------------------------------------------------------------------------

def test_compose_structure():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; compose.yaml structure not checked")
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) >= {"redis", "worker", "postgres"}

    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    assert any(v.endswith(":/data") for v in redis["volumes"])

    worker = services["worker"]
    assert worker["build"] == "."
    assert "container_name" not in worker, "container_name would break `--scale worker=N`"
    assert not worker.get("ports"), "published ports would break `--scale worker=N`"
    assert worker["stop_signal"] == "SIGTERM"
    grace = _seconds(worker["stop_grace_period"])
    assert SHUTDOWN_TIMEOUT < grace <= SHUTDOWN_TIMEOUT + 30, "stop_grace_period must be a bit above the shutdown timeout"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["postgres"]["required"] is False
    assert "ledger:/data" in worker["volumes"]
    assert worker["env_file"] == [{"path": ".env", "required": False}]
    env = worker["environment"]
    assert set(env) - {"SENTRY_DSN", "SENTRY_ENVIRONMENT"} <= KNOWN_SETTINGS, "unknown setting in compose.yaml"
    assert env["NIGHTSHIFT_REDIS_URL"].endswith("redis://redis:6379/0}")
    assert env["NIGHTSHIFT_SHUTDOWN_TIMEOUT"] == "${NIGHTSHIFT_SHUTDOWN_TIMEOUT:-%g}" % SHUTDOWN_TIMEOUT

    console = services["console"]
    assert console["profiles"] == ["console"] and console["image"] == worker["image"]
    assert console["command"][:2] == ["nightshift", "web"] and "--bind" in console["command"]
    assert console["ports"] == ["127.0.0.1:8080:8080"], "the console is published on the host's loopback only"
    assert ":?" in console["environment"]["NIGHTSHIFT_WEB_TOKEN"], "the console must not start without a token"
    assert set(console["environment"]) - {"SENTRY_DSN", "SENTRY_ENVIRONMENT"} <= KNOWN_SETTINGS
    assert "/healthz" in " ".join(console["healthcheck"]["test"])
    assert "ledger:/data" in console["volumes"]

    postgres = services["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.startswith("postgres-data:") for v in postgres["volumes"])

    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith((".", "/"))}
    assert named <= set(doc["volumes"]) and {"redis-data", "ledger", "postgres-data"} <= set(doc["volumes"])


# --- systemd ------------------------------------------------------------------------------------------------------

def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(ROOT / "deploy" / "nightshift-worker.service")
    return parser


def test_systemd_unit_stops_gracefully_and_restarts():
    service = _unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert SHUTDOWN_TIMEOUT < _seconds(service["TimeoutStopSec"]) <= SHUTDOWN_TIMEOUT + 30
    assert service["EnvironmentFile"] == "/etc/nightshift/nightshift.env"
    assert service["User"] == "nightshift"
    assert service["ExecStart"].endswith("run_worker.sh")


def test_env_example_names_only_real_settings():
    names = []
    for line in (ROOT / "deploy" / "nightshift.env.example").read_text().splitlines():
        match = re.match(r"#?([A-Z][A-Z0-9_]*)=", line.strip())
        if match:
            names.append(match.group(1))
    assert set(names) <= KNOWN_SETTINGS, f"unknown settings: {set(names) - KNOWN_SETTINGS}"
    assert {"NIGHTSHIFT_REDIS_URL", "NIGHTSHIFT_DATABASE_URL", "NIGHTSHIFT_SHUTDOWN_TIMEOUT"} <= set(names)
    # The example's values must be valid, as the service would load them.
    values = dict(line.split("=", 1) for line in (ROOT / "deploy" / "nightshift.env.example").read_text().splitlines()
                  if re.match(r"[A-Z]", line))
    settings = config.load(values)
    assert settings.shutdown_timeout < _seconds(_unit()["Service"]["TimeoutStopSec"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = tmp_path / "nightshift-worker.service"
    unit.write_text((ROOT / "deploy" / "nightshift-worker.service").read_text())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "nightshift-worker" in line]
    # /opt/nightshift/run_worker.sh is not installed on a build machine; anything else is a real problem.
    problems = [line for line in ours if "is not executable" not in line]
    assert not problems, "\n".join(problems)


def test_the_editable_install_is_a_path_entry_not_an_import_finder():
    """Issue 16: the README's `pip install -e .` puts the project root on sys.path (one .pth line). setuptools'
    editable import finder, its default for this layout, is loaded by every interpreter at start: about 30 ms of
    each `nightshift` command here."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", "import sys, app; print(app.__file__); "
                          "print(*(getattr(f, '__module__', type(f).__module__) for f in sys.meta_path))"],
                         cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    where, finders = out.stdout.splitlines()
    assert Path(where).resolve() == ROOT / "app" / "__init__.py"
    assert "__editable__" not in finders, finders


def test_a_sqlite_ledger_loads_none_of_peewees_other_backends(tmp_path):
    """Issue 16: every command and consumer imports the CLI and opens the ledger. peewee's URL parser and its
    schema migrator import every backend it has (PostgreSQL, MySQL, CockroachDB, SQLite extensions: ~7 ms and
    0.8 MB); a SQLite ledger with no column to add needs none of them. Nor does a known task name need difflib
    (5 ms), which only suggests names for a wrong one."""
    code = ("import sys; from app.cli import main; from app import catalog, schema, worker; "
            f"schema.open_ledger('sqlite:///{tmp_path}/ledger.db'); schema.open_ledger("
            f"'sqlite:///{tmp_path}/ledger.db', create=False); catalog.get_task_class('count_primes'); "
            "print(sorted(m for m in sys.modules if m.startswith(('playhouse', 'difflib'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout

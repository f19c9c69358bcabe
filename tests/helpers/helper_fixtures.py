"""Fixtures for the helper tests: SQLite files, a PostgreSQL schema per test, a threaded HTTP server and an
aiosmtpd SMTP server, all on 127.0.0.1 and torn down after each test.

Not a conftest.py on purpose: tests/ has no packages, so a second conftest.py would replace the module named
`conftest` that the other tests import from. Test modules here import these fixtures by name instead."""
from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import peewee
import pytest

from helpers import db as dbh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared servers module
from servers import MailSink, Recorder, start_http_server, start_smtp, stop_http_server  # noqa: E402

PG = {"database": "test", "host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _pg_available() -> bool:
    try:
        with socket.create_connection((PG["host"], PG["port"]), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[peewee.Database]:
    """A peewee database: a fresh SQLite file, or a fresh schema in the test PostgreSQL."""
    if request.param == "sqlite":
        database = peewee.SqliteDatabase(str(tmp_path / "helpers.db"), pragmas={"journal_mode": "wal"},
                                         timeout=10)
        yield database
        database.close()
        dbh.forget(database)
        return
    if not _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    schema = "helpers_" + uuid.uuid4().hex[:12]
    admin = peewee.PostgresqlDatabase(**PG)
    admin.execute_sql(f'CREATE SCHEMA "{schema}"')
    database = peewee.PostgresqlDatabase(**PG, options=f"-c search_path={schema}")
    try:
        yield database
    finally:
        database.close()
        dbh.forget(database)
        admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def http_server() -> Iterator[Callable[[Callable[[Recorder], tuple[int, dict, bytes]]], Any]]:
    """Start a threaded HTTP server answering with `respond(handler) -> (status, headers, body)`."""
    servers: list[Any] = []

    def start(respond: Callable[[Recorder], tuple[int, dict, bytes]]) -> Any:
        server = start_http_server(respond)
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_http_server(server)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (made with the openssl command)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def smtp_server(tls_cert: tuple[Path, Path]) -> Iterator[Callable[..., tuple[MailSink, str]]]:
    """Start aiosmtpd on 127.0.0.1; `start(tls=True)` offers STARTTLS and requires login user/secret."""
    import ssl

    from aiosmtpd.smtp import AuthResult, LoginPassword

    controllers = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"user" and auth_data.password == b"s3cr:t"
        return AuthResult(success=ok, handled=False)

    def start(tls: bool = False) -> tuple[MailSink, str]:
        sink = MailSink()
        options: dict[str, Any] = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls_cert[0]), str(tls_cert[1]))
            options = {"tls_context": context, "require_starttls": True, "authenticator": authenticate,
                       "auth_required": True, "auth_require_tls": True}
        controller, port = start_smtp(sink, **options)
        controllers.append(controller)
        if tls:
            return sink, f"smtp://user:s3cr%3At@127.0.0.1:{port}?starttls=1&timeout=5"
        return sink, f"smtp://127.0.0.1:{port}?timeout=5"

    yield start
    for controller in controllers:
        controller.stop()

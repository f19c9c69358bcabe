"""Real servers and databases for the helper tests: SQLite files, a PostgreSQL schema per test, a threaded
HTTP server and an aiosmtpd SMTP server, all on 127.0.0.1 and torn down after each test."""
from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import peewee
import pytest

from helpers import db as dbh

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder(http.server.BaseHTTPRequestHandler):
    """Base handler: records requests on the server; subclasses or `respond` decide the answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append({"method": self.command, "path": self.path,  # type: ignore[attr-defined]
                                     "headers": dict(self.headers), "body": body})
        status, headers, payload = self.server.respond(self)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle


@pytest.fixture
def http_server() -> Iterator[Callable[[Callable[[Recorder], tuple[int, dict, bytes]]], Any]]:
    """Start a threaded HTTP server answering with `respond(handler) -> (status, headers, body)`."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(respond: Callable[[Recorder], tuple[int, dict, bytes]]) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.daemon_threads = True
        server.requests = []  # type: ignore[attr-defined]
        server.respond = respond  # type: ignore[attr-defined]
        server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


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


class MailSink:
    """aiosmtpd handler: keeps every accepted message; `rules[address]` lists replies to give that RCPT first."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.rules: dict[str, list[str]] = {}
        self.rcpt_attempts: dict[str, int] = {}

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list) -> str:
        key = address.lower()
        self.rcpt_attempts[key] = self.rcpt_attempts.get(key, 0) + 1
        replies = self.rules.get(key)
        if replies:
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
            if not reply.startswith("250"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        import email.policy
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": message,
                              "login": getattr(session, "login_data", None), "tls": session.ssl is not None})
        return "250 Message accepted"

    def to(self, address: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if address.lower() in (a.lower() for a in m["to"])]


@pytest.fixture
def smtp_server(tls_cert: tuple[Path, Path]) -> Iterator[Callable[..., tuple[MailSink, str]]]:
    """Start aiosmtpd on 127.0.0.1; `start(tls=True)` offers STARTTLS and requires login user/secret."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    controllers = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"user" and auth_data.password == b"s3cr:t"
        return AuthResult(success=ok, handled=False)

    def start(tls: bool = False) -> tuple[MailSink, str]:
        sink = MailSink()
        port = free_port()
        options: dict[str, Any] = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls_cert[0]), str(tls_cert[1]))
            options = {"tls_context": context, "require_starttls": True, "authenticator": authenticate,
                       "auth_required": True, "auth_require_tls": True}
        controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=5, **options)
        controller.start()
        controllers.append(controller)
        if tls:
            return sink, f"smtp://user:s3cr%3At@127.0.0.1:{port}?starttls=1&timeout=5"
        return sink, f"smtp://127.0.0.1:{port}?timeout=5"

    yield start
    for controller in controllers:
        controller.stop()

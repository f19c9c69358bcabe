"""Real servers on 127.0.0.1 for tests: a threaded HTTP server with scripted answers and an aiosmtpd mail sink.

Shared by tests/helpers (helpers alone) and tests/test_recipes.py (tasks in a real worker)."""
from __future__ import annotations

import email
import email.policy
import http.server
import socket
import threading
from typing import Any, Callable

Respond = Callable[["Recorder"], "tuple[int, dict, bytes]"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records every request on its server (`server.requests`); `server.respond(handler)` gives the answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:  # type: ignore[attr-defined]
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


def start_http_server(respond: Respond) -> http.server.ThreadingHTTPServer:
    """A threaded HTTP server on a free port; has .url, .requests; stop with stop_http_server()."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    server.respond = respond  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop_http_server(server: http.server.ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def scripted(*answers: tuple[int, dict, bytes]) -> Respond:
    """A respond() that gives `answers` in order, then repeats the last."""
    queue = list(answers)
    lock = threading.Lock()

    def respond(handler: Recorder) -> tuple[int, dict, bytes]:
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]
    return respond


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
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": message,
                              "tls": session.ssl is not None})
        return "250 Message accepted"

    def to(self, address: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if address.lower() in (a.lower() for a in m["to"])]


def start_smtp(sink: MailSink, **options: Any) -> tuple[Any, int]:
    """aiosmtpd on 127.0.0.1 and a free port, delivering to `sink`; returns (controller, port)."""
    from aiosmtpd.controller import Controller
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=5, **options)
    controller.start()
    return controller, port

"""Serving the console: waitress (a small pure-Python WSGI server with a thread pool) on one address.

Refuses to listen beyond loopback without NIGHTSHIFT_WEB_TOKEN: a console that can retry, cancel and discard
jobs, and shows every job's arguments, is never open to a network by accident.
"""
from __future__ import annotations

import logging
import signal
from typing import Any

import config
from app.web.auth import is_loopback

log = logging.getLogger("nightshift.web")
THREADS = 2  # a few operators and their pages' refreshes; each thread holds one ledger connection (and its cache)


class Refused(Exception):
    """The console must not start with these settings."""


def check_bind(bind: str, settings: config.Settings) -> None:
    if not settings.web_token and not is_loopback(bind):
        raise Refused(f"refusing to listen on {bind} without a token: set NIGHTSHIFT_WEB_TOKEN (every page and API "
                      f"call will need it), or bind to 127.0.0.1")


def make_server(bind: str, port: int, settings: config.Settings) -> Any:
    """The console's server on `settings` (the entry point's: `nightshift web`), listening but not yet serving
    (its .effective_port is the port it got)."""
    from waitress.server import create_server

    from app.web.app import create_app
    check_bind(bind, settings)
    return create_server(create_app(settings), host=bind, port=port, threads=THREADS, ident="nightshift",
                         clear_untrusted_proxy_headers=True, channel_timeout=60)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(bind: str, port: int, settings: config.Settings, on_ready: Any = None) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    server = make_server(bind, port, settings)
    if on_ready is not None:
        on_ready(server)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()

"""Who may use the console, and proof that a form was sent by the console's own page.

- Token (NIGHTSHIFT_WEB_TOKEN): when set, every page and API call needs it. Programs send
  `Authorization: Bearer TOKEN`; people type it once in the login form and get a session cookie: a timestamp
  and an HMAC of it keyed with the token (no server-side state; changing the token ends every session).
- Without a token the console only listens on loopback (app.web.server refuses anything else) and answers only
  requests whose Host header is a loopback name, so another site cannot reach it by DNS rebinding.
- CSRF: every form carries a token derived from a per-browser random cookie and a server secret; a POST whose
  form token does not match its cookie is refused. The cookie is SameSite=Strict and HttpOnly, and the API's
  POSTs need a JSON body (a cross-site form or fetch cannot send one without a CORS preflight, never granted).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time

from app.web.http import HTTPError, Request

SESSION_COOKIE = "nightshift_session"
CSRF_COOKIE = "nightshift_csrf"
SESSION_SECONDS = 12 * 3600


def is_loopback(host: str) -> bool:
    """Whether a bind address or a Host header's host part names this machine only."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a Host header (`[::1]:8080` -> `::1`, `example:80` -> `example`)."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class Guard:
    """The console's checks for one process: token, sessions, CSRF."""

    def __init__(self, token: str, session_seconds: int = SESSION_SECONDS) -> None:
        self.token = token
        self.session_seconds = session_seconds
        # Keyed with the token when there is one (sessions and forms survive a restart), else a random secret of
        # this process (an open form needs reloading after a restart of an unauthenticated local console).
        self.key = hashlib.sha256(b"nightshift-web:" + token.encode()).digest() if token else secrets.token_bytes(32)

    @property
    def required(self) -> bool:
        return bool(self.token)

    # -- token and sessions ------------------------------------------------------------------------------------

    def token_matches(self, given: str) -> bool:
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, value = request.header("Authorization").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def new_session(self) -> str:
        issued = str(int(time.time()))
        return f"{issued}.{_sign(self.key, 'session:' + issued)}"

    def session_ok(self, request: Request) -> bool:
        issued, _, mac = request.cookies.get(SESSION_COOKIE, "").partition(".")
        if not issued.isdigit() or not hmac.compare_digest(mac, _sign(self.key, "session:" + issued)):
            return False
        return 0 <= time.time() - int(issued) <= self.session_seconds

    def allowed(self, request: Request) -> bool:
        """A request may see the console: no token is set, or it brings the token or a live session."""
        return not self.required or self.bearer_ok(request) or self.session_ok(request)

    def check_host(self, request: Request) -> None:
        """Without a token, only loopback Host names (DNS rebinding would otherwise reach a local console)."""
        if not self.required and not is_loopback(host_of(request.header("Host", "localhost"))):
            raise HTTPError(421, "this console has no token, so it answers only to localhost addresses")

    # -- CSRF ---------------------------------------------------------------------------------------------------

    @staticmethod
    def browser_id(request: Request) -> tuple[str, bool]:
        """The browser's random CSRF cookie value, and whether it is new (to be set on the response)."""
        value = request.cookies.get(CSRF_COOKIE, "")
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            return value, False
        return secrets.token_hex(16), True

    def csrf_token(self, browser: str) -> str:
        return _sign(self.key, "csrf:" + browser)

    def check_csrf(self, request: Request, given: str) -> None:
        browser = request.cookies.get(CSRF_COOKIE, "")
        if not browser or not given or not hmac.compare_digest(given, self.csrf_token(browser)):
            raise HTTPError(403, "the form's CSRF token is missing or stale: reload the page and try again")
        origin = request.header("Origin")
        if origin and origin != "null" and host_of(origin.split("://", 1)[-1]) != host_of(request.header("Host")):
            raise HTTPError(403, "cross-site request refused")

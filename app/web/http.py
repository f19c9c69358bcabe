"""Just enough HTTP on top of WSGI for the console: a request, a response and a router.

The console needs a dozen routes, forms, cookies and JSON; the standard library's WSGI covers that in a hundred
lines, which keeps the console's dependencies to a template engine and a server (see pyproject's `web` extra).
"""
from __future__ import annotations

import http.cookies
import json
import re
import urllib.parse
from typing import Any, Callable, Iterable

MAX_BODY = 1 << 20  # 1 MiB: a form or a submitted job; more is refused (413), never read


class HTTPError(Exception):
    """Ends a request with `status` and a short message (HTML or JSON, as the route answers)."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


REASONS = {200: "OK", 201: "Created", 303: "See Other", 304: "Not Modified", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 415: "Unsupported Media Type", 421: "Misdirected Request",
           500: "Internal Server Error", 503: "Service Unavailable"}


class Request:
    """One WSGI request: method, path, query, form or JSON body, cookies and headers."""

    def __init__(self, environ: dict) -> None:
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET").upper()
        raw_path = environ.get("PATH_INFO", "/") or "/"
        self.path = raw_path.encode("latin-1").decode("utf-8", "replace")  # WSGI hands over latin-1 text
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(environ.get("QUERY_STRING", ""),
                                                                 keep_blank_values=True).items()}
        self.params: dict[str, str] = {}   # from the route pattern
        self._body: bytes | None = None
        self._form: dict[str, list[str]] | None = None

    def header(self, name: str, default: str = "") -> str:
        key = "HTTP_" + name.upper().replace("-", "_")
        if name.lower() == "content-type":
            key = "CONTENT_TYPE"
        return self.environ.get(key, default) or default

    @property
    def remote(self) -> str:
        return self.environ.get("REMOTE_ADDR", "?")

    @property
    def cookies(self) -> dict[str, str]:
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(self.header("Cookie"))
        except http.cookies.CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    def body(self) -> bytes:
        if self._body is None:
            try:
                length = int(self.environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise HTTPError(400, "bad Content-Length") from None
            if length > MAX_BODY:
                raise HTTPError(413, f"the body is over {MAX_BODY} bytes")
            self._body = self.environ["wsgi.input"].read(length) if length > 0 else b""
        return self._body

    def form(self) -> dict[str, list[str]]:
        """An application/x-www-form-urlencoded body (the console's forms send nothing else)."""
        if self._form is None:
            self._form = {}
            if self.header("Content-Type").split(";")[0].strip() == "application/x-www-form-urlencoded":
                self._form = urllib.parse.parse_qs(self.body().decode("utf-8", "replace"), keep_blank_values=True)
        return self._form

    def field(self, name: str, default: str = "") -> str:
        values = self.form().get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        """The JSON body; refused (415) unless sent as application/json, which a browser cannot send to another
        origin without a CORS preflight that the console never grants."""
        if self.header("Content-Type").split(";")[0].strip().lower() != "application/json":
            raise HTTPError(415, "send a JSON body with Content-Type: application/json")
        try:
            return json.loads(self.body() or b"null")
        except (ValueError, RecursionError):
            raise HTTPError(400, "the body is not valid JSON") from None


class Response:
    def __init__(self, body: bytes | str = b"", status: int = 200, content_type: str = "text/html; charset=utf-8",
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.status = status
        self.headers = [("Content-Type", content_type)] + (headers or [])

    def set_cookie(self, name: str, value: str, max_age: int | None = None, secure: bool = False) -> None:
        """HttpOnly, SameSite=Strict, path /: never readable by scripts nor sent by another site's pages."""
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if secure:
            parts.append("Secure")
        self.headers.append(("Set-Cookie", "; ".join(parts)))

    def wsgi(self, start_response: Callable) -> Iterable[bytes]:
        start_response(f"{self.status} {REASONS.get(self.status, '')}".strip(),
                       self.headers + [("Content-Length", str(len(self.body)))])
        return [self.body]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status, "application/json")


def redirect(location: str, status: int = 303) -> Response:
    return Response(b"", status, "text/plain", [("Location", location)])


def local_path(target: str | None, default: str = "/") -> str:
    """`target` when it is a path on this site (a `next=` after login or an action), else `default`: never
    an open redirect to another site (`//evil`, `https://evil`, `/\\evil`)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\n" in target \
            or "\r" in target:
        return default
    return target


Handler = Callable[[Request], Response]


class Router:
    """Routes by method and path pattern; `{name}` matches one path segment, handed over in request.params."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self.routes.append((method, re.compile(f"^{regex}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for route_method, regex, handler in self.routes:
            found = regex.match(path)
            if found:
                if route_method == method or (method == "HEAD" and route_method == "GET"):
                    return handler, {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}
                allowed = True
        raise HTTPError(405 if allowed else 404, "method not allowed" if allowed else "no such page")

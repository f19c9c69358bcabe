"""One HTTP request with the safety rules webhooks and API pulls share (standard library only).

- Only http and https URLs.
- Optionally refuse private, loopback, link-local and other non-public addresses. The host name is resolved
  once, every address checked, and the connection made to a checked address, so a DNS answer that changes
  between the check and the connection cannot point the request at an internal service.
- Failures are classified: timeouts, connection errors, 429 and 5xx are `TemporaryError` (with the server's
  Retry-After when it sent one); a refused URL is `PermanentError`. Other statuses are returned to the caller.
- Redirects are not followed: a webhook or API that moved should be reconfigured, not chased.
"""
from __future__ import annotations

import dataclasses
import email.utils
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from typing import Mapping

from helpers.errors import PermanentError, TemporaryError

MAX_BODY = 16 * 1024 * 1024
USER_AGENT = "nightshift/0.1"


@dataclasses.dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))

    def text(self, limit: int = 500) -> str:
        return self.body[:limit].decode("utf-8", "replace")


class RetryableStatus(TemporaryError):
    """The server answered 429 or 5xx."""

    def __init__(self, message: str, status: int, retry_after: float | None) -> None:
        super().__init__(message, retry_after)
        self.status = status


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and a router may deliver to: IPv4-mapped, IPv4-compatible
    (::a.b.c.d), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16) and Teredo (server and client)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in IPV4_COMPATIBLE or any(ip in prefix for prefix in NAT64_PREFIXES):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses, and for IPv6
    addresses that embed such an IPv4 address (NAT64, 6to4, Teredo, IPv4-mapped or -compatible)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates += embedded_ipv4(ip)
    return all(c.is_global and not c.is_multicast for c in candidates)


class _CheckedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, never to whatever the host name resolves to by then."""

    def __init__(self, host: str, port: int, address: str, **options) -> None:
        super().__init__(host, port, **options)
        self.checked_address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.checked_address, self.port), self.timeout, self.source_address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _CheckedHTTPSConnection(_CheckedHTTPConnection):
    """Like _CheckedHTTPConnection, then TLS with the certificate verified against the host name (not the address)."""

    default_port = 443

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext, **options) -> None:
        super().__init__(host, port, address, **options)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


def check_url(url: str) -> urllib.parse.SplitResult:
    """Parse `url`, refusing anything but an absolute http(s) URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise PermanentError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise PermanentError(f"only http and https URLs are allowed, not {url!r}")
    if not parts.hostname:
        raise PermanentError(f"URL has no host: {url!r}")
    return parts


def resolve(host: str, port: int, allow_private: bool) -> str:
    """One address of `host` to connect to; all of them must be public unless `allow_private`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TemporaryError(f"cannot resolve {host}: {exc}") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise TemporaryError(f"{host} has no addresses")
    if not allow_private:
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise PermanentError(f"{host} resolves to a private or loopback address ({refused[0]}); "
                                 "refused by NIGHTSHIFT_WEBHOOK_ALLOW_PRIVATE=false")
    return addresses[0]


def request(method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
            timeout: float = 10.0, allow_private: bool = False,
            ssl_context: ssl.SSLContext | None = None) -> Response:
    """Send one request and return the response; raises TemporaryError/PermanentError as described above.

    429 and 5xx responses raise TemporaryError; every other status is returned for the caller to judge.
    """
    parts = check_url(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = resolve(parts.hostname, port, allow_private)
    # Connect to the address we checked; TLS still verifies the certificate against the host name.
    if https:
        conn: http.client.HTTPConnection = _CheckedHTTPSConnection(
            parts.hostname, port, address, ssl_context or ssl.create_default_context(), timeout=timeout)
    else:
        conn = _CheckedHTTPConnection(parts.hostname, port, address, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    all_headers.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=all_headers)
        raw = conn.getresponse()
        data = raw.read(MAX_BODY + 1)
        response = Response(raw.status, raw.headers, data[:MAX_BODY])
    except (socket.timeout, TimeoutError) as exc:
        raise TemporaryError(f"{method} {url} timed out after {timeout}s") from exc
    except ssl.SSLCertVerificationError as exc:
        raise PermanentError(f"{method} {url}: TLS certificate not valid: {exc.verify_message}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise TemporaryError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        conn.close()
    if response.status == 429 or response.status >= 500:
        raise RetryableStatus(f"{method} {url} answered {response.status}: {response.text(200)}",
                              response.status, response.retry_after)
    return response

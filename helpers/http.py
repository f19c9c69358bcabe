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


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


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
    if https:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=ssl_context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    # Connect to the address we checked; TLS still verifies the certificate against the host name.
    conn._create_connection = (  # type: ignore[attr-defined]
        lambda addr, timeout=None, source=None: socket.create_connection((address, addr[1]), timeout, source))
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

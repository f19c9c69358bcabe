"""Masking secrets by their structure, and bounding values, wherever something is shown to a person or a service.

One set of rules for logs, CLI output, status, health, metrics, start-up errors and Sentry events:
- a name that looks secret (password, token, secret, api key, authorization, signature, cookie...) hides its
  value, whether it is a dict key, a header name, a query parameter or `name=value` / `name: value` in text;
- header names and query parameters are structural: there the short names (auth, key, sig...) and names ending
  in one (X-Client-Key, upload_sig) are secret too -- in a query string, in a dict held under a `headers` key,
  and under any name shaped like a header (with a `-`, which no argument name has);
- a URL's userinfo hides its password (split at the last `@` before the host, so a raw `@` in a password is
  masked too); a userinfo without a password is hidden whole (a Sentry DSN key, a token as user name) unless
  the scheme's user part is a user name (redis, postgresql, smtp...);
- `Bearer <token>` / `Basic <credentials>` in text hide the credentials;
- `bound` cuts a long value to a preview that says its full size; `quoted` does so for a value in a message.
Standard library only, so helpers, the app and the CLI can all use it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import urllib.parse
from typing import Any, Iterable

MASK = "***"
PREVIEW_CHARS = 500

# Substrings that make a name secret (dict keys, argument names, header names, query parameters).
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|pwd|token|secret|authori[sz]ation|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|signing[_-]?key|credential|cookie|session|signature|dsn",
    re.IGNORECASE)
# Whole names that are secret in a query string or header, though too short to match as substrings.
SECRET_EXACT = frozenset({"key", "sig", "auth", "code", "apikey", "x-api-key", "jwt", "hmac"})
# Last words that make such a name secret: X-Client-Key, X-Goog-Auth, upload_sig (not "code": Status-Code).
SECRET_LAST_WORD = frozenset({"key", "sig", "auth", "jwt", "hmac"})
# Dict keys whose value is a dict of header names: headers, extra_headers, request-headers, header.
HEADERS_KEY = re.compile(r"(?:^|[_-])headers?$", re.IGNORECASE)

# Each pattern starts only where a word starts (the look-behinds), so a long run of letters costs linear time.
# Schemes whose bare userinfo (no ":password") is a user name, shown; elsewhere (https://KEY@sentry..., a token as
# user name) a bare userinfo is a credential, masked.
USER_NAME_SCHEMES = frozenset({"redis", "rediss", "postgres", "postgresql", "mysql", "smtp", "smtps", "amqp", "amqps",
                               "ftp", "sftp", "ssh", "mongodb", "unix"})
_URL = re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token|Digest)\s+[A-Za-z0-9._~+/=:-]+", re.IGNORECASE)
# name=value, name: value, 'name': 'value', "name": "value" -- in reprs, messages and headers dumped as text.
_NAMED_VALUE = re.compile(
    r"""(?<![\w.-])(?P<name>[A-Za-z_][\w.-]*)(?P<q1>['"]?)(?P<sep>[ \t]*[:=][ \t]*)"""
    r"""(?P<value>"[^"]*"|'[^']*'|[^\s,;&'"}\])]+)""")


def is_secret_name(name: Any, short: bool = False) -> bool:
    """Whether a key, header or parameter called `name` holds a secret; `short` also counts the short names
    (key, sig, auth, code...) and names ending in one (X-Client-Key), secret in a query string or header but
    ordinary as an argument."""
    if not isinstance(name, str):
        return False
    if SECRET_NAME.search(name):
        return True
    if not short:
        return False
    lowered = name.strip().lower()
    return lowered in SECRET_EXACT or re.split(r"[-_.]", lowered)[-1] in SECRET_LAST_WORD


def is_header_name(name: Any) -> bool:
    """Whether `name` is shaped like an HTTP header name (X-Api-Key): a `-`, which no argument name has."""
    return isinstance(name, str) and "-" in name


def is_secret_key(name: Any, in_headers: bool = False) -> bool:
    """Whether the value under dict key `name` is a secret: a secret-looking name anywhere, and the short
    names of headers and query strings in a dict of headers (`in_headers`) or under a header-shaped name."""
    return is_secret_name(name, short=in_headers or is_header_name(name))


def holds_headers(name: Any) -> bool:
    """Whether the value under dict key `name` is a dict of header names (`headers`, `extra_headers`...)."""
    return isinstance(name, str) and bool(HEADERS_KEY.search(name))


def mask_url(url: str) -> str:
    """`url` with its password (or whole userinfo) and secret-looking query parameters replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1:
            end = min(end, index)
    authority, tail = rest[:end], rest[end:]
    # A raw "@" may occur in the password: the host starts after the last "@" before the path.
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{MASK}" if user else MASK
        elif scheme.lower() not in USER_NAME_SCHEMES:
            userinfo = MASK
        authority = userinfo + "@" + host
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hashmark, fragment = query.partition("#")
        query = "&".join(_mask_pair(pair) for pair in query.split("&"))
        tail = path + "?" + query + (hashmark + fragment if hashmark else "")
    return f"{scheme}://{authority}{tail}"


def _mask_pair(pair: str) -> str:
    name, eq, _value = pair.partition("=")
    if eq and is_secret_name(urllib.parse.unquote_plus(name), short=True):
        return f"{name}={MASK}"
    return pair


REMEMBERED_TEXT_CHARS = 120  # short texts masked with no known secrets are remembered (see mask_text)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text (a message, an error, a repr) with URLs, `name=value` secrets, auth schemes and the given
    known secret values masked.

    A short text masked by the rules alone is remembered (a bounded cache): every job line of a worker carries
    the same worker id, task names and states, and the patterns cost more than the rest of the line."""
    if not isinstance(text, str) or not text:
        return text
    known = sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True)
    if not known and len(text) <= REMEMBERED_TEXT_CHARS:
        return _mask_by_rules_remembered(text)
    for secret in known:
        text = text.replace(secret, MASK)
    return _mask_by_rules(text)


def _mask_by_rules(text: str) -> str:
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {MASK}", text)

    def named(match: re.Match) -> str:
        value = match.group("value")
        if not is_secret_name(match.group("name"), short=is_header_name(match.group("name"))):
            # "Error: password=x": the value of a harmless name may itself be a secret's name=value.
            start = match.start("value") - match.start()
            return match.group(0)[:start] + _NAMED_VALUE.sub(named, value)
        if value.strip("'\"") == MASK:
            return match.group(0)
        quote = value[0] if value[0] in "'\"" else ""
        return match.group("name") + match.group("q1") + match.group("sep") + quote + MASK + quote
    return _NAMED_VALUE.sub(named, text)


# At most 256 texts of at most REMEMBERED_TEXT_CHARS characters: a few tens of kB, whatever the jobs carry.
_mask_by_rules_remembered = functools.lru_cache(maxsize=256)(_mask_by_rules)


def mask(value: Any, secrets: Iterable[str] = (), headers: bool = False) -> Any:
    """A copy of `value` (JSON-like) with secret-looking keys' values masked and every string masked as text;
    `headers`: `value`'s keys are header names (it is held under a `headers` key), so their short names count."""
    secrets = tuple(secrets)
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k, headers) and value[k] not in (None, "") else
                mask(v, secrets, holds_headers(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask(v, secrets) for v in value]
    if isinstance(value, str):
        return mask_text(value, secrets)
    return value


def size_note(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MB"
    if size >= 1 << 10:
        return f"{size / (1 << 10):.1f} kB"
    return f"{size} B"


def bound(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """`value` itself when its JSON form is at most `limit` characters, else a string preview of it that ends
    with its full size, so one huge argument cannot make a huge log line."""
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= limit:
        return value
    return f"{text[:limit]}... [{size_note(len(text.encode('utf-8', 'replace')))}, {len(text)} chars]"


def quoted(value: Any, limit: int = 60) -> str:
    """`repr(value)` for a message, or, past `limit` characters, a preview of it that keeps its closing quote and
    says its full size (`'99999...'... [5.0 kB, 5000 chars]`), so one huge value cannot make a huge line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    full = value if isinstance(value, str) else text
    preview = repr(value[:limit]) if isinstance(value, str) else text[:limit]
    return f"{preview}... [{size_note(len(full.encode('utf-8', 'replace')))}, {len(full)} chars]"


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL (its password or bare userinfo, secret query values), to scrub them anywhere."""
    found = []
    scheme, sep, rest = url.partition("://")
    if not sep:
        return found
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        userinfo = authority.rsplit("@", 1)[0]
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else ("" if scheme.lower() in USER_NAME_SCHEMES else user))
        if colon:
            found.append(urllib.parse.unquote(password))
    query = rest.partition("?")[2].partition("#")[0]
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=False):
        if is_secret_name(name, short=True):
            found.append(value)
    return [s for s in found if s]


def secret_values(settings: Any) -> list[str]:
    """Every secret a settings object (config.Settings) holds -- whole secret strings and the passwords and keys
    inside its URLs -- so they can be scrubbed from text that has lost its structure (a repr, a traceback)."""
    found: list[str] = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if not field.metadata.get("secret") or not isinstance(value, str) or not value:
            continue
        found.extend(url_secrets(value) if "://" in value else [value])
    return sorted(set(found), key=len, reverse=True)

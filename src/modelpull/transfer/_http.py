"""HTTP for the transfer engine: redirects followed by hand, statuses mapped to errors.

Redirects are followed here rather than by aiohttp so that credentials (`Authorization`,
`Cookie`) go to the origin host only and never to a CDN on another host, and so that the
final URL is known and reused for every piece.
"""
from __future__ import annotations

import email.utils
import re
import socket
import time
from typing import TYPE_CHECKING, Mapping
from urllib.parse import urljoin, urlsplit

from .._errors import (
    AccessDenied,
    AuthenticationRequired,
    ConnectionFailed,
    ModelPullError,
    NotFound,
    SourceError,
)
from ._policy import UnknownHost, no_such_name

if TYPE_CHECKING:
    from ._wire import AbortSignal, Wire, WireResponse

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
RETRYABLE_STATUSES = {408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
_CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization"}
MAX_REDIRECTS = 10
USER_AGENT = "modelpull/0.1"


def unknown_host(exc: BaseException | None) -> bool:
    """True when `exc`, or an error it was raised from, is DNS saying the name does not exist.

    The one test every client uses (the wire, aiohttp, the Hub's httpx) to fail at once instead
    of retrying: retrying a name that does not exist only makes the user wait.
    """
    for _ in range(8):  # httpx and aiohttp wrap the socket error once or twice
        if exc is None:
            return False
        if isinstance(exc, (UnknownHost, socket.gaierror)):
            return no_such_name(exc)
        exc = exc.__cause__ or exc.__context__
    return False


def unknown_host_error(host: str | None, what: str = "the URL") -> ConnectionFailed:
    """The error for a host name DNS does not know: what to check, without waiting for retries."""
    return ConnectionFailed(
        f"'{host}' does not resolve (DNS knows no such host): check the host name in {what}",
        code="unknown_host",
    )


# A URL already in the form yarl would give it: lower-case http(s) scheme and host name, no user
# info, no default or zero-padded port, only characters that need no quoting (no `%` at all), no
# `.`/`..` segments, no empty query or fragment. Most URLs people pass are like this; for them
# `normalized_url` skips importing yarl (10-15 ms of a plain pull's start on this project's
# machine). tests/test_urls.py checks the shortcut against yarl.
_PCHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_PLAIN = re.compile(
    rf"(?P<scheme>https?)://{_LABEL}(?:\.{_LABEL})*(?::(?P<port>[1-9][0-9]{{0,4}}))?"
    rf"(?:(?P<path>/[{_PCHARS}/]*)(?:\?[{_PCHARS}/?]+)?(?:#[{_PCHARS}/?]+)?)?"  # no query without a path
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_url(text: str) -> str:
    """`text` as a URL in its normal, ASCII, percent-encoded form (yarl's); ValueError if it is none.

    The one place a URL from outside (a user's, a redirect's Location) gets its form before the
    wire sends it: hosts IDNA-encoded and lower-cased, characters outside URLs quoted.
    """
    plain = _PLAIN.fullmatch(text)
    if plain is not None:
        port = None if plain["port"] is None else int(plain["port"])
        usual_port = port is None or (port != _DEFAULT_PORTS[plain["scheme"]] and port < 65536)
        dots = any(segment in (".", "..") for segment in (plain["path"] or "").split("/"))
        if usual_port and not dots:
            return text
    from yarl import URL  # the rare URL that needs quoting, IDNA or normalising

    return str(URL(text))


def host_of(url: str) -> str | None:
    """The host name (or address, without brackets) of a URL, lower-cased."""
    return urlsplit(str(url)).hostname


def public_url(url: str) -> str:
    """A URL fit for messages: no query string (signed URLs and tokens live there), no user info."""
    text = str(url)
    try:
        text = normalized_url(text)
        scheme, netloc, path, _, _ = urlsplit(text)
    except (ValueError, TypeError):  # not a URL: still no query, fragment or user info in a message
        scheme, _, rest = text.rpartition("://")
        netloc, slash, path = rest.split("?", 1)[0].split("#", 1)[0].partition("/")
        path = slash + path
    netloc = netloc.rpartition("@")[2]
    return f"{scheme}://{netloc}{path}" if scheme else f"{netloc}{path}"


def origin(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port): what decides whether credentials may go along."""
    parts = urlsplit(str(url))
    return (parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme))


def strip_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}


def next_hop(current: str, location: str | None, first_origin: tuple, sent: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Where a redirect leads, and the headers to send there (no credentials to another origin)."""
    if not location:
        raise SourceError(f"redirect without a Location from {public_url(current)}", code="bad_redirect")
    try:
        target = normalized_url(urljoin(str(current), location.strip()))
    except (ValueError, TypeError):
        raise SourceError(f"a redirect from {public_url(current)} to something that is not a URL", code="bad_redirect") from None
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise SourceError(f"refusing to follow a redirect to {scheme}:", code="bad_redirect")
    if origin(target) != first_origin:
        sent = strip_credentials(sent)
    return target, sent


def too_many_redirects(url: str) -> SourceError:
    return SourceError(f"too many redirects from {public_url(url)}", code="too_many_redirects")


def wire_following_redirects(
    wire: "Wire",
    url: str,
    headers: Mapping[str, str],
    *,
    read_timeout: float,
    signal: "AbortSignal | None" = None,
    method: str = "GET",
) -> "WireResponse":
    """As open_following_redirects, on the blocking wire (call it in a worker thread)."""
    current = str(url)
    first_origin = origin(current)
    sent = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        response = wire.request(method, current, sent, read_timeout=read_timeout, signal=signal)
        if response.status not in REDIRECT_STATUSES:
            response.url = current
            return response
        location = response.headers.get("Location")
        response.drain()
        response.release()
        current, sent = next_hop(current, location, first_origin, sent)
    raise too_many_redirects(url)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` (seconds or an HTTP date), or the Hub's `RateLimit: ...;t=N`."""
    raw = headers.get("Retry-After")
    if raw:
        raw = raw.strip()
        if raw.isdigit():
            return float(raw)
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    ratelimit = headers.get("RateLimit")
    if ratelimit and ";t=" in ratelimit:
        try:
            return float(ratelimit.rsplit(";t=", 1)[1].split(";")[0])
        except ValueError:
            return None
    return None


def permanent_status_error(status: int, url: str, reason: str = "") -> ModelPullError:
    """The error for a status that retrying will not fix."""
    where = public_url(url)
    if status == 401:
        return AuthenticationRequired(
            f"authentication required (HTTP 401) for {where}: provide a valid token (token= or --token)"
        )
    if status == 403:
        return AccessDenied(
            f"access denied (HTTP 403) to {where}: the token has no access to this file, or the link expired"
        )
    if status in (404, 410):
        return NotFound(f"not found (HTTP {status}): {where}; check the URL")
    detail = f" {reason}" if reason else ""
    return SourceError(f"the server refused the download (HTTP {status}{detail}): {where}", code=f"http_{status}")

"""HTTP for the transfer engine: redirects followed by hand, statuses mapped to errors.

Redirects are followed here rather than by aiohttp so that credentials (`Authorization`,
`Cookie`) go to the origin host only and never to a CDN on another host, and so that the
final URL is known and reused for every piece.
"""
from __future__ import annotations

import email.utils
import time
from typing import Mapping

import aiohttp
from yarl import URL

from .._errors import (
    AccessDenied,
    AuthenticationRequired,
    ModelPullError,
    NotFound,
    SourceError,
)

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
RETRYABLE_STATUSES = {408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
_CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization"}
MAX_REDIRECTS = 10
READ_BUFFER = 1024 * 1024


def public_url(url: str | URL) -> str:
    """A URL fit for messages: no query string (signed URLs and tokens live there), no user info."""
    parsed = URL(str(url))
    return str(parsed.with_query(None).with_fragment(None).with_user(None).with_password(None))


def origin(url: URL) -> tuple[str, str | None, int | None]:
    return (url.scheme, url.host, url.port)


def strip_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}


def new_session(*, limit_per_host: int = 0, connect_timeout: float = 30.0) -> aiohttp.ClientSession:
    """The session modelpull uses: proxies from the environment, bytes exactly as sent."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=limit_per_host, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=True,  # HTTP(S)_PROXY, NO_PROXY, ~/.netrc
        auto_decompress=False,  # sizes and digests are of the bytes on the wire
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        # aiohttp pauses the socket when its buffer passes twice this; 64 KiB (the default)
        # makes it stop and start thousands of times a second on a fast link.
        read_bufsize=READ_BUFFER,
        headers={"User-Agent": "modelpull/0.1", "Accept-Encoding": "identity"},
    )


async def open_following_redirects(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    *,
    timeout: aiohttp.ClientTimeout,
    method: str = "GET",
) -> tuple[aiohttp.ClientResponse, URL]:
    """GET (or HEAD) `url`, following redirects; credentials are dropped once the origin changes."""
    current = URL(url)
    first_origin = origin(current)
    sent = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        response = await session.request(method, current, headers=sent, allow_redirects=False, timeout=timeout)
        if response.status not in REDIRECT_STATUSES:
            return response, current
        location = response.headers.get("Location")
        response.release()
        if not location:
            raise SourceError(f"redirect without a Location from {public_url(current)}", code="bad_redirect")
        current = current.join(URL(location))
        if current.scheme not in ("http", "https"):
            raise SourceError(f"refusing to follow a redirect to {current.scheme}:", code="bad_redirect")
        if origin(current) != first_origin:
            sent = strip_credentials(sent)
    raise SourceError(f"too many redirects from {public_url(url)}", code="too_many_redirects")


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


def permanent_status_error(status: int, url: URL | str, reason: str = "") -> ModelPullError:
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

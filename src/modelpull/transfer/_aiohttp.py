"""aiohttp for the small requests of providers (registries, manifests, Ollama's API).

File bodies never go through here: they move on the blocking wire (`_wire.py`). Importing
aiohttp costs about a quarter of a second, so only the providers that need it import this.
"""
from __future__ import annotations

from typing import Mapping

import aiohttp
from yarl import URL

from ._http import MAX_REDIRECTS, REDIRECT_STATUSES, USER_AGENT, next_hop, origin, too_many_redirects

READ_BUFFER = 1024 * 1024


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
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
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
        current, sent = next_hop(current, location, first_origin, sent)
    raise too_many_redirects(url)



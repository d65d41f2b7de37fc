"""aiohttp for the small requests of providers (registries, manifests, Ollama's API).

File bodies never go through here: they move on the blocking wire (`_wire.py`). Importing
aiohttp costs about a quarter of a second, so only the providers that need it import this.

With a URL policy (the server's), the session asks it for every connection: names through
`PolicyResolver` (the policy's own DNS seam), IP literals before each request. aiohttp's
automatic redirects would skip the second of those on every later hop, so redirects are
followed here, one request per hop (`open_following_redirects`). Through a proxy the resolver
only sees the proxy: the target's name is resolved and checked before the request instead.
"""
from __future__ import annotations

import asyncio
import socket
import urllib.request
from typing import Any, Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .._errors import SourceError
from ._http import MAX_REDIRECTS, REDIRECT_STATUSES, USER_AGENT, next_hop, origin, public_url, too_many_redirects
from ._policy import AddressCheck, AddressRefused, check_name, host_refusal, parse_address, resolve

READ_BUFFER = 1024 * 1024


def new_session(
    *, limit_per_host: int = 0, connect_timeout: float = 30.0, policy: AddressCheck | None = None
) -> aiohttp.ClientSession:
    """The session modelpull uses: proxies from the environment, bytes exactly as sent."""
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=limit_per_host, ttl_dns_cache=300,
        resolver=PolicyResolver(policy) if policy is not None else None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=True,  # HTTP(S)_PROXY, NO_PROXY, ~/.netrc
        auto_decompress=False,  # sizes and digests are of the bytes on the wire
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        # aiohttp pauses the socket when its buffer passes twice this; 64 KiB (the default)
        # makes it stop and start thousands of times a second on a fast link.
        read_bufsize=READ_BUFFER,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        trace_configs=[_request_check(policy)] if policy is not None else None,
    )


class PolicyResolver(AbstractResolver):
    """Resolves through the policy's DNS seam and keeps only the addresses it allows."""

    def __init__(self, policy: AddressCheck) -> None:
        self._policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await asyncio.to_thread(resolve, host, port)
        kept: list[ResolveResult] = []
        reasons = []
        for info_family, _, proto, _, address in infos:
            if family and info_family != family:
                continue
            reason = self._policy(host, port, address[0])
            if reason:
                reasons.append(reason)
                continue
            kept.append(ResolveResult(hostname=host, host=address[0], port=address[1], family=info_family,
                                      proto=proto, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
        if not kept:
            raise AddressRefused(f"Refusing to connect to '{host}': {reasons[0] if reasons else 'no address'}")
        return kept

    async def close(self) -> None:
        pass


def _request_check(policy: AddressCheck) -> aiohttp.TraceConfig:
    """Checks each request's host before it is sent: IP literals never reach the resolver, and
    through a proxy (HTTP(S)_PROXY) the target's name is resolved and checked here."""
    proxies = urllib.request.getproxies_environment()

    async def on_request_start(session: Any, context: Any, params: aiohttp.TraceRequestStartParams) -> None:
        url = params.url
        host = url.raw_host or ""
        literal = parse_address(host)
        if literal is not None:
            reason = policy(host, url.port or 0, str(literal))
        else:
            reason = host_refusal(host)
            if reason is None and proxies.get(url.scheme) and not urllib.request.proxy_bypass_environment(host, proxies):
                await asyncio.to_thread(check_name, host, url.port or 0, policy)
        if reason:
            raise AddressRefused(f"Refusing to connect to '{host}': {reason}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace


def refused(exc: BaseException) -> AddressRefused | None:
    """The policy's refusal inside an aiohttp error (the resolver's is wrapped), if it is one."""
    if isinstance(exc, AddressRefused):
        return exc
    inner = getattr(exc, "os_error", None) or exc.__cause__
    return inner if isinstance(inner, AddressRefused) else None


async def open_following_redirects(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    *,
    timeout: aiohttp.ClientTimeout,
    method: str = "GET",
    json: Any = None,
) -> tuple[aiohttp.ClientResponse, URL]:
    """Send `method` to `url`, following redirects one request at a time, each hop checked by the
    session's policy; credentials are dropped once the origin changes. A 301/302/303 turns a
    POST into a GET without its body, as browsers do; 307/308 repeat it."""
    current = URL(url)
    first_origin = origin(current)
    sent = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = await session.request(method, current, headers=sent, json=json, allow_redirects=False,
                                             timeout=timeout)
        except (aiohttp.ClientError, OSError) as exc:
            refusal = refused(exc)
            if refusal is None:
                raise
            raise SourceError(f"{refusal} (asked for {public_url(current)})", code="url_not_allowed") from None
        if response.status not in REDIRECT_STATUSES:
            return response, current
        location = response.headers.get("Location")
        response.release()
        target, sent = next_hop(str(current), location, first_origin, sent)
        current = URL(target, encoded=True)
        if response.status in (301, 302, 303) and method == "POST":
            method, json = "GET", None
    raise too_many_redirects(url)

"""A tiny forward HTTP proxy (plain http only, no CONNECT), to prove a client honours
HTTP_PROXY: it answers absolute-URI requests by fetching the URL itself, and logs each one.
"""
from __future__ import annotations

import dataclasses

import aiohttp
from aiohttp import web

from ._background import BackgroundServer

# Hop-by-hop headers (RFC 9110 section 7.6.1) are for one connection, never forwarded.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "host",
})


@dataclasses.dataclass
class ProxiedRequest:
    method: str
    url: str  # the absolute URL the client asked the proxy for
    headers: dict[str, str]
    status: int | None = None


class ForwardProxy(BackgroundServer):
    """Forwards `GET http://host/path` (absolute form) to its origin; logs to `.requests`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.requests: list[ProxiedRequest] = []
        self._session: aiohttp.ClientSession | None = None

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_cleanup.append(self._close_session)
        return app

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # An absolute-form request target ("GET http://host/path") is what makes this a proxy
        # request; aiohttp keeps it verbatim in raw_path.
        target = request.raw_path if request.raw_path.startswith(("http://", "https://")) else None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        record = ProxiedRequest(request.method, target or request.raw_path, headers)
        self.requests.append(record)
        if target is None:
            record.status = 400
            return web.Response(status=400, text="this is a proxy: send an absolute URI")
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False, trust_env=False)
        async with self._session.request(
            request.method, target, headers=headers, allow_redirects=False,
        ) as upstream:
            record.status = upstream.status
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            })
            if upstream.content_length is None and request.method != "HEAD":
                response.enable_chunked_encoding()
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
            return response

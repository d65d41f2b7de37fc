"""A fault-injecting HTTP file server for the transfer engine's tests.

It serves files from memory like a good static server (ETag, Last-Modified, single ranges,
If-Range, 416) and misbehaves on demand, one request at a time:

    server = FileServer().start()
    url = server.add_file("/model.bin", data)
    server.add_fault("/model.bin", "drop_after", bytes=100_000)   # the next GET breaks
    ...
    server.requests        # what the client sent and what it got
    server.stop()

Fault kinds (`add_fault(path, kind, times=1, methods=("GET",), **params)`):

    drop_after      bytes=n            send n body bytes, then close the connection
    stall           after=n, seconds=s send n body bytes, then send nothing for s seconds
                                       (default 60) with the socket open, then close it
    status          code, headers={}, body=b""   answer that status instead
    ignore_range                       answer 200 with the full body to a ranged request
                                       (only consumed by a request that has a Range)
    change_content  data=new           replace the file (new ETag and Last-Modified), then
                                       answer normally
    short_body      bytes=n            announce the full Content-Length, send n bytes
                                       (default: half), close
    wrong_bytes     offset=k           flip the byte at file offset k if this response
                                       carries it
    redirect        to=url, code=302   redirect this request
    huge_size       size=n             announce a file of n bytes (Content-Length and the
                                       Content-Range total), send the real bytes, close

Faults queue per path; a request takes the first queued fault that applies to it
(method, and for ignore_range a Range header), and each fault serves `times` requests.

A lasting limit instead of a queued fault: `add_file(..., max_connections=n, refuse_status=429)`
answers a GET with 429 (or 503, ...) while n other GETs of that file are being served, as a
server that limits each client's connections does; `record.fault` is then "over_limit".
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import threading
import time
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

from aiohttp import web
from multidict import CIMultiDict

from ._background import BackgroundServer

CHUNK = 64 * 1024
FAULT_KINDS = frozenset({
    "drop_after", "stall", "status", "ignore_range", "change_content", "short_body",
    "wrong_bytes", "redirect", "huge_size",
})
# A fixed epoch so Last-Modified is stable between runs and moves on every content change.
_BASE_MTIME = 1_700_000_000


@dataclasses.dataclass
class RequestRecord:
    """One request the server received, and how it answered."""

    method: str
    path: str
    headers: CIMultiDict  # case-insensitive: headers.get("range"), headers.get("Authorization")
    status: int | None = None
    bytes_sent: int = 0  # body bytes handed to the socket
    fault: str | None = None  # the fault kind applied, if any
    outcome: str = "open"  # open, complete, dropped, stalled, client_closed, server_stopped
    started: float = dataclasses.field(default_factory=time.monotonic)
    finished: float | None = None
    peer: tuple | None = None  # the client's (address, port): one per connection

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")

    @property
    def range_start(self) -> int | None:
        """The first byte asked for by a `Range: bytes=a-...` header (None without one)."""
        parsed = _parse_range_header(self.range)
        if parsed is None:
            return None
        start, _end = parsed
        return start

    @property
    def done(self) -> bool:
        return self.finished is not None


@dataclasses.dataclass
class _File:
    data: bytes
    etag: str | None
    last_modified: str | None
    content_disposition: str | None
    accept_ranges: bool
    throttle_bps: float | None
    link_bps: float | None
    chunked: bool
    if_range: bool
    auto_etag: bool
    auto_last_modified: bool
    max_connections: int | None = None
    refuse_status: int = 429
    link_free_at: float = 0.0  # link_bps: when the shared link has sent what it was given
    serving: int = 0  # GETs of this file being answered now (not counting refused ones)
    version: int = 0

    def replace(self, data: bytes) -> None:
        self.data = data
        self.version += 1
        if self.auto_etag:
            self.etag = _etag_for(data, self.version)
        if self.auto_last_modified:
            self.last_modified = _http_date(_BASE_MTIME + 60 * self.version)


@dataclasses.dataclass
class _Fault:
    kind: str
    times: int
    methods: frozenset[str]
    params: dict[str, Any]

    def applies_to(self, method: str, ranged: bool) -> bool:
        if method not in self.methods:
            return False
        if self.kind == "ignore_range" and not ranged:
            return False
        return True


def _etag_for(data: bytes, version: int = 0) -> str:
    digest = hashlib.sha256(data).hexdigest()[:32]
    return f'"{digest}-{version}"'


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _parse_range_header(value: str | None) -> tuple[int | None, int | None] | None:
    """(start, end) for one `bytes=` range; start None means a suffix of `end` bytes.

    None when there is no usable single range (absent, malformed, several ranges)."""
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            return (None, int(last)) if last.isdigit() else None
        start = int(first)
        end = int(last) if last != "" else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end < start):
        return None
    return start, end


class FileServer(BackgroundServer):
    """An HTTP server of in-memory files that can be told to misbehave."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._redirects: dict[str, tuple[str, int]] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self.requests: list[RequestRecord] = []
        self.max_concurrent_gets = 0
        self._open_gets = 0

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # ---- what the tests set up -------------------------------------------------------

    def add_file(
        self,
        path: str,
        data: bytes,
        *,
        etag: bool | str = True,
        last_modified: bool | float = True,
        content_disposition: str | None = None,
        accept_ranges: bool = True,
        throttle_bps: float | None = None,
        link_bps: float | None = None,
        chunked: bool = False,
        if_range: bool = True,
        max_connections: int | None = None,
        refuse_status: int = 429,
    ) -> str:
        """Serve `data` at `path` (GET and HEAD); returns its URL.

        etag: True for one derived from the content (quoted, strong), a string to use as is,
        False for none. last_modified: True (a fixed date, moved on each change), a Unix
        timestamp, or False. accept_ranges=False ignores Range headers and sends no
        Accept-Ranges. throttle_bps limits each response's rate; link_bps the rate of all of this
        file's responses together (a link one connection fills: more connections share it). chunked=True hides the size
        (chunked transfer encoding, no Content-Length, ranges still honoured).
        if_range=False ignores If-Range, like servers that answer 206 whatever the validator.
        max_connections=n answers `refuse_status` to a GET while n others of this file are served.
        """
        if isinstance(etag, str):
            etag_value: str | None = etag if etag.startswith(('"', "W/")) else f'"{etag}"'
        else:
            etag_value = _etag_for(data) if etag else None
        if last_modified is True:
            lm_value: str | None = _http_date(_BASE_MTIME)
        elif last_modified is False or last_modified is None:
            lm_value = None
        else:
            lm_value = _http_date(float(last_modified))
        entry = _File(
            data=bytes(data), etag=etag_value, last_modified=lm_value,
            content_disposition=content_disposition, accept_ranges=accept_ranges,
            throttle_bps=throttle_bps, link_bps=link_bps, chunked=chunked, if_range=if_range,
            auto_etag=etag is True, auto_last_modified=last_modified is True,
            max_connections=max_connections, refuse_status=refuse_status,
        )
        with self._lock:
            self._files[self._key(path)] = entry
        return self.url(path)

    def set_content(self, path: str, data: bytes) -> None:
        """Replace a file's content now (new ETag and Last-Modified when they are automatic)."""
        with self._lock:
            self._files[self._key(path)].replace(bytes(data))

    def add_redirect(self, path: str, to_url: str, code: int = 302) -> str:
        """A permanent redirect route, for every method; returns its URL."""
        with self._lock:
            self._redirects[self._key(path)] = (to_url, code)
        return self.url(path)

    def add_fault(
        self, path: str, kind: str, times: int = 1, methods: Iterable[str] = ("GET",), **params: Any
    ) -> None:
        """Queue a fault for the next `times` matching requests to `path` (see the module doc)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
        fault = _Fault(kind, times, frozenset(m.upper() for m in methods), dict(params))
        with self._lock:
            self._faults.setdefault(self._key(path), []).append(fault)

    def pending_faults(self, path: str) -> list[str]:
        with self._lock:
            return [f.kind for f in self._faults.get(self._key(path), [])]

    # ---- what the tests read -----------------------------------------------------------

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent over every logged request (live while responses stream)."""
        return sum(r.bytes_sent for r in list(self.requests))

    def reset_log(self) -> None:
        self.requests = []
        self.max_concurrent_gets = 0

    def requests_for(self, path: str, method: str | None = None) -> list[RequestRecord]:
        key = self._key(path)
        return [
            r for r in list(self.requests)
            if self._key(r.path) == key and (method is None or r.method == method)
        ]

    # ---- serving -----------------------------------------------------------------------

    @staticmethod
    def _key(path: str) -> str:
        # Compare decoded paths, so a test may write "/a%20b.bin" or "/a b.bin".
        raw = urlsplit(path).path if "://" in path else path.split("?", 1)[0]
        return unquote(raw)

    def _take_fault(self, key: str, method: str, ranged: bool) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(key, [])
            for index, fault in enumerate(queue):
                if fault.applies_to(method, ranged):
                    fault.times -= 1
                    if fault.times <= 0:
                        del queue[index]
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        record = RequestRecord(request.method, raw_path, CIMultiDict(request.headers))
        record.peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(record)
        is_get = request.method == "GET"
        if is_get:
            self._open_gets += 1
            self.max_concurrent_gets = max(self.max_concurrent_gets, self._open_gets)
        try:
            return await self._answer(request, record)
        except asyncio.CancelledError:
            record.outcome = "server_stopped" if self.stopping else "client_closed"
            raise
        finally:
            if is_get:
                self._open_gets -= 1
            record.finished = time.monotonic()
            if record.outcome == "open":
                record.outcome = "complete"

    async def _answer(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        key = self._key(request.raw_path)
        method = request.method
        with self._lock:
            redirect = self._redirects.get(key)
            entry = self._files.get(key)
        if method not in ("GET", "HEAD"):
            if redirect is not None:  # a redirect route answers every method (a POST too)
                return self._redirect(record, *redirect)
            record.status = 405
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        fault = self._take_fault(key, method, ranged="Range" in request.headers)
        if fault is not None:
            record.fault = fault.kind

        if fault is not None and fault.kind == "status":
            code = int(fault.params.get("code", 500))
            body = fault.params.get("body", b"")
            if isinstance(body, str):
                body = body.encode()
            record.status = code
            return web.Response(status=code, body=body if method == "GET" else None,
                                headers=dict(fault.params.get("headers", {})))
        if fault is not None and fault.kind == "redirect":
            return self._redirect(record, fault.params["to"], int(fault.params.get("code", 302)))
        if redirect is not None:
            return self._redirect(record, *redirect)
        if entry is None:
            record.status = 404
            return web.Response(status=404, text="not found")
        if method == "GET" and entry.max_connections is not None:
            with self._lock:
                refused = entry.serving >= entry.max_connections
                entry.serving += not refused
            if refused:
                record.fault = "over_limit"
                record.status = entry.refuse_status
                return web.Response(status=entry.refuse_status, text="too many connections")
            try:
                return await self._serve(request, record, entry, fault)
            finally:
                with self._lock:
                    entry.serving -= 1
        return await self._serve(request, record, entry, fault)

    async def _serve(
        self, request: web.Request, record: RequestRecord, entry: _File, fault: _Fault | None
    ) -> web.StreamResponse:
        method = request.method
        if fault is not None and fault.kind == "change_content":
            with self._lock:
                entry.replace(bytes(fault.params["data"]))

        data = entry.data  # taken once: a concurrent change does not tear this response
        size = len(data)
        if fault is not None and fault.kind == "huge_size":
            size = int(fault.params["size"])

        headers: dict[str, str] = {"Content-Type": "application/octet-stream"}
        if entry.etag:
            headers["ETag"] = entry.etag
        if entry.last_modified:
            headers["Last-Modified"] = entry.last_modified
        if entry.content_disposition:
            headers["Content-Disposition"] = entry.content_disposition
        if entry.accept_ranges:
            headers["Accept-Ranges"] = "bytes"

        status, start, end = 200, 0, size - 1  # end inclusive
        wanted = None
        honour_range = entry.accept_ranges and not (fault is not None and fault.kind == "ignore_range")
        if honour_range:
            wanted = _parse_range_header(request.headers.get("Range"))
            if_range = request.headers.get("If-Range")
            if wanted is not None and entry.if_range and not self._if_range_matches(if_range, entry):
                wanted = None  # a changed file: the whole new body, as RFC 9110 says
        if wanted is not None:
            first, last = wanted
            if first is None:  # suffix: the last `last` bytes
                if last == 0 or size == 0:
                    return self._unsatisfiable(record, headers, size)
                start = max(size - last, 0)
            elif first >= size:
                return self._unsatisfiable(record, headers, size)
            else:
                start = first
                end = size - 1 if last is None else min(last, size - 1)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"

        length = max(end - start + 1, 0)
        response = web.StreamResponse(status=status, headers=headers)
        if entry.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = length
        record.status = status
        await response.prepare(request)
        if method == "HEAD":
            return response
        real_end = min(end + 1, len(data))  # huge_size announces more than exists
        await self._send_body(request, response, record, data, start, real_end, entry, fault)
        return response

    def _redirect(self, record: RequestRecord, to_url: str, code: int) -> web.Response:
        record.status = code
        return web.Response(status=code, headers={"Location": to_url})

    def _unsatisfiable(self, record: RequestRecord, headers: dict[str, str], size: int) -> web.Response:
        record.status = 416
        headers = dict(headers)
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)

    @staticmethod
    def _if_range_matches(value: str | None, entry: _File) -> bool:
        if value is None:
            return True
        value = value.strip()
        if value.startswith(('"', "W/")):
            # Strong comparison: a weak validator never matches.
            return entry.etag is not None and not value.startswith("W/") and value == entry.etag
        return entry.last_modified is not None and value == entry.last_modified

    async def _send_body(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RequestRecord,
        data: bytes,
        start: int,
        stop: int,
        entry: _File,
        fault: _Fault | None,
    ) -> None:
        body = memoryview(data)[start:stop]
        kind = fault.kind if fault is not None else None
        params = fault.params if fault is not None else {}
        if kind == "wrong_bytes":
            offset = int(params.get("offset", 0))
            if start <= offset < stop:
                corrupted = bytearray(body)
                corrupted[offset - start] ^= 0xFF
                body = memoryview(bytes(corrupted))
        limit = len(body)
        if kind == "drop_after":
            limit = min(limit, int(params.get("bytes", 0)))
        elif kind == "short_body":
            limit = min(limit, int(params.get("bytes", len(body) // 2)))
        elif kind == "stall":
            limit = min(limit, int(params.get("after", 0)))
        elif kind == "huge_size":
            limit = len(body)

        try:
            await self._stream(response, record, body[:limit], entry)
            if kind in ("drop_after", "short_body", "huge_size"):
                record.outcome = "dropped"
                self._close(request)
            elif kind == "stall":
                record.outcome = "stalled"
                await self._stall(request, float(params.get("seconds", 60.0)))
                self._close(request)
        except ConnectionError:
            # The client went away (or the server is stopping). Returning the response lets
            # aiohttp end the exchange quietly; its write_eof() fails and is ignored.
            if record.outcome not in ("server_stopped",):
                record.outcome = "client_closed"

    async def _stream(
        self, response: web.StreamResponse, record: RequestRecord, body: memoryview, entry: _File
    ) -> None:
        throttle_bps, link_bps = entry.throttle_bps, entry.link_bps
        chunk = CHUNK
        if link_bps:
            chunk = int(min(CHUNK, max(1024, link_bps / 50)))
        if throttle_bps:
            # Small enough chunks that the rate is smooth at a tenth of a second's scale.
            chunk = int(min(CHUNK, max(1024, throttle_bps / 20)))
        began = time.monotonic()
        offset = 0
        while offset < len(body):
            if self.stopping:
                record.outcome = "server_stopped"
                raise ConnectionResetError("server stopping")
            piece = body[offset:offset + chunk]
            await response.write(piece)
            offset += len(piece)
            record.bytes_sent += len(piece)
            if throttle_bps:
                delay = began + offset / throttle_bps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if link_bps:  # the shared link is busy for this chunk's time after what it already had
                now = time.monotonic()
                entry.link_free_at = max(entry.link_free_at, now) + len(piece) / link_bps
                await asyncio.sleep(entry.link_free_at - now)

    async def _stall(self, request: web.Request, seconds: float) -> None:
        """Keep the connection open and silent until `seconds` pass or the client leaves."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stopping:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client closed a stalled connection")
            await asyncio.sleep(0.02)

    @staticmethod
    def _close(request: web.Request) -> None:
        # close() (not abort) flushes what was written, so exactly the bytes counted arrive;
        # the client then sees the body end early.
        transport = request.transport
        if transport is not None:
            transport.close()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""The wire: blocking HTTP/1.1 (the standard library's http.client) for the file bytes.

The engine plans and schedules on the event loop, but every byte of a file body moves here, in
a worker thread: `readinto1()` from the socket into a reused buffer, then `pwrite` and hashing,
all of which release the GIL. Measured on 2 cores (bench/http_clients.py, 1 GiB from a local
nginx with sha256), this path took 1.06-1.22x curl's wall time where aiohttp's streaming took
1.9-3.1x: an event loop handing out bytes objects costs more CPU than the hashing itself.

What aiohttp's session gave the engine is here too: connections kept alive and reused,
proxies from the environment (HTTP(S)_PROXY, NO_PROXY), a limit of connections per host, and
an address policy checked on every connection (the server's refusal of private addresses).
Redirects are followed by the caller (`open_following_redirects`), never by the wire.
"""
from __future__ import annotations

import base64
import http.client
import os
import socket
import threading
from typing import Mapping
from urllib.parse import unquote, urlsplit

from ._http import USER_AGENT
from ._policy import AddressCheck, check_name, connect
from ._rate import RateLimit

_IDLE_PER_HOST = 16


class Aborted(ConnectionError):
    """The transfer that owns this request was cancelled."""


class AbortSignal:
    """Lets the event loop stop a transfer's threads: their sockets are shut down at once.

    Threads that stream into the file register with `enter_stream()` / `leave_stream()`;
    `wait_idle()` returns once none is left, after which the file descriptor may be closed safely.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: set[WireResponse] = set()
        self._streaming = 0
        self._idle = threading.Condition(self._lock)
        self.aborted = False

    def attach(self, response: "WireResponse") -> None:
        with self._lock:
            if self.aborted:
                response.close()
                raise Aborted("the transfer was cancelled")
            self._responses.add(response)
            response._signal = self

    def detach(self, response: "WireResponse") -> None:
        with self._lock:
            self._responses.discard(response)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            responses = list(self._responses)
        for response in responses:
            response.shutdown()

    def enter_stream(self) -> None:
        with self._lock:
            if self.aborted:
                raise Aborted("the transfer was cancelled")
            self._streaming += 1

    def leave_stream(self) -> None:
        with self._lock:
            self._streaming -= 1
            if self._streaming == 0:
                self._idle.notify_all()

    @property
    def busy(self) -> bool:
        """Some thread is inside a stream now."""
        return self._streaming > 0

    def wait_idle(self) -> None:
        """Block until no thread is inside a stream (call after abort())."""
        with self._lock:
            while self._streaming:
                self._idle.wait()


class _Response(http.client.HTTPResponse):
    _ahead_taken = False  # the bytes the header parser read ahead have been handed out

    def readinto1(self, view: memoryview) -> int:
        """At most one read from the socket, straight into `view`.

        Not BufferedReader.readinto1: on Python 3.11 it keeps reading until `view` is full
        when `view` is larger than its 8 KiB buffer, so a slow link would show no progress
        for a whole buffer. The buffer only holds what the header parser read ahead; that is
        taken first, then the socket is read directly (one recv_into, no copy).
        """
        if self.fp is None or not len(view):
            return 0
        if self.chunked:
            data = self.read1(len(view))
            view[: len(data)] = data
            return len(data)
        if self.length is not None and len(view) > self.length:
            view = view[: self.length]
        if not self._ahead_taken:
            ahead = len(self.fp.peek())  # what is buffered, or one short read if nothing is
            count = min(ahead, len(view))
            view[:count] = self.fp.read(count)
            self._ahead_taken = ahead <= count
        else:
            count = self.fp.raw.readinto(view) or 0
        if not count:
            self._close_conn()
        elif self.length is not None:
            self.length -= count
            if not self.length:
                self._close_conn()
        return count


def _connect_socket(connection: http.client.HTTPConnection, check: AddressCheck | None) -> None:
    """Open the TCP connection of `connection`, trying only the addresses `check` allows."""
    host, port = connection.host, connection.port
    if check is None:
        sock = socket.create_connection((host, port), connection.timeout)
    else:
        sock = connect(host, port, connection.timeout, check)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.sock = sock
    if connection._tunnel_host:  # type: ignore[attr-defined]
        connection._tunnel()  # type: ignore[attr-defined]


class _Plain(http.client.HTTPConnection):
    response_class = _Response
    check: AddressCheck | None = None

    def connect(self) -> None:
        _connect_socket(self, self.check)


class _TLS(http.client.HTTPSConnection, _Plain):
    response_class = _Response  # HTTPSConnection.connect() wraps what _Plain.connect() opened


class WireResponse:
    """One response; its connection goes back to the pool on `release()` if the body was read."""

    def __init__(
        self, wire: "Wire", key: tuple, connection: http.client.HTTPConnection, sock: socket.socket, raw: _Response,
        url: str,
    ) -> None:
        self._wire = wire
        self._key = key
        self._connection = connection
        self._sock = sock  # kept: http.client forgets it when the response ends the connection
        self._raw = raw
        self._released = False
        self._signal: AbortSignal | None = None
        self.url = url
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers
        length = raw.headers.get("Content-Length", "")
        # From the header, not raw.length: http.client sets that to 0 for a HEAD.
        self.content_length = int(length) if length.strip().isdigit() and not raw.chunked else None

    def readinto1(self, view: memoryview) -> int:
        count = self._raw.readinto1(view)
        if count and self._wire.rate_limit is not None:
            self._wire.rate_limit.take(count)  # blocks this I/O thread while over the cap
        return count

    @property
    def finished(self) -> bool:
        """The whole body has been read."""
        return self._raw.isclosed() or (self._raw.length == 0 and not self._raw.chunked)

    def drain(self, limit: int = 64 * 1024) -> None:
        """Read a small leftover body (a redirect's) so the connection can be reused."""
        buffer = memoryview(bytearray(min(limit, 16 * 1024)))
        read = 0
        while not self.finished and read < limit:
            count = self.readinto1(buffer)
            if not count:
                break
            read += count

    def shutdown(self) -> None:
        """From another thread: make a blocked read return now."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._connection.close()
        self.release()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._signal is not None:
            self._signal.detach(self)
        reusable = self.finished and not self._raw.will_close and self._connection.sock is not None
        self._raw.close()
        if not reusable:
            self._connection.close()  # unread bytes would be taken for the next response
        self._wire._give_back(self._key, self._connection if reusable else None)


def environment_proxies() -> dict[str, str]:
    """HTTP(S)_PROXY and NO_PROXY as urllib reads them; {} when neither proxy is set (NO_PROXY alone
    changes nothing)."""
    if not any(value and name.lower() in ("http_proxy", "https_proxy") for name, value in os.environ.items()):
        return {}
    import urllib.request  # its imports (tempfile, ...) cost a download without a proxy ~5 ms

    return urllib.request.getproxies_environment()


class Wire:
    """Connections for the engine's threads. Thread-safe; one per download or per server."""

    def __init__(
        self,
        *,
        connect_timeout: float = 30.0,
        limit_per_host: int = 0,
        check: AddressCheck | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.rate_limit = rate_limit
        self.limit_per_host = limit_per_host
        self.check = check
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._slots: dict[tuple, threading.BoundedSemaphore] = {}
        self._tls_context = None
        self._proxies = environment_proxies()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        read_timeout: float,
        signal: AbortSignal | None = None,
    ) -> WireResponse:
        """Send one request (no redirects followed); the response's headers are read."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        proxy = self._proxy_for(scheme, host)
        key = (scheme, host, port, proxy)
        forwarded = proxy is not None and scheme == "http"  # sent to the proxy, absolute URL
        target = url if forwarded else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if forwarded:
            sent.update(_proxy_authorization(proxy))
        self._take_slot(key, signal)
        try:
            if proxy is not None and self.check is not None:
                check_name(host, port, self.check)  # before any connection, and once per request
            for attempt in (0, 1):
                connection, reused = self._connection(key, scheme, host, port, proxy, read_timeout)
                try:
                    connection.request(method, target, headers=sent)
                    sock = connection.sock
                    raw = connection.getresponse()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    connection.close()
                    if reused and attempt == 0:
                        continue  # the server closed an idle kept-alive connection: a fresh one
                    raise
                except BaseException:
                    connection.close()
                    raise
                response = WireResponse(self, key, connection, sock, raw, url)
                if signal is not None:
                    signal.attach(response)
                return response
            raise AssertionError("unreachable")
        except BaseException:
            self._give_back(key, None)
            raise

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # -- internals --------------------------------------------------------------------------

    def _proxy_for(self, scheme: str, host: str) -> str | None:
        proxy = self._proxies.get(scheme)
        if not proxy:
            return None
        import urllib.request  # imported already by environment_proxies() when a proxy is set

        return None if urllib.request.proxy_bypass_environment(host, self._proxies) else proxy

    def _take_slot(self, key: tuple, signal: AbortSignal | None) -> None:
        if self.limit_per_host <= 0:
            return
        with self._lock:
            slot = self._slots.setdefault(key, threading.BoundedSemaphore(self.limit_per_host))
        while not slot.acquire(timeout=0.2):
            if signal is not None and signal.aborted:
                raise Aborted("the transfer was cancelled")

    def _give_back(self, key: tuple, connection: http.client.HTTPConnection | None) -> None:
        if connection is not None:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < _IDLE_PER_HOST:
                    idle.append(connection)
                    connection = None
            if connection is not None:
                connection.close()
        if self.limit_per_host > 0:
            self._slots[key].release()

    def _connection(
        self, key: tuple, scheme: str, host: str, port: int, proxy: str | None, read_timeout: float
    ) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            connection = idle.pop() if idle else None
        if connection is not None:
            connection.timeout = read_timeout
            if connection.sock is not None:
                connection.sock.settimeout(read_timeout)
            return connection, True
        if proxy:
            proxy_parts = urlsplit(proxy)
            address = (proxy_parts.hostname or "", proxy_parts.port or 80)
        else:
            address = (host, port)
        if scheme == "https":
            connection = _TLS(*address, timeout=self.connect_timeout, context=self._tls())
            if proxy:
                connection.set_tunnel(host, port, headers=_proxy_authorization(proxy))
        else:
            connection = _Plain(*address, timeout=self.connect_timeout)
        connection.check = None if proxy else self.check  # a proxy is configured, not requested
        connection.connect()
        connection.sock.settimeout(read_timeout)
        connection.timeout = read_timeout
        return connection, False

    def _tls(self):
        if self._tls_context is None:
            import ssl

            self._tls_context = ssl.create_default_context()
        return self._tls_context


def _proxy_authorization(proxy: str) -> dict[str, str]:
    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(credentials).decode()}


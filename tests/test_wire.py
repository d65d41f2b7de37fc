"""The transfer engine's blocking HTTP (transfer/_wire.py), over real sockets on 127.0.0.1.

The engine's behaviour through the wire (faults, redirects, proxies, resume) is tested in
test_url_download.py; these tests pin the wire's own contracts: connections are reused and a
stale one is replaced without the caller noticing, HEAD sizes come from the header, the
address check runs before connecting, and aborting makes a blocked read return at once.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from modelpull.transfer._http import wire_following_redirects
from modelpull.transfer._policy import AddressRefused
from modelpull.transfer._wire import Aborted, AbortSignal, Wire


def _read_all(response) -> bytes:
    data = bytearray()
    buffer = memoryview(bytearray(64 * 1024))
    while count := response.readinto1(buffer):
        data += buffer[:count]
    return bytes(data)


class KeepAliveThenClose:
    """A raw HTTP/1.1 server: each connection answers one request keeping it alive, then the
    server closes it (as servers do with idle connections). Counts accepted connections."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(self.body)
                    + self.body
                )
                time.sleep(0.05)  # then close: the client's pooled connection goes stale

    def close(self) -> None:
        self._listener.close()


def test_connections_are_reused(file_server):
    url = file_server.add_file("/a.bin", b"x" * 100_000)
    wire = Wire()
    try:
        for _ in range(3):
            response = wire.request("GET", url, {}, read_timeout=5)
            assert _read_all(response) == b"x" * 100_000
            response.release()
    finally:
        wire.close()
    peers = {record.peer for record in file_server.requests if record.path == "/a.bin"}
    assert len(peers) == 1, "three requests should share one kept-alive connection"


def test_a_connection_the_server_closed_is_replaced_transparently():
    server = KeepAliveThenClose(b"hello")
    wire = Wire()
    try:
        first = wire.request("GET", f"http://127.0.0.1:{server.port}/f", {}, read_timeout=5)
        assert _read_all(first) == b"hello"
        first.release()  # pooled; the server closes it shortly after
        time.sleep(0.2)
        second = wire.request("GET", f"http://127.0.0.1:{server.port}/f", {}, read_timeout=5)
        assert _read_all(second) == b"hello"
        second.release()
    finally:
        wire.close()
        server.close()
    assert server.connections == 2


def test_a_head_reports_the_size_from_content_length(file_server):
    url = file_server.add_file("/sized.bin", b"y" * 12345)
    wire = Wire()
    try:
        response = wire_following_redirects(wire, url, {}, read_timeout=5, method="HEAD")
        assert response.status == 200
        assert response.content_length == 12345
        assert response.finished
        response.release()
    finally:
        wire.close()


def test_the_address_check_refuses_before_connecting(file_server):
    url = file_server.add_file("/no.bin", b"z")
    asked: list[tuple[str, int, str]] = []

    def refuse(host: str, port: int, address: str) -> str | None:
        asked.append((host, port, address))
        return "it is a loopback address"

    wire = Wire(check=refuse)
    with pytest.raises(AddressRefused, match="loopback"):
        wire.request("GET", url, {}, read_timeout=5)
    assert asked and asked[0][2] == "127.0.0.1"
    assert not [r for r in file_server.requests if r.path == "/no.bin"]


def test_abort_makes_a_blocked_read_return_at_once(file_server):
    url = file_server.add_file("/slow.bin", b"s" * 1_000_000)
    file_server.add_fault("/slow.bin", "stall", after=1000, seconds=30)
    wire = Wire()
    signal = AbortSignal()
    response = wire.request("GET", url, {}, read_timeout=30, signal=signal)
    buffer = memoryview(bytearray(1_000_000))
    assert response.readinto1(buffer) > 0
    threading.Timer(0.2, signal.abort).start()
    started = time.monotonic()
    with pytest.raises(OSError):
        while response.readinto1(buffer):
            pass
        raise ConnectionResetError("the stream ended instead of failing")
    assert time.monotonic() - started < 5
    response.release()
    with pytest.raises(Aborted):
        wire.request("GET", url, {}, read_timeout=5, signal=signal)
    wire.close()

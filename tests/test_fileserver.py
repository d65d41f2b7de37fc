"""The fault-injecting file server itself: the engine's tests are only as good as it is."""
from __future__ import annotations

import asyncio
import os
import socket
import time

import aiohttp
import httpx
import pytest

from fakes.fileserver import FileServer
from fakes.proxy import ForwardProxy

DATA = os.urandom(300_000)


def raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, bool]:
    """GET over a plain socket: (status, headers, body bytes received, body complete?).

    httpx would raise on a short body; this keeps what arrived."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    lines = [f"GET {path} HTTP/1.1", f"Host: {host_port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            received += part
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    complete = "content-length" in parsed and len(body) == int(parsed["content-length"])
    return int(status_line.split()[1]), parsed, body, complete


def test_serves_a_file_with_validators(file_server):
    url = file_server.add_file("/model.bin", DATA)
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"].startswith('"')
    assert "GMT" in response.headers["last-modified"]
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(DATA))
    assert head.content == b""
    assert [r.method for r in file_server.requests] == ["GET", "HEAD"]
    assert file_server.requests[0].bytes_sent == len(DATA)
    assert file_server.bytes_sent == len(DATA)


@pytest.mark.parametrize(
    "range_header, start, end",
    [("bytes=100-199", 100, 199), ("bytes=299000-", 299_000, 299_999), ("bytes=-50", 299_950, 299_999),
     ("bytes=299990-999999", 299_990, 299_999)],
)
def test_single_ranges(file_server, range_header, start, end):
    url = file_server.add_file("/model.bin", DATA)
    response = httpx.get(url, headers={"Range": range_header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.content == DATA[start:end + 1]
    assert file_server.requests[0].range == range_header


def test_unsatisfiable_range_is_416_with_the_size(file_server):
    url = file_server.add_file("/model.bin", DATA)
    response = httpx.get(url, headers={"Range": f"bytes={len(DATA)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


def test_if_range_with_a_stale_validator_sends_the_whole_new_body(file_server):
    url = file_server.add_file("/model.bin", DATA)
    old = httpx.head(url).headers
    new_data = os.urandom(1000)
    file_server.set_content("/model.bin", new_data)
    by_etag = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": old["etag"]})
    assert by_etag.status_code == 200 and by_etag.content == new_data
    assert by_etag.headers["etag"] != old["etag"]
    by_date = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": old["last-modified"]})
    assert by_date.status_code == 200 and by_date.content == new_data
    current = by_etag.headers["etag"]
    still = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": current})
    assert still.status_code == 206 and still.content == new_data[10:]


def test_missing_file_is_404(file_server):
    assert httpx.get(file_server.url("/nothing")).status_code == 404


def test_drop_after_sends_exactly_n_bytes_then_closes(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "drop_after", bytes=70_000)
    status, headers, body, complete = raw_get(url)
    assert status == 200 and headers["content-length"] == str(len(DATA))
    assert body == DATA[:70_000] and not complete
    assert file_server.requests[0].outcome == "dropped"
    # The fault is spent: the next request is whole.
    assert httpx.get(url).content == DATA


def test_short_body_announces_everything_and_sends_less(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "short_body")
    status, headers, body, complete = raw_get(url)
    assert headers["content-length"] == str(len(DATA))
    assert body == DATA[: len(DATA) // 2] and not complete


def test_stall_keeps_the_socket_open_and_silent(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "stall", after=1000, seconds=30)
    with socket.create_connection(("127.0.0.1", file_server.port), timeout=0.5) as sock:
        sock.sendall(f"GET /model.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        with pytest.raises(socket.timeout):
            while True:
                part = sock.recv(65536)
                assert part, "the server closed a stalled connection"
                received += part
        assert received.endswith(DATA[:1000])
    # Closing our side ends the server's stall.
    deadline = time.monotonic() + 5
    while file_server.requests[0].outcome != "client_closed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert file_server.requests[0].outcome == "client_closed"


def test_status_faults_queue_then_succeed(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "status", times=2, code=503)
    file_server.add_fault("/model.bin", "status", code=429, headers={"Retry-After": "1"})
    assert httpx.get(url).status_code == 503
    assert httpx.get(url).status_code == 503
    limited = httpx.get(url)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert httpx.get(url).content == DATA
    assert [r.status for r in file_server.requests] == [503, 503, 429, 200]


async def test_a_connection_limit_refuses_gets_beyond_it_while_others_are_served(file_server):
    url = file_server.add_file("/model.bin", DATA, throttle_bps=600_000, max_connections=2, refuse_status=503)
    async with aiohttp.ClientSession() as session:

        async def get() -> tuple[int, int]:
            async with session.get(url) as response:
                return response.status, len(await response.read())

        answers = await asyncio.gather(*(get() for _ in range(3)))
        assert sorted(answers) == [(200, len(DATA)), (200, len(DATA)), (503, len(b"too many connections"))]
        while not all(r.done for r in file_server.requests):  # the server's side of the exchange ends last
            await asyncio.sleep(0.01)
        assert await get() == (200, len(DATA))  # the limit is on connections at once, not in all
    assert [r.fault for r in file_server.requests].count("over_limit") == 1


def test_faults_apply_to_get_only_unless_asked(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "status", code=500)
    assert httpx.head(url).status_code == 200
    assert httpx.get(url).status_code == 500
    file_server.add_fault("/model.bin", "status", code=401, methods=("GET", "HEAD"))
    assert httpx.head(url).status_code == 401


def test_ignore_range_waits_for_a_ranged_request(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "ignore_range")
    assert httpx.get(url).status_code == 200  # not ranged: the fault is not spent
    response = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert response.status_code == 200 and response.content == DATA
    assert httpx.get(url, headers={"Range": "bytes=1000-"}).status_code == 206


def test_change_content_replaces_file_and_validators(file_server):
    url = file_server.add_file("/model.bin", DATA)
    before = httpx.head(url).headers
    new_data = os.urandom(5000)
    file_server.add_fault("/model.bin", "change_content", data=new_data)
    response = httpx.get(url, headers={"Range": "bytes=100-", "If-Range": before["etag"]})
    assert response.status_code == 200 and response.content == new_data
    assert response.headers["etag"] != before["etag"]
    assert response.headers["last-modified"] != before["last-modified"]


def test_wrong_bytes_flips_one_byte_at_a_file_offset(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "wrong_bytes", offset=1234)
    body = httpx.get(url).content
    assert len(body) == len(DATA) and body != DATA
    assert body[1234] == DATA[1234] ^ 0xFF and body[:1234] == DATA[:1234] and body[1235:] == DATA[1235:]


def test_redirects(file_server, other_host_server):
    target = other_host_server.add_file("/blob", DATA)
    file_server.add_redirect("/model.bin", target)
    response = httpx.get(file_server.url("/model.bin"), follow_redirects=True)
    assert response.content == DATA
    assert str(response.url).startswith("http://127.0.0.2:")
    assert [r.status for r in file_server.requests] == [302]
    assert [r.status for r in other_host_server.requests] == [200]
    file_server.add_file("/x", b"x")
    file_server.add_fault("/x", "redirect", to=target, code=307)
    first = httpx.get(file_server.url("/x"))
    assert first.status_code == 307 and first.headers["location"] == target


def test_huge_size_announces_a_size_it_does_not_have(file_server):
    url = file_server.add_file("/model.bin", DATA)
    file_server.add_fault("/model.bin", "huge_size", size=1 << 50, methods=("GET", "HEAD"), times=2)
    assert httpx.head(url).headers["content-length"] == str(1 << 50)
    status, headers, body, complete = raw_get(url, {"Range": "bytes=10-"})
    assert status == 206 and headers["content-range"] == f"bytes 10-{(1 << 50) - 1}/{1 << 50}"
    assert body == DATA[10:] and not complete


def test_chunked_file_hides_its_size(file_server):
    url = file_server.add_file("/model.bin", DATA, chunked=True)
    response = httpx.get(url)
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == DATA
    assert "content-length" not in httpx.head(url).headers


def test_content_disposition_and_no_validators(file_server):
    url = file_server.add_file(
        "/download?id=7", DATA, etag=False, last_modified=False, accept_ranges=False,
        content_disposition='attachment; filename="weights.gguf"',
    )
    response = httpx.get(url, headers={"Range": "bytes=5-"})
    assert response.status_code == 200 and response.content == DATA
    assert response.headers["content-disposition"] == 'attachment; filename="weights.gguf"'
    assert "etag" not in response.headers and "last-modified" not in response.headers
    assert "accept-ranges" not in response.headers


def test_throttle_slows_the_response(file_server):
    # A lower bound the fixture's sleeps guarantee, so it cannot flake.
    url = file_server.add_file("/slow.bin", DATA, throttle_bps=1_000_000)
    began = time.monotonic()
    assert httpx.get(url).content == DATA
    assert time.monotonic() - began >= 0.25


async def test_async_client_and_concurrency_log(file_server):
    big = os.urandom(4 << 20)
    url = file_server.add_file("/big.bin", big, throttle_bps=8 << 20)

    async def fetch(session: aiohttp.ClientSession, start: int, end: int) -> bytes:
        async with session.get(url, headers={"Range": f"bytes={start}-{end}"}) as response:
            assert response.status == 206
            return await response.read()

    async with aiohttp.ClientSession() as session:
        quarter = len(big) // 4
        parts = await asyncio.gather(*(fetch(session, i * quarter, (i + 1) * quarter - 1) for i in range(4)))
    assert b"".join(parts) == big
    assert file_server.max_concurrent_gets == 4
    assert sorted(r.range_start for r in file_server.requests) == [0, quarter, 2 * quarter, 3 * quarter]


async def test_client_closing_mid_body_is_logged(file_server):
    url = file_server.add_file("/slow.bin", DATA, throttle_bps=200_000)
    async with aiohttp.ClientSession() as session:
        response = await session.get(url)
        await response.content.readexactly(10_000)
        response.close()
    for _ in range(250):
        if file_server.requests[0].outcome == "client_closed":
            break
        await asyncio.sleep(0.02)
    assert file_server.requests[0].outcome == "client_closed"
    assert file_server.requests[0].bytes_sent < len(DATA)


@pytest.mark.timeout(20)  # a stop that waits for the stall to end would take 600 s
def test_stop_does_not_wait_for_a_stalled_response():
    server = FileServer().start()
    url = server.add_file("/model.bin", DATA)
    server.add_fault("/model.bin", "stall", after=10, seconds=600)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /model.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    server.stop()
    sock.close()
    assert server.requests[0].outcome in ("stalled", "server_stopped")


def test_forward_proxy_fetches_absolute_uris(file_server):
    url = file_server.add_file("/model.bin", DATA)
    with ForwardProxy() as proxy:
        response = httpx.get(url, proxy=proxy.base_url)
    assert response.content == DATA
    assert [r.url for r in proxy.requests] == [url]
    assert len(file_server.requests) == 1


def test_if_range_can_be_ignored(file_server):
    url = file_server.add_file("/model.bin", DATA, if_range=False)
    response = httpx.get(url, headers={"Range": "bytes=10-", "If-Range": '"stale"'})
    assert response.status_code == 206 and response.content == DATA[10:]

"""Issue 10, finding 6: the event fan-out is bounded.

A subscriber that stops reading must cost a bounded queue, not a buffer that grows with every
event (1000 such streams took RSS from 59 MB to ~450 MB); it is told to resync, then sent the
current state, and its stream goes on. Past `--max-event-streams`, a new stream is a 503.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import httpx

_SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"
if str(_SERVER_TESTS) not in sys.path:
    sys.path.insert(0, str(_SERVER_TESTS))  # server_helpers
_spec = importlib.util.spec_from_file_location("fanout_server_fixtures", _SERVER_TESTS / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
log_capture = _fixtures.log_capture
server_settings = _fixtures.server_settings
start_server = _fixtures.start_server

from server_helpers import assert_error  # noqa: E402

PADDING = "x" * 16_000  # each event ~16 kB: 2000 of them are 32 MB a stalled reader would hold


class RawStream:
    """`GET /events` on a socket with a tiny receive buffer, read only when the test says so."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        self.raw = b""
        self.body = b""

    def read_until(self, marker: bytes, after: int = 0) -> None:
        """Read (and de-chunk) until the body holds `marker` past offset `after`."""
        while marker not in self.body[after:]:
            data = self.sock.recv(65536)
            assert data, "the server closed the stream"
            self.raw += data
            self._dechunk()

    def _dechunk(self) -> None:
        if b"\r\n\r\n" in self.raw and not self.body and not hasattr(self, "_head"):
            head, _, self.raw = self.raw.partition(b"\r\n\r\n")
            self._head = head
            assert head.startswith(b"HTTP/1.1 200"), head
        while True:
            line, sep, rest = self.raw.partition(b"\r\n")
            if not sep:
                return
            size = int(line, 16)
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2:]

    def close(self) -> None:
        self.sock.close()


def _run_on_server(server, coroutine_function, *args):
    """Run a coroutine on the server's event loop (where the manager lives) and wait for it."""
    loop = server.manager._background[0].get_loop()
    return asyncio.run_coroutine_threadsafe(coroutine_function(*args), loop).result(timeout=60)


async def _publish_engine_changes(manager, count: int) -> int | None:
    """Engine events through the manager's one publishing path, in bursts, as downloads would;
    the most events a stream had waiting at any burst's end."""
    largest = 0
    fanout = getattr(manager, "fanout", None)
    for index in range(count):
        manager.engine_changed("engine", {"engine_id": f"e{index}", "status": "loaded", "padding": PADDING})
        if index % 50 == 49:
            largest = max(largest, fanout.largest_backlog()) if fanout else None
            await asyncio.sleep(0.005)
    return largest


def test_a_slow_subscriber_gets_a_resync_marker_not_an_unbounded_buffer(start_server):
    server = start_server()
    stalled = RawStream(server.url)
    try:
        stalled.read_until(b"event: ready")
        seen = len(stalled.body)
        # The client stops reading while 2000 events (~32 MB) are published.
        largest_backlog = _run_on_server(server, _publish_engine_changes, server.manager, 2000)
        # When it reads again: a resync marker, then the current state (a snapshot ending in `ready`).
        stalled.read_until(b"event: resync", seen)
        resync_at = stalled.body.index(b"event: resync", seen)
        stalled.read_until(b"event: ready", resync_at)
        # What waited for it was bounded by the queue limit, not by what was published.
        assert largest_backlog <= server.manager.fanout.queue_limit
        # And the stream goes on: the next change still arrives.
        _run_on_server(server, _publish_one, server.manager)
        stalled.read_until(b'"engine_id":"after-resync"', resync_at)
        assert server.client.get("/metrics").text.count("modelpull_event_stream_resyncs_total 0") == 0
    finally:
        stalled.close()


async def _publish_one(manager) -> None:
    manager.engine_changed("engine", {"engine_id": "after-resync", "status": "loaded"})


def test_streams_past_the_cap_are_refused_with_503(start_server):
    server = start_server(max_event_streams=2)
    url = server.url
    with httpx.Client(base_url=url, timeout=10) as first, httpx.Client(base_url=url, timeout=10) as second:
        with first.stream("GET", "/events") as one, second.stream("GET", "/v1/events") as two:
            assert one.status_code == two.status_code == 200
            lines = [one.iter_lines(), two.iter_lines()]  # kept: a dropped iterator closes its stream
            assert [next(it) for it in lines] == ["retry: 3000", "retry: 3000"]
            refused = server.client.get("/events")
            assert_error(refused, 503, None, "too_many_streams")
            assert refused.headers["retry-after"] == "5"
            job = server.client.post("/downloads", json={"model": "http://127.0.0.1:9/x.bin"}).json()
            assert_error(server.client.get(f"/downloads/{job['id']}/events"), 503, None, "too_many_streams")
            # AbstractCore's EventSource route says it inside the stream.
            ac = server.client.get("/api/models/download", params={"provider": "url", "model": "http://127.0.0.1:9/y"})
            assert ac.headers["content-type"].startswith("text/event-stream")
            assert "Too many event streams" in json.loads(ac.text.split("data: ", 1)[1])["error"]
            # The API itself still answers.
            assert server.client.get("/health").status_code == 200
    # Closed streams free their slots (once the server has seen the disconnects).
    deadline = time.monotonic() + 20
    while server.manager.fanout.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    with server.client.stream("GET", "/events") as again:
        assert again.status_code == 200


async def test_a_lagging_subscriber_holds_one_state_per_job_not_every_step():
    from modelpull.server.fanout import RESYNC, FanOut

    fanout = FanOut(max_streams=10, queue_limit=8)
    lagging = fanout.open()
    for step in range(1000):  # a busy job's progress, and a second job's, while the reader is away
        fanout.publish(("job-a", step), key=("job", "a"))
        fanout.publish(("job-b", step), key=("job", "b"))
    assert lagging.pending == 2
    assert [await lagging.next(1), await lagging.next(1)] == [("job-a", 999), ("job-b", 999)]
    for index in range(9):  # more distinct states than the bound: a resync, not a longer queue
        fanout.publish(("engine", index), key=("engine", index))
    assert lagging.pending == 0 and await lagging.next(1) is RESYNC
    fanout.release(lagging)
    assert fanout.open_streams == 0


def test_serve_collects_garbage_rarely_and_never_walks_what_startup_loaded():
    """A thousand streams hold ~270k tracked objects: `modelpull serve` raises the young-generation
    threshold (so each burst of stream wakeups is not promoted and walked again in a full
    collection) and freezes what was loaded at startup."""
    import gc

    from modelpull.server import cli

    before = gc.get_threshold()
    loaded = object.__new__(type("LoadedAtStartup", (), {}))
    try:
        cli._tune_gc()
        assert gc.get_threshold() == (cli.GC_YOUNG_THRESHOLD, *before[1:])
        assert cli.GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_freeze_count() > 0
        assert not any(o is loaded for o in gc.get_objects())  # frozen: no collection walks it
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_places_in_line_far_back_are_published_a_few_per_flush_not_all_at_once():
    """500 jobs submitted together come due together: their places in line go out at most
    QUEUED_FAR_PER_FLUSH per flush (one turn of the loop writing to every stream), the next ones
    at the following flushes, until every one was said; a running job's progress is never held."""
    from modelpull.server import manager as m
    from modelpull.server.jobs import Job

    def job(index: int, status: str, position: int | None) -> Job:
        made = Job(id=f"j{index}", provider="url", model=f"http://127.0.0.1:9/{index}", options={},
                   source_key=str(index), lock_key=str(index), status=status)
        made.queue_position, made.dirty, made.last_published = position, True, 0.0
        return made

    running = [job(i, "downloading", None) for i in range(3)]
    queued = [job(3 + i, "queued", 1 + i) for i in range(500)]
    now = 1000.0
    said: list[Job] = []
    for flush in range(100):
        due = m.due_for_publish(running + queued, now + flush * m.PUBLISH_INTERVAL)
        far = [j for j in due if j.status == "queued" and j.queue_position > m.QUEUED_NEAR]
        assert all(j in due for j in running)
        assert len(far) <= m.QUEUED_FAR_PER_FLUSH
        for published in due:  # what _publish() does to a job
            published.dirty, published.last_published = False, now + flush * m.PUBLISH_INTERVAL
        for busy in running:
            busy.dirty = True
        said += [j for j in due if j.status == "queued"]
    assert sorted(j.id for j in said) == sorted(j.id for j in queued)  # each once, none lost


async def test_a_publish_wakes_the_streams_a_batch_per_turn_of_the_loop():
    """A thousand streams woken by one publish would all write in one turn of the event loop,
    with /health waiting behind them: they are woken WAKE_PER_TURN at a time, and every one of
    them gets the event."""
    from modelpull.server.fanout import WAKE_PER_TURN, FanOut

    fanout = FanOut(max_streams=1000)
    streams = [fanout.open() for _ in range(5 * WAKE_PER_TURN)]
    readers = [asyncio.create_task(stream.next(60)) for stream in streams]
    await asyncio.sleep(0)  # every reader waits
    fanout.publish(("job", 1), key=("job", "a"))
    done_per_turn = []
    while not all(reader.done() for reader in readers):
        before = sum(reader.done() for reader in readers)
        await asyncio.sleep(0)  # one turn of the loop
        done_per_turn.append(sum(reader.done() for reader in readers) - before)
    assert max(done_per_turn) <= WAKE_PER_TURN
    assert len([n for n in done_per_turn if n]) >= 5
    assert [reader.result() for reader in readers] == [("job", 1)] * len(readers)
    # A job's own stream (GET /downloads/{id}/events) is woken at once.
    own = fanout.open(broadcast=False)
    reader = asyncio.create_task(own.next(60))
    await asyncio.sleep(0)
    own.put(("job", 2), key="a")
    assert fanout.pacer.waiting == 0  # not in line behind the broadcast streams
    assert await asyncio.wait_for(reader, 10) == ("job", 2)


async def test_snapshot_chunks_are_written_a_batch_per_turn_and_in_order():
    """Streams opening together take turns for their snapshot chunks (a stream that waits holds no
    buffer), first come first served."""
    from modelpull.server.fanout import WAKE_PER_TURN, FanOut

    fanout = FanOut()
    order: list[int] = []

    async def stream(index: int) -> None:
        await fanout.turn()
        order.append(index)

    tasks = [asyncio.create_task(stream(index)) for index in range(3 * WAKE_PER_TURN + 1)]
    granted = []
    while not all(task.done() for task in tasks):
        before = len(order)
        await asyncio.sleep(0)
        granted.append(len(order) - before)
    assert max(granted) <= WAKE_PER_TURN
    assert order == list(range(len(tasks)))

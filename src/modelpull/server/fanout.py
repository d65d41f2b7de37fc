"""The fan-out of server events to SSE streams: bounded per subscriber, never blocking a publisher.

    FanOut(max_streams, queue_limit)
        check_capacity()                      StreamLimitReached once max_streams are open
        open(broadcast=True) -> Subscriber    a stream slot, taken when the stream starts
        publish(event, key=None)              every broadcast subscriber gets it; O(1) each
        release(subscriber)                   its stream ended (frees the slot)
        close()                               ends every stream (shutdown)

    await FanOut.turn()                       a stream's turn to write a large part (a snapshot chunk)

    Subscriber.put(event, key=None)           never blocks; a newer event with the same key replaces
                                              the waiting one; past `queue_limit` waiting events the
                                              queue is dropped and the subscriber owes a resync
    await Subscriber.next(timeout)            -> an event, RESYNC, KEEPALIVE, or None (closed)
    Subscriber.drain(most)                    events waiting now (to write a few at once)

A publisher only calls `publish()` (the manager today; a store's change feed when several
replicas share one database) or `put()` on the subscribers it keeps itself (one job's streams).
What a reader does on RESYNC (send the current state again) is the SSE layer's business: a
subscriber that cannot keep up costs at most `queue_limit` references, never an unbounded buffer.

One publish reaches every `/events` stream at once, and each stream it wakes writes to its socket:
a thousand of them woken together are one turn of the event loop that nothing else (`/health`,
the API) can interrupt. A `Pacer` wakes them WAKE_PER_TURN at a time, one batch per turn of the
loop, so other requests get a turn between batches; snapshot chunks wait for their turn the same
way. A stream that waits holds no buffer, only its place in line.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable

DEFAULT_QUEUE_LIMIT = 1024  # distinct waiting states (jobs, engines) before a subscriber must resync
DEFAULT_MAX_STREAMS = 1000
TRIM_AFTER_STREAMS = 100  # once this many streams have all closed, free heap pages go back to the OS
WAKE_PER_TURN = 64  # /events streams woken (or given a snapshot chunk's turn) per turn of the event loop


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESYNC = _Marker("RESYNC")  # the subscriber fell behind: its queued events were dropped
KEEPALIVE = _Marker("KEEPALIVE")  # nothing happened for `timeout` seconds


class StreamLimitReached(Exception):
    """Every stream slot is taken (`--max-event-streams`)."""


class Pacer:
    """Runs callbacks `per_turn` at a time, one batch per turn of the event loop, in the order
    they were asked for; a callback asked for again while it waits keeps its place."""

    def __init__(self, per_turn: int = WAKE_PER_TURN) -> None:
        self.per_turn = per_turn
        self._waiting: collections.OrderedDict[Any, Callable[[], None]] = collections.OrderedDict()
        self._task: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def call_soon(self, key: Any, callback: Callable[[], None]) -> None:
        """Run `callback` at its turn (now when no loop runs: nothing else to make room for)."""
        if key in self._waiting:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            callback()
            return
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())
        self._waiting[key] = callback

    async def turn(self) -> None:
        """Wait for a turn."""
        turn = asyncio.get_running_loop().create_future()
        self.call_soon(turn, lambda: turn.done() or turn.set_result(None))
        await turn

    async def _run(self) -> None:
        try:
            while self._waiting:
                for _ in range(min(self.per_turn, len(self._waiting))):
                    self._waiting.popitem(last=False)[1]()
                await asyncio.sleep(0)  # the loop polls its sockets and runs what this batch woke
        finally:
            if self._task is asyncio.current_task():
                self._task = None


class Subscriber:
    """One stream's queue of events: bounded, with a resync flag instead of an overflow."""

    __slots__ = ("_events", "_limit", "_wakeup", "resync_due", "closed", "broadcast", "_on_resync", "_pacer")

    def __init__(self, limit: int, broadcast: bool, on_resync: Callable[[], None] = lambda: None,
                 pacer: Pacer | None = None) -> None:
        self._events: collections.OrderedDict = collections.OrderedDict()  # key -> event, oldest first
        self._limit = limit
        self._wakeup = asyncio.Event()
        self.resync_due = False
        self.closed = False
        self.broadcast = broadcast
        self._on_resync = on_resync
        self._pacer = pacer  # wakes this stream at its turn (None: at once)

    @property
    def pending(self) -> int:
        return len(self._events)

    def put(self, event: Any, key: Any = None) -> None:
        """Queue `event`. An event with a `key` replaces a waiting one with the same key (a newer
        state of the same job or engine), so a reader that lags behind a busy job holds one state
        of it, not every step in between."""
        if self.closed or self.resync_due:
            return  # closed, or the reader will fetch the current state anyway
        if key is not None and key in self._events:
            self._events[key] = event
            self._events.move_to_end(key)
        elif len(self._events) >= self._limit:
            self._events.clear()
            self.resync_due = True
            self._on_resync()
        else:
            self._events[key if key is not None else object()] = event
        if self._pacer is None:
            self._wakeup.set()
        elif not self._wakeup.is_set():
            self._pacer.call_soon(self, self._wakeup.set)

    async def next(self, timeout: float) -> Any:
        """The next event, RESYNC, KEEPALIVE after `timeout` seconds of silence, or None once closed."""
        while True:
            if self.closed:
                return None
            if self.resync_due:
                self.resync_due = False
                return RESYNC
            if self._events:
                return self._events.popitem(last=False)[1]
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return KEEPALIVE

    def drain(self, most: int) -> list[Any]:
        """Up to `most` of the events waiting now, oldest first (none if a resync is due: the
        reader asks next() for it)."""
        if self.resync_due or self.closed:
            return []
        return [self._events.popitem(last=False)[1] for _ in range(min(most, len(self._events)))]

    def close(self) -> None:
        self.closed = True
        self._events.clear()
        self._wakeup.set()


class FanOut:
    """Stream slots and the broadcast subscribers (`/events`)."""

    def __init__(self, max_streams: int = DEFAULT_MAX_STREAMS, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self.max_streams = max_streams
        self.queue_limit = queue_limit
        self._open: set[Subscriber] = set()
        self._broadcast: set[Subscriber] = set()
        # One snapshot rendered at a time; streams connecting before the next change share it.
        self.snapshot_gate = asyncio.Lock()
        self.resyncs = 0  # times a subscriber fell behind (metrics)
        self.snapshot_cache: tuple[int, list[bytes]] | None = None  # (event id, chunks) of the last snapshot
        self.pacer = Pacer()  # wakes the broadcast streams a batch per turn of the loop
        self._peak = 0  # most streams open at once since the heap was last trimmed

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def check_capacity(self) -> None:
        """StreamLimitReached when no stream slot is free."""
        if len(self._open) >= self.max_streams:
            raise StreamLimitReached(f"{self.max_streams} event streams are open already")

    def open(self, broadcast: bool = True) -> Subscriber:
        """A subscriber in a stream slot. The face checks `check_capacity()` before it answers 200
        and opens when the stream starts: a stream that never starts never holds a slot."""
        subscriber = Subscriber(self.queue_limit, broadcast, self._count_resync, self.pacer if broadcast else None)
        self._open.add(subscriber)
        if broadcast:
            self._broadcast.add(subscriber)
        return subscriber

    def largest_backlog(self) -> int:
        """The most events any open stream has waiting (never more than `queue_limit`)."""
        return max((s.pending for s in self._open), default=0)

    def _count_resync(self) -> None:
        self.resyncs += 1

    def release(self, subscriber: Subscriber) -> None:
        subscriber.close()
        self._open.discard(subscriber)
        self._broadcast.discard(subscriber)
        self._peak = max(self._peak, len(self._open) + 1)
        if not self._open and self._peak >= TRIM_AFTER_STREAMS:
            # The buffers of many streams are freed, but glibc keeps freed heap pages mapped:
            # hand them back so a server's RSS falls once a crowd of clients has gone.
            self._peak = 0
            self.snapshot_cache = None
            _trim_heap()

    def publish(self, event: Any, key: Any = None) -> None:
        """Queue `event` for every broadcast stream; they are woken a batch per turn of the loop."""
        for subscriber in self._broadcast:
            subscriber.put(event, key)

    async def turn(self) -> None:
        """Wait for this stream's turn to write a large part (a snapshot chunk): at most
        WAKE_PER_TURN such writes and wakeups share one turn of the event loop."""
        await self.pacer.turn()

    def close(self) -> None:
        for subscriber in list(self._open):
            subscriber.close()


def _trim_heap() -> None:
    """glibc's malloc_trim(0); a no-op where libc is not glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


__all__ = ["FanOut", "Pacer", "Subscriber", "StreamLimitReached", "RESYNC", "KEEPALIVE"]

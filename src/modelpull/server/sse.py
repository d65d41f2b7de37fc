"""Server-Sent Events: the streams the server offers, as async generators of text (or of bytes
encoded once and shared by every stream, for `/events`).

    job_events()           one job's JSON on every change; ends after its final state
    abstractcore_events()  AbstractCore's `data: {status, message, percent, ...}` then done/error
    all_events()           every job and engine change, after a snapshot (for the web page)
    error_events()         a refused AbstractCore request, told inside the stream

Every stream starts with `retry:` and every frame carries an `id:`, the closing one too, so a
browser EventSource that reconnects says where it was (`Last-Event-ID`) and is answered with
what it missed, never with the same download started again. Each stream reads a bounded
`fanout.Subscriber`; one that falls behind gets RESYNC and is sent the current state. Closing the
HTTP response only unsubscribes: the download goes on.
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, AsyncIterator

from .fanout import KEEPALIVE, RESYNC, Subscriber
from .jobs import Job
from .views import abstractcore_end, abstractcore_item

if TYPE_CHECKING:
    from .manager import DownloadManager

KEEPALIVE_SECONDS = 15.0
RETRY_MS = 3000  # how long a browser waits before reconnecting
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
SNAPSHOT_CHUNK = 64  # snapshot frames rendered at a time, between two yields to the event loop
# Waiting events written at once: few enough that a write stays near the transport's 64 KiB high
# water mark (past it the stream waits for its client; a larger write would be buffered whole).
BATCH_EVENTS = 32
END = "end"  # the last part of a closing frame's id: "<job id>/end"


def frame(data: str, event_id: int | str | None = None, event: str | None = None, retry: int | None = None) -> str:
    head = ""
    if retry is not None:
        head += f"retry: {retry}\n"
    if event_id is not None:
        head += f"id: {event_id}\n"
    if event is not None:
        head += f"event: {event}\n"
    if "\n" not in data and "\r" not in data:  # compact JSON: the common case
        return f"{head}data: {data}\n\n"
    return head + "".join(f"data: {line}\n" for line in data.splitlines() or [""]) + "\n"


async def _events(subscriber: Subscriber) -> AsyncIterator[Any]:
    """The subscriber's events (RESYNC included), a keep-alive comment in every silence."""
    while True:
        event = await subscriber.next(KEEPALIVE_SECONDS)
        if event is None:
            return
        yield event


# ---------------------------------------------------------------------- one job


async def job_events(manager: DownloadManager, job: Job, last_event_id: int | None) -> AsyncIterator[str]:
    """`GET /downloads/{id}/events`: the events after `last_event_id` (or the current state), then
    every change; the final state is the closing frame."""
    subscribed = manager.subscribe_job(job, last_event_id)
    if subscribed is None:
        return
    subscriber, backlog = subscribed
    try:
        retry: int | None = RETRY_MS
        for event_id, data, final in backlog:
            yield frame(data, event_id, retry=retry)
            retry = None
            if final:
                return
        if job.final:
            return
        async for event in _events(subscriber):
            if event is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            if event is RESYNC:  # fell behind: the current state stands for what was dropped
                event = (job.event_id, job.event_data(), job.final)
            event_id, data, final = event
            yield frame(data, event_id)
            if final:
                return
    finally:
        manager.unsubscribe_job(job, subscriber)


# ---------------------------------------------------------------------- AbstractCore


def abstractcore_position(last_event_id: str | None) -> tuple[str, str] | None:
    """(job id, event part) of an AbstractCore stream's `Last-Event-ID`, None when it is not one."""
    if not last_event_id:
        return None
    job_id, slash, part = last_event_id.strip().rpartition("/")
    if not slash or not job_id:
        return None
    return job_id, part


async def abstractcore_events(manager: DownloadManager, job: Job) -> AsyncIterator[str]:
    """AbstractCore's items (`id: <job>/<n>`), then `{"done": true}` or `{"error": ...}` as the
    closing frame (`id: <job>/end`). A reconnect names the job and follows it again."""
    subscribed = manager.subscribe_job(job, None)
    if subscribed is None:
        return
    subscriber, _ = subscribed
    shown: dict[str, Any] = {}
    retry: list[int | None] = [RETRY_MS]

    def render() -> tuple[str | None, bool]:
        item = abstractcore_item(job)
        if item == shown.get("last") and not job.final:
            return None, False
        shown["last"] = item
        text = frame(json.dumps(item), f"{job.id}/{job.event_id}", retry=retry[0])
        retry[0] = None
        if job.final:  # the final item, then AbstractCore's closing one
            return text + frame(json.dumps(abstractcore_end(job)), f"{job.id}/{END}"), True
        return text, False

    try:
        text, last = render()
        if text:
            yield text
        if last:
            return
        async for event in _events(subscriber):
            if event is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            text, last = render()
            if text:
                yield text
            if last:
                return
    finally:
        manager.unsubscribe_job(job, subscriber)


async def error_events(message: str) -> AsyncIterator[str]:
    """A refused AbstractCore request, inside the stream an EventSource reads. Its id ends in
    `/end`, so a browser that reconnects is told there is nothing more (204)."""
    yield frame(json.dumps({"error": message}), f"refused/{END}", retry=RETRY_MS)


# ---------------------------------------------------------------------- every job


async def all_events(manager: DownloadManager) -> AsyncIterator[str | bytes]:
    """`GET /events`: a snapshot (every job, every engine, then `ready`), then every change. A
    subscriber that falls behind is sent `resync` and a fresh snapshot."""
    subscriber = manager.subscribe_all()
    try:
        yield f"retry: {RETRY_MS}\n"  # no blank line: it belongs to the snapshot's first frame
        shown = await _snapshot_after(manager, manager.last_seq)
        async for chunk in _chunks(manager, shown[1]):
            yield chunk
        async for event in _events(subscriber):
            if event is KEEPALIVE:
                yield ": keep-alive\n\n"
            elif event is RESYNC:
                yield frame("{}", manager.last_seq, "resync")
                shown = await _snapshot_after(manager, manager.last_seq)
                async for chunk in _chunks(manager, shown[1]):
                    yield chunk
            else:  # this event and a few more waiting, in one write; the snapshot had the older ones
                batch = (event, *subscriber.drain(BATCH_EVENTS))
                data = b"".join(queued[1] for queued in batch if queued[0] > shown[0])
                if data:
                    yield data
    finally:
        manager.unsubscribe_all(subscriber)


async def _chunks(manager: DownloadManager, chunks: list[bytes]) -> AsyncIterator[bytes]:
    """The snapshot's chunks, each at this stream's turn: a thousand streams opening at once write
    a few dozen chunks per turn of the event loop, not a thousand."""
    for chunk in chunks:
        await manager.fanout.turn()
        yield chunk


async def _snapshot_after(manager: DownloadManager, subscribed_at: int) -> tuple[int, list[bytes]]:
    """The snapshot as chunks of frames (encoded), all with the id of the last event before it was
    rendered.

    It is rendered once and shared by every stream subscribed before that event id (a thousand
    streams opening at once render it once and hold references to one copy of its bytes), under a
    lock, yielding to the event loop between chunks. A stream subscribed at `subscribed_at` takes a
    snapshot at least that new: the events it queued since are older or newer, and it drops the
    older ones.
    """
    fanout = manager.fanout
    async with fanout.snapshot_gate:
        cached = fanout.snapshot_cache
        if cached is not None and cached[0] >= subscribed_at:
            return cached
        seq, jobs, engines = manager.snapshot()
        chunks: list[bytes] = []
        for start in range(0, len(jobs), SNAPSHOT_CHUNK):
            text = "".join(frame(job.event_data(), seq, "job") for job in jobs[start:start + SNAPSHOT_CHUNK])
            chunks.append(text.encode())
            await asyncio.sleep(0)
        parts = [frame(json.dumps(engine, separators=(",", ":")), seq, "engine") for engine in engines]
        parts.append(frame(json.dumps({"jobs": len(jobs), "engines": len(engines)}), seq, "ready"))
        chunks.append("".join(parts).encode())
        fanout.snapshot_cache = (seq, chunks)
        return seq, chunks

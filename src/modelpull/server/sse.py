"""Server-Sent Events: the three streams the server offers, as async generators of text.

    job_events(job)        one job's JSON on every change; ends after its final state
    abstractcore_events()  AbstractCore's `data: {status, message, percent, ...}` then done/error
    all_events()           every job and engine change, after a snapshot (for the web page)

Each reads a `Subscriber` queue fed by the manager; closing the HTTP response only unsubscribes,
the download goes on.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from .jobs import Job
from .manager import DownloadManager, Subscriber
from .views import abstractcore_end, abstractcore_item

KEEPALIVE_SECONDS = 15.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def frame(data: str, event_id: int | None = None, event: str | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


async def _next(subscriber: Subscriber) -> Any:
    """The next event, `KEEPALIVE` after a silence, or None when the subscription ended."""
    try:
        return await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_SECONDS)
    except asyncio.TimeoutError:
        return KEEPALIVE


KEEPALIVE = object()


async def _follow(subscriber: Subscriber, render: Callable[[Any], tuple[str | None, bool]]) -> AsyncIterator[str]:
    """Frames for the subscriber's events (`render(event)` -> (frame or None, last?)), with a
    keep-alive comment in every silence; ends after the last frame or with the subscription."""
    while True:
        event = await _next(subscriber)
        if event is None:
            return
        if event is KEEPALIVE:
            yield ": keep-alive\n\n"
            continue
        text, last = render(event)
        if text:
            yield text
        if last:
            return


async def job_events(
    manager: DownloadManager, job: Job, subscriber: Subscriber, backlog: list[tuple[int, str, bool]]
) -> AsyncIterator[str]:
    try:
        for event_id, data, final in backlog:
            yield frame(data, event_id)
            if final:
                return
        if job.final:
            return
        async for text in _follow(subscriber, lambda event: (frame(event[1], event[0]), event[2])):
            yield text
    finally:
        manager.unsubscribe_job(job, subscriber)


async def abstractcore_events(manager: DownloadManager, job: Job) -> AsyncIterator[str]:
    subscribed = manager.subscribe_job(job, None)
    if subscribed is None:
        return
    subscriber, _ = subscribed
    shown: dict[str, Any] = {}

    def render(_: Any) -> tuple[str | None, bool]:
        item = abstractcore_item(job)
        if job.final:  # the final item, then AbstractCore's closing one
            return frame(json.dumps(item), job.event_id) + frame(json.dumps(abstractcore_end(job))), True
        if item == shown.get("last"):
            return None, False
        shown["last"] = item
        return frame(json.dumps(item), job.event_id), False

    try:
        text, last = render(None)
        if text:
            yield text
        if last:
            return
        async for text in _follow(subscriber, render):
            yield text
    finally:
        manager.unsubscribe_job(job, subscriber)


async def error_event(message: str) -> AsyncIterator[str]:
    """AbstractCore's way to report a refused request inside the stream an EventSource reads."""
    yield frame(json.dumps({"error": message}))


async def all_events(manager: DownloadManager) -> AsyncIterator[str]:
    subscriber, snapshot = manager.subscribe_all()
    try:
        jobs = engines = 0
        for event_id, kind, data in snapshot:
            jobs += kind == "job"
            engines += kind == "engine"
            yield frame(data, event_id, kind)
        yield frame(json.dumps({"jobs": jobs, "engines": engines}), None, "ready")
        async for text in _follow(subscriber, lambda event: (frame(event[2], event[0], event[1]), False)):
            yield text
    finally:
        manager.unsubscribe_all(subscriber)

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
from typing import Any, AsyncIterator

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
        while True:
            event = await _next(subscriber)
            if event is None:
                return
            if event is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            event_id, data, final = event
            yield frame(data, event_id)
            if final:
                return
    finally:
        manager.unsubscribe_job(job, subscriber)


async def abstractcore_events(manager: DownloadManager, job: Job) -> AsyncIterator[str]:
    subscribed = manager.subscribe_job(job, None)
    if subscribed is None:
        return
    subscriber, _ = subscribed
    last: dict[str, Any] | None = None
    try:
        while True:
            item = abstractcore_item(job)
            if item != last and not job.final:
                last = item
                yield frame(json.dumps(item), job.event_id)
            if job.final:
                yield frame(json.dumps(item), job.event_id)
                yield frame(json.dumps(abstractcore_end(job)))
                return
            event = await _next(subscriber)
            if event is None:
                if not job.final:
                    return
            elif event is KEEPALIVE:
                yield ": keep-alive\n\n"
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
        while True:
            event = await _next(subscriber)
            if event is None:
                return
            if event is KEEPALIVE:
                yield ": keep-alive\n\n"
                continue
            event_id, kind, data = event
            yield frame(data, event_id, kind)
    finally:
        manager.unsubscribe_all(subscriber)

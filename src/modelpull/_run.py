"""Running a plan: files through the transfer engine, their bytes into one progress stream."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ModelPullError
from ._plan import DownloadRequest, Plan, PlannedFile, TransferOptions
from ._progress import DownloadProgress, DownloadStatus
from ._units import format_bytes
from .transfer import (
    FileProgress,
    Wire,
    check_disk_space,
    discard_partial,
    existing_ancestor,
    fetch_file,
    partial_bytes,
    reserved_bytes,
)
from .transfer._rate import RateLimit

if TYPE_CHECKING:
    import aiohttp

    from .providers import Provider
    from .transfer._policy import AddressCheck

TICK_SECONDS = 0.1  # progress items at most ten times a second
SPEED_WINDOW_SECONDS = 5.0  # speed is the rate over this recent window, not a lifetime average


class DownloadControl:
    """A handle to stop a download from outside its consumer (the server's cancel and pause)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.discard = False

    def cancel(self, discard: bool = True) -> None:
        """Stop promptly. `discard=True` deletes the partial data; False keeps it to resume later."""
        self.discard = discard
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class RunContext:
    """What a provider may use while planning and streaming: HTTP clients and options.

    `wire` carries file bodies (the transfer engine's blocking HTTP); `session` is an aiohttp
    session for providers' small requests, made on first use (importing aiohttp is slow, and
    a plain URL download never needs it). Either may be given (the server shares its own, with
    its URL policy); what is made here is closed by `close()`.
    """

    def __init__(
        self,
        transfer: TransferOptions,
        *,
        wire: Wire | None = None,
        session: "aiohttp.ClientSession | None" = None,
    ) -> None:
        self.transfer = transfer
        self._wire = wire
        self._session = session
        self._owned: list[Any] = []
        self.planned_files: list[PlannedFile] = []  # what a discarding cancel deletes

    @property
    def wire(self) -> Wire:
        if self._wire is None:
            limit = max(self.transfer.connections * 2, 8)
            self._wire = Wire(connect_timeout=self.transfer.connect_timeout, limit_per_host=limit,
                              rate_limit=RateLimit.of(self.transfer.limit_rate))
            self._owned.append(self._wire)
        return self._wire

    @property
    def address_policy(self) -> "AddressCheck | None":
        """The URL policy the caller's wire carries (the server's), for clients other than the wire."""
        return self._wire.check if self._wire is not None else None

    @property
    def session(self) -> "aiohttp.ClientSession":
        if self._session is None:
            from .transfer._aiohttp import new_session

            limit = max(self.transfer.connections * 2, 8)
            self._session = new_session(limit_per_host=limit, connect_timeout=self.transfer.connect_timeout)
            self._owned.append(self._session)
        return self._session

    async def close(self) -> None:
        for owned in self._owned:
            result = owned.close()
            if asyncio.iscoroutine(result):
                await result
        self._owned = []

    async def plan_and_execute(self, provider: "Provider", request: DownloadRequest) -> AsyncIterator[DownloadProgress]:
        plan = await provider.plan(request, self)
        async with contextlib.aclosing(self.execute(plan)) as items:
            async for item in items:
                yield item

    def discard_partials(self) -> None:
        for file in self.planned_files:
            if not file.present:
                discard_partial(file.dest, file.lock_path)

    async def execute(self, plan: Plan) -> AsyncIterator[DownloadProgress]:
        """DOWNLOADING / VERIFYING items while the plan's files arrive, then COMPLETE."""
        self.planned_files = list(plan.files)
        trackers = [FileProgress(f.name, f.size) for f in plan.files]
        for file, tracker in zip(plan.files, trackers):
            if file.present:
                tracker.mark_present(file.size)
            else:
                tracker.done = partial_bytes(file.dest)
        _check_plan_space(plan, trackers)
        meter = _ProgressMeter(plan, trackers)
        yield meter.item(DownloadStatus.DOWNLOADING, meter.opening_message())

        semaphore = asyncio.Semaphore(max(1, self.transfer.max_concurrent_files))

        async def fetch(file: PlannedFile, tracker: FileProgress) -> None:
            async with semaphore:
                await fetch_file(file, self.wire, self.transfer, tracker)

        tasks = [
            asyncio.create_task(fetch(f, t), name=f"modelpull:{f.name}")
            for f, t in zip(plan.files, trackers)
            if not f.present
        ]
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, timeout=TICK_SECONDS, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                item = meter.sample()
                if item is not None:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if plan.finalize is not None:
            await plan.finalize()
        if plan.check is not None:
            await plan.check()
        yield meter.complete()


class _ProgressMeter:
    """Turns per-file counters into throttled DownloadProgress items with a recent speed."""

    def __init__(self, plan: Plan, trackers: list[FileProgress]) -> None:
        self.plan = plan
        self.trackers = trackers
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.last_key: tuple | None = None
        self.last_done = 0

    def opening_message(self) -> str:
        present = [t for t in self.trackers if t.present]
        on_disk = sum(t.done for t in self.trackers if not t.present)
        total = self._total()
        parts = [f"Downloading {self.plan.label}"]
        if len(self.trackers) > 1:
            parts.append(f"{len(self.trackers)} files")
        if total is not None:
            parts.append(format_bytes(total))
        message = ", ".join(parts)
        if present:
            message += f"; {len(present)} of {len(self.trackers)} files already downloaded, not fetched again"
        if on_disk:
            message += f"; resuming with {format_bytes(on_disk)} already on disk"
        return message

    def _total(self) -> int | None:
        totals = [t.total for t in self.trackers]
        return None if any(x is None for x in totals) else sum(totals)  # type: ignore[arg-type]

    def item(self, status: DownloadStatus, message: str) -> DownloadProgress:
        done = sum(t.done for t in self.trackers)
        total = self._total()
        now = time.monotonic()
        if any(t.restarted for t in self.trackers) or done < self.last_done:
            self.samples.clear()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW_SECONDS:
            self.samples.popleft()
        speed = None
        first_time, first_done = self.samples[0]
        if now - first_time >= 0.5:
            speed = max(0.0, (done - first_done) / (now - first_time))
        eta = None
        if speed and total is not None:
            eta = max(0.0, (total - done) / speed)
        moving = [t for t in self.trackers if t.state in (t.DOWNLOADING, t.VERIFYING)]
        current = moving[0].name if moving else None
        self.last_done = done
        return DownloadProgress(
            status=status,
            message=message,
            percent=_percent(done, total),
            downloaded_bytes=done,
            total_bytes=total,
            speed_bps=speed,
            eta_seconds=eta,
            files_completed=sum(1 for t in self.trackers if t.state == t.COMPLETE),
            files_total=len(self.trackers),
            current_file=current,
            active_files=[_file_entry(t) for t in moving],
            files=[_file_entry(t) for t in self.trackers] if len(self.trackers) > 1 else None,
        )

    def sample(self) -> DownloadProgress | None:
        """The next item, or None when nothing a reader would see has changed."""
        notices = []
        for tracker in self.trackers:
            notice = tracker.take_notice()
            if notice:
                notices.append(notice)
        restarted = any(t.restarted for t in self.trackers)
        verifying = [t for t in self.trackers if t.state == t.VERIFYING]
        downloading = [t for t in self.trackers if t.state == t.DOWNLOADING]
        if verifying and not downloading:
            status, message = DownloadStatus.VERIFYING, f"Verifying {verifying[0].name}"
        else:
            status, message = DownloadStatus.DOWNLOADING, f"Downloading {self.plan.label}"
        if notices:
            message = f"{message}: {'; '.join(notices)}"
        item = self.item(status, message)
        for tracker in self.trackers:
            tracker.restarted = False
        key = (item.status, item.downloaded_bytes, item.total_bytes, item.files_completed, bool(notices), restarted)
        if key == self.last_key and not notices:
            return None
        self.last_key = key
        return item

    def complete(self) -> DownloadProgress:
        item = self.item(DownloadStatus.COMPLETE, "")
        fetched = sum(t.done - t.resumed_from for t in self.trackers if not t.present)
        if all(t.present for t in self.trackers):
            item.message = f"{self.plan.label} is already downloaded: nothing to fetch"
        else:
            item.message = f"Downloaded {self.plan.label} ({format_bytes(fetched)} transferred)"
        item.percent = 100.0
        if item.total_bytes is None:
            item.total_bytes = item.downloaded_bytes
        item.downloaded_bytes = item.total_bytes
        item.eta_seconds = 0.0
        item.current_file = None
        item.active_files = []
        item.local_path = str(self.plan.local_path)
        return item


def _file_entry(tracker: FileProgress) -> dict[str, Any]:
    return {"name": tracker.name, "downloaded_bytes": tracker.done, "total_bytes": tracker.total,
            "status": tracker.state}


def _percent(done: int, total: int | None) -> float | None:
    if not total:
        return None
    return round(min(100.0, done * 100.0 / total), 2)


def _check_plan_space(plan: Plan, trackers: list[FileProgress]) -> None:
    """Before any byte moves: does every target file system have room for what is left?"""
    needed: dict[Path, int] = {}
    for file, tracker in zip(plan.files, trackers):
        if file.present or file.size is None:
            continue
        directory = existing_ancestor(file.dest.parent)
        device = directory.stat().st_dev
        key = next((d for d in needed if d.stat().st_dev == device), directory)
        # A partial file holds its reservation already: count only what it still lacks.
        needed[key] = needed.get(key, 0) + max(0, file.size - reserved_bytes(file.dest))
    for directory, count in needed.items():
        check_disk_space(directory, count)


def error_item(error: ModelPullError, *, partial: DownloadProgress | None = None) -> DownloadProgress:
    """The final ERROR item for `error`, keeping the byte counts last reported."""
    return DownloadProgress(
        status=DownloadStatus.ERROR,
        message=error.message,
        error_code=error.code,
        percent=partial.percent if partial else None,
        downloaded_bytes=partial.downloaded_bytes if partial else None,
        total_bytes=partial.total_bytes if partial else None,
        files_completed=partial.files_completed if partial else None,
        files_total=partial.files_total if partial else None,
    )

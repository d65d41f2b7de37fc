"""A download job: what was asked for, where it is, and the events it has sent.

A job is the unit every route talks about. Its bytes are moved by a transfer (see manager.py)
that several jobs asking for the same source may share. Statuses are Kolosal's vocabulary:

    queued -> downloading <-> verifying -> completed
       ^          |                   \\-> failed
       |          v                    \\-> cancelled
       +------ paused

`phase` keeps the library's finer vocabulary (starting, downloading, ...) for AbstractCore's
stream.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import Any

from .._progress import DownloadProgress, DownloadStatus
from ..transfer import public_url
from .security import redact, redact_urls

QUEUED = "queued"
DOWNLOADING = "downloading"
PAUSED = "paused"
VERIFYING = "verifying"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})
ACTIVE_STATUSES = (QUEUED, DOWNLOADING, PAUSED, VERIFYING)

# Library status -> job status.
_STATUS_OF_ITEM = {
    DownloadStatus.QUEUED: QUEUED,
    DownloadStatus.STARTING: DOWNLOADING,
    DownloadStatus.DOWNLOADING: DOWNLOADING,
    DownloadStatus.PAUSED: PAUSED,
    DownloadStatus.VERIFYING: VERIFYING,
    DownloadStatus.COMPLETE: COMPLETED,
    DownloadStatus.ERROR: FAILED,
    DownloadStatus.CANCELLED: CANCELLED,
}
EVENT_BUFFER = 64  # events kept per job for Last-Event-ID replays
# After a crash the stored event counter may lag what clients saw (it is saved at most once a
# second); jumping ahead keeps every id a client holds below the next one sent.
EVENT_ID_RESTART_GAP = 1000


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass
class Job:
    id: str
    provider: str
    model: str
    options: dict[str, Any]
    source_key: str  # same key = same bytes: such jobs share one transfer
    lock_key: str  # same key = same files on disk: such transfers never run at once
    base_url: str | None = None
    engine: dict[str, Any] | None = None  # EngineRequest.creation_info() while one waits
    status: str = QUEUED
    phase: str = "queued"
    message: str = "Queued"
    percent: float | None = None
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    speed_bps: float | None = None
    eta_seconds: float | None = None
    files_completed: int | None = None
    files_total: int | None = None
    current_file: str | None = None
    files: list[dict[str, Any]] | None = None  # a multi-file job's per-file progress
    local_path: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    created_at: int = dataclasses.field(default_factory=now_ms)
    started_at: int | None = None
    finished_at: int | None = None
    updated_at: int = dataclasses.field(default_factory=now_ms)
    event_id: int = 0
    # Not stored.
    queue_position: int | None = None  # 1 = next to start, while queued
    token: str | None = dataclasses.field(default=None, repr=False)
    shared_with: list[str] = dataclasses.field(default_factory=list)
    events: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=EVENT_BUFFER))
    subscribers: set = dataclasses.field(default_factory=set)
    dirty: bool = False  # changed since the last published event
    unsaved: bool = False  # changed since the last store write
    last_published: float = 0.0
    revision: int = 0  # bumped on every change
    view_cache: tuple | None = None  # (key, bytes) of its Kolosal entry, for GET /downloads
    data_cache: tuple | None = None  # (key, str) of event_data(): one string shared by every stream

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def shown_model(self) -> str:
        """The model as shown to clients: a URL loses its query string (signatures, tokens)."""
        return public_url(self.model) if self.provider == "url" else self.model

    # ---- changes ---------------------------------------------------------------------

    def apply(self, item: DownloadProgress) -> bool:
        """Take a progress item; True when the status changed (worth an event at once)."""
        status = _STATUS_OF_ITEM[item.status]
        changed = status != self.status
        self.status = status
        self.phase = item.status.value
        self.message = redact_urls(redact(item.message, [self.token]))
        for name in ("percent", "downloaded_bytes", "total_bytes", "files_completed", "files_total"):
            value = getattr(item, name)
            if value is not None or item.status is DownloadStatus.COMPLETE:
                setattr(self, name, value)
        self.speed_bps = item.speed_bps
        self.eta_seconds = item.eta_seconds
        self.current_file = item.current_file
        if item.files is not None:
            self.files = item.files
        if status != QUEUED:
            self.queue_position = None
        if item.local_path:
            self.local_path = item.local_path
        if self.started_at is None:
            self.started_at = now_ms()
        if status == FAILED:
            self.error_code = item.error_code or "error"
            self.error_message = self.message
        if status in FINAL_STATUSES:
            self.finished_at = now_ms()
            self.speed_bps = None
            self.eta_seconds = None if status != COMPLETED else 0.0
        self.touch()
        return changed

    def set_status(self, status: str, message: str, phase: str | None = None) -> None:
        self.status = status
        if status != QUEUED:
            self.queue_position = None
        self.phase = phase or status
        self.message = message
        if status in (PAUSED, QUEUED) or status in FINAL_STATUSES:
            self.speed_bps = None
            self.eta_seconds = None
            self.current_file = None
        if status in FINAL_STATUSES:
            self.finished_at = now_ms()
        self.touch()

    def reset_for_retry(self) -> None:
        self.error_code = None
        self.error_message = None
        self.finished_at = None

    def touch(self, stored: bool = True) -> None:
        """Mark a change: published soon, and written to the store unless it is only a view of
        this replica's (`stored=False`: a queue position; another replica's job is not ours to
        write, and its `updated_at` must stay the store's)."""
        self.revision += 1
        self.dirty = True
        if stored:
            self.updated_at = now_ms()
            self.unsaved = True

    # ---- views -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The job JSON of docs/server-api.md."""
        return {
            "id": self.id,
            "provider": self.provider,
            "model": self.shown_model,
            "options": self.options,
            "status": self.status,
            "message": self.message,
            "percent": self.percent,
            "downloaded_bytes": self.downloaded_bytes,
            "total_bytes": self.total_bytes,
            "speed_bps": self.speed_bps,
            "eta_seconds": self.eta_seconds,
            "files_completed": self.files_completed,
            "files_total": self.files_total,
            "current_file": self.current_file,
            "files": self.files,
            "queue_position": self.queue_position,
            "local_path": self.local_path,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "engine_id": self.engine["engine_id"] if self.engine else None,
            "shared_with": list(self.shared_with),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
            "event_id": self.event_id,
        }

    def to_record(self) -> dict[str, Any]:
        """What the store keeps: everything needed to resume, never the token.

        A signed URL's secrets (`?token=`, `X-Amz-Signature=`, `user:pass@`) are needed to resume,
        so `model`, `base_url` and `options` keep them; every other field holds the redacted form
        (`source_key` is a digest). Any store must keep to this.
        """
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _TRANSIENT}
        for name in _REDACTED_AT_REST:
            if isinstance(record[name], str):
                record[name] = redact_urls(record[name])
        return record

    def merge_record(self, record: dict[str, Any]) -> None:
        """Take another replica's newer record of this job (the store's truth), in place."""
        for name in _STORED - {"event_id"}:
            if name in record:
                setattr(self, name, record[name])
        # The next event continues from the owner's count, never going back.
        self.event_id = max(self.event_id, int(record.get("event_id") or 0) - 1)
        self.queue_position = None  # numbered again by the manager, with its message
        self.revision += 1
        self.dirty = True

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Job":
        known = {f.name for f in dataclasses.fields(cls)} - _TRANSIENT
        job = cls(**{k: v for k, v in record.items() if k in known})
        job.event_id += EVENT_ID_RESTART_GAP
        return job

    def event_data(self) -> str:
        """The job JSON as one compact line, built once per change (every stream shares it)."""
        key = (self.revision, self.event_id)
        cached = self.data_cache
        if cached is None or cached[0] != key:
            cached = self.data_cache = (key, json.dumps(self.to_json(), separators=(",", ":")))
        return cached[1]


_REDACTED_AT_REST = ("message", "error_message", "local_path", "current_file")
_TRANSIENT = frozenset({
    "queue_position", "token", "shared_with", "events", "subscribers", "dirty", "unsaved", "last_published",
    "revision", "view_cache", "data_cache",
})
_STORED = frozenset(f.name for f in dataclasses.fields(Job)) - _TRANSIENT

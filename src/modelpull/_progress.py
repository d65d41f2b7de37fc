"""The one progress stream every source reports through.

`DownloadStatus` and `DownloadProgress` are a superset of AbstractCore's, so code
written for `abstractcore.download_model` runs unchanged against modelpull.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any


class DownloadStatus(str, enum.Enum):
    """Where a download is in its life."""

    QUEUED = "queued"
    STARTING = "starting"
    DOWNLOADING = "downloading"
    PAUSED = "paused"
    VERIFYING = "verifying"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (DownloadStatus.COMPLETE, DownloadStatus.ERROR, DownloadStatus.CANCELLED)


@dataclasses.dataclass
class DownloadProgress:
    """One progress report.

    The first five fields are AbstractCore's. `downloaded_bytes` counts every byte of the
    model on disk (bytes kept from an earlier attempt included) and `total_bytes` is the
    size of the whole model, so `percent` never restarts on a resume.
    """

    status: DownloadStatus
    message: str
    percent: float | None = None
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    speed_bps: float | None = None
    eta_seconds: float | None = None
    files_completed: int | None = None
    files_total: int | None = None
    current_file: str | None = None
    local_path: str | None = None
    error_code: str | None = None
    # The files moving right now, each {"name", "downloaded_bytes", "total_bytes", "status"}
    # ("downloading" or "verifying"): what a face needs for one bar per file.
    active_files: list[dict[str, Any]] | None = None
    # Every file of a multi-file download, in plan order, each {"name", "downloaded_bytes",
    # "total_bytes", "status"} ("pending", "downloading", "verifying" or "complete"): a file list.
    files: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status as its string value)."""
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DownloadProgress":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["status"] = DownloadStatus(values["status"])
        return cls(**values)

"""A plan: what a provider wants on disk, before any byte moves.

provider.plan() -> Plan -> transfer (bytes on disk) -> Plan.finalize() (links, manifests).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from ._settings import MiB, Settings


@dataclasses.dataclass
class TransferOptions:
    """How bytes are moved; the same for every provider."""

    connections: int = 16  # concurrent connections for one large file (as aria2c -x16, Ollama)
    multipart_threshold: int = 64 * MiB  # files at least this large are split
    piece_size: int = 8 * MiB  # the unit of work (and of crash-resume loss) in a split file, as aria2c -k8M
    stall_timeout: float = 30.0  # seconds without a byte before reconnecting
    connect_timeout: float = 30.0
    max_retries: int = 5  # failures in a row, without progress, before giving up
    retry_backoff: float = 0.5  # first retry delay in seconds; doubles, with jitter
    retry_max_delay: float = 30.0  # cap on one backoff delay and on Retry-After
    max_concurrent_files: int = 4  # files of one plan fetched at once
    sha256: str | None = None  # expected digest of a single-file download
    # bytes/s for every connection of the call (a shared RateLimit caps several calls together);
    # not in NAMES: the server moves bytes on its own shared wire and does not take it.
    limit_rate: Any = None

    NAMES = (
        "connections", "multipart_threshold", "piece_size", "stall_timeout", "connect_timeout",
        "max_retries", "retry_backoff", "retry_max_delay", "max_concurrent_files", "sha256",
    )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "TransferOptions":
        base = cls(
            connections=settings.connections,
            multipart_threshold=settings.multipart_threshold,
            stall_timeout=settings.stall_timeout,
            max_retries=settings.max_retries,
        )
        return dataclasses.replace(base, **overrides)


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, None if there is none: tells a replaced file from the old one."""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclasses.dataclass
class PlannedFile:
    """One file to bring to `dest`, complete and verified."""

    url: str
    dest: Path
    name: str  # shown as `current_file`: the path inside the model
    size: int | None = None  # expected size, when the source says it
    sha256: str | None = None  # expected digest (hex), when known
    git_sha1: str | None = None  # expected git blob sha1 (Hugging Face regular files)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # origin host only
    present: bool = False  # already on disk and verified: counted as done, not fetched
    exact_size: bool = True  # False: `size` is a hint (a HEAD answer); the transfer's own answer wins
    lock_path: Path | None = None  # the destination's lock when its layout has one (Hub cache); else beside it
    # What was at `dest` when the plan was made: a file that appears there later was committed
    # by another download of the same file (the transfer then fetches nothing).
    dest_at_plan: tuple[int, int, int] | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.dest_at_plan = file_identity(self.dest)


@dataclasses.dataclass
class Plan:
    """Everything a download will do, resolved from a reference."""

    label: str  # what is being downloaded, for messages ("Qwen/Qwen2.5-0.5B @ main")
    files: list[PlannedFile]
    local_path: Path  # what the COMPLETE item reports (file or folder)
    finalize: Callable[[], Awaitable[None]] | None = None  # after every file is committed
    check: Callable[[], Awaitable[None]] | None = None  # after finalize; raises to fail

    @property
    def total_bytes(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]


@dataclasses.dataclass
class DownloadRequest:
    """A caller's request, normalised: which source, which model, how to move the bytes."""

    provider: str
    model: str
    token: str | None
    base_url: str | None
    models_dir: Path
    options: dict[str, Any]  # provider-specific options (revision, filename, dest, ...)
    transfer: TransferOptions

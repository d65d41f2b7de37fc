"""What one file's transfer reports; read by the plan runner, never awaited."""
from __future__ import annotations

import threading


class FileProgress:
    """Byte counts and the latest notable event of one file, updated by the engine.

    The runner samples these objects about ten times a second, so the engine never waits on a
    slow consumer of progress.
    """

    PENDING, DOWNLOADING, VERIFYING, COMPLETE = "pending", "downloading", "verifying", "complete"

    def __init__(self, name: str, size: int | None = None) -> None:
        self.name = name
        self.total = size
        self.done = 0
        self.resumed_from = 0  # bytes found on disk when the transfer began
        self.state = self.PENDING
        self.present = False  # already on disk before this download: nothing fetched
        self.notice: str | None = None  # e.g. "retrying in 2.0 s"; taken by the runner
        self.restarted = False  # the bytes went back to zero; taken by the runner
        self._lock = threading.Lock()  # several I/O threads add to `done`

    def begin(self, total: int | None, on_disk: int) -> None:
        if on_disk < self.done:  # pieces found damaged, or a partial that is not this file's any more
            self.restart(self.notice or "the partial data from an earlier attempt does not match the file any more; "
                         "restarting from zero")
        if total is not None:
            self.total = total
        self.done = on_disk
        self.resumed_from = on_disk
        self.state = self.DOWNLOADING

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count

    def restart(self, reason: str) -> None:
        with self._lock:
            self.done = 0
        self.restarted = True
        self.notice = reason

    def note(self, message: str) -> None:
        self.notice = message

    def verifying(self) -> None:
        self.state = self.VERIFYING

    def complete(self, total: int) -> None:
        self.total = total
        self.done = total
        self.state = self.COMPLETE

    def mark_present(self, size: int | None) -> None:
        self.present = True
        self.complete(size or 0)

    def take_notice(self) -> str | None:
        notice, self.notice = self.notice, None
        return notice

"""Digests computed while the file arrives, on another core.

Pieces are claimed in order, so the written prefix of the file grows steadily. A thread
follows that prefix (the watermark); hashlib releases the GIL, so hashing overlaps the
download and only the last few pieces remain to hash once the last byte lands.

The thread writing at the front of the prefix hands its buffer over (`offer`) instead of
letting the hasher read the same bytes back from the page cache: on one fast connection that
copy was a tenth of the download's time. Everything else (pieces finished out of order, data
found on disk when resuming) is read back from the file.
"""
from __future__ import annotations

import collections
import hashlib
import os
import threading
from typing import Callable

# Large blocks: each one costs the thread two trips back to the GIL, which the busy event
# loop may hold for up to the 5 ms switch interval. Measured on 2 cores, 8 connections,
# 1 GiB: 4 MiB blocks made the whole download ~2x slower than 16 MiB ones.
_BLOCK = int(os.environ.get("MODELPULL_HASH_BLOCK", 16 * 1024 * 1024))


class FollowingHasher:
    """sha256 and/or git-blob sha1 of a file, fed up to a moving watermark."""

    def __init__(self, fd: int, *, sha256: bool, git_sha1_size: int | None, size_hint: int | None = None) -> None:
        self._fd = fd
        # No bigger buffer than the file: a small file must not cost a 16 MiB zero-filled buffer.
        self._block = max(1, min(_BLOCK, size_hint)) if size_hint is not None else _BLOCK
        self._hashers: dict[str, "hashlib._Hash"] = {}
        if sha256:
            self._hashers["sha256"] = hashlib.sha256()
        if git_sha1_size is not None:
            sha1 = hashlib.sha1()
            sha1.update(b"blob %d\0" % git_sha1_size)
            self._hashers["git_sha1"] = sha1
        self._hashed = 0
        self._target = 0
        # (offset, bytes, give_back): written buffers to hash before the stream reuses them
        self._offered: collections.deque[tuple[int, memoryview, Callable[[], None]]] = collections.deque()
        self._final: int | None = None
        self._error: BaseException | None = None
        self._stopped = False
        self._cond = threading.Condition()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelpull-hash", daemon=True)
        self._thread.start()

    def advance(self, watermark: int) -> None:
        """Bytes [0, watermark) are on disk and may be hashed."""
        if watermark > self._target:
            with self._cond:
                self._target = watermark
                self._cond.notify()

    def offer(self, offset: int, data: memoryview, give_back: Callable[[], None]) -> None:
        """`data` was just written at `offset`, the end of the watermark; hash it from memory.

        `give_back()` is called (from the hashing thread) once `data` may be reused; always,
        even when the hasher stops.
        """
        with self._cond:
            if self._stopped or self._done.is_set():
                give_back()
                return
            self._offered.append((offset, data, give_back))
            self._target = max(self._target, offset + len(data))
            self._cond.notify()

    def finish(self, total: int) -> dict[str, str]:
        """Block until the first `total` bytes are hashed; the hex digests. Call in a thread."""
        with self._cond:
            self._target = max(self._target, total)
            self._final = total
            self._cond.notify()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return {name: h.hexdigest() for name, h in self._hashers.items()}

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._give_all_back()

    def _give_all_back(self) -> None:
        with self._cond:
            offered, self._offered = list(self._offered), collections.deque()
        for _, _, give_back in offered:
            give_back()

    def _run(self) -> None:
        buffer = bytearray(self._block)  # reused: no allocation (and page faults) per block
        view = memoryview(buffer)
        try:
            while True:
                with self._cond:
                    while self._hashed >= self._target and not self._offered and not self._stopped:
                        if self._final is not None and self._hashed >= self._final:
                            return
                        self._cond.wait()
                    if self._stopped:
                        return
                    offered = self._offered.popleft() if self._offered else None
                    target = self._target if offered is None else offered[0]
                self._read_back(view, target)
                if offered is not None:
                    offset, data, give_back = offered
                    try:
                        if offset + len(data) > self._hashed:
                            self._update(data[self._hashed - offset :])
                    finally:
                        give_back()
        except BaseException as exc:  # surfaced by finish()
            self._error = exc
        finally:
            self._done.set()
            self._give_all_back()

    def _read_back(self, view: memoryview, target: int) -> None:
        """Hash the file from what is hashed so far up to `target`, reading it from disk."""
        while self._hashed < target:
            want = min(len(view), target - self._hashed)
            count = os.preadv(self._fd, [view[:want]], self._hashed)
            if count <= 0:
                raise OSError("partial file is shorter than its recorded progress")
            self._update(view[:count])

    def _update(self, data: memoryview) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)
        self._hashed += len(data)

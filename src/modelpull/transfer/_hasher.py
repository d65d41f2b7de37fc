"""Digests computed while the file arrives, on another core.

Pieces are claimed in order, so the written prefix of the file grows steadily. A thread
follows that prefix (the watermark), reading what the event loop has just written back from
the page cache; hashlib releases the GIL, so hashing overlaps the download and only the last
few pieces remain to hash once the last byte lands.
"""
from __future__ import annotations

import hashlib
import os
import threading

import os as _os

# Large blocks: each one costs the thread two trips back to the GIL, which the busy event
# loop may hold for up to the 5 ms switch interval. Measured on 2 cores, 8 connections,
# 1 GiB: 4 MiB blocks made the whole download ~2x slower than 16 MiB ones.
_BLOCK = int(_os.environ.get("MODELPULL_HASH_BLOCK", 16 * 1024 * 1024))


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

    def _run(self) -> None:
        buffer = bytearray(self._block)  # reused: no allocation (and page faults) per block
        view = memoryview(buffer)
        try:
            while True:
                with self._cond:
                    while self._hashed >= self._target and not self._stopped:
                        if self._final is not None and self._hashed >= self._final:
                            return
                        self._cond.wait()
                    if self._stopped:
                        return
                    target = self._target
                while self._hashed < target:
                    want = min(self._block, target - self._hashed)
                    count = os.preadv(self._fd, [view[:want]], self._hashed)
                    if count <= 0:
                        raise OSError("partial file is shorter than its recorded progress")
                    for hasher in self._hashers.values():
                        hasher.update(view[:count])
                    self._hashed += count
        except BaseException as exc:  # surfaced by finish()
            self._error = exc
        finally:
            self._done.set()

"""One writer per destination, across threads, processes and tools.

A download holds its destination's lock from before it looks at the partial data until the
file is renamed into place (or the attempt ends). The lock is the kernel's `flock` on a lock
file, the lock `filelock.FileLock` takes on Linux and macOS and so the one huggingface_hub
takes: in the Hub cache modelpull locks huggingface_hub's own lock file
(`<cache>/.locks/<repo folder>/<etag>.lock`) and the two wait for each other. Elsewhere the lock
sits beside the partial: `<folder>/.<name>.lock`. The flock is taken here in a few lines, as
filelock does (a new file created group-writable, symlinks refused); filelock itself is imported
only on a file system without flock, where it falls back to its own lock: its import costs
~15 ms, a tenth of a small download's whole run.

The kernel drops an flock when its holder dies (SIGKILL included), so a waiter takes over a
dead download's partial and resumes it. Lock files stay in place after release (as
huggingface_hub's do): deleting one while a waiter has it open would let a third process lock
a new file of the same name. The one exception: a lock beside the data is deleted once its
file is committed, so that a folder (Ollama's store, a models dir) holds only the files; a
waiter that then gets the flock of the deleted file sees that the name is gone and locks the
new one.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from pathlib import Path
from typing import Any, Callable

from .._errors import TransferError
from ._state import remove_partial

WAIT_POLL = 0.2  # seconds between attempts while another download holds the lock
LOCK_MODE = 0o664  # group-writable, like huggingface_hub's: users sharing a cache can wait
_HELD_ELSEWHERE = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})  # EACCES: some file systems
_NO_FLOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP})


def default_lock_path(dest: Path) -> Path:
    """The lock beside a destination that has no lock of its own (plain files, Ollama blobs)."""
    return dest.with_name(f".{dest.name}.lock")


class DestinationLock:
    """An exclusive lock on one destination, taken without blocking the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None  # the locked lock file
        self._fallback: Any = None  # a filelock.FileLock, on a file system without flock

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False if another download does."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._fallback is not None:
                return self._fallback_try_acquire()
            return self._flock()
        except OSError as exc:
            raise TransferError(
                f"cannot lock {self.path}: {(exc.strerror or str(exc)).lower()}; check that this folder "
                "is writable by you",
                code="disk_error",
            ) from None

    async def acquire(self, on_wait: Callable[[], None]) -> bool:
        """Wait for the lock; call `on_wait()` once if another holder makes us wait. True if we waited."""
        waited = False
        while not self.try_acquire():
            if not waited:
                on_wait()
                waited = True
            await asyncio.sleep(WAIT_POLL)
        return waited

    def release(self, *, remove: bool = False) -> None:
        """Let the next waiter in; `remove` also deletes the lock file (only while no partial is left)."""
        if self._fd is None and not (self._fallback is not None and self._fallback.is_locked):
            return
        if remove:
            # Safe enough: whoever took the old file next finds the destination complete (or
            # no partial) and writes nothing, and a stray lock file is all a failure leaves.
            self.path.unlink(missing_ok=True)
        if self._fallback is not None:
            self._fallback.release()
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor drops the flock

    def _flock(self) -> bool:
        while True:
            fd = _open_lock_file(self.path)
            if fd is None:
                continue  # removed between two calls: open it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _HELD_ELSEWHERE:
                    return False
                if exc.errno in _NO_FLOCK:
                    import filelock  # only here: ~15 ms of imports (see the module's docstring)

                    self._fallback = filelock.FileLock(str(self.path), mode=LOCK_MODE)
                    return self._fallback_try_acquire()
                raise
            if _names(self.path, fd):
                self._fd = fd
                return True
            os.close(fd)  # the holder deleted this file as we opened it: lock the one there now

    def _fallback_try_acquire(self) -> bool:
        import filelock

        try:
            self._fallback.acquire(blocking=False)
        except filelock.Timeout:
            return False
        return True


def _open_lock_file(path: Path) -> int | None:
    """The lock file opened for writing, created group-writable if new; None if it vanished meanwhile."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, LOCK_MODE)
    except FileExistsError:
        try:
            return os.open(path, flags)  # someone else's: its mode is theirs
        except FileNotFoundError:
            return None
    try:
        os.fchmod(fd, LOCK_MODE)  # past the umask, as filelock does with an explicit mode
    except OSError:
        pass
    return fd


def _names(path: Path, fd: int) -> bool:
    """`path` still names the file open as `fd`."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except FileNotFoundError:
        return False


def discard_partial(dest: Path, lock_path: Path | None = None) -> bool:
    """Delete `dest`'s partial data unless a download is writing it; True if nothing is left."""
    if not dest.parent.is_dir():
        return True
    lock = DestinationLock(lock_path or default_lock_path(dest))
    if not lock.try_acquire():
        return False
    try:
        remove_partial(dest)
    finally:
        lock.release(remove=lock_path is None)
    return True

"""One writer per destination, across threads, processes and tools.

A download holds its destination's lock from before it looks at the partial data until the
file is renamed into place (or the attempt ends). The lock is a `filelock.FileLock`, the
library huggingface_hub uses, so in the Hub cache modelpull takes huggingface_hub's own lock
file (`<cache>/.locks/<repo folder>/<etag>.lock`) and the two wait for each other. Elsewhere
the lock sits beside the partial: `<folder>/.<name>.lock`.

The kernel drops an flock when its holder dies (SIGKILL included), so a waiter takes over a
dead download's partial and resumes it. Lock files stay in place after release (as
huggingface_hub's do): deleting one while a waiter has it open would let a third process lock
a new file of the same name. The one exception: a lock beside the data is deleted once its
file is committed, so that a folder (Ollama's store, a models dir) holds only the files.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

from .._errors import TransferError
from ._state import remove_partial

WAIT_POLL = 0.2  # seconds between attempts while another download holds the lock
LOCK_MODE = 0o664  # group-writable, like huggingface_hub's: users sharing a cache can wait


def default_lock_path(dest: Path) -> Path:
    """The lock beside a destination that has no lock of its own (plain files, Ollama blobs)."""
    return dest.with_name(f".{dest.name}.lock")


class DestinationLock:
    """An exclusive lock on one destination, taken without blocking the event loop."""

    def __init__(self, path: Path) -> None:
        import filelock  # ~10 ms of imports, paid only when a file is really written

        self.path = path
        self._timeout = filelock.Timeout
        self._lock = filelock.FileLock(str(path), mode=LOCK_MODE)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False if another download does."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(blocking=False)
        except self._timeout:
            return False
        except OSError as exc:
            raise TransferError(
                f"cannot lock {self.path}: {(exc.strerror or str(exc)).lower()}; check that this folder "
                "is writable by you",
                code="disk_error",
            ) from None
        return True

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
        if not self._lock.is_locked:
            return
        if remove:
            # Safe enough: whoever took the old file next finds the destination complete (or
            # no partial) and writes nothing, and a stray lock file is all a failure leaves.
            self.path.unlink(missing_ok=True)
        self._lock.release()


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

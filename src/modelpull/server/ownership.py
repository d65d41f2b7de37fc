"""One server per models dir: a second `modelpull serve` on the same folder refuses to start.

Two servers with their own SQLite job stores would each resume the other's jobs and fight
over the same files. The first server holds `<models dir>/.modelpull/server.lock` (an
`flock`, released by the kernel if the server dies) and writes its pid beside it, so the
second can say which process owns the folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..transfer._lock import DestinationLock


class ModelsDirTaken(Exception):
    """Another live server owns this models dir."""


class ModelsDirOwnership:
    """Held from start to exit by the server that serves a models dir."""

    def __init__(self, models_dir: Path) -> None:
        folder = models_dir / ".modelpull"
        self.models_dir = models_dir
        self._pid_path = folder / "server.pid"
        self._lock = DestinationLock(folder / "server.lock")

    def claim(self) -> None:
        """Take the folder, or raise ModelsDirTaken with a message naming the owner."""
        if not self._lock.try_acquire():
            raise ModelsDirTaken(
                f"another modelpull server (pid {self._owner_pid()}) is already serving {self.models_dir}: "
                "stop it, or give this one another --models-dir. Several servers on one models dir "
                "need the shared PostgreSQL job store (--database postgresql://user:password@host:5432/db), "
                "not one SQLite file each"
            )
        tmp = self._pid_path.with_name(f"{self._pid_path.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self._pid_path)

    def release(self) -> None:
        self._lock.release()

    def _owner_pid(self) -> str:
        try:
            return self._pid_path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

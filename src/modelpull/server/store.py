"""Where jobs and engines survive a restart: one narrow interface, SQLite behind it.

The manager and the engine registry keep their state in memory and write every change through
a `JobStore`; on start they read it back. Records are JSON-ready dicts keyed by id, so another
store (PostgreSQL, for several replicas) only has to implement these few methods.
"""
from __future__ import annotations

import abc
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


class JobStore(abc.ABC):
    """Persistence of job and engine records (dicts with an "id" / "engine_id" key)."""

    @abc.abstractmethod
    def load_jobs(self) -> list[dict[str, Any]]:
        """Every stored job, oldest first."""

    @abc.abstractmethod
    def save_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Insert or replace these jobs, atomically."""

    @abc.abstractmethod
    def delete_jobs(self, job_ids: list[str]) -> None: ...

    @abc.abstractmethod
    def load_engines(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def save_engine(self, engine: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def delete_engine(self, engine_id: str) -> None: ...

    def close(self) -> None:
        """Release the store's resources."""


class SQLiteJobStore(JobStore):
    """A single SQLite file in WAL mode: a killed process loses nothing already written."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            record TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS engines (
            engine_id TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            record TEXT NOT NULL
        );
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, used from the event loop thread; the lock makes stray use from a
        # worker thread safe too.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(self._SCHEMA)

    def load_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM jobs ORDER BY created_at, rowid").fetchall()
        return [json.loads(row[0]) for row in rows]

    def save_jobs(self, jobs: list[dict[str, Any]]) -> None:
        if not jobs:
            return
        rows = [(j["id"], j["status"], j["created_at"], json.dumps(j)) for j in jobs]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO jobs (id, status, created_at, record) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET status=excluded.status, record=excluded.record",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def delete_jobs(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self._lock:
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def load_engines(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM engines ORDER BY created_at, rowid").fetchall()
        return [json.loads(row[0]) for row in rows]

    def save_engine(self, engine: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO engines (engine_id, created_at, record) VALUES (?, ?, ?) "
                "ON CONFLICT(engine_id) DO UPDATE SET record=excluded.record",
                (engine["engine_id"], engine["created_at"], json.dumps(engine)),
            )

    def delete_engine(self, engine_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM engines WHERE engine_id = ?", (engine_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

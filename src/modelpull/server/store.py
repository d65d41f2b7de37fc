"""The job store: the one source of truth for jobs and engines, behind one narrow interface.

    JobStore            the interface the manager and the engine registry use
    SQLiteJobStore      the embedded default: one file, one server
    store_postgres.py   PostgreSQL: several replicas sharing one queue

Records are JSON-ready dicts keyed by "id" / "engine_id". Besides the record, a job row has the
columns that let several replicas share the queue without stepping on each other:

    owner, lease_expires   the replica running the job, until when; renewed by heartbeat(),
                           claimable by anyone once expired (the owner died)
    control                a pause/cancel asked on another replica, for the owner to apply

Work is taken with claim(): queued jobs, and running jobs whose lease expired, become ours.
Two jobs writing the same files (same lock_key) are never claimed by two replicas at once, and
a job whose source is already moving here is claimed as a follower of that transfer (dedupe).

Writes of progress are ordered and do not block the caller (save_jobs); reads, claims and
control requests are awaited.
"""
from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Collection, Iterable

log = logging.getLogger("modelpull.server")
SCHEMA_VERSION = 1
RUNNING = ("downloading", "verifying")
CLAIMABLE = ("queued", *RUNNING)
DEFAULT_LEASE_SECONDS = 15.0


class StoreError(Exception):
    """The store cannot be used: unreachable, refused, or a schema newer than this modelpull.

    The message is one line a person can act on, without the database password."""


@dataclass
class Change:
    """Something another replica wrote: `kind` is job, job-removed, engine, engine-removed or
    control; `record` is the new record when the feed carried it (else read it with `load_job`)."""

    kind: str
    id: str
    record: dict[str, Any] | None = None
    owner: str | None = None


@dataclass
class Candidate:
    id: str
    source_key: str
    lock_key: str


def choose_claims(
    candidates: Iterable[Candidate], limit: int, busy_lock_keys: Collection[str],
    follow_source_keys: Collection[str], held_lock_keys: Collection[str],
) -> list[str]:
    """Which candidates (oldest first) to claim: followers of a source moving here, then at most
    `limit` new transfers, never two on one lock_key nor one on a lock_key busy here or held
    by another replica."""
    chosen: list[str] = []
    starting_sources: set[str] = set()
    starting_locks: set[str] = set()
    for candidate in candidates:
        if candidate.source_key in follow_source_keys or candidate.source_key in starting_sources:
            chosen.append(candidate.id)
            continue
        lock = candidate.lock_key
        if lock in held_lock_keys or lock in busy_lock_keys or lock in starting_locks:
            continue
        if len(starting_sources) >= limit:
            continue
        starting_sources.add(candidate.source_key)
        starting_locks.add(lock)
        chosen.append(candidate.id)
    return chosen


def newer_schema_message(found: int) -> str:
    return (f"the database schema is version {found}, newer than this modelpull knows ({SCHEMA_VERSION}): "
            "upgrade modelpull on this machine, or point --database at another database")


class JobStore(abc.ABC):
    """Jobs and engines, shared by every replica that opens the same store."""

    #: True when several servers may share it (PostgreSQL); False for an embedded file.
    shared = False

    def __init__(self, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.replica_id = f"{_hostname()}-{secrets.token_hex(4)}"
        self.lease_seconds = lease_seconds

    # ---- life --------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema; StoreError when that is not possible."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Write what is pending, then release the store's resources."""

    @property
    def healthy(self) -> bool:
        """False while the store cannot be reached (writes are kept and retried)."""
        return True

    @property
    def description(self) -> str:
        """Where the store is, for logs (never a password)."""
        return ""

    # ---- jobs --------------------------------------------------------------------------

    @abc.abstractmethod
    async def load_jobs(self) -> list[dict[str, Any]]:
        """Every stored job, oldest first."""

    @abc.abstractmethod
    async def load_job(self, job_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def add_job(self, record: dict[str, Any], owned: bool = False) -> None:
        """Insert or replace a job now (a claim that follows sees it). `owned`: it stays ours."""

    @abc.abstractmethod
    def save_jobs(self, records: list[dict[str, Any]], owned: Collection[str] = ()) -> None:
        """Write these jobs, in order, without waiting. Jobs in `owned` stay claimed by this
        replica (lease renewed); the others are released. A job another replica has claimed
        meanwhile is not overwritten."""

    @abc.abstractmethod
    def delete_jobs(self, job_ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until every write asked for so far has reached the store."""

    @abc.abstractmethod
    async def claim(
        self, limit: int, busy_lock_keys: Collection[str], follow_source_keys: Collection[str],
    ) -> list[dict[str, Any]]:
        """Take work (see `choose_claims`); the records now owned by this replica."""

    @abc.abstractmethod
    async def heartbeat(self) -> tuple[set[str], list[tuple[str, str]]]:
        """Renew this replica's leases: the ids still ours, and (id, action) control requests
        other replicas left for them (taken: each is returned once)."""

    @abc.abstractmethod
    async def request_control(self, job_id: str, action: str) -> bool:
        """Ask the replica running `job_id` to `action` it (pause, cancel). False when no live
        replica runs it: the caller acts itself."""

    # ---- engines -----------------------------------------------------------------------

    @abc.abstractmethod
    async def load_engines(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def load_engine(self, engine_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def save_engine(self, engine: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def delete_engine(self, engine_id: str) -> None: ...

    # ---- change feed -------------------------------------------------------------------

    async def changes(self) -> AsyncIterator[Change]:
        """What other replicas write, as it is committed. An embedded store has no others."""
        await asyncio.Event().wait()
        yield Change("job", "")  # pragma: no cover (unreachable; makes this an async generator)


class SQLiteJobStore(JobStore):
    """A single SQLite file in WAL mode: a killed process loses nothing already written.

    Every statement runs on one thread, in the order asked, so a commit (and the occasional
    checkpoint, which syncs the disk) never stalls the event loop."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            record TEXT NOT NULL,
            source_key TEXT NOT NULL DEFAULT '',
            lock_key TEXT NOT NULL DEFAULT '',
            owner TEXT,
            lease_expires INTEGER,
            control TEXT
        );
        CREATE TABLE IF NOT EXISTS engines (
            engine_id TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            record TEXT NOT NULL
        );
    """

    def __init__(self, path: Path, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        super().__init__(lease_seconds)
        self.path = path
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelpull-store")
        self._db: sqlite3.Connection | None = None
        self._last_write: concurrent.futures.Future | None = None

    @property
    def description(self) -> str:
        return str(self.path)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        try:
            _private_file(self.path)
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database file {self.path}: {exc}") from None
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        self._db = db
        self._migrate(db)
        # One server per file: claims a previous process left behind are void.
        db.execute("UPDATE jobs SET owner = NULL, lease_expires = NULL")

    def _migrate(self, db: sqlite3.Connection) -> None:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = 0
        if "schema_version" in tables:
            version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        elif "jobs" not in tables:
            version = -1  # a new file
        if version > SCHEMA_VERSION:
            db.close()
            self._db = None
            raise StoreError(newer_schema_message(version))
        if version == SCHEMA_VERSION:
            return
        db.execute("BEGIN")
        if version == 0:  # the first release's tables: the claim columns are new
            for column in ("source_key TEXT NOT NULL DEFAULT ''", "lock_key TEXT NOT NULL DEFAULT ''",
                           "owner TEXT", "lease_expires INTEGER", "control TEXT"):
                db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
            db.execute("UPDATE jobs SET source_key = json_extract(record, '$.source_key'), "
                       "lock_key = json_extract(record, '$.lock_key')")
        if version < 0:
            for statement in self._SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        db.execute("COMMIT")

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._call(close)
        self._thread.shutdown(wait=True)

    # ---- plumbing ----------------------------------------------------------------------

    async def _call(self, function: Any, *args: Any) -> Any:
        return await asyncio.wrap_future(self._thread.submit(function, *args))

    def _write(self, function: Any, *args: Any) -> None:
        def run() -> None:
            try:
                function(*args)
            except sqlite3.Error:
                log.exception("could not write to the store")

        self._last_write = self._thread.submit(run)

    async def flush(self) -> None:
        await self._call(lambda: None)

    # ---- jobs --------------------------------------------------------------------------

    async def load_jobs(self) -> list[dict[str, Any]]:
        rows = await self._call(lambda: self._db.execute(
            "SELECT record FROM jobs ORDER BY created_at, rowid").fetchall())
        return [json.loads(row[0]) for row in rows]

    async def load_job(self, job_id: str) -> dict[str, Any] | None:
        row = await self._call(lambda: self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return json.loads(row[0]) if row else None

    _UPSERT = (
        "INSERT INTO jobs (id, status, created_at, record, source_key, lock_key, owner, lease_expires) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET status = excluded.status, record = excluded.record, "
        "source_key = excluded.source_key, lock_key = excluded.lock_key, owner = excluded.owner, "
        "lease_expires = excluded.lease_expires "
        "WHERE jobs.owner IS NULL OR jobs.owner = ? OR jobs.lease_expires < ?"
    )

    def _upsert(self, records: list[dict[str, Any]], owned: Collection[str]) -> None:
        now = _now_ms()
        lease = now + int(self.lease_seconds * 1000)
        rows = []
        for r in records:
            mine = r["id"] in owned
            rows.append((r["id"], r["status"], r["created_at"], json.dumps(r), r["source_key"], r["lock_key"],
                         self.replica_id if mine else None, lease if mine else None, self.replica_id, now))
        self._db.execute("BEGIN")
        try:
            self._db.executemany(self._UPSERT, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def add_job(self, record: dict[str, Any], owned: bool = False) -> None:
        await self._call(self._upsert, [record], {record["id"]} if owned else ())

    def save_jobs(self, records: list[dict[str, Any]], owned: Collection[str] = ()) -> None:
        if records:
            self._write(self._upsert, records, set(owned))

    def delete_jobs(self, job_ids: list[str]) -> None:
        if job_ids:
            self._write(lambda: self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids]))

    async def claim(
        self, limit: int, busy_lock_keys: Collection[str], follow_source_keys: Collection[str],
    ) -> list[dict[str, Any]]:
        def claim() -> list[dict[str, Any]]:
            db, me, now = self._db, self.replica_id, _now_ms()
            rows = db.execute(
                "SELECT id, source_key, lock_key, record FROM jobs WHERE status IN (?, ?, ?) "
                "AND (owner IS NULL OR (owner = ? AND status = 'queued') OR lease_expires < ?) "
                "ORDER BY created_at, rowid LIMIT 1000", (*CLAIMABLE, me, now)).fetchall()
            if not rows:
                return []
            held = {r[0] for r in db.execute(
                "SELECT DISTINCT lock_key FROM jobs WHERE owner IS NOT NULL AND owner <> ? AND lease_expires >= ?",
                (me, now))}
            chosen = set(choose_claims((Candidate(*r[:3]) for r in rows), limit, busy_lock_keys,
                                       follow_source_keys, held))
            if not chosen:
                return []
            lease = now + int(self.lease_seconds * 1000)
            db.executemany("UPDATE jobs SET owner = ?, lease_expires = ? WHERE id = ?",
                           [(me, lease, i) for i in chosen])
            return [json.loads(r[3]) for r in rows if r[0] in chosen]

        return await self._call(claim)

    async def heartbeat(self) -> tuple[set[str], list[tuple[str, str]]]:
        def beat() -> tuple[set[str], list[tuple[str, str]]]:
            db, me = self._db, self.replica_id
            db.execute("UPDATE jobs SET lease_expires = ? WHERE owner = ?",
                       (_now_ms() + int(self.lease_seconds * 1000), me))
            owned = {r[0] for r in db.execute("SELECT id FROM jobs WHERE owner = ?", (me,))}
            controls = db.execute("SELECT id, control FROM jobs WHERE owner = ? AND control IS NOT NULL",
                                  (me,)).fetchall()
            if controls:
                db.execute("UPDATE jobs SET control = NULL WHERE owner = ?", (me,))
            return owned, [(r[0], r[1]) for r in controls]

        return await self._call(beat)

    async def request_control(self, job_id: str, action: str) -> bool:
        def request() -> bool:
            cursor = self._db.execute(
                "UPDATE jobs SET control = ? WHERE id = ? AND owner IS NOT NULL AND owner <> ? AND lease_expires >= ?",
                (action, job_id, self.replica_id, _now_ms()))
            return cursor.rowcount > 0

        return await self._call(request)

    # ---- engines -----------------------------------------------------------------------

    async def load_engines(self) -> list[dict[str, Any]]:
        rows = await self._call(lambda: self._db.execute(
            "SELECT record FROM engines ORDER BY created_at, rowid").fetchall())
        return [json.loads(row[0]) for row in rows]

    async def load_engine(self, engine_id: str) -> dict[str, Any] | None:
        row = await self._call(lambda: self._db.execute(
            "SELECT record FROM engines WHERE engine_id = ?", (engine_id,)).fetchone())
        return json.loads(row[0]) if row else None

    def save_engine(self, engine: dict[str, Any]) -> None:
        self._write(lambda: self._db.execute(
            "INSERT INTO engines (engine_id, created_at, record) VALUES (?, ?, ?) "
            "ON CONFLICT(engine_id) DO UPDATE SET record=excluded.record",
            (engine["engine_id"], engine["created_at"], json.dumps(engine))))

    def delete_engine(self, engine_id: str) -> None:
        self._write(lambda: self._db.execute("DELETE FROM engines WHERE engine_id = ?", (engine_id,)))


def open_store(database: str | Path, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> JobStore:
    """The store a --database value names: a postgresql:// URL, else an SQLite file path."""
    text = str(database)
    if text.startswith(("postgresql://", "postgres://")):
        from .store_postgres import PostgresJobStore

        return PostgresJobStore(text, lease_seconds)
    return SQLiteJobStore(Path(text), lease_seconds)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _hostname() -> str:
    import socket

    return socket.gethostname().split(".")[0][:32] or "replica"


def _private_file(path: Path) -> None:
    """Create the database file mode 0600 (its folder 0700 when this makes it) before SQLite opens
    it: SQLite gives the -wal and -shm files the database's own mode. Signed URLs are kept there."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        os.chmod(path.parent, 0o700)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if name.exists():
            os.chmod(name, 0o600)


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(jobs, engines) of a server's SQLite store, read-only (the CLI asks what is in use).

    Nothing is created or migrated; an unreadable store reads as empty.
    """
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return [], []
    try:
        jobs = [json.loads(r[0]) for r in db.execute("SELECT record FROM jobs")]
        engines = [json.loads(r[0]) for r in db.execute("SELECT record FROM engines")]
    except (sqlite3.Error, ValueError):
        return [], []
    finally:
        db.close()
    return jobs, engines

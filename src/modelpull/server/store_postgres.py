"""The PostgreSQL job store: several `modelpull serve` replicas sharing one queue.

    claim()      one claim at a time (a transaction-level advisory lock), candidates taken with
                 SELECT ... FOR UPDATE SKIP LOCKED, then owner = this replica, lease = now() + lease
    heartbeat()  renews this replica's leases; returns (and clears) pause/cancel requests
    save_jobs()  a writer task batches what the manager asks (one transaction, a few per second),
                 never overwrites a job another replica has claimed, and NOTIFYs each change
    changes()    LISTEN on a connection of its own; after a reconnection, "resync"

The database's clock decides every lease (now()), so replicas' clocks do not need to agree.
While the database is unreachable, writes wait in memory and are retried every second, and
`healthy` is False (/health answers 503); the transfers go on, their data on disk.
psycopg 3 (async) and psycopg_pool, installed with `pip install 'modelpull[postgres]'`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator, Collection
from urllib.parse import urlsplit, urlunsplit

from .store import (
    CLAIMABLE, DEFAULT_LEASE_SECONDS, SCHEMA_VERSION, Candidate, Change, JobStore, StoreError, choose_claims,
    newer_schema_message,
)

log = logging.getLogger("modelpull.server")

CHANNEL = "modelpull"
CONNECT_TIMEOUT = 5  # seconds: a database that does not answer fails the start within seconds
_CLAIM_LOCK = 0x6D6F64656C70  # pg_advisory_xact_lock key: one claim at a time, over all replicas
_MIGRATE_LOCK = _CLAIM_LOCK + 1
_NOTIFY_LIMIT = 7500  # bytes; PostgreSQL refuses payloads of 8000 or more

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS modelpull_jobs (
        id text PRIMARY KEY,
        status text NOT NULL,
        created_at bigint NOT NULL,
        record text NOT NULL,
        source_key text NOT NULL,
        lock_key text NOT NULL,
        owner text,
        lease_expires timestamptz,
        control text
    )""",
    "CREATE INDEX IF NOT EXISTS modelpull_jobs_claimable ON modelpull_jobs (created_at) "
    "WHERE status IN ('queued', 'downloading', 'verifying')",
    "CREATE INDEX IF NOT EXISTS modelpull_jobs_owner ON modelpull_jobs (owner) WHERE owner IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS modelpull_engines (
        engine_id text PRIMARY KEY,
        created_at bigint NOT NULL,
        record text NOT NULL
    )""",
]
# Migrations from version N to N + 1, in order; version 1 is _SCHEMA.
_MIGRATIONS: list[list[str]] = []

_SAVE = """
    WITH new AS (
        SELECT * FROM unnest(%(ids)s::text[], %(statuses)s::text[], %(created)s::bigint[], %(records)s::text[],
                             %(sources)s::text[], %(locks)s::text[], %(owners)s::text[])
            AS r(id, status, created_at, record, source_key, lock_key, owner)
    )
    INSERT INTO modelpull_jobs AS j (id, status, created_at, record, source_key, lock_key, owner, lease_expires)
    SELECT id, status, created_at, record, source_key, lock_key, owner,
           CASE WHEN owner IS NULL THEN NULL ELSE now() + make_interval(secs => %(lease)s) END
    FROM new
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record,
        source_key = excluded.source_key, lock_key = excluded.lock_key, owner = excluded.owner,
        lease_expires = excluded.lease_expires
    WHERE j.owner IS NULL OR j.owner = %(me)s OR j.lease_expires < now()
    RETURNING j.id
"""


def _import_psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise StoreError("a postgresql:// database needs psycopg 3: pip install 'modelpull[postgres]'") from None
    return psycopg, psycopg_pool


def safe_url(url: str) -> str:
    """The database URL without its password (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}@{netloc}" if user else netloc, parts.path, "", ""))


class PostgresJobStore(JobStore):
    """Jobs and engines in PostgreSQL tables `modelpull_*`, shared by every replica."""

    shared = True

    def __init__(self, url: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        super().__init__(lease_seconds)
        self.url = url
        self._password = urlsplit(url).password
        if self._password:
            from .logs import SECRETS

            SECRETS.add(self._password)  # whatever logs it (psycopg, a traceback), never shown
        self._pool: Any = None
        self._queue: asyncio.Queue | None = None
        self._writer: asyncio.Task | None = None
        self._writer_ok = True
        self._listener_ok = True
        self._closed = False

    @property
    def description(self) -> str:
        return safe_url(self.url)

    @property
    def healthy(self) -> bool:
        return self._writer_ok and self._listener_ok

    # ---- life --------------------------------------------------------------------------

    async def open(self) -> None:
        psycopg, psycopg_pool = _import_psycopg()
        conn = await self._connect()
        try:
            with self._errors("prepare"):
                await self._migrate(conn)
        finally:
            await conn.close()
        self._pool = psycopg_pool.AsyncConnectionPool(
            self.url, min_size=2, max_size=8, open=False, timeout=CONNECT_TIMEOUT, name="modelpull",
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            check=psycopg_pool.AsyncConnectionPool.check_connection,
        )
        with self._errors("connect to"):
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="modelpull:store-writer")

    async def _connect(self) -> Any:
        """One connection, tried once: a refused password is not retried."""
        psycopg, _ = _import_psycopg()
        try:
            return await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise StoreError(self._explain(exc, "connect to")) from None
        except ValueError as exc:  # a malformed URL
            raise StoreError(f"the database URL {safe_url(self.url)} is not usable: {self._redacted(str(exc))}") from None

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            # Replicas starting together migrate one after the other.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS modelpull_schema_version (version integer NOT NULL)")
            row = await (await conn.execute("SELECT max(version) FROM modelpull_schema_version")).fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(newer_schema_message(version))
            if version == 0:
                for statement in _SCHEMA:
                    await conn.execute(statement)
                version = 1
            for statement_list in _MIGRATIONS[version - 1:]:
                for statement in statement_list:
                    await conn.execute(statement)
            await conn.execute("DELETE FROM modelpull_schema_version")
            await conn.execute("INSERT INTO modelpull_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), 5)
            self._writer.cancel()
            with contextlib.suppress(BaseException):
                await self._writer
        if self._pool is not None:
            await self._pool.close()

    # ---- errors ------------------------------------------------------------------------

    def _redacted(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _explain(self, exc: BaseException, doing: str) -> str:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        for prefix in ("connection failed: ",):
            reason = reason.removeprefix(prefix)
        reason = reason.split(" failed: ", 1)[-1] if " failed: " in reason else reason
        reason = self._redacted(reason.removeprefix("FATAL:").strip())
        where = safe_url(self.url)
        if "password authentication failed" in reason or "no password supplied" in reason:
            return (f"cannot log in to the database {where}: {reason}; check the user and password in "
                    "--database / MODELPULL_DATABASE")
        if "does not exist" in reason:
            return f"cannot use the database {where}: {reason}; create it first (createdb)"
        return f"cannot {doing} the database {where}: {reason}; is PostgreSQL running there and reachable?"

    @contextlib.contextmanager
    def _errors(self, doing: str = "use"):
        psycopg, psycopg_pool = _import_psycopg()
        try:
            yield
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
            raise StoreError(self._explain(exc, doing)) from None

    # ---- jobs --------------------------------------------------------------------------

    async def _fetch(self, query: str, params: Any = None) -> list[tuple]:
        with self._errors():
            async with self._pool.connection() as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall()

    async def load_jobs(self) -> list[dict[str, Any]]:
        rows = await self._fetch("SELECT record FROM modelpull_jobs ORDER BY created_at, id")
        return [json.loads(r[0]) for r in rows]

    async def load_job(self, job_id: str) -> dict[str, Any] | None:
        rows = await self._fetch("SELECT record FROM modelpull_jobs WHERE id = %s", (job_id,))
        return json.loads(rows[0][0]) if rows else None

    async def add_job(self, record: dict[str, Any], owned: bool = False) -> None:
        await self.flush()
        with self._errors():
            async with self._pool.connection() as conn, conn.transaction():
                await self._save(conn, [record], {record["id"]} if owned else set())

    def save_jobs(self, records: list[dict[str, Any]], owned: Collection[str] = ()) -> None:
        if records:
            self._queue.put_nowait(("save", records, set(owned)))

    def delete_jobs(self, job_ids: list[str]) -> None:
        if job_ids:
            self._queue.put_nowait(("delete", list(job_ids), None))

    async def flush(self) -> None:
        if self._queue is None or self._writer is None or self._writer.done():
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(("flush", done, None))
        await done

    async def _save(self, conn: Any, records: list[dict[str, Any]], owned: set[str]) -> None:
        latest = {r["id"]: r for r in records}  # one row may not be updated twice in one statement
        rows = sorted(latest.values(), key=lambda r: r["id"])  # rows locked in id order, as everywhere
        me = self.replica_id
        cursor = await conn.execute(_SAVE, {
            "ids": [r["id"] for r in rows], "statuses": [r["status"] for r in rows],
            "created": [r["created_at"] for r in rows], "records": [json.dumps(r) for r in rows],
            "sources": [r["source_key"] for r in rows], "locks": [r["lock_key"] for r in rows],
            "owners": [me if r["id"] in owned else None for r in rows],
            "lease": self.lease_seconds, "me": me,
        })
        written = {row[0] for row in await cursor.fetchall()}
        await self._notify(conn, [
            {"k": "job", "id": r["id"], "o": me if r["id"] in owned else None, "r": r}
            for r in rows if r["id"] in written
        ])

    async def _notify(self, conn: Any, messages: list[dict[str, Any]]) -> None:
        payloads = []
        for message in messages:
            message["f"] = self.replica_id
            payload = json.dumps(message, separators=(",", ":"))
            if len(payload.encode()) > _NOTIFY_LIMIT:  # too big: the listener reads the row
                message.pop("r", None)
                payload = json.dumps(message, separators=(",", ":"))
            payloads.append(payload)
        if payloads:
            await conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, payloads))

    async def _write_loop(self) -> None:
        """Apply queued writes in order, a batch per transaction; keep them while the database is
        away and retry every second."""
        psycopg, psycopg_pool = _import_psycopg()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            writes = [op for op in batch if op[0] != "flush"]
            while writes:
                try:
                    async with self._pool.connection() as conn, conn.transaction():
                        await self._apply(conn, writes)
                except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                    continue  # another transaction won: write again at once
                except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
                    if self._writer_ok:
                        log.warning("cannot write to the database; retrying every second",
                                    extra={"reason": self._explain(exc, "write to")})
                    self._writer_ok = False
                    if self._closed:
                        break
                    await asyncio.sleep(1)
                    continue
                if not self._writer_ok:
                    log.info("the database is reachable again; pending writes done")
                self._writer_ok = True
                break
            for op in batch:
                if op[0] == "flush" and not op[1].done():
                    op[1].set_result(None)

    async def _apply(self, conn: Any, writes: list[tuple]) -> None:
        index = 0
        while index < len(writes):
            kind = writes[index][0]
            if kind == "save":  # consecutive saves: one statement
                records: list[dict[str, Any]] = []
                owned: set[str] = set()
                while index < len(writes) and writes[index][0] == "save":
                    for record in writes[index][1]:
                        owned.discard(record["id"])
                    records += writes[index][1]
                    owned |= writes[index][2]
                    index += 1
                await self._save(conn, records, owned)
                continue
            _, payload, _ = writes[index]
            index += 1
            if kind == "delete":
                await conn.execute("DELETE FROM modelpull_jobs WHERE id = ANY(%s)", (payload,))
                await self._notify(conn, [{"k": "job-removed", "id": i} for i in payload])
            elif kind == "engine":
                await conn.execute(
                    "INSERT INTO modelpull_engines (engine_id, created_at, record) VALUES (%s, %s, %s) "
                    "ON CONFLICT (engine_id) DO UPDATE SET record = excluded.record",
                    (payload["engine_id"], payload["created_at"], json.dumps(payload)))
                await self._notify(conn, [{"k": "engine", "id": payload["engine_id"], "r": payload}])
            elif kind == "engine-removed":
                await conn.execute("DELETE FROM modelpull_engines WHERE engine_id = %s", (payload,))
                await self._notify(conn, [{"k": "engine-removed", "id": payload}])

    async def claim(
        self, limit: int, busy_lock_keys: Collection[str], follow_source_keys: Collection[str],
    ) -> list[dict[str, Any]]:
        if limit <= 0 and not follow_source_keys:
            return []
        me = self.replica_id
        with self._errors():
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
                # Followers of the sources moving here, then the oldest others (a window, not the
                # whole queue: every candidate row stays locked until the claim commits).
                claimable = ("status = ANY(%s) AND (owner IS NULL OR (owner = %s AND status = 'queued') "
                             "OR lease_expires < now())")
                candidates: list[Candidate] = []
                if follow_source_keys:
                    cursor = await conn.execute(
                        f"SELECT id, source_key, lock_key FROM modelpull_jobs WHERE {claimable} "
                        "AND source_key = ANY(%s) ORDER BY created_at, id FOR UPDATE SKIP LOCKED",
                        (list(CLAIMABLE), me, list(follow_source_keys)))
                    candidates += [Candidate(*row) for row in await cursor.fetchall()]
                if limit > 0:
                    cursor = await conn.execute(
                        f"SELECT id, source_key, lock_key FROM modelpull_jobs WHERE {claimable} "
                        "ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                        (list(CLAIMABLE), me, 20 + 10 * limit))
                    seen = {c.id for c in candidates}
                    candidates += [Candidate(*row) for row in await cursor.fetchall() if row[0] not in seen]
                if not candidates:
                    return []
                cursor = await conn.execute(
                    "SELECT DISTINCT lock_key FROM modelpull_jobs WHERE owner IS NOT NULL AND owner <> %s "
                    "AND lease_expires >= now()", (me,))
                held = {row[0] for row in await cursor.fetchall()}
                chosen = choose_claims(candidates, limit, busy_lock_keys, follow_source_keys, held)
                if not chosen:
                    return []
                cursor = await conn.execute(
                    "UPDATE modelpull_jobs SET owner = %s, lease_expires = now() + make_interval(secs => %s) "
                    "WHERE id = ANY(%s) RETURNING record", (me, self.lease_seconds, chosen))
                records = [json.loads(row[0]) for row in await cursor.fetchall()]
        order = {job_id: n for n, job_id in enumerate(chosen)}
        return sorted(records, key=lambda r: order[r["id"]])

    async def heartbeat(self) -> tuple[set[str], list[tuple[str, str]]]:
        rows = await self._fetch(
            "WITH mine AS (SELECT id, control FROM modelpull_jobs WHERE owner = %s ORDER BY id FOR UPDATE) "
            "UPDATE modelpull_jobs j SET lease_expires = now() + make_interval(secs => %s), control = NULL "
            "FROM mine WHERE j.id = mine.id RETURNING j.id, mine.control", (self.replica_id, self.lease_seconds))
        return {r[0] for r in rows}, [(r[0], r[1]) for r in rows if r[1]]

    async def request_control(self, job_id: str, action: str) -> bool:
        with self._errors():
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "UPDATE modelpull_jobs SET control = %s WHERE id = %s AND owner IS NOT NULL AND owner <> %s "
                    "AND lease_expires >= now() RETURNING owner", (action, job_id, self.replica_id))
                row = await cursor.fetchone()
                if row is None:
                    return False
                await self._notify(conn, [{"k": "control", "id": job_id, "o": row[0]}])
                return True

    # ---- engines -----------------------------------------------------------------------

    async def load_engines(self) -> list[dict[str, Any]]:
        rows = await self._fetch("SELECT record FROM modelpull_engines ORDER BY created_at, engine_id")
        return [json.loads(r[0]) for r in rows]

    async def load_engine(self, engine_id: str) -> dict[str, Any] | None:
        rows = await self._fetch("SELECT record FROM modelpull_engines WHERE engine_id = %s", (engine_id,))
        return json.loads(rows[0][0]) if rows else None

    def save_engine(self, engine: dict[str, Any]) -> None:
        self._queue.put_nowait(("engine", engine, None))

    def delete_engine(self, engine_id: str) -> None:
        self._queue.put_nowait(("engine-removed", engine_id, None))

    # ---- change feed -------------------------------------------------------------------

    async def changes(self) -> AsyncIterator[Change]:
        psycopg, _ = _import_psycopg()
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                             connect_timeout=CONNECT_TIMEOUT)
            except psycopg.Error:
                self._listener_ok = False
                await asyncio.sleep(1)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                if not self._listener_ok:
                    log.info("the database's change feed is back; reading every job again")
                self._listener_ok = True
                yield Change("resync", "")  # what was sent while nobody listened is lost
                async for notification in conn.notifies():
                    change = self._parse(notification.payload)
                    if change is not None:
                        yield change
            except psycopg.Error as exc:
                if self._listener_ok:
                    log.warning("lost the database's change feed; reconnecting",
                                extra={"reason": self._explain(exc, "listen to")})
                self._listener_ok = False
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _parse(self, payload: str) -> Change | None:
        try:
            message = json.loads(payload)
        except ValueError:
            return None
        if message.get("f") == self.replica_id and message.get("k") != "control":
            return None  # our own write
        return Change(message.get("k", ""), message.get("id", ""), message.get("r"), message.get("o"))


def read_records(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(jobs, engines) of the replicas' store, read only (the CLI asks what is in use before it
    deletes a model). Nothing is created or migrated: a database without modelpull's tables reads
    as empty. A database that cannot be read is a StoreError: the CLI cannot tell, so it refuses."""
    psycopg, _ = _import_psycopg()
    store = PostgresJobStore(url)  # for its messages: no connection is opened by it
    with store._errors("read"):
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('modelpull_engines')").fetchone()[0] is None:
                return [], []
            jobs = [json.loads(r[0]) for r in conn.execute("SELECT record FROM modelpull_jobs")]
            engines = [json.loads(r[0]) for r in conn.execute("SELECT record FROM modelpull_engines")]
    return jobs, engines

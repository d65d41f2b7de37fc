"""The embedded job store: schema versions, claims and leases on one SQLite file."""
from __future__ import annotations

import json
import sqlite3

import pytest

from modelpull.server.store import SCHEMA_VERSION, SQLiteJobStore, StoreError


def record(job_id: str, status: str = "queued", source: str = "s", lock: str = "l", created: int = 1) -> dict:
    return {"id": job_id, "status": status, "created_at": created, "updated_at": created,
            "source_key": source, "lock_key": lock}


async def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteJobStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError) as caught:
        await SQLiteJobStore(path).open()
    message = str(caught.value)
    assert f"version {SCHEMA_VERSION + 1}, newer than this modelpull knows ({SCHEMA_VERSION})" in message
    assert "upgrade modelpull" in message


async def test_the_first_releases_file_is_migrated_and_its_jobs_kept(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # the tables as the first release made them
        db.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at INTEGER NOT NULL,
                               record TEXT NOT NULL);
            CREATE TABLE engines (engine_id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, record TEXT NOT NULL);
        """)
        db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)", ("old", "downloading", 1,
                                                             json.dumps(record("old", "downloading"))))
    store = SQLiteJobStore(path)
    await store.open()
    try:
        assert [r["id"] for r in await store.load_jobs()] == ["old"]
        assert [r["id"] for r in await store.claim(1, (), ())] == ["old"]  # an unfinished job is resumed
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_claims_take_one_job_per_lock_and_followers_of_a_moving_source(tmp_path):
    store = SQLiteJobStore(tmp_path / "state.db")
    await store.open()
    try:
        await store.add_job(record("a", source="s1", lock="l1", created=1))
        await store.add_job(record("b", source="s1", lock="l1", created=2))  # same source as a
        await store.add_job(record("c", source="s2", lock="l1", created=3))  # same files, other source
        await store.add_job(record("d", source="s3", lock="l3", created=4))
        assert [r["id"] for r in await store.claim(1, (), ())] == ["a", "b"]  # b follows a's transfer
        store.save_jobs([record("a", "downloading", "s1", "l1", 1), record("b", "downloading", "s1", "l1", 2)],
                        owned={"a", "b"})
        assert await store.claim(5, {"l1"}, {"s1"}) == [{**record("d", source="s3", lock="l3", created=4)}]
        owned, controls = await store.heartbeat()
        assert owned == {"a", "b", "d"} and controls == []
        store.save_jobs([record("a", "completed", "s1", "l1", 1)], owned=())  # released when it ends
        await store.flush()
        assert (await store.heartbeat())[0] == {"b", "d"}
    finally:
        await store.close()

"""The change feed: what other replicas write to the store, brought into this replica.

    store.changes()  ->  ChangeFeed.follow()  ->  the manager's view of jobs, the engine registry
                                              ->  SSE subscribers (the manager's fan-out)

A replica runs its own jobs and keeps them current itself; every other job it knows from the
store. PostgreSQL delivers each committed change with LISTEN/NOTIFY; after a reconnection the
feed says `resync` and everything is read again (notifications sent meanwhile are lost). An
embedded store (SQLite) has no other writers and its feed stays silent.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .store import Change

if TYPE_CHECKING:
    from .manager import DownloadManager

log = logging.getLogger("modelpull.server")


class ChangeFeed:
    """Applies the store's changes to one manager."""

    def __init__(self, manager: "DownloadManager") -> None:
        self.manager = manager

    async def follow(self) -> None:
        async for change in self.manager.store.changes():
            try:
                await self.apply(change)
            except Exception:  # one bad change must not end the feed
                log.exception("could not apply a change from the store", extra={"kind": change.kind})

    async def apply(self, change: Change) -> None:
        manager, store = self.manager, self.manager.store
        if change.kind == "job":
            record = change.record or await store.load_job(change.id)
            if record is not None:
                manager.job_changed_elsewhere(record)
        elif change.kind == "job-removed":
            manager.job_removed_elsewhere(change.id)
        elif change.kind == "engine":
            record = change.record or await store.load_engine(change.id)
            if record is not None:
                manager.engines.refresh(change.id, record)
        elif change.kind == "engine-removed":
            manager.engines.refresh(change.id, None)
        elif change.kind == "control":
            if change.owner == store.replica_id:
                await manager.heartbeat()
        elif change.kind == "resync":
            await self.resync()

    async def resync(self) -> None:
        """Read every job and engine again (after the feed was interrupted)."""
        manager, store = self.manager, self.manager.store
        records = await store.load_jobs()
        for record in records:
            manager.job_changed_elsewhere(record)
        stored = {r["id"] for r in records}
        for job_id in [i for i in manager.jobs if i not in stored]:
            manager.job_removed_elsewhere(job_id)
        engines = {e["engine_id"]: e for e in await store.load_engines()}
        for engine_id in {e["engine_id"] for e in manager.engines.all()} | set(engines):
            manager.engines.refresh(engine_id, engines.get(engine_id))

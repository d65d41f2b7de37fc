"""Routes for the models already in the server's models dir (not Kolosal's /models: a dashboard's
"delete" there unregisters an engine, and must never delete files).

    GET    /local-models                  what `modelpull list --json` prints, for this server's folders
    GET    /local-models/{id}             files, digests, GGUF / safetensors summary
    DELETE /local-models/{id}             200 {id, status: "removed", freed_bytes}; 409 while in use
    POST   /local-models/{id}/verify      202 a verification job; its progress and result are
                                          `verify` events on /events (and its own SSE stream)
    GET    /local-models/verifications/{job}          the job's state
    GET    /local-models/verifications/{job}/events   its events, until it ends

The server's inventory covers its own models dir only: the Hub cache and Ollama store the
manager downloads into (<home>/huggingface/hub, <home>/ollama) and its URL files.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .._errors import NotFound
from .._inventory import OK, UNCHECKED, InUse, Inventory, uses_from_records
from . import sse
from .errors import ApiError, not_found

PUBLISH_INTERVAL = 0.25
_FINAL = ("completed", "failed")


def server_inventory(manager: Any) -> Inventory:
    """The inventory of the server's models dir; what is in use comes from the manager's memory."""
    home: Path = manager.models_dir

    def uses() -> list:
        return uses_from_records([j.to_record() for j in manager.jobs.values()], manager.engines.all())

    roots = {"huggingface": [home / "huggingface" / "hub"], "ollama": [home / "ollama"], "url": [home]}
    return Inventory(home, roots=roots, uses=uses)


class Verification:
    """One verification job: bytes hashed so far, then each file's verdict."""

    _ids = itertools.count(1)

    def __init__(self, model_id: str, total: int) -> None:
        self.id = f"verify-{next(self._ids)}-{int(time.time())}"
        self.model_id = model_id
        self.status = "verifying"
        self.checked_bytes = 0
        self.total_bytes = total
        self.results: list[dict[str, Any]] = []
        self.message = "Verifying"
        self.listeners: set[asyncio.Queue] = set()

    def to_json(self) -> dict[str, Any]:
        percent = 100.0 if self.total_bytes == 0 else round(self.checked_bytes * 100 / self.total_bytes, 1)
        return {"id": self.id, "model_id": self.model_id, "status": self.status, "message": self.message,
                "checked_bytes": self.checked_bytes, "total_bytes": self.total_bytes,
                "percent": min(percent, 100.0), "results": self.results}


def build_local_router() -> APIRouter:
    router = APIRouter(tags=["local models"])

    def inventory_of(request: Request) -> Inventory:
        return server_inventory(request.app.state.manager)

    def verifications(request: Request) -> dict[str, Verification]:
        if not hasattr(request.app.state, "verifications"):
            request.app.state.verifications = {}
        return request.app.state.verifications

    async def model_or_404(inventory: Inventory, model_id: str) -> Any:
        try:
            return await asyncio.to_thread(inventory.get, model_id)
        except NotFound as exc:
            raise not_found(str(exc), "id", "local_model_not_found") from None

    @router.get("/local-models")
    async def list_local_models(request: Request) -> Response:
        """Every model in the server's folders, totals per source, free disk (as `modelpull list --json`)."""
        return JSONResponse(await asyncio.to_thread(inventory_of(request).summary))

    @router.get("/local-models/verifications/{job_id}")
    async def get_verification(job_id: str, request: Request) -> Response:
        job = verifications(request).get(job_id)
        if job is None:
            raise not_found(f"No verification '{job_id}'", "id", "verification_not_found")
        return JSONResponse(job.to_json())

    @router.get("/local-models/verifications/{job_id}/events")
    async def verification_events(job_id: str, request: Request) -> Response:
        job = verifications(request).get(job_id)
        if job is None:
            raise not_found(f"No verification '{job_id}'", "id", "verification_not_found")
        return StreamingResponse(_job_events(job), media_type="text/event-stream", headers=sse.HEADERS)

    @router.post("/local-models/{model_id:path}/verify", status_code=202)
    async def verify_local_model(model_id: str, request: Request) -> Response:
        """Start re-hashing the model's files; 202 with the job. Progress: `verify` events on /events."""
        inventory = inventory_of(request)
        model = await model_or_404(inventory, model_id)
        if model.status != "complete":
            raise ApiError(409, f"'{model_id}' is an unfinished download: nothing to verify yet", param="id",
                           code="model_incomplete")
        job = Verification(model.id, inventory.bytes_to_verify([model]))
        jobs = verifications(request)
        jobs[job.id] = job
        for old in [j for j in jobs.values() if j.status in _FINAL][:-20]:  # keep the last few finished
            del jobs[old.id]
        manager = request.app.state.manager
        task = asyncio.create_task(_run_verification(inventory, model, job, manager))
        request.app.state.__dict__.setdefault("verify_tasks", set()).add(task)
        task.add_done_callback(request.app.state.verify_tasks.discard)
        return JSONResponse(job.to_json(), status_code=202)

    @router.get("/local-models/{model_id:path}")
    async def show_local_model(model_id: str, request: Request) -> Response:
        inventory = inventory_of(request)
        model = await model_or_404(inventory, model_id)
        return JSONResponse(await asyncio.to_thread(inventory.show, model))

    @router.delete("/local-models/{model_id:path}")
    async def delete_local_model(model_id: str, request: Request) -> Response:
        """Delete the model's files (those no other model uses); 409 while a download or an engine uses it."""
        inventory = inventory_of(request)
        model = await model_or_404(inventory, model_id)
        try:
            freed = await asyncio.to_thread(inventory.remove, model)
        except InUse as exc:
            raise ApiError(409, str(exc), param="id", code="model_in_use") from None
        request.app.state.manager.engine_changed("local-model-removed", {"id": model.id, "freed_bytes": freed})
        return JSONResponse({"id": model.id, "status": "removed", "freed_bytes": freed,
                             "message": f"Removed {model.id}"})

    return router


async def _run_verification(inventory: Inventory, model: Any, job: Verification, manager: Any) -> None:
    def publish() -> None:
        data = job.to_json()
        manager.engine_changed("verify", data)
        for queue in list(job.listeners):
            queue.put_nowait(data)

    def on_bytes(count: int) -> None:  # from the hashing thread: a plain counter, read by the loop
        job.checked_bytes += count

    publish()
    work = asyncio.ensure_future(asyncio.to_thread(inventory.verify, [model], on_bytes))
    while not work.done():
        await asyncio.wait({work}, timeout=PUBLISH_INTERVAL)
        if not work.done():
            publish()
    try:
        checks = work.result()
    except Exception as exc:  # an unreadable store: the job fails with the reason
        job.status, job.message = "failed", f"Verification failed: {exc}"
    else:
        job.results = [c.to_json() for c in checks]
        bad = [c for c in checks if c.status not in (OK, UNCHECKED)]
        job.checked_bytes = job.total_bytes
        job.status = "completed"
        unchecked = sum(1 for c in checks if c.status == UNCHECKED)
        if bad:
            job.message = f"{len(bad)} of {len(checks)} files bad: " + ", ".join(
                f"{c.file.name} ({c.status})" for c in bad)
        else:
            job.message = f"{len(checks) - unchecked} of {len(checks)} files ok" + (
                f", {unchecked} without a known digest (size checked)" if unchecked else "")
    publish()


async def _job_events(job: Verification) -> AsyncIterator[str]:
    queue: asyncio.Queue = asyncio.Queue()
    job.listeners.add(queue)
    try:
        yield sse.frame(json.dumps(job.to_json()), None, "verify")
        while job.status not in _FINAL:
            data = await queue.get()
            yield sse.frame(json.dumps(data), None, "verify")
            if data["status"] in _FINAL:
                return
    finally:
        job.listeners.discard(queue)

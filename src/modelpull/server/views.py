"""The JSON shapes other systems' clients expect, built from a job: Kolosal's download progress
and AbstractCore's SSE items. Field names and types follow their documents exactly.
"""
from __future__ import annotations

import json
import time
from typing import Any

from . import jobs as J
from .jobs import Job, now_ms


def kolosal_progress(job: Job, now: int | None = None) -> dict[str, Any]:
    """`GET /download-progress/{id}`: the seed's shape, plus end_time / error_message / engine_creation."""
    now = now if now is not None else now_ms()
    start = job.started_at or job.created_at
    end = job.finished_at if job.final else None
    timing: dict[str, Any] = {
        "start_time": start,
        "elapsed_seconds": max(0, int(((end or now) - start) / 1000)),
    }
    # Always present, as the seed's clients read it: null until a speed is known (and while
    # queued, paused, failed or cancelled), 0 once completed.
    timing["estimated_remaining_seconds"] = _remaining_seconds(job)
    if end is not None:
        timing["end_time"] = end
    body: dict[str, Any] = {
        "model_id": job.id,
        "status": job.status,
        "url": job.shown_model,
        "local_path": job.local_path or "",
        "progress": {
            "downloaded_bytes": job.downloaded_bytes or 0,
            "total_bytes": job.total_bytes or 0,
            "percentage": float(round(job.percent or 0.0, 2)),
            "download_speed_bps": int(job.speed_bps or 0),
        },
        "timing": timing,
    }
    if job.status == J.FAILED:
        body["error_message"] = job.error_message or job.message
    if job.engine is not None and not job.final:
        body["engine_creation"] = {
            "engine_id": job.engine["engine_id"],
            "load_immediately": job.engine["load_immediately"],
            "main_gpu_id": job.engine["main_gpu_id"],
        }
    return body


def _remaining_seconds(job: Job) -> int | None:
    if job.status == J.COMPLETED:
        return 0
    if job.status in (J.DOWNLOADING, J.VERIFYING) and job.eta_seconds is not None:
        return int(job.eta_seconds)
    return None


def kolosal_status(engines: list[dict[str, Any]], healthy: bool = True) -> dict[str, Any]:
    """Kolosal's `/status` (and the fields its `/health` shares): the server and its engines,
    each `loaded` or `unloaded` (modelpull registers models; `loaded` = created with
    load_immediately and readable)."""
    listed = [{"engine_id": e["engine_id"], "status": "loaded" if e["status"] == "loaded" else "unloaded"}
              for e in engines]
    loaded = sum(1 for e in listed if e["status"] == "loaded")
    return {
        "status": "healthy" if healthy else "unavailable",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{now_ms() % 1000:03d}Z",
        "server": "modelpull",
        "node_manager": {
            "total_engines": len(listed),
            "loaded_engines": loaded,
            "unloaded_engines": len(listed) - loaded,
            "autoscaling": "disabled",
        },
        "engines": listed,
    }


def kolosal_downloads(jobs: list[Job]) -> bytes:
    """`GET /downloads` as JSON bytes: unfinished jobs, `total_active` at the top level and in `summary`.

    It is the route clients poll, with every job in it: each job's entry is serialised once and
    reused until the job changes or its elapsed second does.
    """
    now = now_ms()
    active = [j for j in jobs if not j.final]
    summary: dict[str, Any] = {
        "total_active": len(active),
        "startup_downloads": sum(1 for j in active if j.engine is not None),
        "regular_downloads": sum(1 for j in active if j.engine is None),
    }
    for status in J.ACTIVE_STATUSES:
        summary[status] = sum(1 for j in active if j.status == status)
    entries = b",".join(_cached_progress(j, now) for j in active)
    return b"".join((
        b'{"active_downloads":[', entries, b'],"total_active":', str(len(active)).encode(),
        b',"summary":', json.dumps(summary, separators=(",", ":")).encode(),
        b',"timestamp":', str(now).encode(), b"}",
    ))


def _cached_progress(job: Job, now: int) -> bytes:
    start = job.started_at or job.created_at
    key = (job.revision, max(0, int((now - start) / 1000)))
    cached = job.view_cache
    if cached is None or cached[0] != key:
        cached = job.view_cache = (key, json.dumps(kolosal_progress(job, now), separators=(",", ":")).encode())
    return cached[1]


def abstractcore_item(job: Job) -> dict[str, Any]:
    """One `data:` item of AbstractCore's download stream."""
    percent = job.percent
    if job.status == J.COMPLETED:
        percent = 100.0
    return {
        "status": job.phase,
        "message": job.message,
        "percent": percent,
        "downloaded_bytes": job.downloaded_bytes,
        "total_bytes": job.total_bytes,
    }


def abstractcore_end(job: Job) -> dict[str, Any]:
    """The closing item: `{"done": true}` or `{"error": "..."}`."""
    if job.status == J.COMPLETED:
        return {"done": True}
    if job.status == J.CANCELLED:
        return {"error": "Download cancelled"}
    return {"error": job.error_message or job.message}


def engine_download_started(kind: str, job: Job) -> dict[str, Any]:
    """POST /engines 202: the download that will create the engine has started (or was running)."""
    endpoint = f"/download-progress/{job.id}"
    if kind == "in_progress":
        return {
            "message": f"Model download already in progress. Use {endpoint} to check status.",
            "engine_id": job.id,
            "download_status": "in_progress",
            "download_url": job.shown_model,
            "progress_endpoint": endpoint,
        }
    resumed = "resume " if kind == "resuming" else ""
    return {
        "message": f"Model download {resumed}started successfully. Engine will be created once download completes.",
        "engine_id": job.id,
        "download_status": kind,
        "download_url": job.shown_model,
        "local_path": job.local_path,
        "progress_endpoint": endpoint,
        "note": "Check download progress using the progress_endpoint. Engine creation will be deferred until "
                "download completes.",
    }


def engine_created(engine: dict[str, Any], from_url: bool) -> dict[str, Any]:
    """POST /engines 201: Kolosal's body, plus what modelpull read from the file."""
    body = {
        "engine_id": engine["engine_id"],
        "model_path": engine["model_path"],
        "status": engine["status"],
        "load_immediately": engine["load_immediately"],
        "loading_parameters": engine["loading_parameters"],
        "main_gpu_id": engine["main_gpu_id"],
        "message": "Engine added successfully",
    }
    if from_url:
        body["download_info"] = {
            "source_url": engine["model_path"],
            "local_path": engine["local_path"],
            "was_downloaded": True,
        }
    body["model_info"] = engine["model_info"]
    return body

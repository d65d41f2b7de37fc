"""The HTTP face of the download manager: thin routes, each also under /v1.

    create_app(settings) -> FastAPI
        lifespan: SQLite store -> engine registry -> download manager (resumes unfinished jobs)
        Gatekeeper (pure ASGI): API key, body size limit, access log with secrets redacted, counts
        routes: Kolosal's (/engines, /download-progress, /downloads...), modelpull's (/downloads,
                /downloads/{id}/events, /events), AbstractCore's (/api/models/...), /health, /metrics

Every error is Kolosal's shape (errors.py); the routes only parse, call the manager, and shape.
See docs/server-api.md for the contract.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import time
from typing import Any, AsyncIterator
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from .._settings import Settings
from . import sse, views
from .engines import EngineRegistry, parse_dashboard_model, parse_engine_request
from .errors import ApiError, bad_request, not_found
from .local_models import build_local_router
from .logs import SECRETS, silence_uvicorn_access_log
from .manager import DownloadManager
from .openapi import install_docs
from .openapi import is_public_path as is_docs_path
from .security import api_key_matches, redact_query, valid_id
from .store import open_store

log = logging.getLogger("modelpull.server")
access_log = logging.getLogger("modelpull.access")

MAX_BODY_BYTES = 64 * 1024
UNPROTECTED_PATHS = frozenset({"/health", "/v1/health"})


class BodyTooLarge(Exception):
    pass


class Gatekeeper:
    """API key, body size limit, access log and request counts, around every HTTP request."""

    def __init__(self, app: Any, settings: Settings, counts: collections.Counter) -> None:
        self.app = app
        self.api_key = settings.api_key
        self.counts = counts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}
        query = scope.get("query_string", b"").decode("latin-1")

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, query)
            if refusal is not None:
                await _send_error(send_wrapper, refusal)
                return
            received = 0

            async def receive_wrapper() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > MAX_BODY_BYTES:
                        raise BodyTooLarge()
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.counts[(scope["method"], status["code"])] += 1
            access_log.info(
                "%s %s %s", scope["method"], scope["path"], status["code"],
                extra={
                    "method": scope["method"], "path": scope["path"], "query": redact_query(query),
                    "status": status["code"], "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )

    def _refusal(self, scope: dict, query: str) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > MAX_BODY_BYTES
            except ValueError:
                return bad_request("Invalid Content-Length header", None, "invalid_content_length")
            if too_big:
                return _too_large()
        if self.api_key and not _public(scope["path"]):
            # ?api_key= only where an EventSource (which cannot send headers) needs it.
            query_key = None
            if scope["method"] == "GET" and _is_event_stream(scope["path"]):
                query_key = (parse_qs(query).get("api_key") or [None])[0]
            if not api_key_matches(self.api_key, headers.get("authorization"), query_key):
                return ApiError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'",
                                code="invalid_api_key")
        return None


_EVENT_STREAM = re.compile(r"^(/v1)?(/events|/downloads/[^/]+/events|/api/models/download)$")


def _is_event_stream(path: str) -> bool:
    """The GET routes answering Server-Sent Events (what a browser's EventSource opens)."""
    return bool(_EVENT_STREAM.match(path))


def _public(path: str) -> bool:
    """Paths served without the API key: /health, the API docs (the key is entered on the page),
    and the web page's shell (it asks for the key)."""
    if path in UNPROTECTED_PATHS or is_docs_path(path):
        return True
    try:
        from .web import is_public_path
    except ImportError:
        return False
    return is_public_path(path)


def _too_large() -> ApiError:
    return ApiError(413, f"The request body is larger than {MAX_BODY_BYTES // 1024} KiB", code="body_too_large")


async def _send_error(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_json(request: Request) -> Any:
    """The request's JSON body; ApiError 400/413 in Kolosal's shape when it is not usable JSON."""
    try:
        raw = await request.body()
    except BodyTooLarge:
        raise _too_large() from None
    if not raw.strip():
        raise bad_request("The request body is empty: send a JSON object", None, "empty_body")

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed in JSON")

    try:
        return json.loads(raw, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_request(f"Invalid JSON: {exc}", None, "invalid_json") from None


def _object(body: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", None, "invalid_json")
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})", unknown[0],
                          "unknown_field")
    return body


def _event_stream(content: AsyncIterator[str | bytes], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return StreamingResponse(content, status_code=status, media_type="text/event-stream",
                             headers={**sse.HEADERS, **(headers or {})})


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id")
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def _json(data: Any, status: int = 200) -> JSONResponse:
    """A JSON answer without FastAPI's encoder pass (data is already JSON-ready; it is the hot path)."""
    return JSONResponse(data, status_code=status)


def _manager(request: Request) -> DownloadManager:
    return request.app.state.manager


_DOWNLOAD_BODY = {
    "type": "object",
    "required": ["model"],
    "additionalProperties": False,
    "properties": {
        "provider": {"type": "string", "enum": ["url", "huggingface", "hf", "mlx", "ollama"]},
        "model": {"type": "string"},
        "options": {"type": "object"},
        "token": {"type": ["string", "null"], "description": "used for the download, never stored or echoed"},
        "id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "base_url": {"type": ["string", "null"]},
    },
}
_ENGINE_BODY = {
    "type": "object",
    "required": ["engine_id", "model_path"],
    "additionalProperties": False,
    "properties": {
        "engine_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "model_path": {"type": "string", "description": "URL, hf:/mlx:/ollama: reference, or local file"},
        "load_immediately": {"type": "boolean", "default": True},
        "main_gpu_id": {"type": "integer", "minimum": -1, "maximum": 15, "default": 0},
        "loading_parameters": {"type": "object"},
        "token": {"type": ["string", "null"]},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-fA-F]{64}$"},
    },
}
_MODELS_BODY = {
    "type": "object",
    "required": ["model_id", "model_path"],
    "additionalProperties": False,
    "properties": {
        "model_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "model_path": {"type": "string", "description": "URL, hf:/mlx:/ollama: reference, or local file"},
        "model_type": {"type": "string"}, "model_inference": {"type": "string"},
        "model_load": {"type": "boolean"}, "model_memory": {"type": "boolean"}, "model_perform": {"type": "boolean"},
        "model_gpu": {"type": "integer", "minimum": -1, "maximum": 15},
        "model_context": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "model_batch": {"type": "integer", "minimum": 0, "maximum": 8192},
        "model_layer": {"type": "integer", "minimum": 0, "maximum": 1000},
        "model_parallel": {"type": "integer", "minimum": 0, "maximum": 16},
    },
}
_RESUME_BODY = {"type": "object", "additionalProperties": False, "properties": {"token": {"type": ["string", "null"]}}}
_PULL_BODY = {
    "type": "object",
    "required": ["provider", "model"],
    "additionalProperties": False,
    "properties": {"provider": {"type": "string"}, "model": {"type": "string"},
                   "auth_token": {"type": ["string", "null"]}, "token": {"type": ["string", "null"]},
                   "base_url": {"type": ["string", "null"]}},
}


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def build_router() -> APIRouter:
    router = APIRouter()

    # ---- Kolosal: engines -----------------------------------------------------------

    @router.post("/engines", status_code=201, openapi_extra=_body_doc(_ENGINE_BODY), tags=["engines"])
    async def add_engine(request: Request) -> Response:
        """Register an engine: at once for a file on disk (201), after its download otherwise (202)."""
        return await _add_engine(request, parse_engine_request(await read_json(request)))

    @router.post("/models", openapi_extra=_body_doc(_MODELS_BODY), tags=["engines"])
    async def add_model(request: Request) -> Response:
        """The Kolosal dashboard's "Add Model": `POST /engines` under its later name and fields."""
        return await _add_engine(request, parse_dashboard_model(await read_json(request)))

    @router.get("/status", tags=["engines"])
    async def status(request: Request) -> Response:
        """Kolosal's server status: its engines and their counts (the dashboard asks before adding)."""
        manager = _manager(request)
        return _json(views.kolosal_status(manager.engines.all(), manager.store.healthy))

    @router.get("/engines", tags=["engines"])
    async def list_engines(request: Request) -> Response:
        engines = _manager(request).engines.all()
        return _json({"engines": engines, "total_count": len(engines)})

    @router.get("/engines/{engine_id}", tags=["engines"])
    async def get_engine(engine_id: str, request: Request) -> Response:
        _check_engine_id(engine_id)
        manager = _manager(request)
        engine = manager.engines.get(engine_id)
        if engine is None:
            job = manager.jobs.get(engine_id)
            if job is not None and job.engine is not None and not job.final:
                raise not_found(f"Engine '{engine_id}' is not created yet: its model is still downloading. "
                                f"See /download-progress/{engine_id}", "engine_id", "engine_pending")
            raise not_found(f"Engine '{engine_id}' not found", "engine_id", "engine_not_found")
        return _json(engine)

    @router.delete("/engines/{engine_id}", tags=["engines"])
    @router.delete("/models/{engine_id}", tags=["engines"])
    async def remove_engine(engine_id: str, request: Request) -> Response:
        """Forget an engine (the model file stays on disk)."""
        _check_engine_id(engine_id)
        if _manager(request).engines.remove(engine_id) is None:
            raise not_found("Engine not found or could not be removed", "engine_id", "engine_not_found")
        return _json({"engine_id": engine_id, "status": "removed", "message": "Engine removed successfully"})

    # ---- Kolosal: downloads ---------------------------------------------------------

    @router.get("/download-progress/{model_id}", tags=["kolosal downloads"])
    async def download_progress(model_id: str, request: Request) -> Response:
        return _json(views.kolosal_progress(_manager(request).get(model_id)))

    @router.get("/downloads", tags=["kolosal downloads"])
    async def list_downloads(request: Request) -> Response:
        return Response(views.kolosal_downloads(list(_manager(request).jobs.values())),
                        media_type="application/json")

    @router.post("/downloads/cancel", tags=["kolosal downloads"])
    @router.delete("/downloads", tags=["kolosal downloads"])
    async def cancel_all(request: Request) -> Response:
        cancelled, skipped, total = await _manager(request).cancel_all()
        return _json({
            "success": True,
            "message": "Bulk download cancellation completed",
            "summary": {"total_downloads": total, "successful_cancellations": len(cancelled),
                        "failed_cancellations": len(skipped)},
            "cancelled_downloads": cancelled,
            "failed_cancellations": skipped,
            "timestamp": int(time.time() * 1000),
        })

    @router.delete("/downloads/{model_id}", tags=["kolosal downloads"])
    @router.post("/downloads/{model_id}/cancel", tags=["kolosal downloads"])
    async def cancel(model_id: str, request: Request, keep_partial: bool = False) -> Response:
        """Cancel a download; its partial data is deleted unless `?keep_partial=true`."""
        previous = await _manager(request).cancel(model_id, keep_partial=keep_partial)
        return _json({"success": True, "message": "Download cancelled successfully", "model_id": model_id,
                "previous_status": previous, "timestamp": int(time.time() * 1000)})

    @router.post("/downloads/{model_id}/dismiss", tags=["downloads"])
    async def dismiss(model_id: str, request: Request) -> Response:
        """Forget a finished (completed, failed or cancelled) download; its files stay on disk."""
        _manager(request).dismiss(model_id)
        return _json({"success": True, "message": "Download dismissed", "model_id": model_id})

    @router.post("/downloads/{model_id}/pause", tags=["kolosal downloads"])
    async def pause(model_id: str, request: Request) -> Response:
        changed = await _manager(request).pause(model_id)
        message = "Download paused; partial data kept" if changed else "Download was already paused"
        return _json({"success": True, "message": message, "model_id": model_id})

    @router.post("/downloads/{model_id}/resume", tags=["kolosal downloads"],
                 openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": _RESUME_BODY}}}})
    async def resume(model_id: str, request: Request) -> Response:
        token = None
        if (await request.body()).strip():
            body = _object(await read_json(request), {"token"})
            token = body.get("token")
            if token is not None and not isinstance(token, str):
                raise bad_request("'token' must be a string", "token", "invalid_parameter")
        changed = await _manager(request).resume(model_id, token)
        message = "Download resumed" if changed else "Download is already queued or running"
        return _json({"success": True, "message": message, "model_id": model_id})

    # ---- modelpull: jobs and streams ------------------------------------------------

    @router.post("/downloads", status_code=202, openapi_extra=_body_doc(_DOWNLOAD_BODY), tags=["downloads"])
    async def create_download(request: Request) -> Response:
        """Start a download job (or follow the same source already downloading)."""
        body = _object(await read_json(request), {"provider", "model", "options", "token", "id", "base_url"})
        job = await _manager(request).submit(
            body.get("provider"), body.get("model"), body.get("options"), body.get("token"), body.get("id"),
            body.get("base_url"),
        )
        return JSONResponse(job.to_json(), status_code=202, headers={"Location": f"/downloads/{job.id}"})

    @router.get("/downloads/{model_id}", tags=["downloads"])
    async def get_download(model_id: str, request: Request) -> Response:
        return _json(_manager(request).get(model_id).to_json())

    @router.get("/downloads/{model_id}/events", tags=["downloads"])
    async def download_events(model_id: str, request: Request) -> Response:
        """Server-Sent Events of one job, honouring Last-Event-ID; ends at a final state."""
        manager = _manager(request)
        job = manager.get(model_id)
        last_event_id = _last_event_id(request)
        if last_event_id is not None and job.final and last_event_id >= job.event_id:
            return Response(status_code=204)  # the client saw the end: an EventSource stops here
        manager.check_stream_capacity()
        return _event_stream(sse.job_events(manager, job, last_event_id))

    @router.get("/events", tags=["downloads"])
    async def all_events(request: Request) -> Response:
        """Every job's and engine's changes, after a snapshot (the web page's feed)."""
        manager = _manager(request)
        manager.check_stream_capacity()
        return _event_stream(sse.all_events(manager))

    # ---- AbstractCore ---------------------------------------------------------------

    @router.get("/api/models/download", tags=["abstractcore"])
    async def abstractcore_download(
        request: Request, provider: str | None = None, model: str | None = None, token: str | None = None,
        base_url: str | None = None,
    ) -> Response:
        """AbstractCore's EventSource route: progress items, then {"done": true} or {"error": ...}."""
        return await _abstractcore_stream(request, provider, model, token, base_url)

    @router.post("/api/models/pull", openapi_extra=_body_doc(_PULL_BODY), tags=["abstractcore"])
    async def abstractcore_pull(request: Request) -> Response:
        body = _object(await read_json(request), {"provider", "model", "auth_token", "token", "base_url"})
        for name in ("provider", "model"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise bad_request(f"'{name}' is required and must be a string", name, f"missing_{name}")
        token = body.get("auth_token") or body.get("token")
        return await _abstractcore_stream(request, body["provider"], body["model"], token, body.get("base_url"))

    return router


async def _add_engine(request: Request, engine_request: Any) -> Response:
    result = await _manager(request).add_engine(engine_request)
    if result.kind == "created":
        from_url = engine_request.model_path.lower().startswith(("http://", "https://"))
        return JSONResponse(views.engine_created(result.engine, from_url), status_code=201)
    return JSONResponse(views.engine_download_started(result.kind, result.job), status_code=202)


async def _abstractcore_stream(request: Request, provider: Any, model: Any, token: Any, base_url: Any) -> Response:
    """AbstractCore's stream: a new job, or the job a reconnecting client names in Last-Event-ID.
    A refusal is an `{"error": ...}` event: an EventSource cannot read an error body."""
    manager = _manager(request)
    position = sse.abstractcore_position(request.headers.get("last-event-id"))
    try:
        if position is not None:
            job_id, part = position
            job = manager.jobs.get(job_id)
            if part == sse.END or job is None:
                return Response(status_code=204)  # the client saw the end: an EventSource stops here
            manager.check_stream_capacity()
        else:
            manager.check_stream_capacity()
            job = await manager.submit(provider, model, None, token, None, base_url)
    except ApiError as exc:
        return _event_stream(sse.error_events(exc.message))
    return _event_stream(sse.abstractcore_events(manager, job), headers={"X-Download-Id": job.id})


def _check_engine_id(engine_id: str) -> None:
    if not valid_id(engine_id):
        raise bad_request("Invalid engine id in the URL: use 1 to 128 characters from A-Z a-z 0-9 . _ : -",
                          "engine_id", "invalid_engine_id")


def _metrics(manager: DownloadManager, http_counts: collections.Counter) -> str:
    counts = manager.counts()
    lines = [
        "# HELP modelpull_jobs Jobs known to the server, by status.",
        "# TYPE modelpull_jobs gauge",
    ]
    for status in ("queued", "downloading", "paused", "verifying", "completed", "failed", "cancelled"):
        lines.append(f'modelpull_jobs{{status="{status}"}} {counts.get(status, 0)}')
    lines += [
        "# HELP modelpull_jobs_active Transfers running now.",
        "# TYPE modelpull_jobs_active gauge",
        f"modelpull_jobs_active {manager.running_transfers}",
        "# HELP modelpull_jobs_queued Jobs waiting for a free slot.",
        "# TYPE modelpull_jobs_queued gauge",
        f"modelpull_jobs_queued {counts.get('queued', 0)}",
        "# HELP modelpull_downloaded_bytes_total Bytes received from sources.",
        "# TYPE modelpull_downloaded_bytes_total counter",
        f"modelpull_downloaded_bytes_total {manager.downloaded_bytes_total}",
        "# HELP modelpull_jobs_completed_total Jobs that completed.",
        "# TYPE modelpull_jobs_completed_total counter",
        f"modelpull_jobs_completed_total {manager.completed_total}",
        "# HELP modelpull_job_failures_total Jobs that failed, by reason.",
        "# TYPE modelpull_job_failures_total counter",
    ]
    for reason, count in sorted(manager.failures.items()):
        lines.append(f'modelpull_job_failures_total{{reason="{_label(reason)}"}} {count}')
    lines += [
        "# HELP modelpull_engines Engines registered.",
        "# TYPE modelpull_engines gauge",
        f"modelpull_engines {len(manager.engines.all())}",
        "# HELP modelpull_event_streams Server-Sent Event streams open now.",
        "# TYPE modelpull_event_streams gauge",
        f"modelpull_event_streams {manager.fanout.open_streams}",
        "# HELP modelpull_event_stream_resyncs_total Times a stream fell behind and was sent the current state.",
        "# TYPE modelpull_event_stream_resyncs_total counter",
        f"modelpull_event_stream_resyncs_total {manager.fanout.resyncs}",
        "# HELP modelpull_http_requests_total HTTP requests answered.",
        "# TYPE modelpull_http_requests_total counter",
    ]
    for (method, status), count in sorted(http_counts.items()):
        lines.append(f'modelpull_http_requests_total{{method="{_label(method)}",status="{status}"}} {count}')
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The server's ASGI app; state lives from startup to shutdown (lifespan)."""
    settings = settings or Settings.from_env()
    http_counts: collections.Counter = collections.Counter()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        silence_uvicorn_access_log()
        store = open_store(settings.database_url, settings.lease_seconds)
        await store.open()
        holder: dict[str, DownloadManager] = {}
        engines = EngineRegistry(store, lambda kind, data: holder["m"].engine_changed(kind, data)
                                 if "m" in holder else None)
        await engines.load()
        manager = DownloadManager(settings, store, engines)
        holder["m"] = manager
        app.state.manager = manager
        SECRETS.add(settings.api_key)
        await manager.start()
        log.info("modelpull server ready", extra={
            "models_dir": str(manager.models_dir), "database": store.description,
            "replica_id": store.replica_id, "max_active_jobs": settings.max_active_jobs,
            "api_key": bool(settings.api_key), "allow_private_urls": settings.allow_private_urls,
        })
        try:
            yield
        finally:
            await manager.close()
            await store.close()
            SECRETS.discard(settings.api_key)

    app = FastAPI(
        title="modelpull",
        version=__version__,
        description="Model downloads as jobs: Kolosal-compatible REST, SSE progress, AbstractCore's stream. "
                    "See docs/server-api.md.",
        lifespan=lifespan,
        docs_url=None,  # openapi.install_docs serves it from local files
        redoc_url=None,
    )
    router = build_router()
    app.include_router(router)
    app.include_router(router, prefix="/v1", include_in_schema=False)
    local_router = build_local_router()
    app.include_router(local_router)
    app.include_router(local_router, prefix="/v1", include_in_schema=False)

    @app.get("/health", tags=["operations"])
    @app.get("/v1/health", tags=["operations"])
    async def health(request: Request) -> Response:
        """Liveness (no API key needed): Kolosal's fields (status "healthy", node_manager, engines),
        then modelpull's. 503 with status "unavailable" when the job store cannot be reached."""
        manager = _manager(request)
        counts = manager.counts()
        healthy = manager.store.healthy
        body = views.kolosal_status(manager.engines.all(), healthy)
        body.update({"version": __version__, "database": "ok" if healthy else "unreachable",
                     "replica_id": manager.store.replica_id, "active": manager.running_transfers,
                     "queued": counts.get("queued", 0), "uptime_seconds": round(time.time() - manager.started, 1)})
        return _json(body, 200 if healthy else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(_metrics(_manager(request), http_counts),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        error = _too_large()
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        location = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
        param = ".".join(location) or None
        message = f"Invalid request: {first.get('msg', 'validation failed')}" + (f" ('{param}')" if param else "")
        error = bad_request(message, param, "invalid_parameter")
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = not_found(f"No route {request.method} {request.url.path}", None, "route_not_found")
        elif exc.status_code == 405:
            allow = ", ".join(_allowed_methods(request.app, request.url.path))
            if request.method == "OPTIONS":  # what may be done here (a CORS preflight never gets here)
                return Response(status_code=204, headers={"Allow": allow})
            error = ApiError(405, f"Method {request.method} is not allowed on {request.url.path} (allowed: {allow})",
                             code="method_not_allowed", headers={"Allow": allow})
        else:
            error = ApiError(exc.status_code, str(exc.detail))
        return JSONResponse(error.body(), status_code=error.status,
                            headers=error.headers or getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        error = ApiError(500, "Internal server error; the server log has the details", code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    install_docs(app, settings)

    try:
        from .web import mount_web
    except ImportError:
        pass
    else:
        mount_web(app)

    app.add_middleware(Gatekeeper, settings=settings, counts=http_counts)
    if settings.cors_origins:
        # Outside the Gatekeeper: a browser's preflight carries no API key, and a 401 must still
        # carry the CORS headers for the page to read it.
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Location", "X-Download-Id", "Retry-After"], max_age=600,
        )
    return app


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route answers at `path` (Starlette's own 405 names only the first route's)."""
    methods = {"OPTIONS"}
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
        if any(route.matches(scope)[0] is Match.FULL for route in app.router.routes):
            methods.add(method)
    if path.removeprefix("/v1") == "/downloads/cancel":
        # The literal route, as the API documents it (GET or DELETE there would reach the job
        # route with the id "cancel").
        methods &= {"OPTIONS", "POST"}
    return sorted(methods)


__all__ = ["create_app", "MAX_BODY_BYTES"]

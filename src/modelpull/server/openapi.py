"""The API's contract as an OpenAPI document, and the docs page that shows it, both served offline.

    install_docs(app, settings)
        GET /openapi.json   FastAPI's paths and parameters, with the truth added: every status a
                            route answers (errors in Kolosal's shape), response schemas, SSE routes
                            as text/event-stream, the /v1 aliases, the seeds' JSON as examples,
                            the API key as a security scheme when one is configured
        GET /docs           Swagger UI from the fastapi-offline package's files (no CDN)

The routes stay thin (app.py); what they answer is written down once, here, and checked by
schemathesis in tests/server/test_openapi.py.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .._settings import Settings
from .security import ID_PATTERN

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
PUBLIC_PATHS = frozenset({DOCS_PATH, "/openapi.json"})


def is_public_path(path: str) -> bool:
    """The docs page, its assets and the document: readable without the API key (no secrets in
    them; the key is entered on the page, under "Authorize")."""
    return path in PUBLIC_PATHS or path.startswith(ASSETS_PATH + "/")


def _nullable(kind: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(kind, str):
        return {"type": [kind, "null"]}
    return {"anyOf": [kind, {"type": "null"}]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_STATUS = {"type": "string", "enum": ["queued", "downloading", "paused", "verifying", "completed", "failed", "cancelled"]}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NUM = {"type": "number"}

_QWEN_URL = ("https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/"
             "qwen2.5-0.5b-instruct-q4_k_m.gguf")

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {"message": _STR, "type": _STR, "param": _nullable("string"), "code": _nullable("string")},
        }},
        "example": {"error": {"message": "No download found for model ID: my-model", "type": "not_found_error",
                              "param": "model_id", "code": "download_not_found"}},
    },
    "Job": {
        "type": "object",
        "required": ["id", "provider", "model", "options", "status", "message", "percent", "downloaded_bytes",
                     "total_bytes", "local_path", "error_code", "error_message", "created_at", "updated_at",
                     "event_id"],
        "properties": {
            "id": _STR, "provider": _STR, "model": _STR, "options": {"type": "object"}, "status": _STATUS,
            "message": _STR, "percent": _nullable("number"), "downloaded_bytes": _nullable("integer"),
            "total_bytes": _nullable("integer"), "speed_bps": _nullable("number"), "eta_seconds": _nullable("number"),
            "files_completed": _nullable("integer"), "files_total": _nullable("integer"),
            "current_file": _nullable("string"), "local_path": _nullable("string"), "error_code": _nullable("string"),
            "error_message": _nullable("string"), "engine_id": _nullable("string"),
            "shared_with": {"type": "array", "items": _STR}, "created_at": _INT, "started_at": _nullable("integer"),
            "finished_at": _nullable("integer"), "updated_at": _INT, "event_id": _INT,
        },
    },
    "Engine": {
        "type": "object",
        "required": ["engine_id", "status", "model_path"],
        "properties": {
            "engine_id": _STR, "status": {"type": "string", "enum": ["loaded", "created", "failed"]},
            "model_path": _STR, "local_path": _nullable("string"), "load_immediately": _BOOL, "main_gpu_id": _INT,
            "loading_parameters": {"type": "object"}, "download_id": _nullable("string"),
            "model_info": _nullable("object"), "error_message": _nullable("string"), "created_at": _INT,
        },
    },
    "EngineList": {
        "type": "object", "required": ["engines", "total_count"],
        "properties": {"engines": {"type": "array", "items": _ref("Engine")}, "total_count": _INT},
    },
    "EngineCreated": {
        "type": "object",
        "required": ["engine_id", "model_path", "status", "load_immediately", "loading_parameters", "main_gpu_id",
                     "message"],
        "properties": {
            "engine_id": _STR, "model_path": _STR, "status": _STR, "load_immediately": _BOOL,
            "loading_parameters": {"type": "object"}, "main_gpu_id": _INT, "message": _STR,
            "download_info": {"type": "object", "properties": {
                "source_url": _STR, "local_path": _STR, "was_downloaded": _BOOL}},
            "model_info": _nullable("object"),
        },
    },
    "EngineDownloadStarted": {
        "type": "object",
        "required": ["message", "engine_id", "download_status", "download_url", "progress_endpoint"],
        "properties": {
            "message": _STR, "engine_id": _STR,
            "download_status": {"type": "string", "enum": ["started", "resuming", "in_progress"]},
            "download_url": _STR, "local_path": _nullable("string"), "progress_endpoint": _STR, "note": _STR,
        },
        "example": {  # the seed's "Response for Started Download"
            "message": "Model download started successfully. Engine will be created once download completes.",
            "engine_id": "my-model", "download_status": "started",
            "download_url": "https://huggingface.co/model/file.gguf", "local_path": "./models/file.gguf",
            "progress_endpoint": "/download-progress/my-model",
            "note": "Check download progress using the progress_endpoint. Engine creation will be deferred until "
                    "download completes.",
        },
    },
    "EngineRemoved": {
        "type": "object", "required": ["engine_id", "status", "message"],
        "properties": {"engine_id": _STR, "status": _STR, "message": _STR},
    },
    "DownloadProgress": {
        "type": "object",
        "required": ["model_id", "status", "url", "local_path", "progress", "timing"],
        "properties": {
            "model_id": _STR, "status": _STATUS, "url": _STR, "local_path": _STR,
            "progress": {"type": "object",
                         "required": ["downloaded_bytes", "total_bytes", "percentage", "download_speed_bps"],
                         "properties": {"downloaded_bytes": _INT, "total_bytes": _INT, "percentage": _NUM,
                                        "download_speed_bps": _INT}},
            "timing": {"type": "object", "required": ["start_time", "elapsed_seconds", "estimated_remaining_seconds"],
                       "properties": {"start_time": _INT, "elapsed_seconds": _INT,
                                      "estimated_remaining_seconds": _nullable("integer"), "end_time": _INT}},
            "error_message": _STR,
            "engine_creation": {"type": "object", "properties": {
                "engine_id": _STR, "load_immediately": _BOOL, "main_gpu_id": _INT}},
        },
        "example": {  # the seed's
            "model_id": "my-model", "status": "downloading", "url": "https://huggingface.co/model/file.gguf",
            "local_path": "./models/file.gguf",
            "progress": {"downloaded_bytes": 1048576, "total_bytes": 10485760, "percentage": 10.0,
                         "download_speed_bps": 524288},
            "timing": {"start_time": 1703097600000, "elapsed_seconds": 10, "estimated_remaining_seconds": 90},
        },
    },
    "DownloadList": {
        "type": "object", "required": ["active_downloads", "total_active", "summary", "timestamp"],
        "properties": {"active_downloads": {"type": "array", "items": _ref("DownloadProgress")},
                       "total_active": _INT, "summary": {"type": "object"}, "timestamp": _INT},
        "example": {
            "active_downloads": [{
                "model_id": "my-model", "status": "downloading", "url": "https://huggingface.co/model/file.gguf",
                "local_path": "./models/file.gguf",
                "progress": {"downloaded_bytes": 1048576, "total_bytes": 10485760, "percentage": 10.0,
                             "download_speed_bps": 524288},
                "timing": {"start_time": 1703097600000, "elapsed_seconds": 10, "estimated_remaining_seconds": 90},
            }],
            "total_active": 1, "summary": {"total_active": 1}, "timestamp": 1703097610000,
        },
    },
    "Cancelled": {
        "type": "object", "required": ["success", "message", "model_id", "previous_status", "timestamp"],
        "properties": {"success": _BOOL, "message": _STR, "model_id": _STR, "previous_status": _STR, "timestamp": _INT},
    },
    "CancelledAll": {
        "type": "object",
        "required": ["success", "message", "summary", "cancelled_downloads", "failed_cancellations", "timestamp"],
        "properties": {"success": _BOOL, "message": _STR, "summary": {"type": "object"},
                       "cancelled_downloads": {"type": "array"}, "failed_cancellations": {"type": "array"},
                       "timestamp": _INT},
    },
    "Control": {
        "type": "object", "required": ["success", "message", "model_id"],
        "properties": {"success": _BOOL, "message": _STR, "model_id": _STR},
    },
    "Status": {
        "type": "object", "required": ["status", "timestamp", "server", "node_manager", "engines"],
        "properties": {
            "status": {"type": "string", "enum": ["healthy", "unavailable"]}, "timestamp": _STR, "server": _STR,
            "node_manager": {"type": "object",
                             "required": ["total_engines", "loaded_engines", "unloaded_engines", "autoscaling"],
                             "properties": {"total_engines": _INT, "loaded_engines": _INT, "unloaded_engines": _INT,
                                            "autoscaling": _STR}},
            "engines": {"type": "array", "items": {
                "type": "object", "required": ["engine_id", "status"],
                "properties": {"engine_id": _STR, "status": {"type": "string", "enum": ["loaded", "unloaded"]}}}},
        },
    },
}
SCHEMAS["AbstractCoreItem"] = {
    "description": "A progress item, then the closing `{\"done\": true}` or `{\"error\": \"...\"}`",
    "oneOf": [
        {"type": "object", "required": ["status", "message", "percent", "downloaded_bytes", "total_bytes"],
         "properties": {"status": _STR, "message": _STR, "percent": _nullable("number"),
                        "downloaded_bytes": _nullable("integer"), "total_bytes": _nullable("integer")}},
        {"type": "object", "required": ["done"], "additionalProperties": False, "properties": {"done": {"const": True}}},
        {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {"error": _STR}},
    ],
}
SCHEMAS["Health"] = {
    "allOf": [_ref("Status"), {"type": "object", "required": ["version", "active", "queued", "uptime_seconds"],
                               "properties": {"version": _STR, "database": _STR, "replica_id": _STR,
                                              "active": _INT, "queued": _INT, "uptime_seconds": _NUM}}],
}

_ERROR_TEXT = {
    400: "Malformed JSON, an ill-typed or unknown field, a bad id (`param` names it)",
    401: "Missing or wrong API key (`WWW-Authenticate: Bearer`)",
    404: "Unknown id",
    409: "The id is taken",
    413: "Body larger than 64 KiB",
    422: "A URL or reference that is malformed or refused by the URL policy, before any job exists",
    429: "Too many queued jobs (`Retry-After`)",
    503: "The job store is unreachable, or too many event streams are open (`Retry-After`)",
}

SSE_DESCRIPTION = ("Server-Sent Events: `retry:` first, an `id:` on every frame (the closing one too). "
                   "See docs/server-api.md, \"Server-Sent Events\".")
LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _STR,
                 "description": "sent by a reconnecting EventSource: the stream goes on from there"}

# (path, method) -> {status: schema name | "sse" | None (empty)}; every error status uses Error.
_OK: dict[tuple[str, str], dict[int, Any]] = {
    ("/engines", "post"): {201: "EngineCreated", 202: "EngineDownloadStarted"},
    ("/models", "post"): {201: "EngineCreated", 202: "EngineDownloadStarted"},
    ("/engines", "get"): {200: "EngineList"},
    ("/engines/{engine_id}", "get"): {200: "Engine"},
    ("/engines/{engine_id}", "delete"): {200: "EngineRemoved"},
    ("/models/{engine_id}", "delete"): {200: "EngineRemoved"},
    ("/status", "get"): {200: "Status"},
    ("/download-progress/{model_id}", "get"): {200: "DownloadProgress"},
    ("/downloads", "get"): {200: "DownloadList"},
    ("/downloads/cancel", "post"): {200: "CancelledAll"},
    ("/downloads", "delete"): {200: "CancelledAll"},
    ("/downloads/{model_id}", "delete"): {200: "Cancelled"},
    ("/downloads/{model_id}/cancel", "post"): {200: "Cancelled"},
    ("/downloads/{model_id}/pause", "post"): {200: "Control"},
    ("/downloads/{model_id}/resume", "post"): {200: "Control"},
    ("/downloads", "post"): {202: "Job"},
    ("/downloads/{model_id}", "get"): {200: "Job"},
    ("/downloads/{model_id}/events", "get"): {200: ("sse", "Job"), 204: None},
    ("/events", "get"): {200: ("sse", None)},
    ("/api/models/download", "get"): {200: ("sse", "AbstractCoreItem"), 204: None},
    ("/api/models/pull", "post"): {200: ("sse", "AbstractCoreItem"), 204: None},
    ("/health", "get"): {200: "Health", 503: "Health"},
    ("/v1/health", "get"): {200: "Health", 503: "Health"},
    ("/metrics", "get"): {200: "text"},
}
_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("/engines", "post"): (400, 409, 413, 422, 429, 503),
    ("/models", "post"): (400, 409, 413, 422, 429, 503),
    ("/engines/{engine_id}", "get"): (400, 404),
    ("/engines/{engine_id}", "delete"): (400, 404),
    ("/models/{engine_id}", "delete"): (400, 404),
    ("/download-progress/{model_id}", "get"): (400, 404),
    ("/downloads/cancel", "post"): (503,),
    ("/downloads", "delete"): (503,),
    ("/downloads/{model_id}", "delete"): (400, 404, 503),
    ("/downloads/{model_id}/cancel", "post"): (400, 404, 503),
    ("/downloads/{model_id}/pause", "post"): (400, 404, 503),
    ("/downloads/{model_id}/resume", "post"): (400, 404, 413, 503),
    ("/downloads", "post"): (400, 409, 413, 422, 429, 503),
    ("/downloads/{model_id}", "get"): (400, 404),
    ("/downloads/{model_id}/events", "get"): (400, 404, 503),
    ("/events", "get"): (503,),
    ("/api/models/pull", "post"): (400, 413),
}
_UNPROTECTED = frozenset({"/health", "/v1/health"})
_NO_V1 = frozenset({"/health", "/v1/health", "/metrics"})
_EXAMPLE_BODIES = {
    "/engines": {"engine_id": "qwen-model", "model_path": _QWEN_URL, "load_immediately": True},  # the seed's
    "/downloads": {"model": _QWEN_URL},
    "/api/models/pull": {"provider": "huggingface", "model": "Qwen/Qwen2.5-0.5B-Instruct"},
    "/models": {"model_id": "qwen-model", "model_path": _QWEN_URL, "model_type": "llm", "model_load": True,
                "model_gpu": -1, "model_context": 4096, "model_batch": 512, "model_layer": 0, "model_parallel": 1,
                "model_memory": True, "model_perform": True, "model_inference": "llama-cpu"},
}


def _sse_event(data_schema: str | None) -> dict[str, Any]:
    """One Server-Sent Event (OpenAPI 3.2's reading of `schema` under text/event-stream)."""
    data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json"}
    if data_schema is not None:
        data["contentSchema"] = _ref(data_schema)
    return {"type": "object", "required": ["data", "id"],
            "properties": {"id": _STR, "event": _STR, "retry": _INT, "data": data}}


def _responses(path: str, method: str, api_key: bool) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, kind in _OK[(path, method)].items():
        if kind is None:
            answers[str(status)] = {"description": "The client already saw the end: an EventSource stops here"}
        elif isinstance(kind, tuple):  # ("sse", the schema of each event's data)
            answers[str(status)] = {"description": SSE_DESCRIPTION,
                                    "content": {"text/event-stream": {"schema": _sse_event(kind[1])}}}
        elif kind == "text":
            answers[str(status)] = {"description": "Prometheus text format",
                                    "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            answers[str(status)] = {"description": "OK" if status < 300 else kind,
                                    "content": {"application/json": {"schema": _ref(kind)}}}
    errors = list(_ERRORS.get((path, method), ()))
    if api_key and path not in _UNPROTECTED:
        errors.append(401)
    for status in sorted(errors):
        answer: dict[str, Any] = {"description": _ERROR_TEXT[status],
                                  "content": {"application/json": {"schema": _ref("Error")}}}
        if status in (429, 503):
            answer["headers"] = {"Retry-After": {"schema": _STR, "required": False}}
        if status == 401:
            answer["headers"] = {"WWW-Authenticate": {"schema": _STR, "required": True}}
        answers.setdefault(str(status), answer)
    return answers


def build_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of `app` as it really answers."""
    base = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    paths: dict[str, Any] = {}
    for path, operations in base.get("paths", {}).items():
        for method, operation in operations.items():
            if (path, method) not in _OK:
                continue  # a route this table does not know is left out rather than described wrongly
            operation["responses"] = _responses(path, method, bool(settings.api_key))
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in ("model_id", "engine_id"):
                    parameter["schema"] = {"type": "string", "pattern": ID_PATTERN.pattern}
            streams = any(isinstance(kind, tuple) for kind in _OK[(path, method)].values())
            if streams:
                operation.setdefault("parameters", []).append(LAST_EVENT_ID)
            example = _EXAMPLE_BODIES.get(path)
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if example is not None and body is not None and method == "post":
                body["example"] = example
            if settings.api_key and path not in _UNPROTECTED:
                operation["security"] = [{"bearer": []}]
                if streams and method == "get":
                    operation["security"].append({"api_key_query": []})
            paths.setdefault(path, {})[method] = operation
    for path in list(paths):
        if path in _NO_V1:
            continue
        alias = {}
        for method, operation in paths[path].items():
            copied = copy.deepcopy(operation)
            copied["operationId"] = operation.get("operationId", f"{method}_{path}") + "_v1"
            copied["summary"] = operation.get("summary", "") + " (/v1 alias)"
            alias[method] = copied
        paths["/v1" + path] = alias
    base["paths"] = dict(sorted(paths.items()))
    components = base.setdefault("components", {})
    components.setdefault("schemas", {}).update(copy.deepcopy(SCHEMAS))
    if settings.api_key:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "The server's API key (--api-key / MODELPULL_API_KEY)"},
            "api_key_query": {"type": "apiKey", "in": "query", "name": "api_key",
                              "description": "For an EventSource, which cannot send headers"},
        }
    return base


def _assets_dir() -> Path:
    import fastapi_offline  # the package ships Swagger UI's dist files (Apache 2.0) with its own MIT licence

    return Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Serve /openapi.json (built once, on first request) and /docs from local files."""
    document: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not document:
            document.update(build_document(app, settings))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets_dir()), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="modelpull API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": True},
        )

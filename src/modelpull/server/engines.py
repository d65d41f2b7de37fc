"""Engines: Kolosal's named model registrations, validated, inspected and persisted.

An engine is created when its file is on disk: at once for a local file or a finished download,
or by the manager when the download it waits for completes. Creation reads the file's header:
GGUF metadata (architecture, parameter count, quantisation, context length) through the `gguf`
package, or a safetensors header. Anything else fails creation with a message that says so.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from .._model_info import UnsupportedModel, inspect_model_file
from .errors import ApiError, bad_request
from .security import valid_id
from .store import JobStore

# name: (default, minimum, maximum); a maximum given as a name is another parameter's value.
_INT_LIMITS: dict[str, tuple[int, int, int | str]] = {
    "n_ctx": (4096, 1, 1_000_000),
    "n_keep": (2048, 0, "n_ctx"),
    "n_batch": (2048, 1, 8192),
    "n_ubatch": (512, 1, "n_batch"),
    "n_parallel": (1, 1, 16),
    "n_gpu_layers": (100, 0, 1000),
}
_BOOL_DEFAULTS = {"use_mlock": True, "use_mmap": True, "cont_batching": True, "warmup": False}
# Kolosal's order, for answers that look like its own.
PARAMETER_ORDER = (
    "n_ctx", "n_keep", "use_mlock", "use_mmap", "cont_batching", "warmup", "n_parallel",
    "n_gpu_layers", "n_batch", "n_ubatch",
)
MAIN_GPU_RANGE = (-1, 15)


@dataclasses.dataclass
class EngineRequest:
    """A validated `POST /engines` body."""

    engine_id: str
    model_path: str
    load_immediately: bool = True
    main_gpu_id: int = 0
    loading_parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    token: str | None = None  # for the download only; never stored
    sha256: str | None = None

    def creation_info(self) -> dict[str, Any]:
        """What a waiting download records about the engine it will create (no token, and a
        URL without its secrets: the job's own `model` keeps what resuming needs)."""
        return {
            "engine_id": self.engine_id,
            "model_path": _shown(self.model_path),
            "load_immediately": self.load_immediately,
            "main_gpu_id": self.main_gpu_id,
            "loading_parameters": self.loading_parameters,
        }

    @classmethod
    def from_creation_info(cls, info: dict[str, Any]) -> "EngineRequest":
        return cls(
            engine_id=info["engine_id"], model_path=info["model_path"],
            load_immediately=info["load_immediately"], main_gpu_id=info["main_gpu_id"],
            loading_parameters=dict(info["loading_parameters"]),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_engine_request(body: Any) -> EngineRequest:
    """Validate a `POST /engines` body; ApiError 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", code="invalid_json")
    known = {"engine_id", "model_path", "load_immediately", "main_gpu_id", "loading_parameters", "token", "sha256"}
    engine_id = body.get("engine_id")
    if not isinstance(engine_id, str) or not engine_id:
        raise bad_request("'engine_id' is required and must be a string", "engine_id", "missing_engine_id")
    if not valid_id(engine_id):
        raise bad_request(
            "Invalid engine_id: use 1 to 128 characters from A-Z a-z 0-9 . _ : -", "engine_id", "invalid_engine_id"
        )
    model_path = body.get("model_path")
    if not isinstance(model_path, str) or not model_path.strip():
        raise bad_request("'model_path' is required and must be a non-empty string", "model_path", "missing_model_path")
    load_immediately = body.get("load_immediately", True)
    if not isinstance(load_immediately, bool):
        raise bad_request("'load_immediately' must be true or false", "load_immediately", "invalid_parameter")
    main_gpu_id = body.get("main_gpu_id", 0)
    if not _is_int(main_gpu_id) or not MAIN_GPU_RANGE[0] <= main_gpu_id <= MAIN_GPU_RANGE[1]:
        raise bad_request(
            f"'main_gpu_id' must be an integer from {MAIN_GPU_RANGE[0]} (automatic) to {MAIN_GPU_RANGE[1]}",
            "main_gpu_id", "invalid_parameter",
        )
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise bad_request("'token' must be a string", "token", "invalid_parameter")
    sha256 = body.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64
                               or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise bad_request("'sha256' must be 64 hexadecimal characters", "sha256", "invalid_parameter")
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})", unknown[0], "unknown_field")
    return EngineRequest(
        engine_id=engine_id, model_path=model_path.strip(), load_immediately=load_immediately,
        main_gpu_id=main_gpu_id, loading_parameters=validate_loading_parameters(body.get("loading_parameters")),
        token=token or None, sha256=sha256.lower() if sha256 else None,
    )


# The Kolosal dashboard's `POST /models` fields -> `POST /engines`'s (its script/engine.js form:
# model_gpu -1, model_context 4096, model_batch 512, model_layer 0, model_parallel 1; an empty
# number field arrives as 0, which means "the default" except for GPU layers, where 0 is a value).
DASHBOARD_FIELDS = (
    "model_id", "model_path", "model_type", "model_load", "model_gpu", "model_context", "model_batch",
    "model_layer", "model_parallel", "model_memory", "model_perform", "model_inference",
)
_DASHBOARD_NUMBERS = {"model_context": "n_ctx", "model_batch": "n_batch", "model_parallel": "n_parallel"}


def parse_dashboard_model(body: Any) -> EngineRequest:
    """Validate a Kolosal dashboard `POST /models` body as the engine request it stands for."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - set(DASHBOARD_FIELDS))
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}' (known: {', '.join(DASHBOARD_FIELDS)})", unknown[0],
                          "unknown_field")
    for name in ("model_type", "model_inference"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad_request(f"'{name}' must be a string", name, "invalid_parameter")
    for name in ("model_load", "model_memory", "model_perform"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise bad_request(f"'{name}' must be true or false", name, "invalid_parameter")
    for name in ("model_gpu", "model_layer", *_DASHBOARD_NUMBERS):
        if body.get(name) is not None and not _is_int(body[name]):
            raise bad_request(f"'{name}' must be an integer", name, "invalid_parameter")
    parameters: dict[str, Any] = {}
    for name, parameter in _DASHBOARD_NUMBERS.items():
        if body.get(name):  # 0 or absent: the default
            parameters[parameter] = body[name]
    if body.get("model_layer") is not None:
        parameters["n_gpu_layers"] = body["model_layer"]
    if body.get("model_memory") is not None:
        parameters["use_mmap"] = body["model_memory"]
    if body.get("model_perform") is not None:
        parameters["warmup"] = body["model_perform"]
    # Keep the dependent defaults inside a small context or batch the form allows.
    if "n_ctx" in parameters:
        parameters["n_keep"] = min(_INT_LIMITS["n_keep"][0], parameters["n_ctx"])
    if "n_batch" in parameters:
        parameters["n_ubatch"] = min(_INT_LIMITS["n_ubatch"][0], parameters["n_batch"])
    engine = {"engine_id": body.get("model_id"), "model_path": body.get("model_path"),
              "loading_parameters": parameters}
    if body.get("model_load") is not None:
        engine["load_immediately"] = body["model_load"]
    if body.get("model_gpu") is not None:
        engine["main_gpu_id"] = body["model_gpu"]
    try:
        return parse_engine_request(engine)
    except ApiError as exc:  # name the dashboard's field, not the engine's
        exc.param = _DASHBOARD_PARAM.get(exc.param or "", exc.param)
        exc.message = exc.message.replace(f"'{_ENGINE_FIELD.get(exc.param or '', '')}'", f"'{exc.param}'")
        raise


_DASHBOARD_PARAM = {
    "engine_id": "model_id", "load_immediately": "model_load", "main_gpu_id": "model_gpu",
    "loading_parameters.n_ctx": "model_context", "loading_parameters.n_batch": "model_batch",
    "loading_parameters.n_parallel": "model_parallel", "loading_parameters.n_gpu_layers": "model_layer",
}
_ENGINE_FIELD = {v: k for k, v in _DASHBOARD_PARAM.items()}


def validate_loading_parameters(raw: Any) -> dict[str, Any]:
    """Kolosal's loading parameters with defaults filled in; ApiError 400 naming the bad one."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_request("'loading_parameters' must be an object", "loading_parameters", "invalid_parameter")
    unknown = sorted(set(raw) - set(PARAMETER_ORDER))
    if unknown:
        raise bad_request(
            f"Unknown loading parameter 'loading_parameters.{unknown[0]}' (known: {', '.join(PARAMETER_ORDER)})",
            f"loading_parameters.{unknown[0]}", "invalid_parameter",
        )
    values: dict[str, Any] = {}
    for name, default in _BOOL_DEFAULTS.items():
        value = raw.get(name, default)
        if not isinstance(value, bool):
            raise bad_request(f"'loading_parameters.{name}' must be true or false",
                              f"loading_parameters.{name}", "invalid_parameter")
        values[name] = value
    for name, (default, _, _) in _INT_LIMITS.items():
        value = raw.get(name, default)
        if not _is_int(value):
            raise bad_request(f"'loading_parameters.{name}' must be an integer",
                              f"loading_parameters.{name}", "invalid_parameter")
        values[name] = value
    for name, (_, minimum, maximum) in _INT_LIMITS.items():
        upper = values[maximum] if isinstance(maximum, str) else maximum
        if not minimum <= values[name] <= upper:
            bound = f"{maximum} ({upper})" if isinstance(maximum, str) else f"{upper:,}"
            raise bad_request(
                f"'loading_parameters.{name}' is {values[name]}: it must be from {minimum} to {bound}",
                f"loading_parameters.{name}", "invalid_parameter",
            )
    return {name: values[name] for name in PARAMETER_ORDER}


# ------------------------------------------------------------------------------ registry


def _shown(model_path: str) -> str:
    """A model path as stored and shown: a URL loses its query string (signatures, tokens)."""
    if model_path.lower().startswith(("http://", "https://")):
        from ..transfer import public_url

        return public_url(model_path)
    return model_path


def _now_ms() -> int:
    return int(time.time() * 1000)


class EngineRegistry:
    """The engines the server knows, in memory and in the store; `on_change` feeds `/events`."""

    def __init__(self, store: JobStore, on_change: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self._store = store
        self._engines: dict[str, dict[str, Any]] = {}
        self._on_change = on_change or (lambda kind, data: None)

    async def load(self) -> None:
        """Read the stored engines (at start)."""
        self._engines = {e["engine_id"]: e for e in await self._store.load_engines()}

    def refresh(self, engine_id: str, record: dict[str, Any] | None) -> None:
        """Another replica created (record) or removed (None) an engine."""
        if record is None:
            if self._engines.pop(engine_id, None) is not None:
                self._on_change("engine-removed", {"engine_id": engine_id})
        elif self._engines.get(engine_id) != record:
            self._engines[engine_id] = record
            self._on_change("engine", record)

    def get(self, engine_id: str) -> dict[str, Any] | None:
        return self._engines.get(engine_id)

    def all(self) -> list[dict[str, Any]]:
        return list(self._engines.values())

    def taken(self, engine_id: str) -> bool:
        """True when a working engine has this id (a failed one may be replaced)."""
        engine = self._engines.get(engine_id)
        return engine is not None and engine["status"] != "failed"

    async def create(
        self, request: EngineRequest, local_path: Path, download_id: str | None, *, roots: Sequence[Path],
        record_failure: bool = True,
    ) -> dict[str, Any]:
        """Inspect `local_path` (a folder's files only where they resolve inside `roots`) and register
        the engine. UnsupportedModel is raised, after leaving a `failed` record that says why
        (unless `record_failure` is False: a refused request)."""
        try:
            info = await asyncio.to_thread(inspect_model_file, local_path, roots)
        except UnsupportedModel as exc:
            if record_failure:
                self._put(self._record(request, local_path, download_id, None, str(exc)))
            raise
        return self._put(self._record(request, local_path, download_id, info, None))

    def remove(self, engine_id: str) -> dict[str, Any] | None:
        engine = self._engines.pop(engine_id, None)
        if engine is not None:
            self._store.delete_engine(engine_id)
            self._on_change("engine-removed", {"engine_id": engine_id})
        return engine

    def _record(
        self, request: EngineRequest, local_path: Path, download_id: str | None,
        info: dict[str, Any] | None, error: str | None,
    ) -> dict[str, Any]:
        if error:
            status = "failed"
        else:
            status = "loaded" if request.load_immediately else "created"
        return {
            "engine_id": request.engine_id,
            "status": status,
            "model_path": _shown(request.model_path),
            "local_path": str(local_path),
            "load_immediately": request.load_immediately,
            "main_gpu_id": request.main_gpu_id,
            "loading_parameters": request.loading_parameters,
            "download_id": download_id,
            "model_info": info,
            "error_message": error,
            "created_at": _now_ms(),
        }

    def _put(self, record: dict[str, Any]) -> dict[str, Any]:
        self._engines[record["engine_id"]] = record
        self._store.save_engine(record)
        self._on_change("engine", record)
        return record


__all__ = [
    "EngineRegistry", "EngineRequest", "UnsupportedModel", "inspect_model_file",
    "parse_engine_request", "parse_dashboard_model", "validate_loading_parameters", "ApiError",
]

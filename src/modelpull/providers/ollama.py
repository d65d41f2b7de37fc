"""Ollama models, two ways: through a running Ollama server, or straight from the registry.

    through the server   POST {server}/api/pull, NDJSON progress lines; the server moves the bytes;
                         then POST {server}/api/show: its modelfile's FROM line is the model
                         layer's blob as the server names it (the COMPLETE item's local_path)
    straight (direct)    registry manifest -> a Plan of blobs for the transfer engine
                         -> <store>/blobs/sha256-<hex> and <store>/manifests/<host>/<ns>/<model>/<tag>

The direct mode writes exactly Ollama's store layout, so an Ollama server started afterwards
lists and runs the model. It is used with `direct=True`, and on its own when no server
address was given (no `base_url`, no OLLAMA_HOST) and nothing answers at the default one.

Options: `direct` (True / False / None = decide), `registry` (registry base URL, default
https://<host of the name>), `insecure` (plain http to the registry, as `ollama pull --insecure`;
through a server it is passed on in /api/pull), `models_path` (the store; default
OLLAMA_MODELS, else ~/.ollama/models).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from .._errors import AuthenticationRequired, ConnectionFailed, InvalidRequest, ModelPullError, NotFound, SourceError
from .._paths import UnsafeName, shown_name
from .._plan import DownloadRequest, Plan, PlannedFile
from .._progress import DownloadProgress, DownloadStatus
from .._units import format_bytes
from ..transfer import public_url, write_durably
from ..transfer._aiohttp import open_following_redirects
from ..transfer._http import RETRYABLE_STATUSES, unknown_host, unknown_host_error
from ._base import Provider
from ._ollama_store import (  # noqa: F401 - OllamaName and store_root are part of this module's face
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    MODEL_MEDIA_TYPE,
    OllamaName,
    blob_path,
    digest_hex,
    manifest_descriptors,
    store_root,
)

if TYPE_CHECKING:
    from .._run import RunContext

DEFAULT_SERVER = "http://localhost:11434"
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_MEDIA_TYPE_PREFIX = "application/vnd.ollama.image."

# A blob file of Ollama's store: sha256-<hex> (sha256:<hex> in old stores, before fixblobs).
_BLOB_FILE = re.compile(r"^sha256[-:][0-9a-f]{64}$")
_ABSOLUTE_PATH = re.compile(r"^(/|\\|[A-Za-z]:[\\/])")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
SPEED_WINDOW_SECONDS = 5.0
MAX_RUNNING_PERCENT = 99.9  # through a server, 100.0 is for the COMPLETE item only
MANIFEST_WAIT_SECONDS = 2.0  # how long the first progress item waits for the registry's sizes


class OllamaProvider(Provider):
    """Ollama models, through a running Ollama server or straight from the registry."""

    name = "ollama"
    option_names = frozenset({"direct", "registry", "models_path", "insecure"})

    def describe(self, request: DownloadRequest) -> str:
        return f"{OllamaName.parse(request.model).display} from Ollama"

    def data_location(self, request: DownloadRequest) -> str:
        """Ollama's store here (direct), or the server's, which keeps its partial layers itself."""
        store = store_root(request.options.get("models_path")).absolute()
        if request.options.get("direct"):
            return str(store)
        server, chosen = server_url(request.base_url)
        if chosen or request.options.get("direct") is False:
            return f"the store of the Ollama server at {server}"
        return f"the store of the Ollama server at {server} (or {store}, if no server answered there)"

    def check_request(self, request: DownloadRequest) -> None:
        """The name as Ollama's rules allow it (no `..`, no separators in a part); options' types."""
        OllamaName.parse(request.model)
        options = request.options
        if options.get("direct") not in (None, True, False):
            raise InvalidRequest("direct must be true, false or null", param="options.direct")
        registry = options.get("registry")
        if registry is not None and (not isinstance(registry, str) or not registry):
            raise InvalidRequest("registry must be a URL", param="options.registry")
        store = options.get("models_path")
        if store is not None and (not isinstance(store, (str, os.PathLike)) or not str(store) or "\0" in str(store)):
            raise InvalidRequest("models_path must be a folder path", param="options.models_path")

    async def stream(self, request: DownloadRequest, context: "RunContext") -> AsyncIterator[DownloadProgress]:
        """Through the server; straight from the registry when asked, or when no server was named
        and none answers at the default address."""
        name = OllamaName.parse(request.model)
        direct = request.options.get("direct")
        if direct:
            async with contextlib.aclosing(context.plan_and_execute(self, request)) as items:
                async for item in items:
                    yield item
            return
        server, chosen = server_url(request.base_url)
        try:
            # aclosing: when our consumer stops, the pull's response is closed now, not at GC.
            pull = _ServerPull(name, request.model, server, context, request.options.get("registry"),
                               insecure=bool(request.options.get("insecure")))
            async with contextlib.aclosing(pull.run()) as items:
                async for item in items:
                    yield item
            return
        except _Unreachable as unreachable:
            if direct is False or chosen:
                raise ModelPullError(
                    f"Cannot connect to Ollama server at {server}. Is Ollama running?", code="ollama_unreachable"
                ) from unreachable.__cause__
        store = store_root(request.options.get("models_path"))
        yield DownloadProgress(
            status=DownloadStatus.DOWNLOADING,
            message=f"No Ollama server at {server}: downloading {name.display} straight from the registry into {store}",
        )
        async with contextlib.aclosing(context.plan_and_execute(self, request)) as items:
            async for item in items:
                yield item

    async def plan(self, request: DownloadRequest, context: "RunContext") -> Plan:
        """Direct mode: the manifest's blobs as files of Ollama's store, the manifest written last."""
        name = OllamaName.parse(request.model)
        store = store_root(request.options.get("models_path"))
        registry = _Registry(name, request.options.get("registry"), request.token, context,
                             insecure=bool(request.options.get("insecure")))
        raw_manifest = await registry.manifest()
        blobs = _manifest_blobs(raw_manifest, name)
        files = []
        for media_type, digest, size in blobs:
            hex_digest = digest.partition(":")[2]  # checked by _manifest_blobs
            dest = blob_path(store, digest)
            files.append(PlannedFile(
                url=registry.blob_url(digest),
                dest=dest,
                name=f"{_kind(media_type)} sha256-{hex_digest[:12]}",
                size=size,
                sha256=hex_digest,
                headers=registry.auth_headers,
                # Content-addressed: a blob of the right size is trusted, as Ollama itself does.
                present=dest.is_file() and dest.stat().st_size == size,
            ))
        model_blob = next((f.dest for (media_type, _, _), f in zip(blobs, files) if media_type == MODEL_MEDIA_TYPE), None)
        manifest_path = name.manifest_path(store)

        async def finalize() -> None:
            _write_atomically(manifest_path, raw_manifest)

        return Plan(
            label=f"{name.display} from {registry.base}",
            files=files,
            local_path=model_blob or manifest_path,
            finalize=finalize,
        )


# --------------------------------------------------------------------------- where things are


def server_url(base_url: str | None) -> tuple[str, bool]:
    """(the Ollama server's URL, whether someone chose it): base_url, else OLLAMA_HOST, else the default."""
    if base_url:
        return _with_scheme(base_url.strip()).rstrip("/"), True
    env = os.environ.get("OLLAMA_HOST", "").strip()
    if env:
        return _ollama_host(env), True
    return DEFAULT_SERVER, False


def _with_scheme(url: str) -> str:
    return url if "://" in url else f"http://{url}"


def _ollama_host(value: str) -> str:
    """OLLAMA_HOST as Ollama reads it (envconfig.Host): scheme http and port 11434 unless given."""
    scheme, sep, hostport = value.partition("://")
    if not sep:
        scheme, hostport, default_port = "http", value, "11434"
    else:
        default_port = {"http": "80", "https": "443"}.get(scheme, "11434")
    hostport, _, path = hostport.partition("/")
    host, colon, port = hostport.rpartition(":")
    if not colon or "]" in port:  # no port (or a bare IPv6 address)
        host, port = hostport, default_port
    host = host or "127.0.0.1"
    return f"{scheme}://{host}:{port}" + (f"/{path.rstrip('/')}" if path.strip("/") else "")


def _kind(media_type: str) -> str:
    if media_type.startswith(_MEDIA_TYPE_PREFIX):
        return media_type[len(_MEDIA_TYPE_PREFIX):]
    return "config" if "container.image" in media_type else "blob"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, data)


# --------------------------------------------------------------------------- direct: the registry


class _Registry:
    """Manifest and blob URLs of one repository, with the Bearer-token dance on a 401."""

    def __init__(self, name: OllamaName, base: str | None, token: str | None, context: "RunContext", *,
                 insecure: bool = False) -> None:
        self.name = name
        # As `ollama pull --insecure`: plain http only when asked for (or named by the URL itself).
        scheme = "http" if insecure else "https"
        self.base = (base if "://" in base else f"{scheme}://{base}").rstrip("/") if base else f"{scheme}://{name.host}"
        self.context = context
        self.auth_headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        options = context.transfer
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=options.connect_timeout, sock_read=options.stall_timeout
        )

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/v2/{self.name.repository}/blobs/{digest}"

    async def manifest(self) -> bytes:
        """The manifest's raw bytes (they are written to the store unchanged)."""
        url = f"{self.base}/v2/{self.name.repository}/manifests/{self.name.tag}"
        status, headers, body = await self._get(url, {"Accept": MANIFEST_MEDIA_TYPE})
        if status == 401 and headers.get("WWW-Authenticate", "").lower().startswith("bearer "):
            await self._authenticate(headers["WWW-Authenticate"])
            status, headers, body = await self._get(url, {"Accept": MANIFEST_MEDIA_TYPE})
        if status == 200:
            return body
        if status == 404:
            hint = "; see https://ollama.com/library for names and tags" if self.name.host == DEFAULT_HOST else ""
            raise NotFound(
                f"Model '{self.name.display}' not found in the Ollama registry ({self.base}){hint}",
                code="model_not_found",
            )
        if status in (401, 403):
            raise AuthenticationRequired(
                f"the Ollama registry at {self.base} refused access to '{self.name.display}' (HTTP {status}): "
                "the model is private or the token (token=) is not valid",
                code="registry_auth",
            )
        raise SourceError(
            f"the Ollama registry at {self.base} answered HTTP {status} for '{self.name.display}': "
            f"{_registry_message(body)}",
            code="registry_error",
        )

    async def _authenticate(self, challenge: str) -> None:
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.pop("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise AuthenticationRequired(
                f"the Ollama registry at {self.base} asked for a token without a usable realm", code="registry_auth"
            )
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        url = str(URL(realm).update_query(query))
        status, _, body = await self._get(url, {}, authorized=False)
        token = None
        if status == 200:
            try:
                answer = json.loads(body)
                token = answer.get("token") or answer.get("access_token")
            except (ValueError, AttributeError):
                token = None
        if not token:
            raise AuthenticationRequired(
                f"the Ollama registry at {self.base} did not grant a token for '{self.name.display}' "
                f"(HTTP {status} from {public_url(realm)})",
                code="registry_auth",
            )
        self.auth_headers = {"Authorization": f"Bearer {token}"}

    async def _get(self, url: str, headers: dict[str, str], *, authorized: bool = True) -> tuple[int, Any, bytes]:
        """One GET with a few retries for connection failures and 5xx/429; never raises for a status."""
        sent = {**(self.auth_headers if authorized else {}), **headers}
        options = self.context.transfer
        attempts = min(3, options.max_retries + 1)
        for attempt in range(attempts):
            try:
                response, _ = await open_following_redirects(self.context.session, url, sent, timeout=self.timeout)
                async with response:
                    body = await response.read()
                if response.status not in RETRYABLE_STATUSES or attempt == attempts - 1:
                    return response.status, response.headers, body
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                if unknown_host(exc):
                    raise unknown_host_error(URL(url).host, f"the Ollama registry address {self.base}") from None
                if attempt == attempts - 1:
                    raise ConnectionFailed(
                        f"cannot reach the Ollama registry at {self.base}: {exc or exc.__class__.__name__}",
                        code="registry_unreachable",
                    ) from None
            await asyncio.sleep(min(options.retry_max_delay, options.retry_backoff * 2 ** attempt))
        raise AssertionError  # unreachable


def _registry_message(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(str(e.get("message") or e.get("code")) for e in errors) or "no details"
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace") or "no details"


def _manifest_blobs(raw: bytes, name: OllamaName) -> list[tuple[str, str, int]]:
    """(media type, digest, size) of every layer, then the config, each digest once."""
    try:
        blobs = manifest_descriptors(raw)
    except (ValueError, KeyError, TypeError):
        raise SourceError(f"the registry sent an unreadable manifest for '{name.display}'", code="bad_manifest") from None
    seen: set[str] = set()
    unique = []
    for media_type, digest, size in blobs:
        try:
            digest_hex(digest)
            if size < 0:
                raise UnsafeName(f"its size {size} is negative")
        except UnsafeName as exc:
            raise SourceError(
                f"the manifest of '{name.display}' names an unusable blob {shown_name(digest)}: {exc.reason}. "
                "Refusing it; nothing was written", code="bad_manifest"
            ) from None
        if digest not in seen:
            seen.add(digest)
            unique.append((media_type, digest, size))
    return unique


# --------------------------------------------------------------------------- through a server


def model_path_from_modelfile(modelfile: str) -> str | None:
    """The model layer's blob in a modelfile from POST /api/show, or None.

    Ollama writes comments, then `FROM <store>/blobs/sha256-<hex>` (server/routes.go
    GetModelInfo, images.go Model.String); a projector adds a second FROM later, and the
    comments hold a `# FROM <name>`. An MLX or safetensors model's FROM is a name, not a blob.
    """
    for line in modelfile.splitlines():
        words = line.split(None, 1)
        if not words or words[0].upper() != "FROM":
            continue
        path = words[1].strip() if len(words) == 2 else ""
        if len(path) >= 2 and path[0] == path[-1] == '"':
            path = path[1:-1]
        file_name = re.split(r"[\\/]", path)[-1]
        return path if _ABSOLUTE_PATH.match(path) and _BLOB_FILE.fullmatch(file_name) else None
    return None


class _Unreachable(Exception):
    """Nothing answers at the server's address."""


class _ServerPull:
    """One POST /api/pull, its NDJSON lines turned into progress items."""

    def __init__(
        self, name: OllamaName, model: str, server: str, context: "RunContext", registry: str | None = None,
        *, insecure: bool = False,
    ) -> None:
        self.insecure = insecure
        self.name = name
        self.model = model
        self.server = server
        self.context = context
        self.registry = registry
        self.totals: dict[str, int] = {}  # digest -> size, in the order the server names them
        self.completed: dict[str, int] = {}
        # Every layer's size from the registry's manifest, when we can read it: the server names
        # layers one at a time, as it starts each, so its lines alone never give the whole size.
        self.expected: dict[str, int] | None = None
        self.percent: float | None = None
        self.percent_basis: tuple | None = None  # what `percent` was computed over
        self.samples: deque[tuple[float, int]] = deque()

    async def run(self) -> AsyncIterator[DownloadProgress]:
        sizes = asyncio.create_task(self._read_manifest_sizes())
        try:
            async with contextlib.aclosing(self._pull()) as items:
                async for item in items:
                    if not sizes.done() and item.total_bytes is not None:
                        # The first bytes: give the manifest a moment, so the percent starts
                        # over the whole size instead of going back when the sizes arrive.
                        await asyncio.wait([sizes], timeout=MANIFEST_WAIT_SECONDS)
                        if self.expected is not None:
                            item = self._progress(item.status, item.message)
                    yield item
        finally:
            sizes.cancel()
            with contextlib.suppress(BaseException):
                await sizes

    async def _read_manifest_sizes(self) -> None:
        """Ask the registry for the manifest (as the server does), for the layers' sizes. Best
        effort, alongside the pull: without it the percent is over the layers named so far."""
        try:
            raw = await _Registry(self.name, self.registry, None, self.context, insecure=self.insecure).manifest()
            self.expected = {digest: size for _, digest, size in _manifest_blobs(raw, self.name)}
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - unreachable, refused, not found: the server's lines remain
            self.expected = None

    async def _pull(self) -> AsyncIterator[DownloadProgress]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.context.transfer.connect_timeout)
        try:
            response, _ = await open_following_redirects(
                self.context.session, f"{self.server}/api/pull", {}, method="POST",
                json={"model": self.model, "stream": True, **({"insecure": True} if self.insecure else {})},
                timeout=timeout,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            if unknown_host(exc):
                raise unknown_host_error(URL(self.server).host, "the Ollama server address (base_url, OLLAMA_HOST)") \
                    from None
            raise _Unreachable() from exc
        complete: DownloadProgress | None = None
        try:
            if response.status != 200:
                raise self._http_error(response.status, await response.read())
            async with contextlib.aclosing(self._items(response)) as items:
                async for item in items:
                    if item.status is DownloadStatus.COMPLETE:
                        complete = item
                        break
                    yield item
        finally:
            # Closing (not releasing) drops the connection, so the server stops its pull at once.
            response.close()
        if complete is not None:
            await self._locate(complete)
            yield complete

    async def _items(self, response: aiohttp.ClientResponse) -> AsyncIterator[DownloadProgress]:
        try:
            async for raw in response.content:
                line = raw.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # not a line of Ollama's; the next one may be
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    raise self._stream_error(str(event["error"]))
                item = self._item(event)
                if item is not None:
                    yield item
                    if item.status is DownloadStatus.COMPLETE:
                        return
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
            raise self._incomplete(f"the connection broke ({exc.__class__.__name__})") from None
        raise self._incomplete("the stream ended")

    def _item(self, event: dict[str, Any]) -> DownloadProgress | None:
        status = str(event.get("status", ""))
        digest = event.get("digest")
        if digest and isinstance(event.get("total"), int):
            self.totals[digest] = event["total"]
            # A layer's counter only moves forward, even if a line arrives late.
            self.completed[digest] = max(self.completed.get(digest, 0), int(event.get("completed") or 0))
            return self._progress(DownloadStatus.DOWNLOADING, status)
        if status == "success":
            for layer, size in self._sizes().items():
                self.completed[layer] = size
            item = self._progress(
                DownloadStatus.COMPLETE, f"Successfully pulled {self.name.display} (Ollama server at {self.server})"
            )
            item.percent = 100.0
            item.speed_bps = item.eta_seconds = None
            return item  # its local_path comes from _locate()
        if status.startswith(("verifying", "writing", "removing")):
            # Every layer is down once Ollama verifies, even when its last tick said less.
            for layer, size in self._sizes().items():
                self.completed[layer] = size
            return self._progress(DownloadStatus.VERIFYING, status)
        if status:
            return self._progress(DownloadStatus.DOWNLOADING, status)
        return None

    def _sizes(self) -> dict[str, int]:
        """Every layer's size: the manifest's, plus any layer the server names that it lacks."""
        if self.expected is None:
            return self.totals
        return {**self.expected, **self.totals}

    def _progress(self, status: DownloadStatus, message: str) -> DownloadProgress:
        sizes = self._sizes()
        total = sum(sizes.values()) if sizes else None
        downloaded = sum(self.completed.values()) if self.totals else None
        if total and downloaded is not None:
            # Below 100 until "success". Over the same layers the percent never goes back (a late
            # line); when the basis changes (the manifest arrived, or without it the server named
            # one more layer) it is the bytes' share of the new total, even if lower: holding the
            # old value would freeze it for a whole layer.
            computed = round(min(MAX_RUNNING_PERCENT, downloaded * 100.0 / total), 2)
            basis = (self.expected is not None, tuple(sizes))
            if self.percent is None or basis != self.percent_basis:
                self.percent = computed
            else:
                self.percent = max(self.percent, computed)
            self.percent_basis = basis
        speed = self._speed(downloaded or 0)
        eta = (total - downloaded) / speed if speed and total is not None and downloaded is not None else None
        return DownloadProgress(
            status=status,
            message=message,
            percent=self.percent,
            downloaded_bytes=downloaded,
            total_bytes=total,
            speed_bps=speed,
            eta_seconds=eta,
            files_completed=sum(1 for d, size in sizes.items() if self.completed.get(d, 0) >= size),
            files_total=len(sizes) or None,
        )

    def _speed(self, downloaded: int) -> float | None:
        now = time.monotonic()
        self.samples.append((now, downloaded))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW_SECONDS:
            self.samples.popleft()
        first_time, first_done = self.samples[0]
        if now - first_time < 0.5:
            return None
        return max(0.0, (downloaded - first_done) / (now - first_time))

    async def _locate(self, item: DownloadProgress) -> None:
        """Set the COMPLETE item's local_path: the model layer's blob as the server names it
        (POST /api/show), else the blob in this machine's store, else the model's Ollama name."""
        path, problem = await self._server_model_blob()
        if path is None:
            path = self._local_model_blob()
        if path is None:
            path = self.name.display
            item.message += (
                f"; the server did not say where it keeps the model's file ({problem}) and it is not in "
                f"{store_root(None)}, so local_path is the model's Ollama name '{path}'"
            )
        item.local_path = path

    async def _server_model_blob(self) -> tuple[str | None, str]:
        """(the model layer's blob path from the FROM line of POST /api/show, why there is none)."""
        options = self.context.transfer
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=options.connect_timeout, sock_read=options.stall_timeout
        )
        # Both fields: older servers read only `name`; newer ones read `model` first.
        body = {"model": self.model, "name": self.model}
        try:
            response, _ = await open_following_redirects(
                self.context.session, f"{self.server}/api/show", {}, method="POST", json=body, timeout=timeout)
            async with response:
                if response.status != 200:
                    return None, f"POST /api/show answered HTTP {response.status}"
                answer = json.loads(await response.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return None, f"POST /api/show failed: {exc.__class__.__name__}"
        except ValueError:
            return None, "POST /api/show answered no JSON"
        modelfile = answer.get("modelfile") if isinstance(answer, dict) else None
        path = model_path_from_modelfile(modelfile) if isinstance(modelfile, str) else None
        return path, "" if path else "its modelfile has no FROM line naming a blob"

    def _local_model_blob(self) -> str | None:
        """The model's GGUF blob, when the server's store is this machine's (best effort)."""
        store = store_root(None)
        try:
            manifest = json.loads(self.name.manifest_path(store).read_bytes())
            digest = next(layer["digest"] for layer in manifest["layers"] if layer["mediaType"] == MODEL_MEDIA_TYPE)
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            return None
        try:
            blob = blob_path(store, digest)
        except UnsafeName:
            return None
        return str(blob) if blob.is_file() else None

    def _stream_error(self, text: str) -> ModelPullError:
        if "file does not exist" in text or "not found" in text.lower():
            return NotFound(
                f"Model '{self.name.display}' not found in the Ollama registry (Ollama said: {text})",
                code="model_not_found",
            )
        return ModelPullError(f"Ollama could not pull '{self.name.display}': {text}", code="ollama_error")

    def _http_error(self, status: int, body: bytes) -> ModelPullError:
        try:
            text = str(json.loads(body).get("error") or "")
        except (ValueError, AttributeError):
            text = body[:200].decode(errors="replace").strip()
        error = self._stream_error(text) if text else None
        if error is not None and error.code == "model_not_found":
            return error
        return ModelPullError(
            f"the Ollama server at {self.server} refused to pull '{self.name.display}' (HTTP {status}): "
            f"{text or 'no details'}",
            code="ollama_error",
        )

    def _incomplete(self, how: str) -> ModelPullError:
        done = sum(self.completed.values())
        return ModelPullError(
            f"the Ollama server at {self.server} stopped pulling '{self.name.display}' before it finished: "
            f"{how} without 'success' after {format_bytes(done)}; run the pull again to resume",
            code="incomplete_stream",
        )

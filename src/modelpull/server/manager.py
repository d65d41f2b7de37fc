"""The download manager: jobs claimed from the store and run as asyncio tasks, here.

Life of a job:

    submit()  -> queued, in the store -> the scheduler claims it (store.claim, with a lease)
                 a free slot: a Transfer starts download_model()
                 the same source already moving here: the job follows that Transfer
    progress items -> every following job -> events to subscribers (coalesced) -> store (throttled)
    final item -> completed / failed / cancelled; an engine waiting for the file is created
    pause / cancel -> the job leaves its Transfer at once; a Transfer nobody follows is stopped
                      in the background (pause keeps the partial data, cancel deletes it).
                      A job running on another replica gets the request through the store.
    restart, or a replica that died -> its unfinished jobs are claimed again (once the lease
                 has expired, for another replica) and resume from their partial data
    retention -> finished jobs are pruned after `retention_seconds`

The store is the truth; `jobs` is this replica's view of it: the jobs it runs, kept current
here, and every other job, kept current by the store's change feed (feed.py).

At most `max_active_jobs` transfers run at once on this replica; transfers that write the same
files (same provider and model) never run at the same time, on any replica.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import aiohttp

from .. import _api
from .._errors import InvalidRequest, ModelPullError
from .._paths import is_within, shown_name
from .._plan import TransferOptions
from .._progress import DownloadProgress, DownloadStatus
from .._refs import parse_reference
from .._run import DownloadControl, error_item
from .._settings import Settings
from ..providers import canonical_name, get_provider
from ..providers.url import is_downloaded_from, suggest_filename
from ..transfer import Wire, discard_partial, partial_paths
from ..transfer._aiohttp import new_session
from ..transfer._policy import UrlPolicy
from . import jobs as J
from .engines import EngineRegistry, EngineRequest, UnsupportedModel
from .errors import ApiError, bad_request, not_found
from .feed import ChangeFeed
from .fanout import FanOut, StreamLimitReached, Subscriber
from .jobs import Job, now_ms
from .sse import frame
from .logs import SECRETS
from .security import UrlRefused, check_url, resolve_inside, valid_id
from .store import JobStore, StoreError

log = logging.getLogger("modelpull.server")

PUBLISH_INTERVAL = 0.25  # progress events at most this often per job
QUEUED_PUBLISH_INTERVAL = 1.0  # a queued job's place in line, at most this often (the first QUEUED_NEAR)
QUEUED_NEAR = 10
QUEUED_FAR_PUBLISH_INTERVAL = 30.0  # further back in line
QUEUED_FAR_PER_FLUSH = 20  # of those, published at one flush at most (the others at the next ones)
SAVE_INTERVAL = 0.5  # progress written to the store at most this often (2 writes/s per job)
_CANCEL_KEEP = "cancel_keep"  # the store's control request for a cancel that keeps the partial data
CLAIM_INTERVAL = 1.0  # a replica looks for work at least this often (a shared store's queue)
QUEUE_FULL_RETRY_AFTER = 30  # seconds a client is told to wait when --max-queued-jobs is reached
# Options that change how bytes move, not which bytes: jobs differing only in these share a transfer.
_TUNING_OPTIONS = frozenset(TransferOptions.NAMES) - {"sha256"}
_FOLDER_OPTIONS = ("dest", "cache_dir", "local_dir", "models_path")  # must stay inside the models dir
_URL_OPTIONS = ("registry",)  # checked by the URL policy


@dataclasses.dataclass(eq=False)
class Transfer:
    """One running download_model() call, followed by one or more jobs."""

    source_key: str
    lock_key: str
    job_ids: list[str]
    control: DownloadControl = dataclasses.field(default_factory=DownloadControl)
    task: asyncio.Task | None = None
    last: DownloadProgress | None = None
    baseline_bytes: int | None = None  # bytes on disk when it started (not counted as downloaded)
    counted_bytes: int = 0


@dataclasses.dataclass
class EngineAddResult:
    """What `add_engine` did: `kind` is created, started, resuming or in_progress."""

    kind: str
    engine: dict[str, Any] | None = None
    job: Job | None = None


def due_for_publish(jobs: Iterable[Job], now: float) -> list[Job]:
    """The changed jobs whose news is published at this flush (PUBLISH_INTERVAL apart at most).

    A queued job's only news is its place in line, which moves for every queued job at each
    start: 500 queued jobs would be 500 events to every stream whenever a download ends. The
    next few in line say it soon (QUEUED_PUBLISH_INTERVAL), the rest now and then
    (QUEUED_FAR_PUBLISH_INTERVAL), and never all in one flush: jobs submitted together would
    otherwise come due together, 500 events to each of 1000 streams in one turn of the loop.
    At most QUEUED_FAR_PER_FLUSH of them go at a time, in the jobs' order, the rest at the
    next flushes.
    """
    due = []
    far_budget = QUEUED_FAR_PER_FLUSH
    for job in jobs:
        if not job.dirty:
            continue
        interval = PUBLISH_INTERVAL
        far = False
        if job.status == J.QUEUED:
            far = (job.queue_position or 0) > QUEUED_NEAR
            interval = QUEUED_FAR_PUBLISH_INTERVAL if far else QUEUED_PUBLISH_INTERVAL
        if now - job.last_published < interval or (far and not far_budget):
            continue
        far_budget -= far
        due.append(job)
    return due


class DownloadManager:
    """Owns every job, the shared HTTP session and the scheduling of transfers."""

    def __init__(self, settings: Settings, store: JobStore, engines: EngineRegistry) -> None:
        self.settings = settings
        # Absolute, so that every path a client sees (local_path, the Hub cache, Ollama's store) is.
        self.models_dir = Path(settings.home).expanduser().absolute()
        self.store = store
        self.engines = engines
        self.jobs: dict[str, Job] = {}
        self._transfers: dict[str, Transfer] = {}  # source_key -> running transfer (not stopping)
        self._locks: dict[str, Transfer] = {}  # lock_key -> transfer holding the files
        self._running: set[Transfer] = set()  # every transfer whose task has not ended
        self.fanout = FanOut(settings.max_event_streams)  # every SSE stream's queue; /events's fan-out
        self._seq = 0  # the id of the last /events event
        # One URL policy for every connection made on a client's behalf: the submit check, the
        # wire, the aiohttp session and (through the wire) the Hub client.
        self.policy = UrlPolicy(settings.allow_private_urls, _configured_hosts())
        self._session: aiohttp.ClientSession | None = None
        self._wire: Wire | None = None
        self._wake = asyncio.Event()  # something to claim, maybe
        self._claiming = asyncio.Lock()
        self._queue_moved = False  # queue positions to renumber
        self.feed = ChangeFeed(self)
        self._background: list[asyncio.Task] = []
        self._closing = False
        self.started = time.time()
        # Metrics.
        self.downloaded_bytes_total = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.completed_total = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._session = new_session(limit_per_host=self.settings.max_connections_per_host, policy=self.policy)
        self._wire = Wire(limit_per_host=self.settings.max_connections_per_host, check=self.policy)
        for record in await self.store.load_jobs():
            self._merge(record)
        self._background = [
            asyncio.create_task(self._schedule_loop(), name="modelpull:schedule"),
            asyncio.create_task(self._flush_loop(), name="modelpull:flush"),
            asyncio.create_task(self._prune_loop(), name="modelpull:prune"),
            asyncio.create_task(self._heartbeat_loop(), name="modelpull:heartbeat"),
            asyncio.create_task(self.feed.follow(), name="modelpull:feed"),
        ]

    async def close(self) -> None:
        """Stop transfers keeping their partial data; unfinished jobs resume on the next start."""
        self._closing = True
        for task in self._background:
            task.cancel()
        for transfer in list(self._running):
            if transfer.task is not None:
                transfer.task.cancel()
        tasks = [t.task for t in self._running if t.task is not None]
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        # Release what ran here: another replica (or this one, restarted) takes it over at once.
        mine = [self.jobs[i] for t in self._running for i in t.job_ids if i in self.jobs]
        self._save([j for j in self.jobs.values() if j.unsaved] + mine, release=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.flush(), 5)
        self.fanout.close()
        if self._session is not None:
            await self._session.close()
        if self._wire is not None:
            self._wire.close()

    # ------------------------------------------------------------------ queries

    def get(self, job_id: str) -> Job:
        if not valid_id(job_id):
            raise bad_request(
                "Invalid download id in the URL: use 1 to 128 characters from A-Z a-z 0-9 . _ : -",
                "model_id", "invalid_path_format",
            )
        job = self.jobs.get(job_id)
        if job is None:
            raise not_found(f"No download found for model ID: {job_id}", "model_id", "download_not_found")
        return job

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(j.status for j in self.jobs.values())

    @property
    def running_transfers(self) -> int:
        return len(self._running)

    def running_job_ids(self) -> list[str]:
        """The jobs whose bytes move on this replica."""
        return [i for t in self._transfers.values() for i in t.job_ids]

    # ------------------------------------------------------------------ submitting

    async def submit(
        self,
        provider: str | None,
        model: Any,
        options: Any = None,
        token: Any = None,
        job_id: Any = None,
        base_url: Any = None,
    ) -> Job:
        """Validate a download request and queue it (or attach it to the same running source)."""
        if not isinstance(model, str) or not model.strip():
            raise bad_request("'model' is required and must be a non-empty string", "model", "missing_model")
        model = model.strip()
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise bad_request("'options' must be an object", "options", "invalid_parameter")
        options = dict(options)
        if provider is None or provider == "":
            try:
                reference = parse_reference(model)
            except ValueError as exc:
                raise bad_request(f"'provider' is missing and {exc}", "provider", "missing_provider") from None
            provider, model, options = reference.provider, reference.model, {**reference.options, **options}
        if not isinstance(provider, str):
            raise bad_request("'provider' must be a string", "provider", "invalid_parameter")
        for name, value in (("token", token), ("base_url", base_url)):
            if value is not None and not isinstance(value, str):
                raise bad_request(f"'{name}' must be a string", name, "invalid_parameter")
        if job_id is not None and (not isinstance(job_id, str) or not valid_id(job_id)):
            raise bad_request("'id' must use 1 to 128 characters from A-Z a-z 0-9 . _ : -", "id", "invalid_id")
        try:
            name = canonical_name(provider)
            source = get_provider(name)
        except ValueError as exc:
            raise bad_request(str(exc), "provider", "unsupported_provider") from None
        options = await self._checked_options(name, source, options)
        if name == "url":
            await self._check_url(model, "model")
            options.setdefault("filename", suggest_filename(model))
        self._check_request(name, model, options, token, base_url, "model")
        if name == "url":
            self._check_url_destination(options)
        if base_url:
            await self._check_url(base_url, "base_url", require_path=False)
        if job_id is not None:
            existing = self.jobs.get(job_id)
            if existing is not None and not existing.final:
                raise ApiError(409, f"A download with id '{job_id}' is already {existing.status}", param="id",
                               code="download_id_exists")
        self._check_queue_room()
        job = self._new_job(job_id or _new_id(), name, model, options, token or None, base_url or None, None)
        await self._enqueue(job)
        return job

    async def _checked_options(self, name: str, source: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Known option names only; every folder inside the models dir; URLs through the URL policy."""
        allowed = set(TransferOptions.NAMES) | set(source.option_names)
        for key in options:
            if key == "models_dir":
                raise bad_request("'models_dir' is set by the server (MODELPULL_HOME); use 'dest' for a "
                                  "folder inside it", "options.models_dir", "invalid_parameter")
            if key not in allowed:
                raise bad_request(
                    f"Unknown option '{key}' for provider '{name}' (known: {', '.join(sorted(allowed))})",
                    f"options.{key}", "unknown_option",
                )
        for key in _FOLDER_OPTIONS:
            if key not in options:
                continue
            value = options[key]
            if not isinstance(value, str) or not value:
                raise bad_request(f"'options.{key}' must be a folder path", f"options.{key}", "invalid_parameter")
            try:
                folder = resolve_inside(self.models_dir, value)
            except ValueError as exc:
                raise bad_request(f"'options.{key}': {exc}", f"options.{key}", "invalid_destination") from None
            # Only `dest` (one URL's file, under a plain name) may be a folder that holds the state.
            conflict = self._state_conflict(folder, holds_tree=key != "dest")
            if conflict:
                raise bad_request(f"'options.{key}': {shown_name(value)} {conflict}; choose a folder for downloads "
                                  "inside the models dir", f"options.{key}", "invalid_destination")
            options[key] = str(folder)
        for key in _URL_OPTIONS:
            if key in options:
                if not isinstance(options[key], str):
                    raise bad_request(f"'options.{key}' must be a URL", f"options.{key}", "invalid_parameter")
                await self._check_url(options[key], f"options.{key}", require_path=False)
        # Downloads land in the models dir: the Hub cache and Ollama's store get a home inside it.
        if name in ("huggingface", "mlx") and "local_dir" not in options:
            options.setdefault("cache_dir", str(self.models_dir / "huggingface" / "hub"))
        if name == "ollama":
            options.setdefault("models_path", str(self.models_dir / "ollama"))
        return options

    def _state_conflict(self, folder: Path, *, holds_tree: bool) -> str | None:
        """Why `folder` may not receive downloads: it is (inside) the server's state, or holds it."""
        state = [self.settings.state_dir]
        if not self.settings.shared_database:  # an SQLite file, wherever the operator put it
            database = Path(self.settings.database_url).expanduser()
            state += [database.with_name(database.name + s) for s in ("", "-wal", "-shm", "-journal")]
        for path in state:
            if is_within(folder, path):
                return "is the server's own state (its database, WAL and locks)"
            if holds_tree and is_within(path, folder):
                return "holds the server's own state (its database, WAL and locks)"
        return None

    def _check_url_destination(self, options: dict[str, Any]) -> None:
        """A URL's file may not take the name of the server's database or its WAL."""
        target = Path(options.get("dest") or self.models_dir) / options["filename"]
        if self._state_conflict(target, holds_tree=False):
            raise bad_request(f"'options.filename': {options['filename']!r} in that folder is the server's own state; "
                              "choose another name", "options.filename", "invalid_destination")

    def _check_request(self, provider: str, model: str, options: dict[str, Any], token: str | None,
                       base_url: str | None, model_param: str) -> None:
        """The provider's own checks of the name and options (malformed: 400/422 now, not a failed job)."""
        try:
            _api.check_download(provider, model, token, base_url, **options)
        except InvalidRequest as exc:
            if model_param == "model_path":  # a POST /engines reference: its options are part of it
                raise ApiError(422, str(exc), param=model_param, code="invalid_model_url") from None
            param = exc.param or model_param
            if param.startswith("options."):
                raise bad_request(str(exc), param, "invalid_parameter") from None
            raise ApiError(422, str(exc), param=param, code="invalid_model") from None

    def _check_queue_room(self) -> None:
        queued = sum(1 for job in self.jobs.values() if job.status == J.QUEUED)
        if queued >= self.settings.max_queued_jobs:
            raise ApiError(
                429, f"{queued} downloads are already waiting (the limit is {self.settings.max_queued_jobs}, "
                     "--max-queued-jobs): try again once some have started", code="too_many_queued",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)})

    def _local_model_path(self, model_path: str) -> Path:
        """A local file or folder POST /engines may read: under the models dir or a --local-model-root.

        Outside them the answer is the same whether or not the path exists: no oracle of the disk.
        """
        path = Path(model_path).expanduser() if "\0" not in model_path else None  # relative: to the cwd
        if (path is None or not any(is_within(path, root) for root in self._model_roots())
                or self._state_conflict(path, holds_tree=False)):
            raise bad_request(
                f"Model path {shown_name(model_path)} is not inside the models directory or a local model root: "
                f"put the file under {self.models_dir}, or start the server with --local-model-root <folder> "
                "(MODELPULL_LOCAL_MODEL_ROOTS)", "model_path", "model_path_not_allowed")
        if not path.exists():
            raise bad_request(f"Model path '{model_path}' does not exist. Please verify the path is correct.",
                              "model_path", "model_path_not_found")
        return path

    def _model_roots(self) -> list[Path]:
        """The folders an engine may read model files from: the models dir and --local-model-root."""
        return [self.models_dir, *self.settings.local_model_roots]

    async def _check_url(self, url: str, param: str, require_path: bool = True) -> None:
        try:
            if not require_path and urlsplit(url).path in ("", "/"):
                url = url.rstrip("/") + "/x"
            await check_url(url, self.policy)
        except UrlRefused as exc:
            raise ApiError(422, str(exc), param=param, code=exc.code) from None

    def _new_job(
        self, job_id: str, provider: str, model: str, options: dict[str, Any], token: str | None,
        base_url: str | None, engine: EngineRequest | None,
    ) -> Job:
        old = self.jobs.pop(job_id, None)
        if old is not None:  # a finished job with this id is replaced
            for subscriber in list(old.subscribers):
                subscriber.close()
        job = Job(
            id=job_id, provider=provider, model=model, options=options,
            source_key=_source_key(provider, model, options, base_url),
            lock_key=_lock_key(provider, model, options),
            base_url=base_url, token=token,
            engine=engine.creation_info() if engine else None,
        )
        if old is not None:
            job.event_id = old.event_id
            SECRETS.discard(old.token)
        SECRETS.add(token)
        if provider == "url":
            directory = Path(options.get("dest") or self.models_dir)
            job.local_path = str(directory / options["filename"])
        self.jobs[job_id] = job
        return job

    async def _enqueue(self, job: Job) -> None:
        """Queue the job in the store (any replica may claim it), then look for work."""
        job.queue_position = None
        job.set_status(J.QUEUED, "Queued", phase="queued")
        self._number_queue()
        try:
            # A token is never stored: a job that needs one stays with the replica holding it.
            await self.store.add_job(job.to_record(), owned=job.token is not None)
        except StoreError as exc:
            job.set_status(J.FAILED, f"Not queued: {exc}", phase="error")
            job.error_code = "store_unavailable"
            raise ApiError(503, f"The job store is unavailable: {exc}", code="store_unavailable") from None
        job.unsaved = False
        self._publish(job)
        # Claim at once when this replica can take it (a free slot, or its source moving here:
        # it follows before the answer goes out); otherwise the scheduler's next look.
        if len(self._running) < self.settings.max_active_jobs or job.source_key in self._transfers:
            try:
                await self._claim_work()
            except StoreError:
                pass
        self._schedule()

    # ------------------------------------------------------------------ engines

    async def add_engine(self, request: EngineRequest) -> EngineAddResult:
        """Kolosal's POST /engines: create now, or download first (ApiError for refusals)."""
        if self.engines.taken(request.engine_id):
            raise ApiError(409, f"Engine ID '{request.engine_id}' already exists. Please choose a different "
                                "engine ID.", param="engine_id", code="engine_id_exists")
        model_path = request.model_path
        kind = _model_path_kind(model_path)
        existing = self.jobs.get(request.engine_id)
        if kind == "local":
            path = self._local_model_path(model_path)
            return EngineAddResult("created", engine=await self._create_engine_now(request, path, None))

        if kind == "url":
            await self._check_url(model_path, "model_path")
            provider, model, options = "url", model_path, {"filename": suggest_filename(model_path)}
        else:
            try:
                reference = parse_reference(model_path)
                provider = canonical_name(reference.provider)
                source = get_provider(provider)
            except ValueError as exc:
                raise ApiError(422, str(exc), param="model_path", code="invalid_model_url") from None
            model, options = reference.model, await self._checked_options(provider, source, dict(reference.options))
        if request.sha256:
            options["sha256"] = request.sha256
        self._check_request(provider, model, options, request.token, None, "model_path")
        if provider == "url":
            self._check_url_destination(options)

        if existing is not None and not existing.final:
            if existing.source_key != _source_key(provider, model, options, None):
                raise ApiError(409, f"A download with id '{request.engine_id}' is already running for another "
                                    "source", param="engine_id", code="download_id_exists")
            if existing.engine is None:
                existing.engine = request.creation_info()
                existing.touch()
                self._publish(existing)
            return EngineAddResult("in_progress", job=existing)

        if provider == "url":
            dest = self.models_dir / options["filename"]
            if is_downloaded_from(dest, model_path) and self._transfers.get(
                    _source_key(provider, model, options, None)) is None:
                return EngineAddResult("created", engine=await self._create_engine_now(request, dest, None))
            kind_of_start = "resuming" if any(p.exists() for p in partial_paths(dest)) else "started"
        else:
            kind_of_start = "started"
        self._check_queue_room()
        job = self._new_job(request.engine_id, provider, model, options, request.token, None, request)
        await self._enqueue(job)
        return EngineAddResult(kind_of_start, job=job)

    async def _create_engine_now(self, request: EngineRequest, path: Path, download_id: str | None) -> dict[str, Any]:
        try:
            return await self.engines.create(request, path, download_id, roots=self._model_roots(), record_failure=False)
        except UnsupportedModel as exc:
            raise bad_request(str(exc), "model_path", "invalid_model_format") from None

    async def _create_waiting_engine(self, job: Job, local_path: str | None) -> str:
        """The download finished: create the engine waiting for it; what to add to the job's message.

        Its failure leaves the job completed.
        """
        request = EngineRequest.from_creation_info(job.engine)  # type: ignore[arg-type]
        if self.engines.taken(request.engine_id):
            note = "not created: that id was taken meanwhile"
        else:
            try:
                await self.engines.create(request, Path(local_path or ""), job.id, roots=self._model_roots())
                note = "created"
            except UnsupportedModel as exc:
                note = f"not created: {exc}"
            except Exception as exc:  # an engine problem never turns a finished download into an error
                log.exception("engine creation failed", extra={"engine_id": request.engine_id})
                note = f"not created: {exc}"
        return f"engine '{request.engine_id}' {note}"

    # ------------------------------------------------------------------ control

    async def cancel(self, job_id: str, keep_partial: bool = False) -> str:
        """Cancel a job now; returns its previous status. ApiError 400 if it had already ended.

        The partial data is deleted, unless `keep_partial` (then a later download of the same
        model resumes from it, as after Ctrl-C in the CLI) or another job still follows the transfer.
        """
        job = self.get(job_id)
        if job.final:
            raise bad_request(f"Cannot cancel download. Current status: {job.status}", None, "download_finished")
        previous = job.status
        if await self._sent_to_owner(job, _CANCEL_KEEP if keep_partial else "cancel"):
            return previous
        if job.final:  # it ended while the store answered
            raise bad_request(f"Cannot cancel download. Current status: {job.status}", None, "download_finished")
        self._cancel_here(job, keep_partial=keep_partial)
        return previous

    def _cancel_here(self, job: Job, *, keep_partial: bool = False) -> None:
        previous = job.status
        transfer = self._transfer_of(job)
        if transfer is not None:
            self._detach(job, transfer, discard=not keep_partial)
        elif previous == J.PAUSED and not keep_partial:
            self._discard_partial(job)
        if keep_partial:
            message = "Download cancelled; partial data kept: downloading the same model again resumes from it"
        elif previous == J.QUEUED:
            message = "Download cancelled before it started"
        else:
            message = "Download cancelled; partial data deleted"
        job.set_status(J.CANCELLED, message, phase="cancelled")
        self._finish(job)
        self._schedule()

    async def pause(self, job_id: str) -> bool:
        """Pause at once (the transfer stops in the background). False when already paused."""
        job = self.get(job_id)
        if job.final:
            raise bad_request(f"Cannot pause download. Current status: {job.status}", None, "download_finished")
        if job.status == J.PAUSED:
            return False
        if await self._sent_to_owner(job, "pause"):
            return True
        if job.final or job.status == J.PAUSED:
            return False
        self._pause_here(job)
        return True

    def _pause_here(self, job: Job) -> None:
        transfer = self._transfer_of(job)
        if transfer is not None:
            self._detach(job, transfer, discard=False)
        job.set_status(J.PAUSED, "Paused; partial data kept", phase="paused")
        self._save([job])
        self._publish(job)
        self._schedule()

    async def _sent_to_owner(self, job: Job, action: str) -> bool:
        """True when another replica runs the job and got the request through the store."""
        if self._runs_here(job):
            return False
        try:
            return await self.store.request_control(job.id, action)
        except StoreError as exc:
            raise ApiError(503, f"The job store is unavailable: {exc}", code="store_unavailable") from None

    def apply_control(self, job_id: str, action: str) -> None:
        """A pause or cancel another replica asked for a job running here."""
        job = self.jobs.get(job_id)
        if job is None or job.final:
            return
        if action in ("cancel", _CANCEL_KEEP):
            self._cancel_here(job, keep_partial=action == _CANCEL_KEEP)
        elif action == "pause" and job.status != J.PAUSED:
            self._pause_here(job)

    async def resume(self, job_id: str, token: str | None = None) -> bool:
        """Queue a paused (or failed) job again. False when it is already queued or running."""
        job = self.get(job_id)
        if job.status in (J.COMPLETED, J.CANCELLED):
            raise bad_request(f"Cannot resume download. Current status: {job.status}", None, "download_finished")
        if token:
            SECRETS.discard(job.token)
            SECRETS.add(token)
            job.token = token
        if job.status not in (J.PAUSED, J.FAILED):
            return False
        job.reset_for_retry()
        await self._enqueue(job)
        return True

    async def cancel_all(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        cancelled, skipped, total = [], [], 0
        for job in list(self.jobs.values()):
            total += 1
            if job.final:
                skipped.append({"model_id": job.id, "status": job.status,
                                "reason": "Already completed, failed, or cancelled"})
                continue
            try:
                previous = await self.cancel(job.id)
            except ApiError as exc:  # it ended meanwhile
                skipped.append({"model_id": job.id, "status": job.status, "reason": exc.message})
                continue
            cancelled.append({"model_id": job.id, "previous_status": previous, "cancelled_at": now_ms()})
        return cancelled, skipped, total

    def _transfer_of(self, job: Job) -> Transfer | None:
        transfer = self._transfers.get(job.source_key)
        return transfer if transfer is not None and job.id in transfer.job_ids else None

    def _runs_here(self, job: Job) -> bool:
        """The job is this replica's to change: it runs here, or waits here holding its token."""
        return self._transfer_of(job) is not None or (job.status == J.QUEUED and job.token is not None)

    def _detach(self, job: Job, transfer: Transfer, *, discard: bool) -> None:
        transfer.job_ids.remove(job.id)
        if not transfer.job_ids:
            # Nobody follows it any more: stop it in the background. Its files stay locked
            # (lock_key) until the task has really ended, so a resume cannot race it.
            self._transfers.pop(transfer.source_key, None)
            transfer.control.cancel(discard=discard)
        self._refresh_shared()

    def _discard_partial(self, job: Job) -> None:
        """Delete a paused job's partial data, unless another transfer is writing it: a URL's file,
        or the unfinished blobs of a Hub repo's cache folder (Ollama's store is shared by every
        model, so its partial blobs stay)."""
        if job.lock_key in self._locks:
            return
        for dest in _partial_destinations(job):
            with contextlib.suppress(OSError, ModelPullError):
                discard_partial(dest)

    # ------------------------------------------------------------------ scheduling

    def _schedule(self) -> None:
        """Look for work soon (a slot freed, a job queued)."""
        self._wake.set()

    async def _schedule_loop(self) -> None:
        interval = CLAIM_INTERVAL if self.store.shared else 5 * CLAIM_INTERVAL
        while not self._closing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self._claim_work()
            except StoreError as exc:
                log.warning("cannot claim work: the store is unavailable", extra={"reason": str(exc)})
                await asyncio.sleep(interval)

    async def _claim_work(self) -> None:
        """Claim queued jobs (and jobs of a replica that died) from the store, and run them."""
        async with self._claiming:  # one claim at a time: a claim sees the one before it started jobs
            await self._claim_locked()

    async def _claim_locked(self) -> None:
        if self._closing:
            return
        await self.store.flush()  # this replica's own changes first (a pause, a release)
        free = max(0, self.settings.max_active_jobs - len(self._running))
        records = await self.store.claim(free, set(self._locks), set(self._transfers))
        released, resumed = [], []
        for record in records:
            job = self._merge(record, claimed=True)
            if self._closing or job is None or job.status not in (J.QUEUED, J.DOWNLOADING, J.VERIFYING):
                if job is not None:
                    released.append(job)
                continue
            transfer = self._transfers.get(job.source_key)
            if transfer is not None:
                self._attach(job, transfer)
            elif len(self._running) < self.settings.max_active_jobs and job.lock_key not in self._locks:
                if job.status != J.QUEUED:  # it was running when its replica stopped
                    resumed.append(job.id)
                self._start_transfer(job)
            else:
                released.append(job)
        self._save(released, release=True)
        self._queue_moved = True
        if resumed:
            log.info("resuming unfinished downloads", extra={"count": len(resumed), "job_ids": resumed[:20]})

    def _number_queue(self) -> None:
        """Give each queued job its place in line (1 = claimed next: the store's order, oldest
        first) and say it in its message."""
        queued = sorted((j for j in self.jobs.values() if j.status == J.QUEUED), key=lambda j: (j.created_at, j.id))
        for position, job in enumerate(queued, start=1):
            if job.queue_position != position:
                job.queue_position = position
                job.message = f"Queued: {_ordinal(position)} in line"
                job.touch(stored=False)

    def _merge(self, record: dict[str, Any], *, claimed: bool = False) -> Job | None:
        """Bring the store's record of a job into `jobs` (in place: streams hold the object).

        A job running here is this replica's to change: the store's copy is older. A change made
        here and not yet written (newer `updated_at`) wins over a claimed record too; a record no
        newer than the job is a change already seen."""
        job = self.jobs.get(record.get("id", ""))
        if job is None:
            try:
                job = Job.from_record(record)
            except (TypeError, KeyError):
                log.warning("skipping an unreadable stored job", extra={"record_id": record.get("id")})
                return None
            self.jobs[job.id] = job
            return job
        if self._transfer_of(job) is not None or job.updated_at >= record.get("updated_at", 0):
            return job  # ours, or nothing newer than what we hold
        job.merge_record(record)
        return job

    # ------------------------------------------------------------------ other replicas' changes

    def job_changed_elsewhere(self, record: dict[str, Any]) -> None:
        """The change feed brought a job's new record: show it, and claim it if it is queued."""
        known = record.get("id") in self.jobs
        job = self._merge(record)
        if job is None or self._transfer_of(job) is not None:
            return
        self._queue_moved = True
        if not known or job.dirty:
            self._publish(job)
        if job.status == J.QUEUED:
            self._schedule()

    def job_removed_elsewhere(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.unsaved or self._transfer_of(job) is not None:
            return  # gone already, or ours: running here, or just submitted and not yet stored
        self._forget([job])

    def _attach(self, job: Job, transfer: Transfer) -> None:
        transfer.job_ids.append(job.id)
        job.started_at = job.started_at or now_ms()
        job.set_status(J.DOWNLOADING, "Following a download of the same source already in progress",
                       phase="downloading")
        if transfer.last is not None:
            job.apply(dataclasses.replace(transfer.last, status=DownloadStatus.DOWNLOADING
                                          if transfer.last.status is DownloadStatus.STARTING else transfer.last.status))
        self._refresh_shared()
        self._save([job])
        self._publish(job)

    def _start_transfer(self, job: Job) -> None:
        transfer = Transfer(source_key=job.source_key, lock_key=job.lock_key, job_ids=[job.id])
        self._transfers[job.source_key] = transfer
        self._locks[job.lock_key] = transfer
        self._running.add(transfer)
        job.started_at = job.started_at or now_ms()
        job.set_status(J.DOWNLOADING, "Starting", phase="starting")
        self._save([job])
        self._publish(job)
        transfer.task = asyncio.create_task(self._run(transfer, job), name=f"modelpull:job:{job.id}")

    async def _run(self, transfer: Transfer, leader: Job) -> None:
        """Drive one download_model() call and hand every item to the jobs following it."""
        # The server's settings (flags included) are the defaults; a job's own options win.
        options = {
            "connections": self.settings.connections,
            "multipart_threshold": self.settings.multipart_threshold,
            "stall_timeout": self.settings.stall_timeout,
            "max_retries": self.settings.max_retries,
            **leader.options,
        }
        final: DownloadProgress | None = None
        try:
            stream = _api.download_model(
                leader.provider, leader.model, token=leader.token, base_url=leader.base_url,
                models_dir=str(self.models_dir), _control=transfer.control, _session=self._session, _wire=self._wire,
                **options,
            )
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    transfer.last = item
                    self._count_bytes(transfer, item)
                    if item.status.is_terminal:
                        final = item
                        break
                    self._deliver(transfer, item)
        except asyncio.CancelledError:
            if self._closing:
                raise
            final = None
        except ModelPullError as exc:
            final = error_item(exc, partial=transfer.last)
        except Exception as exc:  # never let one download take the manager down
            log.exception("download task failed", extra={"job_id": leader.id})
            final = error_item(ModelPullError(f"internal error: {exc}", code="internal_error"), partial=transfer.last)
        finally:
            if not self._closing:
                await self._end_transfer(transfer, final)

    def _count_bytes(self, transfer: Transfer, item: DownloadProgress) -> None:
        if item.downloaded_bytes is None or item.status is DownloadStatus.COMPLETE:
            return
        if transfer.baseline_bytes is None:
            transfer.baseline_bytes = item.downloaded_bytes
            transfer.counted_bytes = item.downloaded_bytes
            return
        delta = item.downloaded_bytes - transfer.counted_bytes
        if delta > 0:
            self.downloaded_bytes_total += delta
        transfer.counted_bytes = item.downloaded_bytes

    def _deliver(self, transfer: Transfer, item: DownloadProgress) -> None:
        for job_id in list(transfer.job_ids):
            job = self.jobs.get(job_id)
            if job is None:
                continue
            if job.apply(item):
                self._save([job])
                self._publish(job)

    async def _end_transfer(self, transfer: Transfer, final: DownloadProgress | None) -> None:
        if self._transfers.get(transfer.source_key) is transfer:
            del self._transfers[transfer.source_key]
        followers = [self.jobs[i] for i in transfer.job_ids if i in self.jobs]
        transfer.job_ids = []
        try:
            if final is None:
                final = DownloadProgress(status=DownloadStatus.ERROR, message="The download stopped unexpectedly",
                                         error_code="interrupted")
            if final.status is DownloadStatus.COMPLETE and final.downloaded_bytes is not None:
                self.downloaded_bytes_total += max(0, (final.total_bytes or 0) - transfer.counted_bytes)
            for job in followers:
                if final.status is DownloadStatus.CANCELLED:
                    # Only a control cancels; a job still following here was not asked to stop.
                    job.apply(error_item(ModelPullError("The download was stopped", code="interrupted"),
                                         partial=final))
                elif final.status is DownloadStatus.COMPLETE and job.engine is not None:
                    # The engine first: nobody may see the job completed while its engine is missing.
                    engine_note = await self._create_waiting_engine(job, final.local_path)
                    job.apply(final)
                    job.message = f"{job.message}; {engine_note}"
                    job.touch()
                else:
                    job.apply(final)
                self._finish(job)
        finally:
            if self._locks.get(transfer.lock_key) is transfer:
                del self._locks[transfer.lock_key]
            self._running.discard(transfer)
            self._refresh_shared()
            self._schedule()

    def _finish(self, job: Job) -> None:
        if job.status == J.FAILED:
            self.failures[job.error_code or "error"] += 1
        elif job.status == J.COMPLETED:
            self.completed_total += 1
        self._save([job])
        self._publish(job)

    def _refresh_shared(self) -> None:
        for transfer in self._transfers.values():
            for job_id in transfer.job_ids:
                job = self.jobs.get(job_id)
                if job is None:
                    continue
                others = [i for i in transfer.job_ids if i != job_id]
                if others != job.shared_with:
                    job.shared_with = others
                    job.touch()
        for job in self.jobs.values():
            if job.shared_with and self._transfer_of(job) is None:
                job.shared_with = []
                job.touch()

    # ------------------------------------------------------------------ events

    def _publish(self, job: Job) -> None:
        """Send the job's current state to its subscribers and /events, now."""
        job.event_id += 1
        job.dirty = False
        job.last_published = time.monotonic()
        data = job.event_data()
        event = (job.event_id, data, job.final)
        job.events.append(event)
        for subscriber in list(job.subscribers):
            subscriber.put(event, job.id)
        self._broadcast("job", data, ("job", job.id))

    def _broadcast(self, kind: str, data: str, key: Any = None) -> None:
        """An event for every /events stream. `key` names what it is the state of (("job", id)): a
        stream that lags holds only the newest state of each."""
        self._seq += 1
        if self.fanout.open_streams:
            # One frame for every /events stream: encoded once, the queues hold references.
            self.fanout.publish((self._seq, frame(data, self._seq, kind).encode()), key)

    @property
    def last_seq(self) -> int:
        """The id of the last /events event (a snapshot taken now carries it)."""
        return self._seq

    def engine_changed(self, kind: str, record: dict[str, Any]) -> None:
        self._broadcast(kind, json.dumps(record, separators=(",", ":")), ("engine", record.get("engine_id")))

    def check_stream_capacity(self) -> None:
        """ApiError 503 when `--max-event-streams` streams are open (a route asks before answering)."""
        try:
            self.fanout.check_capacity()
        except StreamLimitReached:
            raise ApiError(503, f"Too many event streams are open (the server allows {self.fanout.max_streams}, "
                                "--max-event-streams): close one, or try again later",
                           code="too_many_streams", headers={"Retry-After": "5"}) from None

    def subscribe_job(
        self, job: Job, last_event_id: int | None
    ) -> tuple[Subscriber, list[tuple[int, str, bool]]] | None:
        """A subscriber and the events to send first; None when the client already saw the end."""
        if last_event_id is not None and job.final and last_event_id >= job.event_id:
            return None
        subscriber = self.fanout.open(broadcast=False)
        if job.dirty:
            self._publish(job)
        buffered = list(job.events)
        if last_event_id is not None and buffered and buffered[0][0] <= last_event_id + 1 and last_event_id <= job.event_id:
            backlog = [event for event in buffered if event[0] > last_event_id]
        else:
            backlog = [(job.event_id, job.event_data(), job.final)]
        if not job.final:
            job.subscribers.add(subscriber)
        return subscriber, backlog

    def unsubscribe_job(self, job: Job, subscriber: Subscriber) -> None:
        job.subscribers.discard(subscriber)
        self.fanout.release(subscriber)

    def subscribe_all(self) -> Subscriber:
        """A subscriber to /events; its stream sends `snapshot()` first."""
        return self.fanout.open(broadcast=True)

    def snapshot(self) -> tuple[int, list[Job], list[dict[str, Any]]]:
        """What a new /events stream shows first: (the last event id, every job, every engine).
        Lists of references only: the stream renders them a few at a time."""
        return self._seq, list(self.jobs.values()), self.engines.all()

    def unsubscribe_all(self, subscriber: Subscriber) -> None:
        self.fanout.release(subscriber)

    # ------------------------------------------------------------------ background

    def _save(self, jobs: list[Job], *, release: bool = False) -> None:
        """Write these jobs to the store, without waiting (the store orders its writes).

        Jobs running here stay claimed by this replica; the others (and all, on `release`) are
        released for any replica to claim."""
        if not jobs:
            return
        jobs = list({j.id: j for j in jobs}.values())
        owned = () if release else [j.id for j in jobs if self._runs_here(j)]
        records = [j.to_record() for j in jobs]
        for job in jobs:
            job.unsaved = False
        self.store.save_jobs(records, owned)

    async def _heartbeat_loop(self) -> None:
        """Renew this replica's leases; stop what another replica took over; apply the pauses and
        cancels other replicas asked for."""
        renewed = True
        while True:
            # A failed renewal is tried again within a second: the lease is running out.
            await asyncio.sleep(self.store.lease_seconds / 3 if renewed else 1.0)
            renewed = await self.heartbeat()

    async def heartbeat(self) -> bool:
        """Renew the leases now (False when the store could not be reached)."""
        running = set(self.running_job_ids())
        try:
            owned, controls = await self.store.heartbeat()
        except StoreError as exc:
            log.warning("cannot renew leases: the store is unavailable", extra={"reason": str(exc)})
            return False
        for job_id in running - owned:
            job = self.jobs.get(job_id)
            transfer = self._transfer_of(job) if job is not None else None
            if transfer is not None:  # our lease expired and another replica claimed it
                log.warning("a download was taken over by another replica", extra={"job_id": job_id})
                self._detach(job, transfer, discard=False)
        for job_id, action in controls:
            self.apply_control(job_id, action)
        return True

    async def _flush_loop(self) -> None:
        """Publish coalesced progress and write it to the store, a few times a second."""
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            now = time.monotonic()
            if self._queue_moved:  # numbered here, a few times a second, not on every change
                self._queue_moved = False
                self._number_queue()
            for job in due_for_publish(self.jobs.values(), now):
                self._publish(job)
            if now - last_save >= SAVE_INTERVAL:
                last_save = now
                self._save([j for j in self.jobs.values() if j.unsaved])

    async def _prune_loop(self) -> None:
        retention = self.settings.retention_seconds
        interval = max(0.2, min(30.0, retention / 2))
        while True:
            await asyncio.sleep(interval)
            self.prune()

    def prune(self) -> list[str]:
        """Forget finished jobs older than the retention time."""
        cutoff = now_ms() - int(self.settings.retention_seconds * 1000)
        expired = [j for j in self.jobs.values() if j.final and (j.finished_at or 0) <= cutoff]
        if not expired:
            return []
        self.store.delete_jobs([j.id for j in expired])
        return self._forget(expired)

    def dismiss(self, job_id: str) -> None:
        """Forget a finished job now (the web page's Dismiss); its files stay on disk.
        ApiError 400 while it is still queued, running or paused."""
        job = self.get(job_id)
        if not job.final:
            raise bad_request(f"Cannot dismiss a download that is {job.status}: cancel it first", None,
                              "download_not_finished")
        self.store.delete_jobs([job.id])
        self._forget([job])

    def _forget(self, jobs: list[Job]) -> list[str]:
        for job in jobs:
            del self.jobs[job.id]
            SECRETS.discard(job.token)
            for subscriber in list(job.subscribers):
                subscriber.close()
            self._broadcast("job-removed", json.dumps({"id": job.id}), ("job", job.id))
        return [j.id for j in jobs]


# ---------------------------------------------------------------------- helpers


def _new_id() -> str:
    return "dl-" + secrets.token_hex(6)


def _partial_destinations(job: Job) -> list[Path]:
    """The files whose partial data a paused job may have left."""
    if job.provider == "url":
        return [Path(job.local_path)] if job.local_path else []
    if job.provider in ("huggingface", "mlx") and "local_dir" not in job.options:
        try:
            folder = Path(_api.data_location(job.provider, job.model, job.base_url, **job.options))
        except (ValueError, ModelPullError):
            return []
        return [part.with_name(part.name.removesuffix(".part")) for part in (folder / "blobs").glob("*.part")]
    return []


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _source_key(provider: str, model: str, options: dict[str, Any], base_url: str | None) -> str:
    which = {k: v for k, v in options.items() if k not in _TUNING_OPTIONS}
    # A digest: the key is stored with the job, and a signed URL's secrets must not be stored twice.
    key = json.dumps([provider, model, base_url, which], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def _lock_key(provider: str, model: str, options: dict[str, Any]) -> str:
    if provider == "url":  # one URL's file: its folder and name
        return json.dumps(["url", options.get("dest"), options.get("filename")])
    return json.dumps([provider, model.lower()])


def _model_path_kind(model_path: str) -> str:
    """'url', 'reference' or 'local' for a POST /engines model_path."""
    lowered = model_path.lower()
    # "https:/host/x" and "http:host/x" are URLs too (malformed ones: a 422 says why), not file names.
    if lowered.startswith(("http:", "https:")) or "://" in lowered:
        return "url"
    prefix = lowered.partition(":")[0]
    if ":" in lowered and prefix in ("hf", "huggingface", "mlx", "ollama", "url"):
        return "reference"
    return "local"


def _configured_hosts() -> list[tuple[str, int]]:
    """Hosts the operator configured (a local Ollama, the Hub endpoint, proxies): reachable
    whatever the private-address rule says (never when they are metadata services)."""
    hosts: list[tuple[str, int]] = [("localhost", 11434), ("127.0.0.1", 11434), ("::1", 11434)]
    for name in ("OLLAMA_HOST", "HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                 "ALL_PROXY", "all_proxy"):
        value = os.environ.get(name)
        if not value:
            continue
        if "://" not in value:
            value = "http://" + value
        with contextlib.suppress(ValueError):
            parts = urlsplit(value)
            if parts.hostname:
                default = 11434 if name == "OLLAMA_HOST" else (443 if parts.scheme == "https" else 80)
                hosts.append((parts.hostname, parts.port or default))
    return hosts

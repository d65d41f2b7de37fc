"""The Python face: `download_model()` (async, AbstractCore-compatible) and `pull()` (blocking)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ._errors import InvalidRequest, ModelPullError
from ._plan import DownloadRequest, Plan, TransferOptions
from ._progress import DownloadProgress, DownloadStatus
from ._refs import parse_reference
from ._run import DownloadControl, RunContext, error_item
from ._settings import Settings
from .providers import canonical_name, get_provider
from .transfer._rate import RateLimit

log = logging.getLogger("modelpull")


async def download_model(
    provider: str,
    model: str,
    token: str | None = None,
    base_url: str | None = None,
    **options: Any,
) -> AsyncIterator[DownloadProgress]:
    """Download `model` from `provider`, yielding `DownloadProgress` items as it goes.

    An async generator (AbstractCore's `download_model`, and more): the first item is STARTING;
    the last is COMPLETE (`percent` 100.0, `local_path` set) or ERROR (`error_code` and a message
    saying what failed and what to do). Failures are items, not exceptions, except an unknown
    provider: ValueError "... does not support model downloads", raised on the first iteration.
    Closing the generator (`aclose()`, or cancelling the task reading it) stops the transfer at
    once and keeps the partial data: the same call later resumes from it.

    Providers (`provider`, then what `model` is):

        "url"           an http(s) URL of one file (aliases "http", "https")
                        options: dest (folder, default models_dir), filename (name to save as)
        "huggingface"   a Hub repo id, "org/name" (alias "hf"); files land in the Hub cache
                        (HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)
                        options: revision (branch, tag or commit; default "main"), filename (one
                        file), allow_patterns / ignore_patterns (globs, a string or a list),
                        repo_type ("model" or "dataset"), cache_dir (another Hub cache),
                        local_dir (plain files in this folder instead of the cache)
                        token: token=, else HF_TOKEN, else the saved `hf auth login` (HF_TOKEN_PATH,
                        $HF_HOME/token); base_url: a Hub mirror (else HF_ENDPOINT)
        "mlx"           an MLX model: "name" means "mlx-community/name", or "org/name";
                        the Hugging Face options; the repo is checked to be an MLX model
        "ollama"        "name[:tag]" or "host/namespace/name:tag"
                        options: direct (True: from the registry into Ollama's store without a
                        running Ollama; False: only through the server; None: through the server
                        at base_url / OLLAMA_HOST / localhost:11434, else direct), registry (the
                        registry's base URL), insecure (True: plain http to the registry, as
                        `ollama pull --insecure`), models_path (the store; default OLLAMA_MODELS,
                        else ~/.ollama/models)

    Options for every provider: models_dir (where "url" downloads land; default
    MODELPULL_HOME or ./models) and the transfer options: connections (per large file, 8),
    multipart_threshold (bytes before a file is split, 64 MiB), piece_size, stall_timeout
    (seconds without a byte before reconnecting, 30), connect_timeout, max_retries (failures in
    a row before giving up, 5), retry_backoff, retry_max_delay, max_concurrent_files (4),
    sha256 (expected digest of a one-file download: a mismatch deletes the file and fails),
    limit_rate (bytes per second for all connections of the call; a shared
    `modelpull.transfer._rate.RateLimit` caps several calls together).
    Any other name: an ERROR item with code "invalid_request" naming the known ones.

    Each `DownloadProgress` has: status (QUEUED, STARTING, DOWNLOADING, PAUSED, VERIFYING,
    COMPLETE, ERROR, CANCELLED), message (a sentence for people), percent (0-100 over the whole
    model; None while the size is unknown), downloaded_bytes / total_bytes (the whole model,
    bytes kept from an earlier attempt included), speed_bps and eta_seconds (None until known),
    files_completed / files_total / current_file, active_files and files (per-file
    {name, downloaded_bytes, total_bytes, status}), local_path (on COMPLETE: the file, or the
    snapshot folder of a repo), error_code (on ERROR).

    Error codes (ERROR items' `error_code`; the exception classes of `modelpull` in brackets):
    invalid_request [InvalidRequest]; not_found, repo_not_found, revision_not_found,
    entry_not_found, model_not_found [NotFound]; auth_required, gated_repo, invalid_token,
    registry_auth [AuthenticationRequired]; forbidden, gated_no_access [AccessDenied];
    rate_limited [RateLimited]; connection_failed, unknown_host (the host name does not
    resolve: fails at once, no retries), hub_unreachable, registry_unreachable,
    ollama_unreachable [ConnectionFailed]; server_error, hub_error [ServerError or
    ModelPullError]; digest_mismatch [DigestMismatch]; size_mismatch [SizeMismatch];
    insufficient_space [NotEnoughSpace]; disk_full [DiskFull]; disk_error [DiskError];
    url_not_allowed, unsafe_path (a name from the source would land outside its folder),
    too_many_redirects, bad_redirect, bad_response, bad_manifest, unstable_source,
    registry_error, ollama_error, incomplete_stream, incomplete, transfer_failed,
    not_mlx_model, internal_error [ModelPullError and subclasses]. Models already on disk
    (modelpull._inventory: list, verify, rm): local_model_not_found, model_in_use,
    cannot_repair, store_unavailable (the servers' database, asked what is in use, cannot
    be read).

    Example:

        import asyncio
        from modelpull import download_model, DownloadStatus

        async def main():
            async for item in download_model("huggingface", "Qwen/Qwen2.5-0.5B-Instruct",
                                             allow_patterns=["*.json", "*.safetensors"]):
                print(item.status.value, item.percent, item.message)
                if item.status is DownloadStatus.COMPLETE:
                    print("saved in", item.local_path)
                elif item.status is DownloadStatus.ERROR:
                    print("failed:", item.error_code)

        asyncio.run(main())

    The blocking form is `pull("hf:Qwen/Qwen2.5-0.5B-Instruct", progress=True)`.
    """
    name = canonical_name(provider)  # ValueError for an unknown provider, before any item
    control: DownloadControl | None = options.pop("_control", None)
    session = options.pop("_session", None)  # the server's aiohttp session and wire (URL policy)
    wire = options.pop("_wire", None)
    source = get_provider(name)
    last: DownloadProgress | None = None
    try:
        request = _build_request(source, name, model, token, base_url, options)
    except ModelPullError as exc:
        yield DownloadProgress(status=DownloadStatus.STARTING, message=f"Starting download from {name}")
        yield error_item(exc)
        return
    # The provider names the download: a URL's query string (signed links, tokens) stays out.
    yield DownloadProgress(status=DownloadStatus.STARTING, message=f"Starting download of {_describe(source, request)}")

    context = RunContext(request.transfer, wire=wire, session=session)
    stream = source.stream(request, context)
    next_item: asyncio.Task | None = None
    stop: asyncio.Task | None = asyncio.ensure_future(control.wait()) if control else None
    try:
        while True:
            next_item = asyncio.ensure_future(stream.__anext__())
            waiting = {next_item} if stop is None else {next_item, stop}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not next_item.done():
                # Stopped from outside (server cancel or pause).
                next_item.cancel()
                with contextlib.suppress(BaseException):
                    await next_item
                next_item = None
                await stream.aclose()
                if control is not None and control.discard:
                    context.discard_partials()
                yield _cancelled_item(last, discarded=bool(control and control.discard))
                return
            try:
                item = next_item.result()
            except StopAsyncIteration:
                next_item = None
                break
            next_item = None
            last = item
            yield item
            if item.status.is_terminal:
                return
        yield error_item(
            ModelPullError(f"the {name} download of {model} ended without completing", code="incomplete"), partial=last
        )
    except ModelPullError as exc:
        yield error_item(exc, partial=last)
    except Exception as exc:
        if _is_network_error(exc):
            log.debug("download failed", exc_info=True)
            error = ModelPullError(f"download failed: {exc}", code="transfer_failed")
        else:  # a bug of ours: still an item, never an escaping exception
            log.exception("internal error while downloading %s from %s", model, name)
            error = ModelPullError(
                f"internal error: {exc.__class__.__name__}: {exc}; please report it", code="internal_error"
            )
        yield error_item(error, partial=last)
    finally:
        if next_item is not None and not next_item.done():
            next_item.cancel()
            with contextlib.suppress(BaseException):
                await next_item
        if stop is not None:
            stop.cancel()
        await stream.aclose()
        await context.close()


def data_location(provider: str, model: str, base_url: str | None = None, **options: Any) -> str:
    """Where a download with these arguments keeps its data, partial data included: the Hub
    cache's repo folder for `huggingface`, Ollama's store, the URL's folder. For messages such as
    "interrupted: partial data kept in ..."; a description when the options are invalid."""
    name = canonical_name(provider)
    source = get_provider(name)
    try:
        return source.data_location(_build_request(source, name, model, None, base_url, dict(options)))
    except ModelPullError:
        return str(Settings.from_env().home.absolute())


async def plan_download(provider: str, model: str, token: str | None = None, base_url: str | None = None,
                        **options: Any) -> Plan:
    """What download_model() would fetch, without moving a byte: the provider's plan (files, sizes,
    digests, destinations, which are already present). Raises ModelPullError.

    An Ollama model is planned as a direct pull (its registry manifest): a running Ollama server
    decides for itself what to fetch.
    """
    name = canonical_name(provider)
    source = get_provider(name)
    if name == "ollama":
        options = {**options, "direct": True}
    request = _build_request(source, name, model, token, base_url, options)
    context = RunContext(request.transfer)
    try:
        return await source.plan(request, context)
    finally:
        await context.close()


def _is_network_error(exc: Exception) -> bool:
    """An OSError, or one of aiohttp's (checked only if a provider imported it)."""
    aiohttp = sys.modules.get("aiohttp")
    return isinstance(exc, OSError) or (aiohttp is not None and isinstance(exc, aiohttp.ClientError))


def _describe(source: Any, request: DownloadRequest) -> str:
    try:
        return source.describe(request)
    except ModelPullError:  # a malformed name: plan() reports it properly
        return f"a model from {request.provider}"


def _build_request(
    source: Any, name: str, model: str, token: str | None, base_url: str | None, options: dict[str, Any]
) -> DownloadRequest:
    settings = Settings.from_env()
    transfer_overrides = {k: options.pop(k) for k in list(options) if k in TransferOptions.NAMES}
    if options.get("limit_rate") is not None:
        try:
            transfer_overrides["limit_rate"] = RateLimit.of(options.pop("limit_rate"))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"option limit_rate: {exc}") from None
    options.pop("limit_rate", None)
    models_dir = Path(options.pop("models_dir", None) or settings.home).expanduser()
    unknown = sorted(set(options) - set(source.option_names))
    if unknown:
        known = sorted(set(TransferOptions.NAMES) | set(source.option_names) | {"models_dir"})
        raise InvalidRequest(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for provider "
            f"'{name}' (known: {', '.join(known)})"
        )
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("no model given: pass a model name, repo id or URL", param="model")
    try:
        transfer = TransferOptions.from_settings(settings, **transfer_overrides)
    except TypeError as exc:
        raise InvalidRequest(f"invalid transfer option: {exc}") from None
    _validate_transfer(transfer)
    request = DownloadRequest(
        provider=name,
        model=model.strip(),
        token=token,
        base_url=base_url,
        models_dir=models_dir,
        options=options,
        transfer=transfer,
    )
    source.check_request(request)
    return request


def check_download(provider: str, model: str, token: str | None = None, base_url: str | None = None,
                   **options: Any) -> None:
    """Raise InvalidRequest when `download_model()` with these arguments would refuse them at once.

    The server asks it at submit: a malformed reference or option is an answer, not a failed job.
    """
    name = canonical_name(provider)
    _build_request(get_provider(name), name, model, token, base_url, dict(options))


def _validate_transfer(transfer: TransferOptions) -> None:
    positive_ints = ("connections", "multipart_threshold", "piece_size", "max_concurrent_files")
    for field in positive_ints:
        value = getattr(transfer, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"option {field} must be a whole number ≥ 1, got {value!r}", param=f"options.{field}")
    for field in ("stall_timeout", "connect_timeout", "retry_backoff", "retry_max_delay"):
        value = getattr(transfer, field)
        if not isinstance(value, (int, float)) or value < 0:
            raise InvalidRequest(f"option {field} must be a number of seconds ≥ 0, got {value!r}",
                                 param=f"options.{field}")
    if not isinstance(transfer.max_retries, int) or transfer.max_retries < 0:
        raise InvalidRequest(f"option max_retries must be a whole number ≥ 0, got {transfer.max_retries!r}",
                             param="options.max_retries")
    if transfer.sha256 is not None:
        digest = str(transfer.sha256).strip().lower().removeprefix("sha256:")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidRequest(f"sha256 must be 64 hex digits, got {transfer.sha256!r}", param="options.sha256")
        transfer.sha256 = digest


def _cancelled_item(last: DownloadProgress | None, *, discarded: bool) -> DownloadProgress:
    item = dataclasses.replace(last) if last else DownloadProgress(status=DownloadStatus.CANCELLED, message="")
    item.status = DownloadStatus.CANCELLED
    item.message = "Download cancelled" + ("; partial data deleted" if discarded else "; partial data kept to resume")
    item.speed_bps = None
    item.eta_seconds = None
    item.error_code = None
    return item


def pull(ref: str, *, provider: str | None = None, token: str | None = None, base_url: str | None = None,
         progress: bool | Callable[[DownloadProgress], None] = False, **options: Any) -> Path:
    """Download a model and return its local path; blocking, for scripts and notebooks.

    `ref` is a reference (`https://...`, `hf:org/name[@revision][:file]`, `mlx:name`,
    `ollama:name[:tag]`) or, with `provider=`, that provider's model name. `options` are
    download_model()'s (see help(download_model): providers, options, error codes).

    `progress=True` shows progress on stderr: bars on a terminal, a line now and then
    otherwise (a log, a notebook's captured output). A callable is called with every
    `DownloadProgress` item instead. Raises `ModelPullError` (its `.code` is the item's
    error_code) on failure; Ctrl-C stops the download and keeps the partial data.

        >>> from modelpull import pull
        >>> path = pull("hf:Qwen/Qwen2.5-0.5B-Instruct", progress=True, allow_patterns="*.json")
    """
    if provider is None:
        try:
            parsed = parse_reference(ref)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        provider, model, options = parsed.provider, parsed.model, {**parsed.options, **options}
    else:
        model = ref
    show, finish = _progress_callback(progress, model)

    async def run() -> Path:
        final: DownloadProgress | None = None
        async for item in download_model(provider, model, token=token, base_url=base_url, **options):
            final = item
            if show is not None:
                show(item)
        assert final is not None
        if final.status is not DownloadStatus.COMPLETE or final.local_path is None:
            raise ModelPullError(final.message, code=final.error_code or "error")
        return Path(final.local_path)

    try:
        return asyncio.run(run())
    finally:
        if finish is not None:
            finish()


def _progress_callback(
    progress: bool | Callable[[DownloadProgress], None], label: str
) -> tuple[Callable[[DownloadProgress], None] | None, Callable[[], None] | None]:
    """(called with every item, called at the end) for pull()'s `progress` argument."""
    if callable(progress):
        return progress, None
    if not progress:
        return None, None
    from .cli import LogView, terminal_console  # the CLI's views

    errors = terminal_console(sys.stderr)
    if errors is None:
        view = LogView(sys.stderr)
    else:
        from ._bars import BarsView

        view = BarsView(errors, label=label)
    return view.show, view.finish

"""The Python face: `download_model()` (async, AbstractCore-compatible) and `pull()` (blocking)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ._errors import InvalidRequest, ModelPullError
from ._plan import DownloadRequest, TransferOptions
from ._progress import DownloadProgress, DownloadStatus
from ._refs import parse_reference
from ._run import DownloadControl, RunContext, error_item
from ._settings import Settings
from .providers import canonical_name, get_provider

log = logging.getLogger("modelpull")


async def download_model(
    provider: str,
    model: str,
    token: str | None = None,
    base_url: str | None = None,
    **options: Any,
) -> AsyncIterator[DownloadProgress]:
    """Download `model` from `provider`, yielding progress as it goes.

    The first item is STARTING; the last is COMPLETE (`percent` 100.0, `local_path` set) or
    ERROR (`error_code` and a message saying what to do). Failures are items, not exceptions,
    except an unknown provider: ValueError, as in AbstractCore.

    Closing the generator (`aclose()`, or cancelling the task consuming it) stops the
    transfer at once and keeps the partial data, so the same call later resumes.

    Options: `models_dir` (default `MODELPULL_HOME` or ./models), the transfer options
    (`connections`, `sha256`, `multipart_threshold`, `piece_size`, `stall_timeout`,
    `max_retries`, `retry_backoff`, `retry_max_delay`, `max_concurrent_files`, ...), and the
    provider's own (`dest`, `filename` for URLs; `revision`, `allow_patterns` for the Hub; ...).
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
    models_dir = Path(options.pop("models_dir", None) or settings.home).expanduser()
    unknown = sorted(set(options) - set(source.option_names))
    if unknown:
        known = sorted(set(TransferOptions.NAMES) | set(source.option_names) | {"models_dir"})
        raise InvalidRequest(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for provider "
            f"'{name}' (known: {', '.join(known)})"
        )
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("no model given: pass a model name, repo id or URL")
    try:
        transfer = TransferOptions.from_settings(settings, **transfer_overrides)
    except TypeError as exc:
        raise InvalidRequest(f"invalid transfer option: {exc}") from None
    _validate_transfer(transfer)
    return DownloadRequest(
        provider=name,
        model=model.strip(),
        token=token,
        base_url=base_url,
        models_dir=models_dir,
        options=options,
        transfer=transfer,
    )


def _validate_transfer(transfer: TransferOptions) -> None:
    positive_ints = ("connections", "multipart_threshold", "piece_size", "max_concurrent_files")
    for field in positive_ints:
        value = getattr(transfer, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"option {field} must be a whole number ≥ 1, got {value!r}")
    for field in ("stall_timeout", "connect_timeout", "retry_backoff", "retry_max_delay"):
        value = getattr(transfer, field)
        if not isinstance(value, (int, float)) or value < 0:
            raise InvalidRequest(f"option {field} must be a number of seconds ≥ 0, got {value!r}")
    if not isinstance(transfer.max_retries, int) or transfer.max_retries < 0:
        raise InvalidRequest(f"option max_retries must be a whole number ≥ 0, got {transfer.max_retries!r}")
    if transfer.sha256 is not None:
        digest = str(transfer.sha256).strip().lower().removeprefix("sha256:")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidRequest(f"sha256 must be 64 hex digits, got {transfer.sha256!r}")
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
         **options: Any) -> Path:
    """Download a model and return its local path; blocking, for scripts.

    `ref` is a reference (`https://...`, `hf:org/name`, `mlx:name`, `ollama:name:tag`) or, with
    `provider=`, that provider's model name. Raises ModelPullError on failure.
    """
    if provider is None:
        try:
            parsed = parse_reference(ref)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        provider, model, options = parsed.provider, parsed.model, {**parsed.options, **options}
    else:
        model = ref

    async def run() -> Path:
        final: DownloadProgress | None = None
        async for item in download_model(provider, model, token=token, base_url=base_url, **options):
            final = item
        assert final is not None
        if final.status is not DownloadStatus.COMPLETE or final.local_path is None:
            raise ModelPullError(final.message, code=final.error_code or "error")
        return Path(final.local_path)

    return asyncio.run(run())

"""Hugging Face Hub repos: metadata from `huggingface_hub`, bytes through modelpull's engine.

    repo_info(revision, blobs)   -> the commit, every file with its size, git blob id, LFS sha256
    auth-check (gated repos)     -> a clear "gated" error before any byte moves
    plan                         -> one file per blob: {endpoint}/{repo}/resolve/{commit}/{path},
                                    verified by sha256 (LFS) or git sha1 (regular files)
    finalize                     -> snapshot symlinks, refs/<revision>, trees/<commit>.json
                                    (or plain files and their metadata in `local_dir`)

The token goes to the Hub only: the engine drops `authorization` on the redirect to the CDN.

Errors, each with its own code: repo_not_found, gated_repo, gated_no_access, invalid_token,
revision_not_found, entry_not_found, rate_limited (after honouring Retry-After), hub_error (5xx),
hub_unreachable, invalid_request.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import quote, urlsplit

from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from .._errors import (
    AccessDenied,
    AuthenticationRequired,
    ConnectionFailed,
    InvalidRequest,
    ModelPullError,
    NotFound,
    RateLimited,
    ServerError,
)
from .._paths import UnsafeName, git_sha1_hex, one_tree, relative_parts, sha256_hex, shown_name
from .._plan import DownloadRequest, Plan, PlannedFile, TransferOptions
from ..transfer._http import retry_after_seconds, unknown_host, unknown_host_error
from ..transfer._policy import AddressCheck, AddressRefused
from ._base import Provider
from ._hf_cache import HubCache, LocalDir, RepoFile, default_cache_dir
from ._hub_http import hub_http as _hub_http
from ._hub_http import use_policy


DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPES = ("model", "dataset")
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_RETRYABLE_HUB_STATUSES = {408, 429, 500, 502, 503, 504}
T = TypeVar("T")


@dataclasses.dataclass
class HubTarget:
    """Which repo, where the Hub is, who asks, and where the files go."""

    repo_id: str
    repo_type: str
    revision: str
    endpoint: str
    token: str | None = dataclasses.field(repr=False)
    cache_dir: Path | None  # None when `local_dir` is set
    local_dir: Path | None

    @property
    def kind(self) -> str:
        return "Dataset" if self.repo_type == "dataset" else "Model"

    @property
    def page(self) -> str:
        """The repo's web page, where gated access is requested."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{self.endpoint}/{prefix}{self.repo_id}"

    def file_url(self, commit: str, path: str) -> str:
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"{self.endpoint}/{prefix}{self.repo_id}/resolve/{quote(commit, safe='')}/{quote(path)}"


@dataclasses.dataclass
class RepoListing:
    commit: str
    files: list[RepoFile]


class HuggingFaceProvider(Provider):
    """A repo on the Hugging Face Hub, fetched into the Hub cache (or a plain `local_dir`)."""

    name = "huggingface"
    option_names = frozenset(
        {"revision", "filename", "allow_patterns", "ignore_patterns", "repo_type", "cache_dir", "local_dir"}
    )

    def describe(self, request: DownloadRequest) -> str:
        return f"{self.repo_id(request.model)} from the Hugging Face Hub"

    def repo_id(self, model: str) -> str:
        """The repo a model name means (MLX maps bare names to its community org)."""
        return model

    def check_listing(self, target: HubTarget, files: list[RepoFile]) -> None:
        """A hook to refuse a repo from its listing, before any byte moves."""

    def check_snapshot(self, target: HubTarget, folder: Path, files: list[RepoFile]) -> None:
        """A hook to check the files on disk after the download."""

    async def plan(self, request: DownloadRequest, context: Any) -> Plan:
        target = self.target(request)
        listing = await HubClient(target, request.transfer, context.address_policy).listing()
        self.check_listing(target, listing.files)
        selected = select_files(target, listing, request.options)
        # One file asked for by name: report that file's path, as hf_hub_download returns it.
        single = selected[0].path if request.options.get("filename") else None
        if target.local_dir is not None:
            return self._plan_local_dir(target, listing, selected, single)
        return self._plan_cache(target, listing, selected, single)

    def data_location(self, request: DownloadRequest) -> str:
        """The plain folder (`local_dir`), else this repo's folder in the Hub cache."""
        target = self.target(request)
        if target.local_dir is not None:
            return str(target.local_dir.absolute())
        assert target.cache_dir is not None
        return str(HubCache(target.cache_dir, target.repo_id, target.repo_type).storage.absolute())

    def check_request(self, request: DownloadRequest) -> None:
        """The repo id as huggingface_hub accepts it; revision and filename as safe relative paths."""
        options = request.options
        repo_id = self.repo_id(request.model)
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            raise InvalidRequest(f"'{repo_id}' is not a valid Hugging Face repo id: {exc}", param="model") from None
        repo_type = options.get("repo_type") or "model"
        if repo_type not in REPO_TYPES:
            raise InvalidRequest(f"repo_type must be one of {', '.join(REPO_TYPES)}, got {repo_type!r}",
                                 param="options.repo_type")
        # A revision names refs/<revision> in the cache; a filename, a path in the snapshot.
        for key, what in (("revision", "a branch, tag or commit"), ("filename", "a file path in the repo")):
            value = options.get(key)
            if value is None:
                continue
            try:
                relative_parts(value)
            except UnsafeName as exc:
                raise InvalidRequest(f"invalid {key}: {exc.reason}; give {what}", param=f"options.{key}") from None
        for key in ("allow_patterns", "ignore_patterns"):
            value = options.get(key)
            if value is not None and not (isinstance(value, str) or (
                    isinstance(value, list) and all(isinstance(v, str) for v in value))):
                raise InvalidRequest(f"{key} must be a glob or a list of globs", param=f"options.{key}")
        for key in ("cache_dir", "local_dir"):
            value = options.get(key)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or "\0" in str(value)):
                raise InvalidRequest(f"{key} must be a folder path", param=f"options.{key}")

    def target(self, request: DownloadRequest) -> HubTarget:
        options = request.options
        repo_type = options.get("repo_type") or "model"
        revision = options.get("revision") or "main"
        configured = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        endpoint = (request.base_url or configured).rstrip("/")
        # The environment's token belongs to the environment's Hub: a base_url chosen by someone
        # else (an API client of the server) never receives it; its own token= still goes.
        # The saved login (`hf auth login`) comes after HF_TOKEN, as huggingface_hub reads them.
        ambient = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or saved_token()
        token = request.token or (ambient if endpoint == configured else None)
        local_dir = options.get("local_dir")
        cache_dir = options.get("cache_dir")
        return HubTarget(
            repo_id=self.repo_id(request.model),
            repo_type=repo_type,
            revision=revision,
            endpoint=endpoint,
            token=token,
            cache_dir=None if local_dir else (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()),
            local_dir=Path(local_dir).expanduser() if local_dir else None,
        )

    def _plan_cache(self, target: HubTarget, listing: RepoListing, selected: list[RepoFile],
                    single: str | None) -> Plan:
        assert target.cache_dir is not None
        cache = HubCache(target.cache_dir, target.repo_id, target.repo_type)
        planned: dict[str, PlannedFile] = {}
        for file in selected:  # files with the same bytes share one blob: fetch it once
            if file.etag not in planned:
                planned[file.etag] = self._planned(target, listing.commit, file, cache.blob(file),
                                                   present=cache.has_blob(file), lock=cache.lock(file))
        snapshot = cache.snapshot(listing.commit)

        async def finalize() -> None:
            def write() -> None:
                cache.tag()
                for file in selected:
                    cache.link(listing.commit, file)
                cache.write_ref(target.revision, listing.commit)
                cache.write_tree(listing.commit, listing.files)
            await asyncio.to_thread(write)

        async def check() -> None:
            await asyncio.to_thread(self.check_snapshot, target, snapshot, selected)

        return Plan(label=_label(target), files=list(planned.values()), local_path=_within(snapshot, single),
                    finalize=finalize, check=check)

    def _plan_local_dir(self, target: HubTarget, listing: RepoListing, selected: list[RepoFile],
                        single: str | None) -> Plan:
        assert target.local_dir is not None
        folder = LocalDir(target.local_dir)
        files = [self._planned(target, listing.commit, f, folder.path(f), present=folder.has_file(f),
                               lock=folder.lock(f))
                 for f in selected]

        async def finalize() -> None:
            def write() -> None:
                for file in selected:
                    folder.record(listing.commit, file)
                folder.write_tree(listing.commit, listing.files)
            await asyncio.to_thread(write)

        async def check() -> None:
            await asyncio.to_thread(self.check_snapshot, target, target.local_dir, selected)

        return Plan(label=_label(target), files=files, local_path=_within(target.local_dir, single),
                    finalize=finalize, check=check)

    @staticmethod
    def _planned(target: HubTarget, commit: str, file: RepoFile, dest: Path, *, present: bool,
                 lock: Path) -> PlannedFile:
        return PlannedFile(
            url=target.file_url(commit, file.path),
            dest=dest,
            name=file.path,
            size=file.size,
            sha256=file.lfs_sha256,
            git_sha1=None if file.lfs_sha256 else file.blob_id,
            headers={"authorization": f"Bearer {target.token}"} if target.token else {},
            present=present,
            lock_path=lock,
        )


def saved_token() -> str | None:
    """The login `hf auth login` saved: $HF_TOKEN_PATH, else $HF_HOME/token (read as huggingface_hub reads it)."""
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
        path = os.path.join(home, "token")
    try:
        token = Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeError):
        return None
    return token or None


def select_files(target: HubTarget, listing: RepoListing, options: dict[str, Any]) -> list[RepoFile]:
    """The files `filename` / `allow_patterns` / `ignore_patterns` ask for; entry_not_found if none."""
    where = f"{target.kind.lower()} '{target.repo_id}' at revision '{target.revision}'"
    filename = options.get("filename")
    if filename:
        chosen = [f for f in listing.files if f.path == filename]
        if not chosen:
            raise NotFound(f"File '{filename}' not found in {where}", code="entry_not_found")
        return chosen
    allow, ignore = options.get("allow_patterns"), options.get("ignore_patterns")
    chosen = list(filter_repo_objects(listing.files, allow_patterns=allow, ignore_patterns=ignore,
                                      key=lambda f: f.path))
    if not chosen:
        asked = ", ".join(f"{name}={value!r}" for name, value in
                          (("allow_patterns", allow), ("ignore_patterns", ignore)) if value)
        raise NotFound(f"No file in {where} matches {asked}" if asked else f"The {where} has no files",
                       code="entry_not_found")
    return chosen


class HubClient:
    """`huggingface_hub.HfApi` off the event loop: 429s and 5xx retried, errors made readable."""

    def __init__(self, target: HubTarget, transfer: TransferOptions, policy: AddressCheck | None = None) -> None:
        self.target = target
        self.transfer = transfer
        self.policy = policy  # the server's URL policy, asked on every connection huggingface_hub opens
        # token=False: send exactly the token modelpull resolved, the saved login only as resolved above.
        self.api = HfApi(endpoint=target.endpoint, token=target.token or False, library_name="modelpull")
        self.timeout = max(transfer.connect_timeout, 10.0)

    async def listing(self) -> RepoListing:
        target = self.target
        info = await self.call(self.api.repo_info, target.repo_id, repo_type=target.repo_type,
                               revision=target.revision, files_metadata=True, timeout=self.timeout)
        if not info.sha or not _COMMIT_SHA.fullmatch(info.sha):
            raise ModelPullError(
                f"the Hub at {target.endpoint} answered without a commit for {target.repo_id}: "
                "check that HF_ENDPOINT points at a Hugging Face Hub", code="hub_error")
        if info.gated:
            # A gated repo's listing is public; its files are not. Ask now rather than fail mid-download.
            first = info.siblings[0].rfilename if info.siblings else None
            await self.call(self._auth_check, info.sha, first)
        files = [self._repo_file(s) for s in info.siblings or []]
        try:
            one_tree([file.path for file in files])
        except UnsafeName as exc:
            raise self._unusable_listing(exc.reason) from None
        return RepoListing(commit=info.sha, files=files)

    def _auth_check(self, commit: str, first_file: str | None) -> None:
        """GET .../auth-check. A 404 means a Hub (a mirror) without that route, since the repo's
        info was just read: then a file's own answer says it (HEAD of its resolve URL: 401/403
        with X-Error-Code GatedRepo), still before any byte moves."""
        target = self.target
        try:
            self.api.auth_check(target.repo_id, repo_type=target.repo_type)
            return
        except HfHubHTTPError as exc:
            if _status(exc) != 404 or isinstance(exc, GatedRepoError):
                raise
        if first_file is not None:
            url = hf_hub_url(target.repo_id, first_file, repo_type=target.repo_type, revision=commit,
                             endpoint=target.endpoint)
            self.api.get_hf_file_metadata(url=url, timeout=self.timeout)

    def _repo_file(self, sibling: Any) -> RepoFile:
        """One listed file, its name and ids checked before any of them can become a path."""
        try:
            relative_parts(sibling.rfilename)
            lfs = sibling.lfs
            size = lfs.size if lfs else (sibling.size or 0)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise UnsafeName(f"its size {size!r} is not a number of bytes")
            return RepoFile(path=sibling.rfilename, size=size, blob_id=git_sha1_hex(sibling.blob_id),
                            lfs_sha256=sha256_hex(lfs.sha256) if lfs else None)
        except UnsafeName as exc:
            raise self._unusable_listing(f"an unusable entry {shown_name(sibling.rfilename)}: {exc.reason}") from None

    def _unusable_listing(self, what: str) -> ModelPullError:
        return ModelPullError(
            f"the Hub at {self.target.endpoint} listed {what} in {self.target.repo_id}. Refusing the listing; "
            "nothing was written. Check that HF_ENDPOINT points at a Hugging Face Hub you trust", code="hub_error")

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        failures = 0
        while True:
            try:
                with use_policy(self.policy):
                    return await asyncio.to_thread(function, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure is mapped or retried below
                failures += 1
                delay = self._retry_delay(exc, failures)
                if delay is None:
                    error = self.error_for(exc, failures)
                    if error is None:
                        raise  # not the Hub's answer: a bug, reported as such by the download stream
                    raise error from None
                await asyncio.sleep(delay)

    def _retry_delay(self, exc: Exception, failures: int) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        if failures > self.transfer.max_retries or unknown_host(exc):
            return None
        status = _status(exc)
        transport = isinstance(exc, _hub_http.TransportError) and not isinstance(exc, _hub_http.ProxyError)
        if status not in _RETRYABLE_HUB_STATUSES and not transport:
            return None
        backoff = self.transfer.retry_backoff * 2 ** (failures - 1) * random.uniform(0.75, 1.25)
        if status == 429:
            response = getattr(exc, "response", None)
            told = retry_after_seconds(response.headers) if response is not None else None
            if told is not None:
                backoff = told
        return min(backoff, self.transfer.retry_max_delay)

    def error_for(self, exc: Exception, failures: int = 1) -> ModelPullError | None:
        """The modelpull error for what `huggingface_hub` raised (None: not a Hub or network failure)."""
        target = self.target
        name = f"{target.kind} '{target.repo_id}'"
        # GatedRepoError subclasses RepositoryNotFoundError: test it first, or a gated repo reads as missing.
        if isinstance(exc, GatedRepoError):
            if target.token:
                return AccessDenied(
                    f"{name} is gated and your Hugging Face token has no access to it yet: request access "
                    f"at {target.page} and retry once it is granted", code="gated_no_access")
            return AuthenticationRequired(
                f"{name} is gated: provide a Hugging Face token with token= or HF_TOKEN (or `hf auth login`) "
                f"(after requesting access at {target.page})", code="gated_repo")
        if isinstance(exc, RevisionNotFoundError):
            return NotFound(f"Revision '{target.revision}' not found in {target.kind.lower()} '{target.repo_id}' "
                            "on Hugging Face Hub", code="revision_not_found")
        if isinstance(exc, RepositoryNotFoundError):
            hint = ("; if it is private, provide a token with token= or HF_TOKEN (or `hf auth login`)" if not target.token
                    else "; if it is private, check that your token can read it")
            return NotFound(f"{name} not found on Hugging Face Hub{hint}", code="repo_not_found")
        if isinstance(exc, EntryNotFoundError):
            return NotFound(f"{exc}", code="entry_not_found")
        if isinstance(exc, HFValidationError):
            return InvalidRequest(f"'{target.repo_id}' is not a valid Hugging Face repo id: {exc}")
        status = _status(exc)
        if status == 401:
            if target.token:
                return AuthenticationRequired(
                    "The Hugging Face token was rejected (invalid or expired): check token=, HF_TOKEN or the saved "
                    "login (`hf auth login`)",
                    code="invalid_token")
            return AuthenticationRequired(
                f"{name} needs a Hugging Face token: provide one with token= or HF_TOKEN (or `hf auth login`)")
        if status == 403:
            return AccessDenied(f"The Hugging Face Hub refused access to {name} (HTTP 403)")
        if status == 429:
            return RateLimited(
                f"The Hugging Face Hub is rate limiting requests (HTTP 429), still after {failures - 1} "
                "retries: wait a few minutes and try again, or use a token (higher limits)")
        if status is not None and status >= 500:
            return ServerError(f"The Hugging Face Hub at {target.endpoint} failed (HTTP {status}) "
                               f"after {failures - 1} retries: try again later", code="hub_error")
        if isinstance(exc, OfflineModeIsEnabled):
            return ConnectionFailed(
                f"Cannot connect to Hugging Face Hub at {target.endpoint}: HF_HUB_OFFLINE is set",
                code="hub_unreachable")
        if isinstance(exc, AddressRefused):
            return ModelPullError(f"{exc} (the Hugging Face Hub at {target.endpoint}, or a redirect from it)",
                                  code="url_not_allowed")
        if unknown_host(exc):
            return unknown_host_error(urlsplit(target.endpoint).hostname, f"the Hub endpoint {target.endpoint}")
        if isinstance(exc, (_hub_http.TransportError, OSError)):
            return ConnectionFailed(f"Cannot connect to Hugging Face Hub at {target.endpoint} ({_reason(exc)})",
                                    code="hub_unreachable")
        if status is not None:
            return ModelPullError(f"The Hugging Face Hub answered HTTP {status} for {name}", code="hub_error")
        if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError)):
            # huggingface_hub parsing an answer that is no JSON, or JSON of another shape: a proxy's
            # page, a server that is not a Hub. Ours are raised outside this call.
            what = "no JSON" if isinstance(exc, json.JSONDecodeError) else "JSON that is not a Hub listing"
            return ModelPullError(
                f"The server at {target.endpoint} answered {what} for {name} ({_reason(exc)}): check that "
                "HF_ENDPOINT (or base_url) points at a Hugging Face Hub", code="hub_error")
        return None


def _status(exc: Exception) -> int | None:
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0][:200]


def _within(folder: Path, path: str | None) -> Path:
    return folder.joinpath(*path.split("/")) if path else folder


def _label(target: HubTarget) -> str:
    revision = target.revision[:12] if _COMMIT_SHA.fullmatch(target.revision) else target.revision
    return f"{target.repo_id} @ {revision}"

"""A local Hugging Face Hub: the API and resolve routes on 127.0.0.1, an LFS CDN on 127.0.0.2.

It answers what `huggingface_hub` 2.x calls (see PROTOCOLS.md section 3):

    GET  /api/{models|datasets}/{repo}[/revision/{rev}][?blobs=true]   repo info, siblings
    GET  /api/{models|datasets}/{repo}/tree/{rev}[/{path}]?recursive=   listing, `Link: <...>; rel="next"`
    GET  /api/{models|datasets}/{repo}/auth-check                       may this token read the files?
    GET|HEAD /[datasets/]{repo}/resolve/{rev}/{path}                    X-Repo-Commit, ETag / X-Linked-*,
                                                                        LFS files: 302 to the CDN host
    GET|HEAD http://127.0.0.2:<port>/{sha256}?X-Amz-Signature=...       the CDN: Range, 206, 416

Revisions are branch names or commit shas, quoted with no safe characters (`refs%2Fpr%2F1`).
Access behaves as the real Hub does: a missing or private repo is 401 for an anonymous
caller and 404 with a token (`X-Error-Code: RepoNotFound`); a gated repo's metadata is public
but its files answer 401 (anonymous) or 403 (token not approved) with `X-Error-Code: GatedRepo`;
an unknown token is 401 "Invalid credentials in Authorization header" everywhere. Xet is never
advertised (no `X-Xet-*` headers, no `xetHash`), so clients take the plain LFS path.

Test hooks: `fail_next()` injects errors (429 with Retry-After, 5xx), `corrupt()` flips a CDN
byte, `edit_listing()` rewrites a repo's siblings (a hostile Hub: `../`, absolute, NUL names,
digests that are paths), `answer_api_with()` sends a raw non-JSON body, `cdn_rate` throttles every CDN connection, `requests` logs everything, and
`cdn_authorization_headers` lists every `authorization` header the CDN was sent (it refuses
them, as S3 refuses a second auth mechanism).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import quote, unquote

from aiohttp import web

from ._background import BackgroundServer

CDN_HOST = "127.0.0.2"
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".onnx", ".npz", ".msgpack")
_CHUNK = 64 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub calls a regular file's ETag / blobId."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclasses.dataclass
class HubFile:
    """One file of one commit. LFS files live on the CDN; `blob_id` is then the pointer's id."""

    path: str
    size: int
    lfs: bool
    sha256: str  # of the content
    blob_id: str  # git sha1 of what git stores: the content, or the LFS pointer
    data: bytes | None = None  # the content, or None when it is read from `source`
    source: Path | None = None
    pointer_size: int = 0

    @property
    def etag(self) -> str:
        """The name huggingface_hub gives the blob in its cache."""
        return self.sha256 if self.lfs else self.blob_id

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.source is not None
        return self.source.read_bytes()

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes start..end inclusive."""
        if self.data is not None:
            return self.data[start:end + 1]
        assert self.source is not None
        with self.source.open("rb") as f:
            f.seek(start)
            return f.read(end + 1 - start)

    @classmethod
    def make(cls, path: str, content: bytes | Path, lfs: bool) -> "HubFile":
        if isinstance(content, Path):
            digest = hashlib.sha256()
            with content.open("rb") as f:
                while block := f.read(16 * 1024 * 1024):
                    digest.update(block)
            size, sha256, data, source = content.stat().st_size, digest.hexdigest(), None, content
        else:
            size, sha256, data, source = len(content), hashlib.sha256(content).hexdigest(), content, None
        if lfs:
            pointer = lfs_pointer(sha256, size)
            return cls(path, size, True, sha256, git_blob_sha1(pointer), data, source, len(pointer))
        if data is None:
            data = source.read_bytes()  # type: ignore[union-attr]
        return cls(path, size, False, sha256, git_blob_sha1(data), data)


@dataclasses.dataclass
class HubRepo:
    repo_id: str
    repo_type: str  # "model" | "dataset"
    private: bool = False
    gated: bool = False
    readers: set[str] = dataclasses.field(default_factory=set)  # tokens that may read it (private / gated)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> commit
    commits: dict[str, dict[str, HubFile]] = dataclasses.field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        return None


@dataclasses.dataclass
class LoggedRequest:
    server: str  # "hub" | "cdn"
    method: str
    path: str  # decoded
    query: str
    headers: dict[str, str]  # lower-case names
    status: int = 0


@dataclasses.dataclass
class _Injected:
    status: int
    where: str  # "hub", "api", "resolve", "cdn"
    times: int
    headers: dict[str, str]
    message: str


class FakeHub(BackgroundServer):
    """The Hub on 127.0.0.1 and its CDN on 127.0.0.2 (or any `cdn_base_url`, e.g. nginx)."""

    def __init__(self, *, tree_page_size: int = 3, cdn_base_url: str | None = None) -> None:
        super().__init__("127.0.0.1")
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.tokens: dict[str, str] = {}  # token -> user name
        self.tree_page_size = tree_page_size
        self.requests: list[LoggedRequest] = []
        self.cdn_authorization_headers: list[str] = []
        self.cdn_rate: float | None = None  # bytes per second, per connection
        self.auth_check_route = True  # False: /auth-check answers a bare 404, as some mirrors do
        self._external_cdn = cdn_base_url.rstrip("/") if cdn_base_url else None
        self._blobs: dict[str, HubFile] = {}  # sha256 -> LFS file, what the CDN serves
        self._corrupt: dict[str, set[int]] = {}
        self._injected: list[_Injected] = []
        self._lock = threading.Lock()
        self._commit_counter = 0
        self._cdn_runner: web.AppRunner | None = None
        self.cdn_port: int | None = None
        self._listing_edits: dict[tuple[str, str], Callable[[list[dict]], list[dict]]] = {}
        self._raw_api_answer: tuple[int, bytes, str] | None = None

    # ------------------------------------------------------------------ content

    def add_token(self, token: str, user: str = "user") -> None:
        self.tokens[token] = user

    def add_repo(self, repo_id: str, files: Mapping[str, bytes | Path], *, revision: str = "main",
                 repo_type: str = "model", private: bool = False, gated: bool = False,
                 lfs: set[str] | None = None) -> str:
        """Create (or extend) a repo with a commit holding `files` on branch `revision`; its sha."""
        key = (repo_type, repo_id)
        repo = self.repos.get(key)
        if repo is None:
            repo = self.repos[key] = HubRepo(repo_id, repo_type, private=private, gated=gated)
        return self.add_commit(repo_id, files, branch=revision, repo_type=repo_type, lfs=lfs)

    def add_commit(self, repo_id: str, files: Mapping[str, bytes | Path], *, branch: str = "main",
                   repo_type: str = "model", lfs: set[str] | None = None) -> str:
        repo = self.repos[(repo_type, repo_id)]
        hub_files: dict[str, HubFile] = {}
        for path, content in files.items():
            is_lfs = path in lfs if lfs is not None else path.endswith(LFS_SUFFIXES)
            hub_file = HubFile.make(path, content, is_lfs)
            hub_files[path] = hub_file
            if is_lfs:
                self._blobs[hub_file.sha256] = hub_file
        self._commit_counter += 1
        seed = f"{repo_type}/{repo_id}/{self._commit_counter}/" + ",".join(
            f"{f.path}:{f.blob_id}" for f in hub_files.values())
        commit = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[commit] = hub_files
        repo.branches[branch] = commit
        return commit

    def grant(self, repo_id: str, token: str, repo_type: str = "model") -> None:
        """Let `token` read a private repo or approve it for a gated one."""
        self.repos[(repo_type, repo_id)].readers.add(token)

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> HubFile:
        repo = self.repos[(repo_type, repo_id)]
        commit = repo.resolve(revision)
        assert commit is not None
        return repo.commits[commit][path]

    def export_blobs(self, root: Path) -> None:
        """Put every LFS blob in `root/<sha256>`, for an external CDN (nginx) serving `root`."""
        root.mkdir(parents=True, exist_ok=True)
        for sha256, blob in self._blobs.items():
            target = root / sha256
            if target.exists():
                continue
            if blob.source is not None:
                os.link(blob.source, target) if _same_device(blob.source, root) else target.symlink_to(blob.source)
            else:
                target.write_bytes(blob.read())

    # ------------------------------------------------------------------ test hooks

    def fail_next(self, status: int = 429, *, times: int = 1, where: str = "hub",
                  retry_after: float | None = None, headers: Mapping[str, str] | None = None,
                  message: str = "") -> None:
        """The next `times` requests to `where` ("hub", "api", "resolve", "cdn") answer `status`."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = f"{retry_after:g}"
            extra["RateLimit"] = f'"api";r=0;t={int(max(retry_after, 0))}'
            extra["RateLimit-Policy"] = '"fixed window";"api";q=500;w=300'
        if not message:
            message = "You have exceeded our rate limit" if status == 429 else "Internal Error"
        with self._lock:
            self._injected.append(_Injected(status, where, times, extra, message))

    def edit_listing(self, repo_id: str, edit: Callable[[list[dict]], list[dict]], *,
                     repo_type: str = "model") -> None:
        """Repo info answers `edit(siblings)` instead of the true siblings (a hostile or broken Hub)."""
        self._listing_edits[(repo_type, repo_id)] = edit

    def answer_api_with(self, body: bytes, *, status: int = 200, content_type: str = "text/html") -> None:
        """Every /api/ request answers this raw body (a proxy's login page, a Hub that is not one)."""
        self._raw_api_answer = (status, body, content_type)

    def corrupt(self, sha256: str, offset: int = 0) -> None:
        """The CDN serves blob `sha256` with the byte at `offset` flipped."""
        self._corrupt.setdefault(sha256, set()).add(offset)

    def cdn_gets(self) -> list[LoggedRequest]:
        return [r for r in self.requests if r.server == "cdn" and r.method == "GET"]

    def hub_requests(self, method: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.requests if r.server == "hub" and (method is None or r.method == method)]

    def clear_log(self) -> None:
        self.requests.clear()
        self.cdn_authorization_headers.clear()

    # ------------------------------------------------------------------ server

    @property
    def endpoint(self) -> str:
        return self.base_url

    @property
    def cdn_base_url(self) -> str:
        if self._external_cdn:
            return self._external_cdn
        if self.cdn_port is None:
            raise RuntimeError("server not started")
        return f"http://{CDN_HOST}:{self.cdn_port}"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_middleware("hub")])
        app.router.add_route("*", "/{tail:.*}", self._hub_handler)
        return app

    def _make_cdn_app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_middleware("cdn")])
        app.router.add_route("*", "/{tail:.*}", self._cdn_handler)
        return app

    async def _start_async(self) -> None:
        await super()._start_async()
        if self._external_cdn is None:
            self._cdn_runner = web.AppRunner(self._make_cdn_app(), access_log=None, shutdown_timeout=1.0)
            await self._cdn_runner.setup()
            site = web.TCPSite(self._cdn_runner, CDN_HOST, 0)
            await site.start()
            self.cdn_port = self._cdn_runner.addresses[0][1]

    async def _stop_async(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        if self._cdn_runner is not None:
            await self._cdn_runner.cleanup()
        await super()._stop_async()

    def _log_middleware(self, server: str):
        @web.middleware
        async def middleware(request: web.Request, handler):
            entry = LoggedRequest(server, request.method, request.path, request.query_string,
                                  {k.lower(): v for k, v in request.headers.items()})
            self.requests.append(entry)
            if server == "cdn" and "authorization" in entry.headers:
                self.cdn_authorization_headers.append(entry.headers["authorization"])
            injected = self._take_injected(server, request)
            if injected is not None:
                response: web.StreamResponse = _error(injected.status, injected.message, headers=injected.headers)
            else:
                response = await handler(request)
            entry.status = response.status
            return response
        return middleware

    def _take_injected(self, server: str, request: web.Request) -> _Injected | None:
        kind = "cdn" if server == "cdn" else ("api" if request.path.startswith("/api/") else "resolve")
        with self._lock:
            for injected in self._injected:
                if injected.where in (kind, server) and injected.times > 0:
                    injected.times -= 1
                    if injected.times == 0:
                        self._injected.remove(injected)
                    return injected
        return None

    # ------------------------------------------------------------------ the Hub

    async def _hub_handler(self, request: web.Request) -> web.StreamResponse:
        segments = [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]
        while segments and segments[-1] == "":
            segments.pop()
        token_error, token = self._check_token(request)
        if token_error is not None:
            return token_error
        if self._raw_api_answer is not None and segments[:1] == ["api"]:
            status, body, content_type = self._raw_api_answer
            return web.Response(status=status, body=body, content_type=content_type)
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in ("models", "datasets"):
            return self._api(request, segments[1][:-1], segments[2:], token)
        repo_type = "model"
        if segments and segments[0] in ("datasets",):
            repo_type, segments = "dataset", segments[1:]
        if "resolve" in segments[1:3]:
            at = segments.index("resolve", 1)
            if len(segments) >= at + 3:
                return await self._resolve(request, repo_type, "/".join(segments[:at]), segments[at + 1],
                                     "/".join(segments[at + 2:]), token)
        return _error(404, "Sorry, we can't find the page you are looking for.")

    def _check_token(self, request: web.Request) -> tuple[web.Response | None, str | None]:
        header = request.headers.get("authorization")
        if header is None:
            return None, None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return _error(401, "Invalid credentials in Authorization header"), None
        return None, token

    def _find_repo(self, repo_type: str, parts: list[str]) -> tuple[str, HubRepo | None, list[str]]:
        """Split `parts` into a repo id (one or two segments) and what follows it."""
        if len(parts) >= 2 and (repo_type, f"{parts[0]}/{parts[1]}") in self.repos:
            return f"{parts[0]}/{parts[1]}", self.repos[(repo_type, f"{parts[0]}/{parts[1]}")], parts[2:]
        if (repo_type, parts[0]) in self.repos:
            return parts[0], self.repos[(repo_type, parts[0])], parts[1:]
        if len(parts) >= 2 and parts[1] in ("revision", "tree", "auth-check"):
            return parts[0], None, parts[1:]
        return "/".join(parts[:2]), None, parts[2:]

    def _repo_access(self, repo: HubRepo | None, token: str | None) -> web.Response | None:
        if repo is None or (repo.private and token not in repo.readers):
            # The real Hub does not tell a private repo from a missing one.
            return _error(401 if token is None else 404, "Repository not found", code="RepoNotFound")
        return None

    def _gate(self, repo: HubRepo, token: str | None) -> web.Response | None:
        if not repo.gated or token in repo.readers:
            return None
        kind = "model" if repo.repo_type == "model" else repo.repo_type
        if token is None:
            return _error(401, f"Access to {kind} {repo.repo_id} is restricted. You must have access to it "
                               "and be authenticated to access it. Please log in.", code="GatedRepo")
        page = f"{self.endpoint}/{'datasets/' if repo.repo_type == 'dataset' else ''}{repo.repo_id}"
        return _error(403, f"Access to {kind} {repo.repo_id} is restricted and you are not in the authorized "
                           f"list. Visit {page} to ask for access.", code="GatedRepo")

    def _api(self, request: web.Request, repo_type: str, parts: list[str], token: str | None) -> web.Response:
        repo_id, repo, rest = self._find_repo(repo_type, parts)
        denied = self._repo_access(repo, token)
        if denied is not None:
            return denied
        assert repo is not None
        if rest[:1] == ["auth-check"]:
            if not self.auth_check_route:  # a mirror that never implemented it
                return web.Response(status=404, text="404 page not found")
            return self._gate(repo, token) or web.json_response({})
        revision = "main"
        if rest[:1] in (["revision"], ["tree"]) and len(rest) >= 2:
            revision = rest[1]
        elif rest:
            return _error(404, "Sorry, we can't find the page you are looking for.")
        commit = repo.resolve(revision)
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        files = repo.commits[commit]
        if rest[:1] == ["tree"]:
            return self._tree(request, repo, revision, commit, "/".join(rest[2:]))
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for f in files.values():
            sibling: dict = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        edit = self._listing_edits.get((repo_type, repo_id))
        if edit is not None:
            siblings = edit([dict(s, lfs=dict(s["lfs"])) if "lfs" in s else dict(s) for s in siblings])
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None, "sha": commit,
            "lastModified": "2024-01-01T00:00:00.000Z", "private": repo.private,
            "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "siblings": siblings, "createdAt": "2024-01-01T00:00:00.000Z",
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        if blobs:
            info["usedStorage"] = sum(f.size for f in files.values())
        return web.json_response(info)

    def _tree(self, request: web.Request, repo: HubRepo, revision: str, commit: str, prefix: str) -> web.Response:
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        entries: list[dict] = []
        seen_dirs: set[str] = set()
        base = prefix.rstrip("/") + "/" if prefix else ""
        for f in sorted(repo.commits[commit].values(), key=lambda f: f.path):
            if not f.path.startswith(base):
                continue
            relative = f.path[len(base):]
            dirs = relative.split("/")[:-1]
            for depth in range(1, len(dirs) + 1):
                if not recursive and depth > 1:
                    break
                directory = base + "/".join(dirs[:depth])
                if directory not in seen_dirs:
                    seen_dirs.add(directory)
                    entries.append({"type": "directory", "oid": hashlib.sha1(directory.encode()).hexdigest(),
                                    "size": 0, "path": directory})
            if dirs and not recursive:
                continue
            entry: dict = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            entries.append(entry)
        if prefix and not entries:
            return _error(404, f"{prefix} does not exist on \"{revision}\"", code="EntryNotFound")
        start = int(request.query.get("cursor", "0"))
        page = entries[start:start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(entries):
            query = f"recursive={str(recursive).lower()}&expand=false&cursor={start + self.tree_page_size}"
            next_url = f"{self.endpoint}{request.rel_url.raw_path}?{query}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _resolve(self, request: web.Request, repo_type: str, repo_id: str, revision: str, path: str,
                 token: str | None) -> web.StreamResponse:
        repo = self.repos.get((repo_type, repo_id))
        denied = self._repo_access(repo, token)
        if denied is not None:
            return denied
        assert repo is not None
        commit = repo.resolve(revision)
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        gated = self._gate(repo, token)
        if gated is not None:
            return gated
        hub_file = repo.commits[commit].get(path)
        if hub_file is None:
            return _error(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if hub_file.lfs:
            name = quote(path.rsplit("/", 1)[-1])
            location = (f"{self.cdn_base_url}/{hub_file.sha256}?response-content-disposition="
                        f"inline%3B+filename%2A%3DUTF-8%27%27{name}&X-Amz-Signature=fake&Expires=9999999999")
            headers.update({
                "Location": location,
                "ETag": f'"{hub_file.blob_id}"',
                "X-Linked-Etag": f'"{hub_file.sha256}"',
                "X-Linked-Size": str(hub_file.size),
                "Content-Type": "text/plain; charset=utf-8",
            })
            body = f"Found. Redirecting to {location}".encode()
            return web.Response(status=302, body=None if request.method == "HEAD" else body, headers=headers)
        headers["ETag"] = f'"{hub_file.blob_id}"'
        return await _serve_bytes(request, hub_file, headers, corrupt=set(), rate=None, server=self)

    # ------------------------------------------------------------------ the CDN

    async def _cdn_handler(self, request: web.Request) -> web.StreamResponse:
        if "authorization" in request.headers:
            body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code>"
                    "<Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                    "Signature query string parameter or the Authorization header should be specified"
                    "</Message></Error>")
            return web.Response(status=400, text=body, content_type="application/xml")
        sha256 = request.path.strip("/")
        blob = self._blobs.get(sha256)
        if blob is None:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>",
                                content_type="application/xml")
        filename = blob.path.rsplit("/", 1)[-1]
        headers = {
            "ETag": f'"{sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{filename}\";",
            "Content-Type": "binary/octet-stream",
        }
        return await _serve_bytes(request, blob, headers, corrupt=self._corrupt.get(sha256, set()),
                                  rate=self.cdn_rate, server=self)


async def _serve_bytes(request: web.Request, hub_file: HubFile, headers: dict[str, str], *,
                       corrupt: set[int], rate: float | None, server: FakeHub) -> web.StreamResponse:
    """GET or HEAD of a file's content, honouring a single `Range` (206, 416)."""
    size = hub_file.size
    start, end = 0, size - 1
    status = 200
    range_header = request.headers.get("Range")
    if range_header:
        parsed = _parse_range(range_header, size)
        if parsed is None:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        start, end = parsed
        status = 206
        headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
    length = end - start + 1 if size else 0
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    try:
        await response.prepare(request)
        if request.method == "HEAD" or length == 0:
            await response.write_eof()
            return response
        position = start
        while position <= end:
            chunk_end = min(end, position + _CHUNK - 1)
            chunk = hub_file.read_range(position, chunk_end)
            bad = [o for o in corrupt if position <= o <= chunk_end]
            if bad:
                data = bytearray(chunk)
                for offset in bad:
                    data[offset - position] ^= 0xFF
                chunk = bytes(data)
            await response.write(chunk)
            position = chunk_end + 1
            if rate and await server.sleep_unless_stopping(len(chunk) / rate):
                break
        await response.write_eof()
    except ConnectionResetError:  # the client went away (a cancelled download): not the server's error
        pass
    return response


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return None
            return max(size - suffix, 0), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _error(status: int, message: str, *, code: str | None = None,
           headers: Mapping[str, str] | None = None) -> web.Response:
    all_headers = {"X-Error-Message": message, **(headers or {})}
    if code is not None:
        all_headers["X-Error-Code"] = code
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json",
                        headers=all_headers)


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


@dataclasses.dataclass
class SampleRepo:
    """What `add_sample_repo` created: the repo id, its revisions and their files."""

    repo_id: str
    revision: str  # a branch other than main, with a "/" in its name
    commit: str  # what `revision` points at
    main_commit: str
    files: dict[str, bytes]  # the files at `revision`
    main_files: dict[str, bytes]

    @property
    def lfs_paths(self) -> list[str]:
        return [p for p in self.files if p.endswith(LFS_SUFFIXES)]


def add_sample_repo(hub: FakeHub, repo_id: str = "org/tiny-model", *, repo_type: str = "model",
                    private: bool = False, gated: bool = False, lfs_size: int = 200_000) -> SampleRepo:
    """A repo with LFS and regular files, nested paths, and a branch `release/v2` besides main."""
    import random

    rng = random.Random(repo_id)
    main_files = {
        "config.json": b'{"model_type": "llama", "hidden_size": 64}\n',
        "README.md": b"# tiny model\n",
        "model.safetensors": rng.randbytes(lfs_size),
        "tokenizer/tokenizer.json": b'{"version": "1.0", "vocab": {"a": 0}}\n',
    }
    hub_commit = hub.add_repo(repo_id, main_files, repo_type=repo_type, private=private, gated=gated)
    files = {
        **main_files,
        "config.json": b'{"model_type": "llama", "hidden_size": 64, "revision": 2}\n',
        "model.safetensors": rng.randbytes(lfs_size + 1234),
        "weights/deep/part-00001.safetensors": rng.randbytes(lfs_size // 2),
    }
    commit = hub.add_commit(repo_id, files, branch="release/v2", repo_type=repo_type)
    return SampleRepo(repo_id, "release/v2", commit, hub_commit, files, main_files)

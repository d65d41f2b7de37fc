"""Plain http(s) URLs: one file, named from Content-Disposition or the URL path."""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import unicodedata
from email.message import Message
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .._errors import InvalidRequest, SourceError
from .._paths import confined, shown_name
from .._plan import DownloadRequest, Plan, PlannedFile
from ..transfer import Wire, partial_paths, public_url, write_durably
from ..transfer._http import normalized_url, permanent_status_error, wire_following_redirects
from ._base import Provider

MAX_NAME_BYTES = 200
SOURCES_DIR = Path(".modelpull") / "sources"  # inside the destination folder


class UrlProvider(Provider):
    """A file at an http(s) URL. Options: `dest` (folder), `filename` (forced name)."""

    name = "url"
    option_names = frozenset({"dest", "filename"})

    def describe(self, request: DownloadRequest) -> str:
        return f"{public_url(request.model)} from url"

    def data_location(self, request: DownloadRequest) -> str:
        return str(Path(request.options.get("dest") or request.models_dir).expanduser().absolute())

    def check_request(self, request: DownloadRequest) -> None:
        """An http(s) URL; a forced `filename` that is a plain file name, already as it would be saved."""
        _checked_url(request.model)
        forced = request.options.get("filename")
        if forced is not None and (not isinstance(forced, str) or sanitize_filename(forced) != forced):
            suggestion = sanitize_filename(forced) if isinstance(forced, str) else "model.gguf"
            raise InvalidRequest(
                f"filename {shown_name(forced)} is not a plain file name (no folders, '..', control characters or "
                f"leading/trailing dots and spaces; at most {MAX_NAME_BYTES} bytes): use e.g. '{suggestion}'",
                param="options.filename")
        dest = request.options.get("dest")
        if dest is not None and (not isinstance(dest, (str, os.PathLike)) or not str(dest) or "\0" in str(dest)):
            raise InvalidRequest("dest must be a folder path", param="options.dest")

    async def plan(self, request: DownloadRequest, context) -> Plan:
        url = _checked_url(request.model)
        headers = {"Authorization": f"Bearer {request.token}"} if request.token else {}
        directory = Path(request.options.get("dest") or request.models_dir).expanduser()
        size, disposition_name = await asyncio.to_thread(_peek, context.wire, url, headers, context.transfer.connect_timeout)
        forced = request.options.get("filename")  # a plain name: check_request saw to it
        name = forced or disposition_name or suggest_filename(url)
        sources = _SourceBook(directory)
        dest, present = sources.claim(name, url, size, request.transfer.sha256)
        file = PlannedFile(
            url=url, dest=dest, name=dest.name, size=size, sha256=request.transfer.sha256,
            headers=headers, present=present, exact_size=False,
        )

        async def finalize() -> None:
            sources.record(dest.name, url, dest.stat().st_size, request.transfer.sha256)

        return Plan(label=dest.name, files=[file], local_path=dest, finalize=finalize)


def _checked_url(text: str) -> str:
    try:
        url = normalized_url(text.strip())
        parts = urlsplit(url)
    except (ValueError, TypeError):
        raise InvalidRequest(f"'{text}' is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"unsupported URL scheme '{parts.scheme or '(none)'}': use an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidRequest(f"'{public_url(text)}' has no host name")
    return url


def _peek(wire: Wire, url: str, headers: dict[str, str], timeout: float) -> tuple[int | None, str | None]:
    """Size and Content-Disposition name from a HEAD, when the server answers one usefully.

    A source that refuses HEAD (signed GET-only links) is left to the transfer, which finds
    out everything from its first GET; only a clear 401/404/410 stops here. Runs in a thread.
    """
    try:
        response = wire_following_redirects(wire, url, headers, read_timeout=timeout, method="HEAD")
    except (OSError, http.client.HTTPException, SourceError):  # the GET will say what is wrong
        return None, None
    response.release()
    if response.status in (401, 404, 410):
        raise permanent_status_error(response.status, response.url)
    if response.status != 200:
        return None, None
    name = _disposition_name(response.headers.get("Content-Disposition"))
    size = response.content_length
    if response.headers.get("Content-Encoding", "identity") not in ("identity", ""):
        size = None
    return size, name


def _disposition_name(header: str | None) -> str | None:
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    raw = message.get_filename()
    if not raw:
        return None
    name = sanitize_filename(raw)
    return None if name == "download" else name


def suggest_filename(url: str) -> str:
    """The file name a URL gets when its server gives none: the last path segment, made safe."""
    segment = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return sanitize_filename(unquote(segment))


def sanitize_filename(raw: str) -> str:
    """A name that stays inside its folder: no separators, no `..`, no control characters."""
    name = unicodedata.normalize("NFC", str(raw))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().strip(".").strip()
    if not name:
        return "download"
    encoded = name.encode()
    if len(encoded) > MAX_NAME_BYTES:
        stem, dot, suffix = name.rpartition(".")
        suffix = f".{suffix}" if dot and len(suffix) <= 16 else ""
        name = encoded[: MAX_NAME_BYTES - len(suffix.encode())].decode(errors="ignore") + suffix
    return name


def is_downloaded_from(dest: Path, url: str) -> bool:
    """True when `dest` holds a finished download of `url`, or a file put there by hand.

    A file this provider booked for another URL is not `url`'s (a download of `url` would
    pick another name), and a file with partial data beside it is not finished.
    """
    if not dest.is_file() or any(p.exists() for p in partial_paths(dest)):
        return False
    record = _SourceBook(dest.parent)._read(dest.name)
    if record is None:
        return not (dest.parent / SOURCES_DIR / f"{dest.name}.json").exists()
    return record.get("url_sha256") == _url_key(url) and record.get("complete") is True


class _SourceBook:
    """Which URL each file in a folder came from, so two URLs never share one file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.book = directory / SOURCES_DIR

    def claim(self, name: str, url: str, size: int | None, sha256: str | None) -> tuple[Path, bool]:
        """(destination, already complete) for `url`, taking a free name if `name` is another URL's."""
        for candidate in (name, _disambiguated(name, url)):
            dest = confined(self.directory, candidate)
            record = self._read(candidate)
            mine = record is not None and record.get("url_sha256") == _url_key(url)
            if mine:
                complete = (
                    dest.is_file()
                    and record.get("complete") is True
                    and (size is None or dest.stat().st_size == size)
                    and (sha256 is None or record.get("sha256") == sha256)
                )
                return dest, complete
            taken = dest.exists() or any(p.exists() for p in partial_paths(dest))
            if not taken:
                self.record(candidate, url, None, None, complete=False)
                return dest, False
        raise InvalidRequest(f"cannot find a free file name for {public_url(url)} in {self.directory}")

    def record(self, name: str, url: str, size: int | None, sha256: str | None, *, complete: bool = True) -> None:
        self.book.mkdir(parents=True, exist_ok=True)
        entry = {"url": public_url(url), "url_sha256": _url_key(url), "size": size, "sha256": sha256,
                 "complete": complete}
        write_durably(self._record_path(name), json.dumps(entry).encode())

    def _read(self, name: str) -> dict | None:
        try:
            return json.loads(self._record_path(name).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _record_path(self, name: str) -> Path:
        return confined(self.directory, str(SOURCES_DIR), f"{name}.json")


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def _disambiguated(name: str, url: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    tag = _url_key(url)[:8]
    return f"{stem}-{tag}.{suffix}" if dot and stem else f"{name}-{tag}"

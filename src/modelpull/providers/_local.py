"""What a provider has on disk: the seam between each source's layout and the inventory.

    provider's LocalStore.models()   -> LocalModel (files with sizes, digests, where they live)
    LocalStore.remove(model)         -> bytes freed (only what no other model uses)
    LocalStore.prunable(cutoff)      -> Leftover (unfinished partials, detached revisions)
    LocalStore.repair(model, files)  -> how to fetch those files again (download_model arguments)

Each provider's store knows one layout (the Hub cache, Ollama's store, the URL folder and its
records); `modelpull._inventory` only gathers them, and the faces only show.
"""
from __future__ import annotations

import abc
import dataclasses
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Any, ClassVar

COMPLETE = "complete"
PARTIAL = "partial"


@dataclasses.dataclass
class LocalFile:
    """One file of a model as it lies on disk."""

    name: str  # the path inside the model ("weights/model.safetensors", "model sha256-1234abcd")
    path: Path  # where the bytes are (for the Hub: the blob the snapshot link points at)
    size: int  # expected size (bytes on disk for a partial)
    sha256: str | None = None
    git_sha1: str | None = None
    link: Path | None = None  # the path a user opens (a snapshot link), when not `path`
    on_disk: int | None = -1  # bytes the file has on disk: None when it is missing, -1 not looked at

    @property
    def digest(self) -> str | None:
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"git-sha1:{self.git_sha1}" if self.git_sha1 else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.link or self.path), "blob": str(self.path),
                "size": self.size, "digest": self.digest}


@dataclasses.dataclass
class LocalModel:
    """A model (one Hub revision, one Ollama tag, one URL file) or an unfinished download."""

    id: str  # what `show`, `rm`, `verify` and /local-models/{id} take: "hf:org/name@<commit>"
    provider: str  # "huggingface", "ollama", "url"
    name: str  # how people name it: "org/name", "llama3.2:1b", "model.gguf"
    location: Path  # the snapshot folder, the manifest, the file
    files: list[LocalFile]
    size_on_disk: int  # bytes this model's files take (a blob shared inside the model counted once)
    status: str = COMPLETE
    revision: str | None = None  # Hub: the commit
    refs: list[str] = dataclasses.field(default_factory=list)  # Hub: branches and tags naming it
    source: str | None = None  # URL: where it came from, query removed
    digest: str | None = None  # Ollama: the model layer's digest; URL: the recorded sha256
    modified: float = 0.0  # seconds since the epoch: last written
    last_used: float | None = None  # last read (atime), where the file system keeps it
    aliases: list[str] = dataclasses.field(default_factory=list)  # other names a user may type for it
    groups: list[str] = dataclasses.field(default_factory=list)  # names that mean it and its siblings
    store: Path | None = None  # the cache / store / folder it lives in
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self, *, files: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id, "provider": self.provider, "name": self.name, "status": self.status,
            "revision": self.revision, "refs": self.refs, "size_on_disk": self.size_on_disk,
            "file_count": len(self.files), "location": str(self.location),
            "store": str(self.store) if self.store else None, "source": self.source, "digest": self.digest,
            "modified": round(self.modified, 3), "last_used": round(self.last_used, 3) if self.last_used else None,
        }
        if files:
            data["files"] = [f.to_json() for f in self.files]
        data.update(self.details)
        return data

    def answers_to(self, ref: str) -> bool:
        return ref == self.id or ref in self.aliases


@dataclasses.dataclass
class Leftover:
    """Something `prune` may delete: an unfinished partial, a detached Hub revision."""

    description: str
    size: int
    modified: float
    model: LocalModel | None = None  # a whole model to remove through its store
    paths: list[Path] = dataclasses.field(default_factory=list)  # else these files

    def to_json(self) -> dict[str, Any]:
        return {"description": self.description, "size": self.size, "modified": round(self.modified, 3),
                "id": self.model.id if self.model else None, "paths": [str(p) for p in self.paths]}


@dataclasses.dataclass
class RepairPlan:
    """How to fetch a model's bad files again: arguments for download_model()."""

    provider: str
    model: str
    options: dict[str, Any]
    remove_first: list[Path]  # the bad files, deleted before the fetch (a same-size corrupt file looks present)


class LocalStore(abc.ABC):
    """One provider's files on disk, at one root (a Hub cache, an Ollama store, a URL folder)."""

    provider: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    @abc.abstractmethod
    def default_roots(cls, home: Path) -> list[Path]:
        """Where this provider keeps models on this machine (`home`: MODELPULL_HOME)."""

    @abc.abstractmethod
    def models(self) -> list[LocalModel]:
        """Every model and unfinished download here; unreadable entries are skipped."""

    @abc.abstractmethod
    def remove(self, model: LocalModel) -> int:
        """Delete `model` and the files no other model here uses; bytes freed."""

    def prunable(self, cutoff: float | None) -> list[Leftover]:
        """Leftovers older than `cutoff` (seconds since the epoch; None: all)."""
        return []

    def repair(self, model: LocalModel, bad: list[LocalFile]) -> RepairPlan | None:
        """How to fetch `bad` again, or None when the source is not known well enough."""
        return None

    def busy(self, model: LocalModel) -> str | None:
        """A download (of any process) writing one of the model's files right now, if any: the
        transfer engine holds `.<name>.lock` beside each file it writes."""
        for file in model.files:
            dest = final_path(file.path)
            if is_locked(dest.with_name(f".{dest.name}.lock")):
                return f"a download is writing {dest.name}"
        return None

    def open_paths(self, model: LocalModel) -> list[Path]:
        """Paths a running engine or download of this model would hold (for "in use" checks)."""
        paths = [model.location, *(f.path for f in model.files), *(f.link for f in model.files if f.link)]
        if model.status == PARTIAL:  # a partial is held by whoever writes its final file
            paths += [final_path(p) for p in paths]
        return paths


# ---------------------------------------------------------------------- helpers for stores


def bytes_on_disk(stat: os.stat_result) -> int:
    """What a file really takes: a sparse partial (pieces written at their offsets) less than its size."""
    blocks = getattr(stat, "st_blocks", None)
    return min(stat.st_size, blocks * 512) if blocks is not None else stat.st_size


def partial_files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Unfinished downloads directly in `folder`: modelpull's `.part` files (with their state and
    lock files beside them) and huggingface_hub's `.incomplete` blobs."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if entry.name.endswith((".part", ".incomplete")) and entry.is_file(follow_symlinks=False):
            try:
                found.append((Path(entry.path), entry.stat(follow_symlinks=False)))
            except OSError:
                continue
    return found


def final_path(path: Path) -> Path:
    """Where a partial's data goes once complete (the path itself for a finished file)."""
    return path.with_name(path.name.removesuffix(".part").removesuffix(".incomplete"))


def partial_companions(part: Path) -> list[Path]:
    """A partial and the bookkeeping files written beside it (state, the engine's lock), those that exist."""
    base = part.name
    names = [base, f"{base}.state", f".{final_path(part).name}.lock"]
    return [part.with_name(n) for n in names if part.with_name(n).exists()]


def is_locked(lock: Path) -> bool:
    """True when another process or thread holds the flock on `lock` (filelock's FileLock, which the
    transfer engine and huggingface_hub take while they write)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def unlink_quietly(path: Path) -> int:
    """Delete a file; the bytes it took (0 if it was already gone)."""
    try:
        info = path.lstat()
        path.unlink()
    except FileNotFoundError:
        return 0
    return 0 if stat.S_ISLNK(info.st_mode) else bytes_on_disk(info)


def now() -> float:
    return time.time()

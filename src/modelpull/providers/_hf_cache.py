"""Where Hugging Face files go on disk, laid out exactly as `huggingface_hub` lays them out.

Hub cache (`cache_dir`, else HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub):

    models--org--name/                  (datasets--org--name/ for a dataset)
        blobs/<etag>                    the bytes: etag = sha256 (LFS) or git blob sha1 (others)
        snapshots/<commit>/<path>       relative symlink to ../../blobs/<etag> (one more .. per folder)
        refs/<revision>                 the commit sha, no newline (branch and tag names only)
        trees/<commit>.json             the commit's file listing (huggingface_hub >= 1.x reads it
                                        to tell a complete offline snapshot from a partial one)

`local_dir` instead: plain files at `<local_dir>/<path>`, with the bookkeeping huggingface_hub
keeps beside them (`.cache/huggingface/download/<path>.metadata`: commit, etag, timestamp).
Tools that read either layout (huggingface_hub with HF_HUB_OFFLINE=1, transformers, mlx-lm)
then find the model without the network.

Every path below is made by `_paths.confined`: the listing's names (checked when the listing
is read) are joined to the cache or `local_dir` and proved, symlinks resolved, to stay inside it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from .._paths import confined
from ..transfer import replace_durably, write_durably

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by huggingface_hub (written by modelpull).\n"
    "# For information about cache directory tags, see:\n"
    "#\thttps://bford.info/cachedir/\n"
)
TREE_CACHE_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RepoFile:
    """One file of a commit, as the Hub lists it."""

    path: str
    size: int
    blob_id: str  # git sha1 of what git stores (the LFS pointer, for an LFS file)
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        """The blob's name in the cache, and what the Hub sends as its (linked) ETag."""
        return self.lfs_sha256 or self.blob_id


def default_cache_dir() -> Path:
    """HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    return "--".join([f"{repo_type}s", *repo_id.split("/")])


class HubCache:
    """The Hub cache folder of one repo."""

    def __init__(self, cache_dir: Path, repo_id: str, repo_type: str) -> None:
        self.cache_dir = cache_dir
        self.folder = repo_folder_name(repo_id, repo_type)
        self.storage = confined(cache_dir, self.folder)

    def _path(self, *names: str) -> Path:
        # The cache, not the repo folder, is the root: a blob may be a link into the shared blob store.
        return confined(self.cache_dir, self.folder, *names)

    def blob(self, file: RepoFile) -> Path:
        return self._path("blobs", file.etag)

    def lock(self, file: RepoFile) -> Path:
        """huggingface_hub's lock for this blob: holding it makes `hf download` wait, and us for it."""
        return confined(self.cache_dir, ".locks", self.folder, f"{file.etag}.lock")

    def snapshot(self, commit: str) -> Path:
        return self._path("snapshots", commit)

    def has_blob(self, file: RepoFile) -> bool:
        """True when the blob is complete: huggingface_hub and we only ever rename finished blobs here."""
        try:
            return self.blob(file).stat().st_size == file.size
        except FileNotFoundError:
            return False

    def link(self, commit: str, file: RepoFile) -> Path:
        """snapshots/<commit>/<path> -> the blob, as a relative symlink (a copy where links fail)."""
        pointer = self._path("snapshots", commit, file.path)
        blob = self.blob(file)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(blob, pointer.parent)
        if pointer.is_symlink() and os.readlink(pointer) == target:
            return pointer
        tmp = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.symlink(target, tmp)
        except OSError:  # no symlinks here (some Windows setups): huggingface_hub copies too
            shutil.copyfile(blob, tmp)
        replace_durably(tmp, pointer)
        return pointer

    def write_ref(self, revision: str, commit: str) -> None:
        """refs/<revision> = commit, unless the revision is the commit itself."""
        if revision == commit:
            return
        ref = self._path("refs", revision)
        ref.parent.mkdir(parents=True, exist_ok=True)
        if ref.exists() and ref.read_text() == commit:
            return
        _write_atomic(ref, commit)

    def write_tree(self, commit: str, files: list[RepoFile]) -> None:
        write_tree_cache(self.storage, commit, files)

    def tag(self) -> None:
        tag = self.cache_dir / "CACHEDIR.TAG"
        if not tag.exists():
            try:
                tag.write_text(CACHEDIR_TAG)
            except OSError:
                pass


class LocalDir:
    """A plain folder of the repo's files (`local_dir`), with huggingface_hub's metadata beside them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = root / ".cache" / "huggingface"

    def path(self, file: RepoFile) -> Path:
        return confined(self.root, file.path)

    def _metadata_path(self, file: RepoFile) -> Path:
        return confined(self.root, ".cache", "huggingface", "download", f"{file.path}.metadata")

    def lock(self, file: RepoFile) -> Path:
        """huggingface_hub's lock for this file in a local_dir (beside its metadata)."""
        return confined(self.root, ".cache", "huggingface", "download", f"{file.path}.lock")

    def has_file(self, file: RepoFile) -> bool:
        """The file is there, its size right, and huggingface_hub's metadata names the same blob."""
        try:
            if self.path(file).stat().st_size != file.size:
                return False
            lines = self._metadata_path(file).read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return False
        return len(lines) >= 2 and lines[1].strip() == file.etag

    def record(self, commit: str, file: RepoFile) -> None:
        metadata = self._metadata_path(file)
        metadata.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(metadata, f"{commit}\n{file.etag}\n{time.time()}\n")

    def write_tree(self, commit: str, files: list[RepoFile]) -> None:
        self.meta.mkdir(parents=True, exist_ok=True)
        gitignore = self.meta / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("*")
        write_tree_cache(self.meta, commit, files)


def write_tree_cache(folder: Path, commit: str, files: list[RepoFile]) -> None:
    """trees/<commit>.json in huggingface_hub's format; a commit never changes, so write it once."""
    path = folder / "trees" / f"{commit}.json"
    if path.exists():
        return
    entries = {}
    for file in sorted(files, key=lambda f: f.path):
        entry: dict = {"size": file.size, "blob_id": file.blob_id}
        if file.lfs_sha256 is not None:
            entry["lfs_sha256"] = file.lfs_sha256
            entry["lfs_size"] = file.size
        entries[file.path] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps({"format_version": TREE_CACHE_FORMAT_VERSION, "files": entries}, indent=1))


def _write_atomic(path: Path, text: str) -> None:
    write_durably(path, text.encode())

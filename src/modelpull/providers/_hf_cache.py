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
import fcntl
import json
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path

from .._paths import confined
from ..transfer import replace_durably, write_durably
from ._local import (
    COMPLETE, PARTIAL, Leftover, LocalFile, LocalModel, LocalStore, RepairPlan, bytes_on_disk, final_path, is_locked,
    partial_companions, partial_files, unlink_quietly,
)

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


# ---------------------------------------------------------------------- what the cache holds
#
# Read as huggingface_hub's scan_cache_dir() reads it: one revision per snapshots/<commit>,
# named by the refs that point at it; a file's bytes are where its link resolves (the repo's
# blobs/<etag>, or since huggingface_hub 2.x a cache-wide store entry <cache>/blobs/<2 hex>/<xet
# hash> that several repos share). A blob is counted once, wherever it is linked from.

SHARED_BLOBS_MARKER = ".huggingface-shared-blobs"
_REPO_PREFIXES = {"models--": "model", "datasets--": "dataset", "spaces--": "space"}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def repo_reference(repo_id: str, repo_type: str) -> str:
    """How a local Hub repo is named: hf:org/name, hf:datasets/org/name."""
    return f"hf:{repo_id}" if repo_type == "model" else f"hf:{repo_type}s/{repo_id}"


class HubCacheStore(LocalStore):
    """The Hub cache at `root`, as huggingface_hub lays it out (and as modelpull writes it)."""

    provider = "huggingface"

    @classmethod
    def default_roots(cls, home: Path) -> list[Path]:
        # The user's cache (huggingface_hub's and modelpull's default) and the server's, inside home.
        return [default_cache_dir(), home / "huggingface" / "hub"]

    def models(self) -> list[LocalModel]:
        found: list[LocalModel] = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return found
        for entry in entries:
            repo_type = next((t for p, t in _REPO_PREFIXES.items() if entry.name.startswith(p)), None)
            if repo_type is None or not entry.is_dir(follow_symlinks=False):
                continue
            repo_id = entry.name.split("--", 1)[1].replace("--", "/")
            found.extend(self._repo_models(Path(entry.path), repo_id, repo_type))
        return found

    def _repo_models(self, repo_dir: Path, repo_id: str, repo_type: str) -> list[LocalModel]:
        reference = repo_reference(repo_id, repo_type)
        refs: dict[str, list[str]] = {}
        refs_dir = repo_dir / "refs"
        for folder, _, names in os.walk(refs_dir):
            for name in names:
                try:
                    commit = Path(folder, name).read_text().strip()
                except (OSError, UnicodeError):
                    continue
                refs.setdefault(commit, []).append(os.path.relpath(os.path.join(folder, name), refs_dir))
        models = []
        try:
            snapshots = sorted(os.scandir(repo_dir / "snapshots"), key=lambda e: e.name)
        except OSError:
            snapshots = []
        for snapshot in snapshots:
            if not snapshot.is_dir(follow_symlinks=False):
                continue
            commit = snapshot.name
            sizes = _tree_sizes(repo_dir / "trees" / f"{commit}.json")
            files, size, modified, used = self._snapshot_files(Path(snapshot.path), sizes)
            names = sorted(refs.get(commit, []))
            models.append(LocalModel(
                id=f"{reference}@{commit}", provider=self.provider, name=repo_id, location=Path(snapshot.path),
                files=files, size_on_disk=size, revision=commit, refs=names, modified=modified, last_used=used,
                aliases=[f"{reference}@{commit[:12]}", *(f"{reference}@{n}" for n in names)],
                groups=[reference, repo_id, f"huggingface:{repo_id}", f"mlx:{repo_id}"],
                store=self.root, details={"repo_type": repo_type},
            ))
        partials = partial_files(repo_dir / "blobs")
        if partials:
            on_disk = sum(bytes_on_disk(s) for _, s in partials)
            models.append(LocalModel(
                id=f"partial:{reference}", provider=self.provider, name=repo_id, location=repo_dir / "blobs",
                files=[LocalFile(p.name, p, bytes_on_disk(s)) for p, s in partials], size_on_disk=on_disk,
                status=PARTIAL, modified=max(s.st_mtime for _, s in partials), groups=[reference, repo_id],
                store=self.root, details={"repo_type": repo_type},
            ))
        return models

    @staticmethod
    def _snapshot_files(snapshot: Path, sizes: dict[str, int]) -> tuple[list[LocalFile], int, float, float | None]:
        files: list[LocalFile] = []
        seen: set[str] = set()
        size = 0
        modified = 0.0
        used: float | None = None
        prefix = len(str(snapshot)) + 1
        for folder, _, names in os.walk(snapshot):
            for name in names:
                link = os.path.join(folder, name)
                inside = link[prefix:].replace(os.sep, "/")
                real, info = _blob_of(link)
                etag = os.path.basename(real) if real != link else ""
                if info is None:  # a dangling link: the blob is gone
                    etag = os.path.basename(real)
                sha256 = etag if _HEX64.fullmatch(etag) else None
                git_sha1 = etag if _HEX40.fullmatch(etag) else None
                if info is None:
                    files.append(LocalFile(inside, Path(real), sizes.get(inside, 0), sha256, git_sha1, Path(link),
                                           on_disk=None))
                    continue
                files.append(LocalFile(inside, Path(real), sizes.get(inside, info.st_size), sha256, git_sha1,
                                       Path(link), on_disk=info.st_size))
                modified = max(modified, info.st_mtime)
                used = info.st_atime if used is None else max(used, info.st_atime)
                if real not in seen:
                    seen.add(real)
                    size += info.st_size
        files.sort(key=lambda f: f.name)
        return files, size, modified, used

    # ------------------------------------------------------------------ removing

    def remove(self, model: LocalModel) -> int:
        repo_dir = self._repo_dir(model)
        if model.status == PARTIAL:
            freed = sum(unlink_quietly(p) for f in model.files for p in partial_companions(f.path))
            _remove_empty(repo_dir)
            return freed
        siblings = [m for m in self._repo_models(repo_dir, model.name, model.details["repo_type"])
                    if m.status == COMPLETE and m.revision != model.revision]
        kept_blobs = {repo_dir / "blobs" / _etag(f) for m in siblings for f in m.files}
        mine = {repo_dir / "blobs" / _etag(f) for f in model.files if _etag(f)}
        shared_targets = []
        freed = 0
        for blob in sorted(mine - kept_blobs) if siblings else sorted(self._all_blobs(repo_dir)):
            target = self._shared_target(blob)
            if target is not None:
                shared_targets.append(target)
            freed += unlink_quietly(blob)
        if siblings:
            shutil.rmtree(model.location, ignore_errors=True)
            for ref in model.refs:
                unlink_quietly(repo_dir / "refs" / ref)
            unlink_quietly(repo_dir / "trees" / f"{model.revision}.json")
        else:
            # The last revision: the whole repo folder goes, as huggingface_hub's delete_revisions does.
            shutil.rmtree(repo_dir, ignore_errors=True)
            shutil.rmtree(self.root / ".locks" / repo_dir.name, ignore_errors=True)
        for target in shared_targets:
            freed += sweep_shared_blob(self.root, target)
        return freed

    def _repo_dir(self, model: LocalModel) -> Path:
        return self.root / repo_folder_name(model.name, model.details["repo_type"])

    @staticmethod
    def _all_blobs(repo_dir: Path) -> list[Path]:
        try:
            return [Path(e.path) for e in os.scandir(repo_dir / "blobs")]
        except OSError:
            return []

    def _shared_target(self, blob: Path) -> Path | None:
        """The cache-wide store entry a repo blob links to, if it is one."""
        if not os.path.islink(blob):
            return None
        target = Path(os.path.normpath(os.path.join(blob.parent, os.readlink(blob))))
        store = self.root / "blobs"
        if target.parent.parent != store or not _HEX64.fullmatch(target.name) or target.parent.name != target.name[:2]:
            return None
        return target

    # ------------------------------------------------------------------ prune and repair

    def prunable(self, cutoff: float | None) -> list[Leftover]:
        leftovers = []
        for model in self.models():
            if cutoff is not None and model.modified > cutoff:
                continue
            if model.status == PARTIAL:
                leftovers.append(Leftover(f"unfinished download of {model.name} (Hub cache)", model.size_on_disk,
                                          model.modified, model=model))
            elif not model.refs:
                leftovers.append(Leftover(f"detached revision {model.revision[:12]} of {model.name} (no branch or "
                                          "tag names it)", model.size_on_disk, model.modified, model=model))
        return leftovers

    def repair(self, model: LocalModel, bad: list[LocalFile]) -> RepairPlan | None:
        if model.status != COMPLETE or model.revision is None:
            return None
        repo_dir = self._repo_dir(model)
        remove = []
        for file in bad:
            blob = repo_dir / "blobs" / _etag(file)
            remove.append(blob)
            target = self._shared_target(blob)
            if target is not None:  # a corrupt shared entry is corrupt for every repo using it
                remove.append(target)
        options = {"revision": model.revision, "cache_dir": str(self.root),
                   "allow_patterns": [glob_escape(f.name) for f in bad]}
        if model.details["repo_type"] != "model":
            options["repo_type"] = model.details["repo_type"]
        return RepairPlan("huggingface", model.name, options, remove)

    def busy(self, model: LocalModel) -> str | None:
        """A blob being written right now: huggingface_hub and modelpull both hold
        `.locks/<repo folder>/<etag>.lock` while they write one."""
        locks = self.root / ".locks" / self._repo_dir(model).name
        for file in model.files:
            etag = _etag(file) or final_path(file.path).name
            if is_locked(locks / f"{etag}.lock"):
                return f"a download is writing {file.name} of {model.name}"
        return None


def _blob_of(link: str) -> tuple[str, os.stat_result | None]:
    """(where a snapshot entry's bytes are, their stat; None if gone), following the entry's link
    to the repo blob and, for a shared blob, that blob's link into the cache-wide store. Cheaper
    than os.path.realpath, which checks every folder of the path."""
    path = link
    for _ in range(3):  # snapshot link -> repo blob -> shared store entry
        try:
            info = os.lstat(path)
        except OSError:
            return path, None
        if not stat.S_ISLNK(info.st_mode):
            return path, info
        path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
    try:
        return path, os.stat(path)
    except OSError:
        return path, None


def _etag(file: LocalFile) -> str:
    return file.sha256 or file.git_sha1 or ""


def _tree_sizes(path: Path) -> dict[str, int]:
    """Sizes from trees/<commit>.json (the listing saved with the snapshot), when there is one."""
    try:
        entries = json.loads(path.read_text())["files"]
        return {name: int(entry["size"]) for name, entry in entries.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _remove_empty(repo_dir: Path) -> None:
    """Drop a repo folder holding nothing but empty folders (what a removed partial leaves)."""
    for folder, _, names in os.walk(repo_dir):
        if names:
            return
    shutil.rmtree(repo_dir, ignore_errors=True)


def glob_escape(path: str) -> str:
    """A file path as an fnmatch pattern matching only itself."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def sweep_shared_blob(cache_dir: Path, store_path: Path) -> int:
    """Delete a cache-wide store entry once no repo blob links to it; bytes freed.

    As huggingface_hub does (utils/_shared_blobs.py): under the entry's lock, the manifest
    `<hash>.refs` lists candidate links; each is checked on disk; without a valid one the entry
    and its manifest go, otherwise the manifest is rewritten with the valid ones. A missing or
    unreadable manifest keeps the entry (never delete what someone may use).
    """
    if not (cache_dir / "blobs" / SHARED_BLOBS_MARKER).is_file():
        return 0
    manifest = store_path.with_name(store_path.name + ".refs")
    lock_path = store_path.with_name(store_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            lines = manifest.read_text().splitlines()
        except (OSError, UnicodeError):
            return 0
        valid = []
        for line in lines:
            candidate = cache_dir / line
            if line.startswith("/") or ".." in Path(line).parts or not os.path.islink(candidate):
                continue
            target = os.path.normpath(os.path.join(candidate.parent, os.readlink(candidate)))
            if target == os.path.normpath(store_path):
                valid.append(line)
        if valid:
            _write_atomic(manifest, "".join(f"{line}\n" for line in sorted(set(valid))))
            return 0
        freed = unlink_quietly(store_path)
        unlink_quietly(manifest)
        return freed
    finally:
        os.close(fd)

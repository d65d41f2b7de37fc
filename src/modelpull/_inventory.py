"""Every model on this machine, gathered from the providers that know where they keep them.

    Inventory(home)
        .stores()     each provider's LocalStore at each of its roots (Hub caches, Ollama stores,
                      URL folders) that exists, each root once
        .models()     LocalModel from every store: Hub revisions, Ollama tags, URL files, partials
        .summary()    what `list --json` and GET /local-models answer: models, totals, free disk
        .find(ref)    the models a reference names (id, alias, or a whole repo)
        .verify()     re-hash files against their digests: ok / corrupt / missing / unchecked
        .remove()     through the owning store, refused while a download or an engine uses it
        .prunable()   unfinished partials and detached revisions, older than a cutoff
        .repair()     delete the bad files, fetch exactly those again with download_model()

The inventory knows no layout (each store does) and prints nothing (the faces do).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from ._errors import ModelPullError, NotFound
from ._progress import DownloadProgress
from ._settings import Settings
from .providers import local_stores
from .providers._local import COMPLETE, PARTIAL, Leftover, LocalFile, LocalModel, LocalStore

HASH_BUFFER = 4 * 1024 * 1024  # large reads: hashing, not syscalls, sets the pace
OK, CORRUPT, MISSING, UNCHECKED = "ok", "corrupt", "missing", "unchecked"


class InUse(ModelPullError):
    """A model a running download or an engine uses cannot be removed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="model_in_use")


@dataclasses.dataclass
class Use:
    """Something holding files: an engine or a running download (named in refusals)."""

    label: str  # "engine 'chat'", "download dl-1234 (running)"
    paths: list[Path]  # files or folders it reads or writes
    models: list[str] = dataclasses.field(default_factory=list)  # "huggingface:org/name", "ollama:llama3:8b"


@dataclasses.dataclass
class FileCheck:
    """The verdict on one file."""

    model_id: str
    file: LocalFile
    status: str  # ok, corrupt, missing, unchecked (no digest known: size only)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "name": self.file.name, "path": str(self.file.link or self.file.path),
                "status": self.status, "detail": self.detail}


class Inventory:
    """The models under every known root; `uses` tells which ones are busy."""

    def __init__(self, home: Path | None = None, *, roots: dict[str, list[Path]] | None = None,
                 uses: Callable[[], list[Use]] | None = None) -> None:
        self.home = Path(home if home is not None else Settings.from_env().home).expanduser()
        self._roots = roots
        self._uses = uses or (lambda: [])

    # ------------------------------------------------------------------ gathering

    def stores(self) -> list[LocalStore]:
        stores: list[LocalStore] = []
        seen: set[tuple[str, str]] = set()
        for provider, store_class in local_stores().items():
            roots = self._roots.get(provider, []) if self._roots is not None else store_class.default_roots(self.home)
            for root in roots:
                real = os.path.realpath(root)
                if (provider, real) in seen or not os.path.isdir(real):
                    continue
                seen.add((provider, real))
                stores.append(store_class(Path(root)))
        return stores

    def models(self) -> list[LocalModel]:
        return [model for store in self.stores() for model in store.models()]

    def summary(self) -> dict[str, Any]:
        """Models, totals per source (a blob shared by revisions or repos counted once), free disk."""
        stores = self.stores()
        models = [model for store in stores for model in store.models()]
        totals: dict[str, dict[str, int]] = {}
        counted: set[str] = set()
        for model in models:
            total = totals.setdefault(model.provider, {"models": 0, "partial": 0, "size_on_disk": 0})
            total["partial" if model.status == PARTIAL else "models"] += 1
            for file in model.files:
                key = str(file.path)
                if key in counted:
                    continue
                counted.add(key)
                if file.on_disk is None:  # missing
                    continue
                if file.on_disk >= 0:
                    total["size_on_disk"] += file.on_disk
                    continue
                try:
                    total["size_on_disk"] += os.stat(key).st_size if model.status == COMPLETE else file.size
                except OSError:
                    pass
        disks = []
        devices: set[int] = set()
        for store in stores:
            try:
                device = os.stat(store.root).st_dev
                usage = shutil.disk_usage(store.root)
            except OSError:
                continue
            if device in devices:
                continue
            devices.add(device)
            disks.append({"path": str(store.root), "free": usage.free, "total": usage.total})
        return {
            "models": [m.to_json() for m in models],
            "totals": totals,
            "size_on_disk": sum(t["size_on_disk"] for t in totals.values()),
            "disks": disks,
            "stores": [{"provider": s.provider, "path": str(s.root)} for s in stores],
        }

    def find(self, ref: str, models: list[LocalModel] | None = None) -> list[LocalModel]:
        """The models `ref` names: an id or alias exactly, else every revision of a repo it names."""
        models = self.models() if models is None else models
        ref = ref.strip()
        exact = [m for m in models if m.answers_to(ref)]
        if exact:
            return exact
        group = [m for m in models if ref in m.groups and m.status == COMPLETE]
        if group:
            return group
        raise NotFound(f"No local model '{ref}': run 'modelpull list' to see the ids (e.g. "
                       f"{_example(models)})", code="local_model_not_found")

    def get(self, model_id: str) -> LocalModel:
        """One model by its id (API routes)."""
        for model in self.models():
            if model.id == model_id:
                return model
        raise NotFound(f"No local model with id '{model_id}'", code="local_model_not_found")

    def show(self, model: LocalModel) -> dict[str, Any]:
        """Files, sizes, digests, where they live; GGUF metadata or a safetensors header summary."""
        from ._model_info import UnsupportedModel, inspect_model_file

        data = model.to_json(files=True)
        formats = []
        for file in _model_files(model):
            try:
                info = inspect_model_file(file.path)
            except (UnsupportedModel, OSError):
                continue
            formats.append({"file": file.name, **info})
        data["formats"] = formats
        return data

    # ------------------------------------------------------------------ removing

    def in_use(self, model: LocalModel) -> str | None:
        """Who uses `model` (a sentence naming it), or None."""
        store = self._store_of(model)
        reason = store.busy(model) if store is not None else None
        if reason:
            return reason
        held = [Path(os.path.realpath(p)) for p in store.open_paths(model)] if store else []
        for use in self._uses():
            if f"{model.provider}:{model.name}" in use.models:
                return f"{use.label} uses {model.name}"
            for path in use.paths:
                real = Path(os.path.realpath(path))
                if any(_within_model(real, h, model) for h in held):
                    return f"{use.label} uses {model.name} ({path})"
        return None

    def remove(self, model: LocalModel) -> int:
        """Delete `model` through its store; InUse when something uses it. Bytes freed."""
        reason = self.in_use(model)
        if reason:
            raise InUse(f"cannot remove {model.id}: {reason}; stop it first")
        store = self._store_of(model)
        if store is None:
            raise NotFound(f"No store holds {model.id} any more", code="local_model_not_found")
        return store.remove(model)

    def prunable(self, older_than_days: float | None = None) -> list[Leftover]:
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        leftovers = [left for store in self.stores() for left in store.prunable(cutoff)]
        return [left for left in leftovers if left.model is None or not self.in_use(left.model)]

    def prune(self, leftovers: Iterable[Leftover]) -> int:
        freed = 0
        for left in leftovers:
            if left.model is not None:
                try:
                    freed += self.remove(left.model)
                except (InUse, NotFound):
                    continue
        return freed

    def _store_of(self, model: LocalModel) -> LocalStore | None:
        for store in self.stores():
            if store.provider == model.provider and model.store is not None and \
                    os.path.realpath(store.root) == os.path.realpath(model.store):
                return store
        return None

    # ------------------------------------------------------------------ verifying

    def verify(self, models: list[LocalModel], on_bytes: Callable[[int], None] | None = None,
               workers: int = 2) -> list[FileCheck]:
        """Re-hash every file of `models` (each blob once); `on_bytes(n)` as bytes are read."""
        jobs: list[tuple[LocalModel, LocalFile]] = []
        seen: set[str] = set()
        for model in models:
            if model.status != COMPLETE:
                continue
            for file in model.files:
                key = os.path.realpath(file.path)
                if key not in seen:
                    seen.add(key)
                    jobs.append((model, file))
        report = on_bytes or (lambda n: None)
        lock = threading.Lock()

        def locked_report(count: int) -> None:
            with lock:
                report(count)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(pool.map(lambda job: check_file(job[0].id, job[1], locked_report), jobs))
        # Files that share a blob get its verdict too.
        by_path = {os.path.realpath(r.file.path): r for r in results}
        checks = []
        for model in models:
            if model.status != COMPLETE:
                continue
            for file in model.files:
                verdict = by_path[os.path.realpath(file.path)]
                checks.append(dataclasses.replace(verdict, model_id=model.id, file=file))
        return checks

    @staticmethod
    def bytes_to_verify(models: list[LocalModel]) -> int:
        sizes: dict[str, int] = {}
        for model in models:
            if model.status == COMPLETE:
                for file in model.files:
                    sizes[os.path.realpath(file.path)] = file.size
        return sum(sizes.values())

    async def repair(self, model: LocalModel, bad: list[LocalFile], **download_options: Any
                     ) -> AsyncIterator[DownloadProgress]:
        """Delete the bad files and fetch exactly those again; progress items of download_model()."""
        from ._api import download_model

        store = self._store_of(model)
        plan = store.repair(model, bad) if store is not None else None
        if plan is None:
            raise ModelPullError(
                f"cannot repair {model.id}: its source is not known well enough to fetch it again "
                "(pull it again by its full reference)", code="cannot_repair")
        reason = self.in_use(model)
        if reason:
            raise InUse(f"cannot repair {model.id}: {reason}")
        for path in plan.remove_first:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        options = {**plan.options, **download_options}
        token = options.pop("token", None)
        base_url = options.pop("base_url", None)
        async for item in download_model(plan.provider, plan.model, token=token, base_url=base_url, **options):
            yield item


def check_file(model_id: str, file: LocalFile, on_bytes: Callable[[int], None]) -> FileCheck:
    """Hash one file against its digest (sha256, or git blob sha1)."""
    try:
        size = os.stat(file.path).st_size
    except OSError:
        return FileCheck(model_id, file, MISSING, "the file is not on disk")
    if size != file.size:
        on_bytes(file.size)
        return FileCheck(model_id, file, CORRUPT, f"size {size} instead of {file.size}")
    if not file.sha256 and not file.git_sha1:
        on_bytes(size)
        return FileCheck(model_id, file, UNCHECKED, "no digest recorded: size checked only")
    if file.sha256:
        hasher = hashlib.sha256()
    else:
        hasher = hashlib.sha1()
        hasher.update(b"blob %d\0" % size)
    buffer = bytearray(HASH_BUFFER)
    view = memoryview(buffer)
    try:
        with open(file.path, "rb", buffering=0) as handle:
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                hasher.update(view[:count])
                on_bytes(count)
    except OSError as exc:
        return FileCheck(model_id, file, MISSING, f"cannot read it: {exc.strerror or exc}")
    expected = file.sha256 or file.git_sha1
    if hasher.hexdigest() != expected:
        return FileCheck(model_id, file, CORRUPT, f"digest mismatch: expected {expected[:16]}…, got "
                                                  f"{hasher.hexdigest()[:16]}…")
    return FileCheck(model_id, file, OK)


def uses_from_records(jobs: Iterable[dict[str, Any]], engines: Iterable[dict[str, Any]]) -> list[Use]:
    """Uses from the server's job and engine records (the manager's memory, or its store on disk)."""
    uses = []
    for engine in engines:
        if engine.get("status") != "failed" and engine.get("local_path"):
            uses.append(Use(f"engine '{engine.get('engine_id')}'", [Path(engine["local_path"])]))
    for job in jobs:
        if job.get("status") in ("queued", "downloading", "verifying", "paused"):
            paths = [Path(job["local_path"])] if job.get("local_path") else []
            uses.append(Use(f"download '{job.get('id')}' ({job.get('status')})", paths,
                            [f"{job.get('provider')}:{job.get('model')}"]))
    return uses


def _within_model(path: Path, held: Path, model: LocalModel) -> bool:
    """A use's path touches the model: the same file or folder, or one inside the other (not a
    whole store that merely contains it)."""
    if path == held or held in path.parents:
        return True
    return path in held.parents and model.store is not None and path not in (model.store, *model.store.parents)


def _model_files(model: LocalModel) -> list[LocalFile]:
    """The files worth inspecting: weights first, at most a few."""
    weights = [f for f in model.files if f.name.endswith((".gguf", ".safetensors"))]
    if model.provider == "ollama":
        weights = [f for f in model.files if f.name.startswith("model ")]
    if model.provider == "url":
        weights = model.files
    return weights[:8]


def _example(models: list[LocalModel]) -> str:
    return ", ".join(m.id for m in models[:2]) or "none here yet"

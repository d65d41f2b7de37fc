"""Ollama's model store, as `ollama pull` writes it and `ollama list` / `ollama rm` read it.

    <store>/manifests/<host>/<namespace>/<model>/<tag>   the manifest's raw bytes (JSON)
    <store>/blobs/sha256-<hex>                           each layer and the config, shared by models
    <store>/blobs/sha256-<hex>-partial[-N]               Ollama's own unfinished parts
    <store>/blobs/sha256-<hex>.part (+ .state)           modelpull's unfinished blobs (direct mode)

The store is OLLAMA_MODELS, else ~/.ollama/models. A model's size is the sum of its manifest's
layers (as `ollama list` shows it); removing a model deletes its manifest, then the blobs no
other manifest references (as `ollama rm` does).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .._errors import InvalidRequest
from .._paths import UnsafeName, confined, sha256_hex, shown_name
from ._local import (
    COMPLETE, PARTIAL, Leftover, LocalFile, LocalModel, LocalStore, RepairPlan, bytes_on_disk, partial_companions,
    partial_files, unlink_quietly,
)

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"

# Ollama's own name rules (types/model/name.go): parts of letters, digits, `_`, `-` and `.`.
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9]+)?$")
_OLLAMA_PARTIAL = re.compile(r"^sha256-[0-9a-f]{64}-partial(-[0-9]+)?$")


@dataclass(frozen=True)
class OllamaName:
    """`[host/][namespace/]model[:tag]`, with registry.ollama.ai, library and latest as defaults."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> "OllamaName":
        raw = text.strip()
        rest, tag = raw, DEFAULT_TAG
        if ":" in raw.rsplit("/", 1)[-1]:  # a tag; a colon before the last "/" is a host's port
            rest, _, tag = raw.rpartition(":")
        parts = rest.split("/")
        if not 1 <= len(parts) <= 3:
            raise _bad_name(text)
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
        if not (_PART.fullmatch(model) and _PART.fullmatch(namespace) and _PART.fullmatch(tag)
                and _HOST.fullmatch(host)):
            raise _bad_name(text)
        if len(tag) > 80:
            raise _bad_name(text)
        return cls(host, namespace, model, tag)

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def display(self) -> str:
        """The shortest form Ollama shows (`llama3:8b`, `user/model:tag`, `host/ns/model:tag`)."""
        if self.host == DEFAULT_HOST:
            short = self.model if self.namespace == DEFAULT_NAMESPACE else self.repository
            return f"{short}:{self.tag}"
        return f"{self.host}/{self.repository}:{self.tag}"

    def manifest_path(self, store: Path) -> Path:
        return confined(store, "manifests", self.host, self.namespace, self.model, self.tag)


def manifest_descriptors(raw: bytes) -> list[tuple[str, str, int]]:
    """(media type, digest, size) of every layer, then the config, as a manifest lists them
    (ValueError, KeyError or TypeError for bytes that are no manifest)."""
    manifest = json.loads(raw)
    descriptors = [*manifest["layers"], *([manifest["config"]] if manifest.get("config") else [])]
    return [(str(d["mediaType"]), str(d["digest"]), int(d["size"])) for d in descriptors]


def digest_hex(digest: str) -> str:
    """The hex of a `sha256:<hex>` digest, checked by the path gate (UnsafeName for anything else)."""
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256":
        raise UnsafeName(f"{shown_name(digest)} is not a sha256 digest")
    return sha256_hex(hex_digest)


def blob_path(store: Path, digest: str) -> Path:
    """<store>/blobs/sha256-<hex> for a digest `sha256:<hex>` (UnsafeName for anything else)."""
    return confined(store, "blobs", f"sha256-{digest_hex(digest)}")


def _bad_name(text: str) -> InvalidRequest:
    return InvalidRequest(
        f"{shown_name(text)} is not a valid Ollama model name: use [host/][namespace/]model[:tag], "
        "e.g. llama3.2, llama3.2:1b or myuser/mymodel:latest", param="model"
    )


def store_root(models_path: str | os.PathLike[str] | None) -> Path:
    """Ollama's model store: the `models_path` option, else OLLAMA_MODELS, else ~/.ollama/models."""
    chosen = models_path or os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models"
    return Path(chosen).expanduser()


class OllamaStore(LocalStore):
    """The models in one Ollama store."""

    provider = "ollama"

    @classmethod
    def default_roots(cls, home: Path) -> list[Path]:
        return [store_root(None), home / "ollama"]  # the user's store, and the server's inside home

    def _manifests(self) -> list[tuple[OllamaName, Path]]:
        found = []
        manifests = self.root / "manifests"
        # manifests/<host>/<namespace>/<model>/<tag>: exactly four levels, each a valid name part.
        for host in _subfolders(manifests):
            for namespace in _subfolders(manifests / host):
                for model in _subfolders(manifests / host / namespace):
                    try:
                        tags = sorted(e.name for e in os.scandir(manifests / host / namespace / model) if e.is_file())
                    except OSError:
                        continue
                    for tag in tags:
                        try:
                            name = OllamaName.parse(f"{host}/{namespace}/{model}:{tag}")
                            found.append((name, name.manifest_path(self.root)))
                        except (InvalidRequest, UnsafeName):  # not a name, or a link out of the store
                            continue
        return found

    def models(self) -> list[LocalModel]:
        models = []
        try:
            blobs = confined(self.root, "blobs")
        except UnsafeName:  # blobs/ is a link out of the store: nothing here is Ollama's
            return models
        for name, manifest in self._manifests():
            model = self._model(name, manifest, blobs)
            if model is not None:
                models.append(model)
        for part, info in partial_files(self.root / "blobs"):
            models.append(self._partial(part, info))
        try:
            ollama_parts = [e for e in os.scandir(self.root / "blobs") if _OLLAMA_PARTIAL.match(e.name)]
        except OSError:
            ollama_parts = []
        for entry in ollama_parts:
            models.append(self._partial(Path(entry.path), entry.stat(), by_ollama=True))
        return models

    def _model(self, name: OllamaName, manifest: Path, blobs: Path) -> LocalModel | None:
        try:
            info = manifest.stat()
            described = manifest_descriptors(manifest.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        files: list[LocalFile] = []
        seen: set[str] = set()
        model_digest = None
        used: float | None = None
        for media_type, digest, size in described:
            if digest in seen:
                continue
            try:
                hex_digest = digest_hex(digest)
            except UnsafeName:
                continue
            seen.add(digest)
            kind = media_type.rsplit(".", 1)[-1] if "ollama.image" in media_type else "config"
            blob = blobs / f"sha256-{hex_digest}"  # hex checked above; blobs/ checked by the caller
            files.append(LocalFile(f"{kind} sha256-{hex_digest[:12]}", blob, size, sha256=hex_digest))
            if media_type == MODEL_MEDIA_TYPE:
                model_digest = digest
                try:
                    used = blob.stat().st_atime
                except OSError:
                    pass
        short = name.display
        return LocalModel(
            id=f"ollama:{short}", provider=self.provider, name=short, location=manifest, files=files,
            size_on_disk=sum(f.size for f in files), digest=model_digest, modified=info.st_mtime, last_used=used,
            aliases=[f"ollama:{name.host}/{name.namespace}/{name.model}:{name.tag}", short,
                     *([f"ollama:{short.removesuffix(':latest')}", short.removesuffix(":latest")]
                       if name.tag == DEFAULT_TAG else [])],
            groups=[f"ollama:{name.model}"] if name.host == DEFAULT_HOST and name.namespace == DEFAULT_NAMESPACE else [],
            store=self.root, details={"host": name.host, "namespace": name.namespace, "model": name.model,
                                      "tag": name.tag},
        )

    def _partial(self, part: Path, info: os.stat_result, *, by_ollama: bool = False) -> LocalModel:
        hex_digest = part.name.removeprefix("sha256-")[:64]
        owner = "Ollama" if by_ollama else "modelpull"
        return LocalModel(
            id=f"partial:ollama:{part.name}", provider=self.provider,
            name=f"blob sha256-{hex_digest[:12]} ({owner})", location=part,
            files=[LocalFile(part.name, part, bytes_on_disk(info))], size_on_disk=bytes_on_disk(info),
            status=PARTIAL, modified=info.st_mtime, store=self.root,
        )

    def remove(self, model: LocalModel) -> int:
        if model.status == PARTIAL:
            return sum(unlink_quietly(p) for p in partial_companions(model.location) or [model.location])
        unlink_quietly(model.location)
        _drop_empty_parents(model.location.parent, self.root / "manifests")
        still_used = {f.path for other in self.models() if other.status == COMPLETE for f in other.files}
        return sum(unlink_quietly(f.path) for f in model.files if f.path not in still_used)

    def prunable(self, cutoff: float | None) -> list[Leftover]:
        return [Leftover(f"unfinished {m.name} in {self.root}", m.size_on_disk, m.modified, model=m)
                for m in self.models() if m.status == PARTIAL and (cutoff is None or m.modified <= cutoff)]

    def repair(self, model: LocalModel, bad: list[LocalFile]) -> RepairPlan | None:
        if model.status != COMPLETE:
            return None
        name = f"{model.details['host']}/{model.details['namespace']}/{model.details['model']}:{model.details['tag']}"
        return RepairPlan("ollama", name, {"direct": True, "models_path": str(self.root)}, [f.path for f in bad])


def _subfolders(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _drop_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent

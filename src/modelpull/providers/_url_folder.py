"""What URL downloads leave in a folder: the files, each named in its source record (url.py's
`_SourceBook`), partial downloads, and model files put there by hand. Apart from url.py so that a
download does not import the listing's pieces (`_local`)."""
from __future__ import annotations

import os
from pathlib import Path

from ..transfer import partial_paths
from ._local import (
    COMPLETE, PARTIAL, Leftover, LocalFile, LocalModel, LocalStore, RepairPlan, bytes_on_disk, partial_companions,
    partial_files, unlink_quietly,
)
from .url import SOURCES_DIR, _SourceBook, _url_key, sanitize_filename

_BOOKKEEPING_SUFFIXES = (".part", ".state", ".lock", ".tmp", ".incomplete")


class UrlFolder(LocalStore):
    """The files URL downloads put in one folder, each named in its source record."""

    provider = "url"

    @classmethod
    def default_roots(cls, home: Path) -> list[Path]:
        return [home]

    def _records(self) -> dict[str, dict]:
        book = _SourceBook(self.root)
        records = {}
        try:
            names = [e.name[:-len(".json")] for e in os.scandir(book.book) if e.name.endswith(".json")]
        except OSError:
            return records
        for name in names:
            if sanitize_filename(name) != name:  # a record can only name a file inside the folder
                continue
            record = book._read(name)
            if isinstance(record, dict):
                records[name] = record
        return records

    def models(self) -> list[LocalModel]:
        models = []
        records = self._records()
        partial_names = set()
        for part, info in partial_files(self.root):
            name = part.name.removesuffix(".part")
            if not part.name.endswith(".part"):
                continue
            partial_names.add(name)
            record = records.get(name, {})
            models.append(LocalModel(
                id=f"partial:url:{name}", provider=self.provider, name=name, location=part,
                files=[LocalFile(name, part, bytes_on_disk(info))], size_on_disk=bytes_on_disk(info), status=PARTIAL,
                source=record.get("url"), modified=info.st_mtime, store=self.root,
                details={"expected_size": record.get("size")},
            ))
        for name, record in sorted(records.items()):
            if name in partial_names or record.get("complete") is not True:
                continue
            path = self.root / name
            try:
                info = path.stat()
            except OSError:
                info = None
            size = record.get("size") if isinstance(record.get("size"), int) else (info.st_size if info else 0)
            sha256 = record.get("sha256") if isinstance(record.get("sha256"), str) else None
            url = record.get("url") if isinstance(record.get("url"), str) else None
            models.append(LocalModel(
                id=f"url:{name}", provider=self.provider, name=name, location=path,
                files=[LocalFile(name, path, size, sha256=sha256)], size_on_disk=info.st_size if info else 0,
                source=url, digest=f"sha256:{sha256}" if sha256 else None,
                modified=info.st_mtime if info else 0.0, last_used=info.st_atime if info else None,
                aliases=[name, str(path), *([url] if url else [])], store=self.root,
            ))
        models.extend(self._files_put_here(set(records) | partial_names))
        return models

    def _files_put_here(self, known: set[str]) -> list[LocalModel]:
        """Model files in the folder without a record (copied there by hand): `file:<name>`."""
        found = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return found
        for entry in entries:
            name = entry.name
            if name in known or name.startswith(".") or name.endswith(_BOOKKEEPING_SUFFIXES) \
                    or not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            path = Path(entry.path)
            found.append(LocalModel(
                id=f"file:{name}", provider=self.provider, name=name, location=path,
                files=[LocalFile(name, path, info.st_size)], size_on_disk=info.st_size, modified=info.st_mtime,
                last_used=info.st_atime, aliases=[name, str(path)], store=self.root,
            ))
        return found

    def remove(self, model: LocalModel) -> int:
        name = model.name
        if model.id.startswith("file:"):
            return unlink_quietly(self.root / name)
        freed = 0
        if model.status == PARTIAL:
            freed += sum(unlink_quietly(p) for p in partial_companions(model.location))
        else:
            freed += unlink_quietly(self.root / name)
            freed += sum(unlink_quietly(p) for p in partial_paths(self.root / name))
        record = _SourceBook(self.root)._read(name)
        if model.status == COMPLETE or (record is not None and record.get("complete") is not True):
            unlink_quietly(self.root / SOURCES_DIR / f"{name}.json")
        return freed

    def prunable(self, cutoff: float | None) -> list[Leftover]:
        return [Leftover(f"unfinished download {m.name} in {self.root}", m.size_on_disk, m.modified, model=m)
                for m in self.models() if m.status == PARTIAL and (cutoff is None or m.modified <= cutoff)]

    def repair(self, model: LocalModel, bad: list[LocalFile]) -> RepairPlan | None:
        record = _SourceBook(self.root)._read(model.name) or {}
        url = record.get("url")
        # The record keeps the URL without its query (signatures, tokens): only a URL that had
        # none can be fetched again from it.
        if model.status != COMPLETE or not isinstance(url, str) or _url_key(url) != record.get("url_sha256") \
                or model.id.startswith("file:"):
            return None
        options = {"dest": str(self.root), "filename": model.name}
        if record.get("sha256"):
            options["sha256"] = record["sha256"]
        return RepairPlan("url", url, options, [self.root / model.name])

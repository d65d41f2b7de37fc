"""The one gate for names from outside: an upstream's digests, ids and paths become file paths here.

    sha256_hex(value)          64 lowercase hex digits (an LFS oid, an Ollama blob digest's hex)
    git_sha1_hex(value)        40 lowercase hex digits (a git blob id, a commit)
    relative_parts(value)      a relative POSIX path, split: no empty, ".", ".." parts, not
                               absolute, no NUL or backslash
    confined(root, *names)     root/names..., with every name checked as above, then resolved
                               (symlinks followed) and proved inside the resolved root
    one_tree(paths)            a listing's relative paths, refused when two are the same file or
                               one is a file and a folder of another ("a" and "a/b")

A Hub listing, an Ollama manifest or a URL's file name reaches the disk only through these, so
that no answer from outside can put a file, a folder or a link anywhere but below the folder
modelpull chose. Each refusal is an `UnsafeName` whose `reason` names the bad value; a provider
re-raises it with its own error code (`hub_error`, `bad_manifest`, ...). Checking is cheap
(one `resolve()` per destination), and it happens before any mkdir or open.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ._errors import ModelPullError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


class UnsafeName(ModelPullError):
    """A name from outside that may not become (part of) a path; `reason` says which and why."""

    code = "unsafe_path"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sha256_hex(value: object) -> str:
    """`value` when it is a sha256 as 64 lowercase hex digits; UnsafeName otherwise."""
    if isinstance(value, str) and _SHA256.fullmatch(value):
        return value
    raise UnsafeName(f"{shown_name(value)} is not a sha256 (64 lowercase hex digits)")


def git_sha1_hex(value: object) -> str:
    """`value` when it is a git object id as 40 lowercase hex digits; UnsafeName otherwise."""
    if isinstance(value, str) and _GIT_SHA1.fullmatch(value):
        return value
    raise UnsafeName(f"{shown_name(value)} is not a git object id (40 lowercase hex digits)")


def relative_parts(value: object) -> tuple[str, ...]:
    """The parts of a relative POSIX path that stays below the folder it is joined to."""
    if not isinstance(value, str) or not value:
        raise UnsafeName(f"{shown_name(value)} is not a file path (empty or not text)")
    if "\0" in value:
        raise UnsafeName(f"{shown_name(value)} holds a NUL character")
    if "\\" in value:
        raise UnsafeName(f"{shown_name(value)} holds a backslash")
    if value.startswith("/"):
        raise UnsafeName(f"{shown_name(value)} is an absolute path")
    parts = tuple(value.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeName(f"{shown_name(value)} has an empty, '.' or '..' part")
    return parts


def one_tree(paths: list[str]) -> None:
    """UnsafeName when `paths` (each already passed `relative_parts`) cannot all be files of one
    folder: the same path twice, or a path that is a file and also the folder of another."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise UnsafeName(f"{shown_name(path)} is listed twice")
        seen.add(path)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in seen:
                raise UnsafeName(f"{shown_name(folder)} is listed as a file and as the folder of {shown_name(path)}")


def confined(root: Path, *names: str) -> Path:
    """`root` joined with `names` (each a relative path, checked), proved to stay inside `root`.

    Both sides are resolved, symlinks included, so a link planted below `root` that points
    elsewhere is caught too. The path returned is the unresolved join (links inside the root,
    such as a Hub cache's snapshot pointers, keep their meaning).
    """
    parts = [part for name in names for part in relative_parts(name)]
    path = Path(root).joinpath(*parts)
    if not is_within(path, root):
        raise UnsafeName(f"{'/'.join(parts)!r} leads outside {root} (through a symbolic link)")
    return path


def is_within(path: Path, folder: Path) -> bool:
    """True when `path`, resolved with its symlinks, is `folder` (resolved) or below it."""
    try:
        resolved, base = _resolved(path), _resolved(folder)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL: not provably inside
        return False
    return resolved == base or base in resolved.parents


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def shown_name(value: object) -> str:
    """A bad value as a message shows it: quoted, control characters escaped, long ones cut."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."

"""Writes that survive a power cut, and fsync failures that reach the user.

The transfer engine makes a file durable before renaming it into place; what providers write
after that (Hub symlinks and refs, Ollama manifests, URL records) goes through here too, so
that COMPLETE means "on disk", not "in the page cache". An fsync that fails (EIO, a full
thin-provisioned disk, a lost NFS server) is an error with a message, never swallowed.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .._errors import TransferError


def durability_error(path: Path, exc: OSError) -> TransferError:
    reason = (exc.strerror or str(exc)).lower()
    return TransferError(
        f"cannot make {path} durable: {reason}; the disk may be failing or full, check it and run the "
        "same download again",
        code="disk_error",
    )


def fsync_directory(directory: Path) -> None:
    """Make the entries of `directory` (a rename, a new symlink) durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise durability_error(directory, exc) from None
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot sync a folder: nothing to make durable
            raise durability_error(directory, exc) from None
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably: new file, fsync, rename, fsync folder."""
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")  # not uuid: its import costs 5 ms
    try:
        with open(tmp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise durability_error(path, exc) from None
    fsync_directory(path.parent)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename an already written `tmp` (a file or a symlink) over `path`, then fsync the folder."""
    try:
        if not tmp.is_symlink():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise durability_error(path, exc) from None
    fsync_directory(path.parent)

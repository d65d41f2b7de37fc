"""Damage a file on disk the way a bad sector or a stray write would (tests of verify and repair)."""
from __future__ import annotations

import os
from pathlib import Path


def flip_byte(path: Path, offset: int = 100) -> None:
    """Invert one byte in place (the size stays: only a digest can tell)."""
    os.chmod(path, 0o644)  # huggingface_hub's shared blobs are read-only
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))

"""What a partial download writes down so that a crashed process resumes every piece.

`<dest>.part` holds the data at its final offsets; `<dest>.part.state` holds a JSON header
(source validators, size, piece layout) followed by one little-endian uint64 per piece: the
bytes of that piece already written. A counter is updated with one 8-byte `pwrite` after
each chunk reaches the data file, so a SIGKILL loses at most one chunk per piece.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

_MAGIC = b"MPSTATE1"
_COUNTER = struct.Struct("<Q")


@dataclasses.dataclass
class Layout:
    """How a file is cut into pieces, and which version of it the pieces belong to."""

    total: int | None  # None: size unknown, a single piece streamed to its end
    piece_size: int
    etag: str | None = None
    last_modified: str | None = None
    ranged: bool = True  # False: the server ignores Range, so the only piece is the whole file

    @property
    def piece_count(self) -> int:
        if self.total is None:
            return 1
        return max(1, -(-self.total // self.piece_size))

    def piece_bounds(self, index: int) -> tuple[int, int | None]:
        """(start, end exclusive) of a piece; end None when the size is unknown."""
        start = index * self.piece_size
        if self.total is None:
            return start, None
        return start, min(self.total, start + self.piece_size)

    @property
    def validator(self) -> str | None:
        """What `If-Range` sends: a strong ETag if there is one, else Last-Modified."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


class PieceState:
    """The state file of one partial download: a layout and per-piece byte counters."""

    def __init__(self, path: Path, layout: Layout, done: list[int], fd: int) -> None:
        self.path = path
        self.layout = layout
        self.done = done
        self._fd = fd
        self._counters_at = 0

    @classmethod
    def create(cls, path: Path, layout: Layout) -> "PieceState":
        header = json.dumps(dataclasses.asdict(layout)).encode()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        blob = _MAGIC + struct.pack("<I", len(header)) + header
        done = [0] * layout.piece_count
        os.write(fd, blob + b"".join(_COUNTER.pack(0) for _ in done))
        state = cls(path, layout, done, fd)
        state._counters_at = len(blob)
        return state

    @classmethod
    def load(cls, path: Path) -> "PieceState | None":
        """The saved state, or None when there is none or it is unreadable."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if raw[:8] != _MAGIC:
                return None
            (header_len,) = struct.unpack_from("<I", raw, 8)
            layout = Layout(**json.loads(raw[12 : 12 + header_len]))
            at = 12 + header_len
            count = layout.piece_count
            if len(raw) < at + 8 * count:
                return None
            done = [_COUNTER.unpack_from(raw, at + 8 * i)[0] for i in range(count)]
        except (ValueError, TypeError, struct.error):
            return None
        for index, value in enumerate(done):
            start, end = layout.piece_bounds(index)
            if end is not None and value > end - start:
                return None
        state = cls(path, layout, done, os.open(path, os.O_RDWR))
        state._counters_at = at
        return state

    @property
    def bytes_done(self) -> int:
        return sum(self.done)

    def record(self, index: int, value: int) -> None:
        """Write down that piece `index` holds `value` bytes (already in the data file)."""
        self.done[index] = value
        os.pwrite(self._fd, _COUNTER.pack(value), self._counters_at + 8 * index)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def remove_partial(dest: Path) -> None:
    """Delete the partial data and state of `dest`, if any."""
    for path in partial_paths(dest):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def partial_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.state")


def partial_bytes(dest: Path) -> int:
    """Bytes of `dest` already on disk from an interrupted attempt (0 if none)."""
    _, state_path = partial_paths(dest)
    state = PieceState.load(state_path)
    if state is None:
        return 0
    try:
        return state.bytes_done
    finally:
        state.close()

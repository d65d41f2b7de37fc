"""What a partial download writes down so that a crashed process resumes every piece.

`<dest>.part` holds the data at its final offsets; `<dest>.part.state` says which of those
bytes are there and what they must hash to. Format (version 2, all integers little-endian):

    offset 0   b"MPSTATE2"                      magic and version
           8   uint32 header_len
          12   uint32 crc32c(header)            a torn or garbled header is detected
          16   header: JSON {total, piece_size, etag, last_modified, ranged}
               zero padding to a multiple of 16
           R   one 16-byte record per piece, piece i at R + 16*i:
                 uint64 done    bytes of the piece on disk, from its start
                 uint32 crc     crc32c of those `done` bytes
                 uint32 check   crc32c(index, done, crc): a torn record is detected

The header is written once, to a new file that is renamed into place. A record claims bytes
only after they are durable: the engine calls fdatasync on the data file, then writes the
records that the synced bytes back (`PieceState.claim`). A record whose check fails counts
as an empty piece (fetched again alone); a header that fails means starting over. On resume
every claimed byte is read back and its crc32c compared before it is trusted.

crc32c because its running value is the whole state: a partly done piece continues from the
recorded value after a resume, with no re-read. Measured on this project's 2-core machine,
1 MiB buffers: crc32c (the `crc32c` package, SSE4.2) 17 GiB/s with the GIL released, xxh3_64
36 GiB/s holding it, sha256 1.0 GiB/s: a piece checksum costs under 2% of the sha256 that
runs anyway.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

from ._crc import crc32c

MAGIC = b"MPSTATE2"
_PREFIX = struct.Struct("<8sII")  # magic, header_len, header crc
_RECORD = struct.Struct("<QII")  # done, crc, check
_CHECKED = struct.Struct("<QQI")  # index, done, crc: what `check` covers
RECORD_SIZE = _RECORD.size
READ_BLOCK = 4 * 1024 * 1024  # bytes read at a time when checking pieces on disk


class StateUnreadable(Exception):
    """The state file exists but cannot be trusted (torn, garbled, another version)."""


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

    def piece_length(self, index: int) -> int | None:
        start, end = self.piece_bounds(index)
        return None if end is None else end - start

    @property
    def validator(self) -> str | None:
        """What `If-Range` sends: a strong ETag if there is one, else Last-Modified."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def _record(index: int, done: int, crc: int) -> bytes:
    return _RECORD.pack(done, crc, crc32c(_CHECKED.pack(index, done, crc)))


class PieceState:
    """The pieces of one partial download: what is written (memory) and what is claimed (disk).

    `done[i]` / `crcs[i]`: bytes written to the data file and their crc32c, updated by the
    engine's thread that wrote them. `claim()` writes values down; the engine calls it only
    with values taken before an fdatasync of the data file, so the state never runs ahead of
    the data.
    """

    def __init__(self, path: Path, layout: Layout, done: list[int], crcs: list[int], fd: int, records_at: int,
                 torn: list[int] | None = None) -> None:
        self.path = path
        self.layout = layout
        self.done = done
        self.crcs = crcs
        self.torn = torn or []  # pieces whose record failed its check when loaded
        self._fd = fd
        self._records_at = records_at

    @classmethod
    def create(cls, path: Path, layout: Layout) -> "PieceState":
        header = json.dumps(dataclasses.asdict(layout)).encode()
        prefix = _PREFIX.pack(MAGIC, len(header), crc32c(header)) + header
        prefix += b"\0" * (-len(prefix) % RECORD_SIZE)
        count = layout.piece_count
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, prefix + b"".join(_record(i, 0, 0) for i in range(count)), 0)
            os.fsync(fd)
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return cls(path, layout, [0] * count, [0] * count, fd, len(prefix))

    @classmethod
    def load(cls, path: Path) -> "PieceState | None":
        """The saved state; None when there is none; StateUnreadable when it cannot be trusted."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            magic, header_len, header_crc = _PREFIX.unpack_from(raw, 0)
            if magic != MAGIC:
                raise StateUnreadable("written by another version" if magic.startswith(b"MPSTATE") else "garbled")
            header = raw[_PREFIX.size : _PREFIX.size + header_len]
            if len(header) != header_len or crc32c(header) != header_crc:
                raise StateUnreadable("torn or garbled")
            layout = Layout(**json.loads(header))
            if layout.piece_size < 1 or (layout.total is not None and layout.total < 0):
                raise StateUnreadable("garbled")
        except (ValueError, TypeError, struct.error):
            raise StateUnreadable("garbled") from None
        records_at = _PREFIX.size + header_len
        records_at += -records_at % RECORD_SIZE
        done, crcs, torn = [], [], []
        for index in range(layout.piece_count):
            at = records_at + RECORD_SIZE * index
            value, crc, check = _RECORD.unpack_from(raw, at) if len(raw) >= at + RECORD_SIZE else (0, 0, -1)
            length = layout.piece_length(index)
            if check != crc32c(_CHECKED.pack(index, value, crc)) or (length is not None and value > length):
                torn.append(index)
                value, crc = 0, 0
            done.append(value)
            crcs.append(crc)
        return cls(path, layout, done, crcs, os.open(path, os.O_RDWR), records_at, torn)

    @property
    def bytes_done(self) -> int:
        return sum(self.done)

    def reset(self, index: int) -> None:
        """Forget piece `index` (its bytes failed their check): it is fetched again from its start."""
        self.done[index] = 0
        self.crcs[index] = 0
        self.claim({index: (0, 0)})

    def claim(self, values: dict[int, tuple[int, int]]) -> None:
        """Write records: only for bytes already made durable."""
        for index, (done, crc) in values.items():
            _write_all(self._fd, _record(index, done, crc), self._records_at + RECORD_SIZE * index)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def damaged_pieces(fd: int, state: PieceState) -> list[int]:
    """The pieces whose bytes in the data file do not match their recorded crc32c (reads them back)."""
    buffer = bytearray(min(READ_BLOCK, max(1, state.layout.piece_size)))
    view = memoryview(buffer)
    bad = []
    for index in range(len(state.done)):
        want = state.done[index]
        if not want:
            continue
        start, _ = state.layout.piece_bounds(index)
        crc, read = 0, 0
        while read < want:
            count = os.preadv(fd, [view[: min(len(view), want - read)]], start + read)
            if count <= 0:
                break  # the file is shorter than the record says (truncated)
            crc = crc32c(view[:count], crc)
            read += count
        if read < want or crc != state.crcs[index]:
            bad.append(index)
    return bad


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        count = os.pwrite(fd, view, offset)
        view = view[count:]
        offset += count


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
    """Bytes of `dest` a resume can keep: claimed in a readable state, beside existing partial data."""
    part_path, state_path = partial_paths(dest)
    if not part_path.exists():
        return 0
    try:
        state = PieceState.load(state_path)
    except (StateUnreadable, OSError):
        return 0
    if state is None:
        return 0
    try:
        return state.bytes_done if state.layout.ranged else 0
    finally:
        state.close()

"""The life of one file's download, top to bottom.

    probe     GET bytes=0-<piece>: size, validators, whether ranges work (its body is piece 0)
    prepare   <dest>.part at full size, <dest>.part.state with the piece layout
    fetch     pieces claimed in order by up to `connections` workers (one piece per request; a
              connection alone asks for every following piece at once), each written at its
              offset; a dropped or stalled connection resumes its piece, 5xx/429 back off and retry
    verify    size always; sha256 / git sha1 computed while the bytes arrive (FollowingHasher)
    commit    os.replace(<dest>.part, <dest>): the final path only ever holds a verified file

An interrupted download (cancel, crash, SIGKILL) leaves the .part and .part.state behind and
the next call resumes each piece where its counter says. The server answering a ranged
request with 200, a changed ETag or a 416 means the partial data is not that file any more:
it is discarded and the download restarts from zero, never appended to.
"""
from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import errno
import http.client
import os
import queue
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .._errors import (
    ConnectionFailed,
    DigestMismatch,
    DiskFull,
    ModelPullError,
    NotEnoughSpace,
    RateLimited,
    ServerError,
    SizeMismatch,
    SourceError,
    TransferError,
)
from .._plan import PlannedFile, TransferOptions, file_identity
from .._units import format_bytes
from ._crc import crc32c
from ._hasher import FollowingHasher
from ._lock import DestinationLock, default_lock_path
from ._http import (
    RETRYABLE_STATUSES,
    host_of,
    normalized_url,
    origin,
    permanent_status_error,
    public_url,
    retry_after_seconds,
    strip_credentials,
    unknown_host,
    unknown_host_error,
    wire_following_redirects,
)
from ._progress import FileProgress
from ._durable import durability_error, fsync_directory
from ._state import Layout, PieceState, StateUnreadable, damaged_pieces, partial_paths, remove_partial
from ._policy import AddressRefused
from ._wire import Aborted, AbortSignal, Wire, WireResponse

WRITE_CHUNK = 1024 * 1024  # bytes buffered before a pwrite (and a counter update)
# Bytes per pwrite: the kernel sizes page-cache folios by the write's length, and up to 32 KiB
# (order 3) they come from the per-CPU free lists, memory the machine has touched recently. A
# larger write asks for a large folio from the buddy allocator's big free blocks: on a VM that
# reports free memory to its host (Firecracker, cloud VMs with free page reporting) those are
# gone from the host, and every 4 KiB of them costs a host page fault on first touch. Measured
# here (1 GiB, 16 connections at 20 MiB/s): 1 MiB writes 3.8 s wall and 3.2 s of kernel CPU,
# 32 KiB writes 2.8 s and 0.9 s. See bench/README.md.
WRITE_SLICE = 32 * 1024
WRITE_INTERVAL = 0.5  # seconds: on a slow link, write (and record) at least this often
MAX_RETRY_AFTER = 300.0
# The connection ramp (see _FileTransfer._ramp_up). Rates come from bytes moved, polled:
RAMP_POLL = 0.005  # seconds between looks at the byte counter
RAMP_BURST = 1024 * 1024  # a new response's first bytes sit in socket buffers: not its rate
RAMP_SAMPLE = 1024 * 1024  # bytes per connection that make a rate worth trusting (50 ms at 20 MB/s)
RAMP_WINDOW = 0.3  # seconds: the longest a measurement waits for its bytes (a slow link)
# The first connection alone: a link that has not moved RAMP_BURST + RAMP_SAMPLE this soon
# (under ~40 MiB/s) gets the other connections at once, and they stay: no trial can say "no"
# from so few bytes, and on such a link extra connections cost no measurable CPU.
RAMP_PATIENCE = 0.03
RAMP_TRIAL = 4  # connections a fast first connection is tried against; if they pay, all open
RAMP_SETTLE = 0.2  # seconds: the longest wait for new connections' first response headers
RAMP_RETRY = 2.0  # seconds before trying more connections again after a trial said no
RAMP_GAIN = 1.2  # more connections stay only if they are at least this much faster
REFUSALS = frozenset({429, 503})  # a server's "too many" to an extra connection
# Durability is batched: a background fdatasync, then the state records that claim the synced
# bytes, after this many written bytes or this many seconds (whichever comes first). A crash
# re-fetches at most what was not yet claimed.
FLUSH_BYTES = 32 * 1024 * 1024
FLUSH_INTERVAL = 0.1
MAX_REPAIRS = 3  # rounds of re-fetching pieces damaged on disk before giving up

# The threads that move bytes (socket -> file). Created on demand; a server with several jobs of
# many connections each needs more than the default executor's handful.
_IO_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="modelpull-io")


class _RestartFromZero(Exception):
    """The partial data does not belong to the file the server has now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RefetchPieces(Exception):
    """Pieces on disk no longer match the checksums taken as they arrived: fetch those again."""

    def __init__(self, pieces: list[int]) -> None:
        super().__init__(f"{len(pieces)} pieces damaged on disk")
        self.pieces = pieces


class _Retryable(Exception):
    """A failure worth another attempt after `delay` seconds (None: use the backoff)."""

    def __init__(
        self, error: ModelPullError, reason: str, delay: float | None = None, stall: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error  # what the user sees if the retries run out
        self.reason = reason  # what a progress notice says meanwhile ("HTTP 503 from host")
        self.delay = delay
        self.stall = stall
        self.status = status  # the HTTP status that caused it, if one did


class _Run:
    """Consecutive pieces one connection fetches with one request: `current` is being written,
    the ones up to `end` (exclusive) follow. `end` falls when more connections share them."""

    __slots__ = ("current", "end")

    def __init__(self, first: int, end: int) -> None:
        self.current = first
        self.end = end


class _GiveBack(Exception):
    """This worker stops and puts its piece back: another connection finishes it."""


class _Refused(_GiveBack):
    """An extra connection was turned away (429/503): the server wants fewer of them."""


def existing_ancestor(path: Path) -> Path:
    """`path`, or its nearest parent that exists (the folder a download will be created in)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(directory: Path, needed: int) -> None:
    """NotEnoughSpace unless `directory`'s file system has `needed` bytes free.

    Space other downloads have reserved (their partial files are preallocated) is already
    counted as used, so two downloads that do not fit together do not both pass.
    """
    if needed <= 0:
        return
    free = shutil.disk_usage(existing_ancestor(directory)).free
    if free < needed:
        raise NotEnoughSpace(
            f"not enough disk space: need {format_bytes(needed)}, {format_bytes(free)} free in {directory}"
        )


def reserved_bytes(dest: Path) -> int:
    """Bytes already allocated to `dest`'s partial file (reserved earlier, or written)."""
    try:
        return partial_paths(dest)[0].stat().st_blocks * 512
    except (FileNotFoundError, NotADirectoryError, AttributeError):
        return 0


async def fetch_file(file: PlannedFile, wire: Wire, options: TransferOptions, progress: FileProgress) -> None:
    """Bring `file` to `file.dest`, complete and verified, or raise ModelPullError."""
    if file.present:
        progress.mark_present(file.size)
        return
    file.dest.parent.mkdir(parents=True, exist_ok=True)
    lock = DestinationLock(file.lock_path or default_lock_path(file.dest))
    await lock.acquire(lambda: progress.note(f"waiting for another download of {file.name} to finish"))
    committed = False
    try:
        if _committed_by_another(file):
            progress.mark_present(file.dest.stat().st_size)
            return
        await _fetch_locked(file, wire, options, progress)
        committed = True
    finally:
        lock.release(remove=committed and file.lock_path is None)


def _committed_by_another(file: PlannedFile) -> bool:
    """A file appeared at `dest` since the plan was made: another download of it finished.

    Only a verified file is ever renamed to a destination (by modelpull or huggingface_hub),
    so a new file of the expected size is that file, complete.
    """
    now = file_identity(file.dest)
    if now is None or now == file.dest_at_plan:
        return False
    return file.size is None or not file.exact_size or now[1] == file.size


async def _fetch_locked(file: PlannedFile, wire: Wire, options: TransferOptions, progress: FileProgress) -> None:
    restarts = repairs = 0
    while True:
        try:
            await _FileTransfer(file, wire, options, progress).run()
            return
        except _RefetchPieces as refetch:
            repairs += 1
            if repairs > MAX_REPAIRS:
                raise TransferError(
                    f"{file.name}: pieces keep changing on disk after they are written ({len(refetch.pieces)} "
                    f"this time); the disk may be failing: check it, then run the same download again",
                    code="disk_error",
                ) from None
            progress.note(
                f"{len(refetch.pieces)} piece(s) of {file.name} changed on disk after they were written: "
                "restarting only those pieces"
            )
        except _RestartFromZero as restart:
            restarts += 1
            remove_partial(file.dest)
            if restarts > max(3, options.max_retries):
                raise TransferError(
                    f"gave up on {public_url(file.url)}: {restart.reason}, {restarts} times in a row",
                    code="unstable_source",
                ) from None
            progress.restart(f"{restart.reason}; restarting {file.name} from zero")
        except DigestMismatch:
            remove_partial(file.dest)
            raise


class _FileTransfer:
    def __init__(self, file: PlannedFile, wire: Wire, options: TransferOptions, progress: FileProgress) -> None:
        self.file = file
        self.wire = wire
        self.options = options
        self.progress = progress
        self.part_path, self.state_path = partial_paths(file.dest)
        self.signal = AbortSignal()  # stops this transfer's threads when it is cancelled
        self.url = normalized_url(file.url)
        self._expected_size = file.size if file.exact_size else None
        self.resolved: str | None = None  # where redirects led; reused by every piece
        self.state: PieceState | None = None
        self.fd = -1
        self.hasher: FollowingHasher | None = None
        self._contiguous = 0  # first piece not yet complete: the hashing watermark's piece
        self._committed = False
        self._discard = False  # delete the partial when this attempt ends (it is of no use)
        self._lock = threading.Lock()  # the fields below are shared by the streaming threads
        # One pwrite() at a time: Linux takes the file's inode lock for every buffered write
        # (ext4, XFS, btrfs), so concurrent writes to one file queue there anyway, and while
        # they wait the kernel spins (rwsem_spin_on_owner: a quarter of a 16-connection
        # download's CPU in `perf`, bench/README.md). Waiting on this lock, they sleep.
        self._write_gate = threading.Lock()
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._changed: set[int] = set()  # pieces written since the last claim
        self._flushing: concurrent.futures.Future | None = None
        self._flush_error: OSError | None = None

    # -- the life cycle -------------------------------------------------------------------

    async def run(self) -> None:
        probe: WireResponse | None = None
        try:
            self.state = await self._load_state()
            if self.state is None:
                probe = await self._probe()
            self._open_data_file()
            self._start_hasher()
            self.progress.begin(self.state.layout.total, self.state.bytes_done)
            await self._fetch_pieces(probe)
            probe = None
            await self._verify_and_commit()
        except ModelPullError as error:
            if self.state is not None and not self.state.layout.ranged:
                error.message += (
                    "; this server cannot resume a download (it ignores Range), so the next run starts "
                    "from zero (the partial data was deleted)"
                )
            raise
        finally:
            if probe is not None:
                probe.close()
            # A failed or cancelled transfer may still have threads writing: stop them, and
            # wait until none is inside the file before closing it.
            self.signal.abort()  # after this no thread can enter a stream, so `busy` only falls
            if self.signal.busy:
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(_IO_THREADS, self.signal.wait_idle))
            if self._flushing is not None:
                await asyncio.shield(asyncio.wrap_future(self._flushing))
            if not self._committed and self.fd >= 0 and self.state is not None and self.state.layout.ranged:
                # Claim what the stopped streams wrote, so that the next run resumes after it.
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(_IO_THREADS, self._flush))
            if self.hasher is not None:
                self.hasher.stop()
            if self.fd >= 0:
                os.close(self.fd)
            if self.state is not None:
                self.state.close()
                if self._discard or (not self.state.layout.ranged and not self._committed):
                    remove_partial(self.file.dest)  # a source that cannot resume: the data is of no use

    async def _load_state(self) -> PieceState | None:
        """The partial download to resume, its claimed pieces checked against their crc32c; or None."""
        name = self.file.dest.name
        part_exists = self.part_path.exists()
        try:
            state = PieceState.load(self.state_path)
        except (StateUnreadable, OSError) as exc:
            why = str(exc) if isinstance(exc, StateUnreadable) else (exc.strerror or str(exc)).lower()
            remove_partial(self.file.dest)
            self.progress.note(f"the resume state of {name} is unreadable ({why}): starting over from zero")
            return None
        if state is None:
            if part_exists:
                remove_partial(self.file.dest)
                self.progress.note(
                    f"{self.part_path.name} has no resume state beside it ({self.state_path.name} is missing): "
                    "starting over from zero"
                )
            return None
        layout = state.layout
        if not part_exists or not layout.ranged or (
            self._expected_size is not None and layout.total is not None and layout.total != self._expected_size
        ):
            state.close()
            remove_partial(self.file.dest)
            if not part_exists and state.bytes_done:
                self.progress.note(f"the partial data of {name} is gone ({self.part_path.name} is missing): "
                                   "starting over from zero")
            return None
        bad = list(state.torn)
        if state.bytes_done:
            bad += await asyncio.to_thread(_damaged_on_disk, self.part_path, state)
        if bad:
            for index in bad:
                state.reset(index)
            self.progress.note(
                f"{len(bad)} piece(s) of {name} on disk do not match what was received (damaged partial "
                "data): restarting only those pieces"
            )
        return state

    async def _probe(self) -> WireResponse | None:
        """First request: its headers decide the layout, its body is piece 0."""
        piece_size = self.options.piece_size
        response = await self._request_with_retries(f"bytes=0-{piece_size - 1}", if_range=None)
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        if response.status == 206:
            start, _, total = _content_range(response)
            if start != 0 or total is None:
                response.close()
                raise TransferError(
                    f"the server sent a malformed Content-Range for {public_url(self.url)}", code="bad_response"
                )
            layout = Layout(total=total, piece_size=piece_size, etag=etag, last_modified=last_modified)
        elif response.status == 416:
            total = _unsatisfied_total(response)
            response.close()
            if total != 0:
                raise TransferError(
                    f"the server refused the first byte range of {public_url(self.url)} (HTTP 416)",
                    code="bad_response",
                )
            layout = Layout(total=0, piece_size=piece_size, etag=etag, last_modified=last_modified)
            response = None  # type: ignore[assignment]
        else:  # 200: no ranges; one piece, streamed from its start
            total = response.content_length
            layout = Layout(
                total=total, piece_size=max(total or 0, 1), etag=etag, last_modified=last_modified, ranged=False
            )
        if self._expected_size is not None and layout.total is not None and layout.total != self._expected_size:
            if response is not None:
                response.close()
            raise SizeMismatch(
                f"{self.file.name}: the server has {layout.total} bytes, expected {self._expected_size}"
            )
        if layout.total is not None:
            check_disk_space(self.file.dest.parent, layout.total)
        self.part_path.unlink(missing_ok=True)
        try:
            self.state = PieceState.create(self.state_path, layout)
        except OSError as exc:
            if response is not None:
                response.close()
            raise self._disk_error(exc) from exc
        return response

    def _open_data_file(self) -> None:
        assert self.state is not None
        try:
            self.fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._disk_error(exc) from exc
        total = self.state.layout.total
        if total is None:
            return
        try:
            if os.fstat(self.fd).st_size > total:
                os.ftruncate(self.fd, total)
            self._reserve(total)
        except OSError as exc:
            raise self._disk_error(exc) from exc

    def _reserve(self, total: int) -> None:
        """Allocate the whole file now, so that a full disk fails here and not half way.

        posix_fallocate only fills holes: on a resume it reserves what is missing. A file
        system that cannot preallocate gets a sparse file, and the download says so.
        """
        if not total:
            return
        try:
            os.posix_fallocate(self.fd, 0, total)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                have = os.fstat(self.fd).st_blocks * 512
                free = shutil.disk_usage(self.file.dest.parent).free
                self._discard = self.state is not None and self.state.bytes_done == 0  # nothing to keep
                raise NotEnoughSpace(
                    f"not enough disk space: need {format_bytes(max(0, total - have))}, {format_bytes(free)} "
                    f"free in {self.file.dest.parent} (other downloads there have reserved their space)"
                ) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", 95)):
                raise
            if os.fstat(self.fd).st_size < total:
                os.ftruncate(self.fd, total)
            self.progress.note(
                f"the file system of {self.file.dest.parent} cannot reserve space ahead: a full disk will "
                "only show while writing"
            )

    def _start_hasher(self) -> None:
        wants_sha256 = self.file.sha256 is not None
        wants_sha1 = self.file.git_sha1 is not None and self._expected_size is not None
        if wants_sha256 or wants_sha1:
            self.hasher = FollowingHasher(
                self.fd,
                sha256=wants_sha256,
                git_sha1_size=self._expected_size if wants_sha1 else None,
                size_hint=self.state.layout.total if self.state else None,
            )
            self._advance_watermark()

    async def _fetch_pieces(self, probe: WireResponse | None) -> None:
        assert self.state is not None
        layout = self.state.layout
        pending = [i for i in range(layout.piece_count) if not self._piece_complete(i)]
        if not pending:
            if probe is not None:
                probe.close()
            return
        total = layout.total or 0
        parallel = layout.ranged and total >= self.options.multipart_threshold
        most = min(self.options.connections, len(pending)) if parallel else 1
        self._pending = pending
        size = WRITE_CHUNK if layout.total is None else max(1, min(WRITE_CHUNK, layout.total))
        self._buffers = _Buffers(size, most + _Buffers.SPARE, self.signal)
        self._allowed = 1  # workers that may take another piece (see _ramp_up)
        self._ceiling = most  # the most connections the server has not refused
        self._running = 0
        self._answered = 0  # running workers whose current request has its response headers
        # After a trial that said no, every stream but the front one stops at its next buffer
        # (not at the end of its piece) and gives its piece back: the one connection left
        # resumes those pieces from their counters. Read by the I/O threads under self._lock.
        self._shed = False
        self._runs: set[_Run] = set()  # what each running worker holds; its `current` piece is being written
        self._leaving: set[int] = set()  # current pieces whose streams stopped to give them back
        self._ramp: asyncio.Task | None = None
        first_response = probe if (probe is not None and pending[0] == 0) else None
        if probe is not None and first_response is None:
            probe.close()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._worker(first_response))
                if most > 1:
                    self._ramp = group.create_task(self._ramp_up(group, most))
        except BaseExceptionGroup as group_error:
            raise _first_meaningful(group_error) from None

    async def _ramp_up(self, group: asyncio.TaskGroup, most: int) -> None:
        """Open more connections only where they make the download faster.

        Against a server that caps each connection (a CDN, `limit_rate`), `most` connections
        are `most` times faster. On a link one connection already fills (loopback, a LAN), the
        extra connections only cost CPU (and the hasher reads their pieces back from the page
        cache). So the first connection runs alone until it has moved RAMP_SAMPLE bytes past
        its socket buffers' burst:
        - not within RAMP_PATIENCE (a capped connection: 20 MB/s moves ~0.6 MB past its burst
          in 30 ms): all the others open at once and stay, no rate needed;
        - within it (a few milliseconds on a fast link): RAMP_TRIAL connections are tried; once
          their responses have begun and they have moved RAMP_SAMPLE bytes each past their own
          burst, all the others join if they were at least RAMP_GAIN times faster than the one.
          If not, every stream but the front one stops at its next buffer and gives its piece
          back (`_shed`): a trial costs a fast link a few connections' measuring window.
        A "no" is not final: one noisy window must not leave a capped download on one
        connection, so the trial runs again after RAMP_RETRY seconds, then twice that, and so
        on. A server that answers an extra connection with 429 or 503 lowers the ceiling for
        good (`_refused`): the ramp never asks for more again.

        (A first step of two connections was tried and dropped: against nginx's limit_rate two
        connections often did not look 1.5x faster than one. Waiting for the first connection's
        rate before opening the others cost a capped 256 MiB download a tenth of its time.)
        """
        pause = RAMP_RETRY
        patience: float | None = RAMP_PATIENCE  # only the first trial: later ones measure
        while self._shareable() and self._ceiling > 1:
            while self._running > 1:  # the last trial's extra workers finish their pieces first
                await asyncio.sleep(RAMP_POLL)
            single = await self._single_rate(patience)
            patience = None
            if not self._shareable() or self._ceiling <= 1:
                return
            wanted = self._ceiling if single is None else min(self._ceiling, RAMP_TRIAL)
            self._let_fetch(group, wanted)
            if single is None:
                return  # a slow first connection: the others stay
            await self._answers(wanted, RAMP_SETTLE)  # handshakes are not the connections' speed,
            await self._rate_over(RAMP_BURST, RAMP_WINDOW)  # nor their first buffered bytes
            together, moved = await self._rate_over(RAMP_SAMPLE * wanted, RAMP_WINDOW)
            if self._allowed < wanted or not self._shareable():
                return  # the server set the number (`_refused`), or nothing is left to share
            if together >= single * RAMP_GAIN:
                self._let_fetch(group, self._ceiling)  # faster: the rest join, no second trial
                return
            if moved < RAMP_SAMPLE:
                self._let_fetch(group, self._ceiling)  # too few bytes to say no (a stalled window): all stay
                return
            self._allowed = 1
            self._shed = True  # the extra streams stop at their next buffer
            await asyncio.sleep(pause)
            pause *= 2

    def _let_fetch(self, group: asyncio.TaskGroup, wanted: int) -> None:
        """Let `wanted` workers fetch at once, starting the missing ones."""
        self._allowed = wanted
        self._shed = False
        self._cut_runs()
        for _ in range(wanted - self._running):
            group.create_task(self._worker(None))

    async def _single_rate(self, patience: float | None) -> float | None:
        """The lone connection's rate past its burst; None if it was still slower than `patience` allows."""
        began = time.monotonic()
        _, burst = await self._rate_over(RAMP_BURST, RAMP_WINDOW if patience is None else patience)
        if patience is not None and burst < RAMP_BURST:
            return None
        left = None if patience is None else patience - (time.monotonic() - began)
        rate, moved = await self._rate_over(RAMP_SAMPLE, RAMP_WINDOW if left is None else max(left, RAMP_POLL))
        if patience is not None and moved < RAMP_SAMPLE:
            return None
        return rate

    async def _rate_over(self, least_bytes: int, most_seconds: float) -> tuple[float, int]:
        """(bytes per second, bytes) from now until `least_bytes` have moved or `most_seconds` passed."""
        before, began = self.progress.done, time.monotonic()
        while True:
            await asyncio.sleep(RAMP_POLL)
            moved, elapsed = self.progress.done - before, time.monotonic() - began
            if moved >= least_bytes or elapsed >= most_seconds or not self._shareable():
                return moved / elapsed, moved

    async def _answers(self, workers: int, most_seconds: float) -> None:
        """Wait until `workers` requests have their response headers (or `most_seconds`)."""
        deadline = time.monotonic() + most_seconds
        while self._answered < min(workers, self._running) and time.monotonic() < deadline and self._shareable():
            await asyncio.sleep(RAMP_POLL)

    def _refused(self) -> None:
        """An extra connection was answered 429/503: keep to the ones the server accepted."""
        self._ceiling = max(1, min(self._ceiling, self._running - 1))
        self._allowed = min(self._allowed, self._ceiling)

    # -- who fetches what ---------------------------------------------------------------------

    def _shareable(self) -> bool:
        """Whether another connection would find work: a piece nobody holds, or a run to cut."""
        if self._pending:
            return True
        with self._lock:
            return any(run.end - run.current >= 2 for run in self._runs)

    def _claim(self, one: bool = False) -> _Run | None:
        """The next pieces for a worker, from the first one nobody holds; None when none is left.

        With several connections a run is one piece, so that the file fills from its start
        (the hasher follows close behind) and the last pieces end together. A connection alone
        (unless `one`: the probe's response holds piece 0 only) takes every untouched piece that
        follows, in one request: a link that one connection fills pays no round trip per piece.
        When more connections open, that run is cut after its current piece (`_cut_runs`).
        """
        assert self.state is not None
        if not self._pending:
            return None
        first = self._pending.pop(0)
        end = first + 1
        if self._allowed == 1 and not one:
            while self._pending and self._pending[0] == end and self.state.done[end] == 0:
                self._pending.pop(0)
                end += 1
        run = _Run(first, end)
        with self._lock:
            self._runs.add(run)
        return run

    def _cut_runs(self) -> None:
        """Runs end after their current piece, the rest back in the pool: more connections share them.

        Their streams stop at that piece's end (the response, asked for more, is closed unread).
        """
        with self._lock:
            returned = []
            for run in self._runs:
                returned.extend(range(run.current + 1, run.end))
                run.end = min(run.end, run.current + 1)
        for index in returned:
            bisect.insort(self._pending, index)

    def _release(self, run: _Run, give_back: bool) -> None:
        """A worker is done with `run`; with `give_back`, its unfinished pieces go back to the pool."""
        with self._lock:
            self._runs.discard(run)
            self._leaving.discard(run.current)
            unfinished = [i for i in range(run.current, run.end) if not self._piece_complete(i)] if give_back else []
        for index in unfinished:
            bisect.insort(self._pending, index)  # another connection takes it

    async def _worker(self, response: WireResponse | None) -> None:
        self._running += 1
        try:
            # Workers beyond `_allowed` stop between runs; those giving a piece back do not
            # count, so that the last one staying never leaves too.
            while self._running - len(self._leaving) <= self._allowed:
                run = self._claim(one=response is not None)
                if run is None:
                    break
                try:
                    await self._fetch_run(run, response)
                except _GiveBack as given_back:
                    self._release(run, give_back=True)
                    if isinstance(given_back, _Refused):
                        self._refused()
                    return
                except BaseException:
                    self._release(run, give_back=True)
                    raise
                self._release(run, give_back=False)
                response = None
        finally:
            self._running -= 1
            if response is not None:
                response.close()
            if self._running == 0 and not self._pending and self._ramp is not None:
                self._ramp.cancel()  # nothing left to speed up: do not wait for its next trial

    async def _verify_and_commit(self) -> None:
        assert self.state is not None
        layout = self.state.layout
        received = self.state.bytes_done
        total = layout.total if layout.total is not None else received
        if layout.total is None:
            os.ftruncate(self.fd, received)
        if received != total or os.fstat(self.fd).st_size != total:
            raise SizeMismatch(f"{self.file.name}: received {received} bytes, expected {total}")
        if self._expected_size is not None and total != self._expected_size:
            remove_partial(self.file.dest)
            raise SizeMismatch(f"{self.file.name}: received {total} bytes, expected {self._expected_size}")
        flushed = asyncio.ensure_future(asyncio.to_thread(os.fsync, self.fd))
        try:
            if self.hasher is not None:
                self.progress.verifying()
                digests = await asyncio.to_thread(self.hasher.finish, total)
                try:
                    self._check_digest("sha256", self.file.sha256, digests.get("sha256"))
                    self._check_digest("git sha1", self.file.git_sha1, digests.get("git_sha1"))
                except DigestMismatch:
                    # Bytes that changed on disk after they arrived are found by their piece
                    # checksums and fetched again; only a source that sent wrong bytes fails.
                    bad = await asyncio.to_thread(damaged_pieces, self.fd, self.state)
                    if bad:
                        for index in bad:
                            self.state.reset(index)
                        raise _RefetchPieces(bad) from None
                    raise
        finally:
            try:
                await flushed
            except OSError as exc:
                raise durability_error(self.part_path, exc) from None
        if self._flush_error is not None:
            raise durability_error(self.part_path, self._flush_error)
        try:
            os.replace(self.part_path, self.file.dest)
        except OSError as exc:
            raise TransferError(
                f"cannot move {self.part_path.name} to {self.file.dest}: {(exc.strerror or str(exc)).lower()}",
                code="disk_error",
            ) from None
        self._committed = True
        self.state_path.unlink(missing_ok=True)
        fsync_directory(self.file.dest.parent)
        self.progress.complete(total)

    def _check_digest(self, kind: str, expected: str | None, actual: str | None) -> None:
        if expected is None or actual is None:
            return
        if actual.lower() != expected.lower():
            prefix = "digest mismatch" if kind == "sha256" else f"{kind} mismatch"
            raise DigestMismatch(
                f"{prefix}: expected {expected.lower()}, got {actual} ({self.file.name}; every piece on disk "
                "matches what the server sent, so the source itself is wrong; the data was deleted)"
            )

    # -- one piece --------------------------------------------------------------------------

    def _piece_complete(self, index: int) -> bool:
        assert self.state is not None
        start, end = self.state.layout.piece_bounds(index)
        return end is not None and self.state.done[index] >= end - start

    def _run_complete(self, run: _Run) -> bool:
        with self._lock:
            return all(self._piece_complete(index) for index in range(run.current, run.end))

    async def _fetch_run(self, run: _Run, response: WireResponse | None) -> None:
        """Bring a run of pieces to disk, reconnecting where it stopped until it is whole."""
        assert self.state is not None
        layout = self.state.layout
        failures = 0
        while True:
            index = run.current
            start, end = layout.piece_bounds(index)
            before = (index, self.state.done[index])
            offset = start + self.state.done[index]
            if end is not None and offset >= end and self._run_complete(run):
                return
            answered = False
            try:
                if response is None:
                    _, last = layout.piece_bounds(run.end - 1)
                    byte_range = f"bytes={offset}-" if last is None else f"bytes={offset}-{last - 1}"
                    response = await self._request(byte_range, if_range=layout.validator)
                self._answered += 1
                answered = True
                self._accept(response, offset)
                try:
                    stopped = await self._in_thread(self._stream_run, response, run)
                except (OSError, http.client.HTTPException) as exc:
                    raise self._retryable_from(exc) from None
                if stopped:
                    raise _GiveBack()
                if end is None:  # size unknown: the stream's end is the file's end
                    return
                if self._run_complete(run):
                    return
                raise _Retryable(
                    TransferError(f"the connection closed early while fetching {public_url(self.url)}",
                                  code="connection_failed"),
                    "the connection closed early",
                )
            except _Retryable as retry:
                if (run.current, self.state.done[run.current]) != before:
                    # The connection made progress before it failed: resume at once, and
                    # the failure does not count against the retries.
                    failures = 0
                    start, _ = layout.piece_bounds(run.current)
                    self.progress.note(f"{retry.reason}; resuming at {format_bytes(start + self.state.done[run.current])}")
                elif retry.status in REFUSALS and self._running > 1:
                    self.progress.note(f"{retry.reason} to an extra connection; keeping to {self._running - 1}")
                    raise _Refused() from None
                else:
                    failures += 1
                    if failures > self.options.max_retries:
                        raise retry.error from None
                    await self._back_off(retry, failures)
            finally:
                if answered:
                    self._answered -= 1
                if response is not None:
                    response.release()
                    response = None

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run blocking wire work in an I/O thread; a cancel shuts this transfer's sockets."""
        future = asyncio.get_running_loop().run_in_executor(_IO_THREADS, function, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.signal.abort()
            # Whatever the thread ends with is of no interest any more; do not log it.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise

    def _accept(self, response: WireResponse, offset: int) -> None:
        """Check that `response` carries this file's bytes from `offset`, or decide what to do."""
        assert self.state is not None
        layout = self.state.layout
        status = response.status
        if status == 206:
            start, _, total = _content_range(response)
            if start != offset or (layout.total is not None and total is not None and total != layout.total):
                raise _RestartFromZero("the server's file changed (its size or range differs)")
            etag = response.headers.get("ETag")
            if layout.etag and etag and etag != layout.etag:
                raise _RestartFromZero("the file changed on the server (new ETag)")
            return
        if status == 200:
            if offset == 0 and layout.piece_count == 1:
                return
            if layout.validator and response.headers.get("ETag", layout.etag) != layout.etag:
                raise _RestartFromZero("the file changed on the server (new ETag)")
            raise _RestartFromZero("the server ignored the range request (HTTP 200)")
        if status == 416:
            raise _RestartFromZero("the server no longer has the range asked for (HTTP 416), the partial data is stale")
        raise self._status_failure(response)

    def _stream_run(self, response: WireResponse, run: _Run) -> bool:
        """In an I/O thread: read the body into the run's pieces, one after the other.

        True if it stopped early to give its piece back (`_shed`); False when the run is done
        (cut short by `_cut_runs`: the rest of the response is then closed unread), or the
        body ended.
        """
        assert self.state is not None
        layout = self.state.layout
        while True:
            index = run.current
            start, end = layout.piece_bounds(index)
            if self._stream_into_piece(response, index, start, end):
                return True
            if end is None or self.state.done[index] < end - start:
                return False  # the body ended (early, if the piece is short: the caller retries)
            with self._lock:
                if index + 1 >= run.end:
                    return False
                run.current = index + 1

    def _stream_into_piece(self, response: WireResponse, index: int, piece_start: int, piece_end: int | None) -> bool:
        """In an I/O thread: read the body into the piece, written each WRITE_CHUNK or WRITE_INTERVAL.

        True if it stopped early to give the piece back (`_shed`), False at the body's end.
        """
        assert self.state is not None
        written = self.state.done[index]
        limit = None if piece_end is None else piece_end - piece_start
        buffers = self._buffers
        self.signal.enter_stream()
        try:
            ended = False
            while not ended and (limit is None or written < limit):
                buffer = buffers.take()
                room = len(buffer) if limit is None else min(len(buffer), limit - written)
                filled = 0
                last_write = time.monotonic()
                try:
                    while filled < room:
                        count = response.readinto1(buffer[filled:room])
                        if not count:
                            ended = True
                            break
                        filled += count
                        self.progress.add(count)
                        if time.monotonic() - last_write >= WRITE_INTERVAL:
                            break
                finally:
                    # What arrived before a drop (or a cancel) is good data: keep it.
                    if filled:
                        written = self._write(index, piece_start, written, buffer[:filled], buffers.giver(buffer))
                    else:
                        buffers.give_back(buffer)
                if self._shed and not ended and (limit is None or written < limit) and self._give_back(index):
                    return True
            if limit is not None and written >= limit and not response.finished and self.state.layout.piece_count == 1:
                raise SizeMismatch(f"{self.file.name}: the server sent more than {limit} bytes")
            return False
        finally:
            self.signal.leave_stream()

    def _give_back(self, index: int) -> bool:
        """Whether this stream stops now (I/O thread): every one but the front one staying does."""
        with self._lock:
            staying = {run.current for run in self._runs} - self._leaving
            if not self._shed or index not in staying or index == min(staying):
                return False
            self._leaving.add(index)
            return True

    def _write(
        self, index: int, piece_start: int, written: int, data: memoryview, give_back: Callable[[], None]
    ) -> int:
        """Write `data` at its offset in the piece, then move the piece's counter (I/O thread).

        `give_back()` returns the buffer for reuse: now, or once the hasher has read it.
        """
        assert self.state is not None
        size = len(data)
        offset = piece_start + written
        try:
            rest = data
            with self._write_gate:
                while rest:
                    count = os.pwrite(self.fd, rest[:WRITE_SLICE], offset)
                    if count == 0:  # a short write that made no progress: the disk is full
                        raise OSError(errno.ENOSPC, "no space left on device")
                    rest = rest[count:]
                    offset += count
        except OSError as exc:
            kept = offset - (piece_start + written)
            if kept:
                self._advance(index, written, data[:kept])
            give_back()
            raise self._disk_error(exc) from exc
        crc = crc32c(data, self.state.crcs[index])  # outside the lock: one thread per piece
        with self._lock:
            self._note_written(index, written + size, crc)
            self._unflushed += size
            now = time.monotonic()
            due = self._unflushed >= FLUSH_BYTES or now - self._last_flush >= FLUSH_INTERVAL
            if due and (self._flushing is None or self._flushing.done()):
                self._unflushed = 0
                self._last_flush = now
                self._flushing = _IO_THREADS.submit(self._flush)
            if self._flush_error is not None:
                give_back()
                raise durability_error(self.part_path, self._flush_error)
            if self.hasher is not None and index == self._contiguous:
                # These bytes start at the watermark: the hasher takes them from memory.
                self.hasher.offer(piece_start + written, data, give_back)
                self._advance_watermark()
                return written + size
        give_back()
        return written + size

    def _advance(self, index: int, written: int, data: memoryview) -> None:
        crc = crc32c(data, self.state.crcs[index])
        with self._lock:
            self._note_written(index, written + len(data), crc)

    def _note_written(self, index: int, done: int, crc: int) -> None:
        """Piece `index` now holds `done` bytes hashing to `crc` (holding self._lock; not yet claimed)."""
        assert self.state is not None
        self.state.done[index] = done
        self.state.crcs[index] = crc
        self._changed.add(index)

    def _flush(self) -> None:
        """fdatasync the data, then write the records that claim it (an I/O thread; one at a time).

        The values are taken before the sync, so a record never claims a byte that was not yet
        durable. A failed sync is kept and reported by the next write or by the commit.
        """
        with self._lock:
            changed, self._changed = self._changed, set()
            claims = {index: (self.state.done[index], self.state.crcs[index]) for index in changed}
        if not claims:
            return
        try:
            os.fdatasync(self.fd)
            self.state.claim(claims)
        except OSError as exc:
            self._flush_error = self._flush_error or exc

    def _advance_watermark(self) -> None:
        """Tell the hasher how far the file is complete from its start (holding self._lock)."""
        assert self.state is not None and self.hasher is not None
        layout = self.state.layout
        while self._contiguous < layout.piece_count and self._piece_complete(self._contiguous):
            self._contiguous += 1
        if self._contiguous >= layout.piece_count:
            self.hasher.advance(layout.total or self.state.bytes_done)
        else:
            start, _ = layout.piece_bounds(self._contiguous)
            self.hasher.advance(start + self.state.done[self._contiguous])

    def _disk_error(self, exc: OSError) -> ModelPullError:
        resumable = self.state is None or self.state.layout.ranged
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            then = ("run the same download again to resume (the partial data is kept)" if resumable
                    else "run the same download again")  # run() adds why it starts from zero
            return DiskFull(
                f"disk full while writing {self.file.dest.name} in {self.file.dest.parent}: free some space and {then}"
            )
        reason = (exc.strerror or str(exc)).lower()
        return TransferError(f"cannot write {self.part_path}: {reason}", code="disk_error")

    # -- requests ---------------------------------------------------------------------------

    async def _request(self, byte_range: str, if_range: str | None) -> WireResponse:
        headers = dict(self.file.headers)
        headers["Range"] = byte_range
        if if_range:
            headers["If-Range"] = if_range
        target = self.resolved or self.url
        if self.resolved is not None and origin(self.resolved) != origin(self.url):
            headers = strip_credentials(headers)
        try:
            response = await self._in_thread(self._open, target, headers)
        except AddressRefused as exc:
            raise SourceError(str(exc), code="url_not_allowed") from None
        except (OSError, http.client.HTTPException) as exc:
            if unknown_host(exc):
                raise unknown_host_error(host_of(target)) from None
            raise self._retryable_from(exc) from None
        if self.resolved is not None and response.status in (401, 403, 404, 410) and target != self.url:
            # A signed CDN link may have expired: ask the origin again once.
            response.release()
            self.resolved = None
            return await self._request(byte_range, if_range)
        self.resolved = response.url
        return response

    def _open(self, url: str, headers: dict[str, str]) -> WireResponse:
        return wire_following_redirects(
            self.wire, url, headers, read_timeout=self.options.stall_timeout, signal=self.signal
        )

    async def _request_with_retries(self, byte_range: str, if_range: str | None) -> WireResponse:
        failures = 0
        while True:
            try:
                response = await self._request(byte_range, if_range)
                if response.status in (200, 206, 416):
                    return response
                raise self._status_failure(response)
            except _Retryable as retry:
                failures += 1
                if failures > self.options.max_retries:
                    raise retry.error from None
                await self._back_off(retry, failures)

    def _status_failure(self, response: WireResponse) -> Exception:
        status = response.status
        where = public_url(response.url)
        response.release()
        if status in RETRYABLE_STATUSES:
            delay = retry_after_seconds(response.headers)
            if status == 429:
                error: ModelPullError = RateLimited(
                    f"rate limited by {host_of(where)} (HTTP 429) after {self.options.max_retries} retries; "
                    "try again later"
                )
            else:
                error = ServerError(
                    f"the server failed (HTTP {status}) for {where} after {self.options.max_retries} retries"
                )
            reason = f"HTTP {status} from {host_of(where)}"
            delay = None if delay is None else min(delay, MAX_RETRY_AFTER)
            return _Retryable(error, reason, delay=delay, status=status)
        return permanent_status_error(status, where, response.reason or "")

    def _retryable_from(self, exc: BaseException) -> _Retryable:
        stall = isinstance(exc, TimeoutError)
        host = host_of(self.resolved or self.url)
        if stall:
            reason = f"no data from {host} for {self.options.stall_timeout:g} s"
            error: ModelPullError = ConnectionFailed(f"{reason}, after {self.options.max_retries} retries")
        else:
            detail = _describe_failure(exc)
            reason = f"connection to {host} failed ({detail})"
            error = ConnectionFailed(
                f"cannot download from {host}: {detail} (after {self.options.max_retries} retries); "
                "check the network or the URL"
            )
        return _Retryable(error, reason, stall=stall)

    async def _back_off(self, retry: _Retryable, failures: int) -> None:
        if retry.delay is not None:
            delay = retry.delay
        else:
            base = self.options.retry_backoff * (2 ** (failures - 1))
            delay = min(self.options.retry_max_delay, base) * (0.5 + random.random() / 2)
        self.progress.note(f"{retry.reason}; retrying in {delay:.1f} s ({failures}/{self.options.max_retries})")
        await asyncio.sleep(delay)


def _damaged_on_disk(part_path: Path, state: PieceState) -> list[int]:
    """The claimed pieces whose bytes in `part_path` fail their crc32c (a thread: reads them all)."""
    fd = os.open(part_path, os.O_RDONLY)
    try:
        return damaged_pieces(fd, state)
    finally:
        os.close(fd)


class _Buffers:
    """A transfer's reusable buffers: one per stream being filled, a few waiting for the hasher.

    Shared by the transfer's streams and reused from piece to piece, so memory stays flat
    whatever the file's size (allocating per piece let each I/O thread's malloc arena keep
    its own freed megabytes).
    """

    SPARE = 4  # beyond one per connection: how far the hasher may lag behind the front writer

    def __init__(self, size: int, count: int, signal: AbortSignal) -> None:
        self._size = size
        self._count = count
        self._signal = signal
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    def take(self) -> memoryview:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            make = self._made < self._count
            self._made += make
        if make:
            return memoryview(bytearray(self._size))
        while True:  # all in use or with the hasher: wait for one (the hasher is the bottleneck)
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                if self._signal.aborted:
                    raise Aborted("the transfer was cancelled") from None

    def give_back(self, buffer: memoryview) -> None:
        self._free.put(buffer)

    def giver(self, buffer: memoryview) -> Callable[[], None]:
        return lambda: self._free.put(buffer)


def _describe_failure(exc: BaseException) -> str:
    """A short reason for a failed connection ("connection refused", "the server closed it")."""
    if isinstance(exc, http.client.IncompleteRead):
        return "the server closed the connection mid-body"
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.BadStatusLine)):
        return "the server closed the connection without answering"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or exc.__class__.__name__


def _content_range(response: WireResponse) -> tuple[int, int, int | None]:
    """(start, end inclusive, total or None) from `Content-Range: bytes a-b/N`."""
    raw = response.headers.get("Content-Range", "")
    try:
        unit, _, spec = raw.partition(" ")
        span, _, total = spec.partition("/")
        first, _, last = span.partition("-")
        if unit.strip().lower() != "bytes":
            raise ValueError
        return int(first), int(last), (None if total.strip() == "*" else int(total))
    except ValueError:
        return -1, -1, None


def _unsatisfied_total(response: WireResponse) -> int | None:
    raw = response.headers.get("Content-Range", "")
    if raw.startswith("bytes */"):
        try:
            return int(raw[len("bytes */"):])
        except ValueError:
            return None
    return None


def _first_meaningful(group: BaseExceptionGroup) -> BaseException:
    """The exception that made a TaskGroup fail (its siblings were merely cancelled)."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    for kind in (_RestartFromZero, ModelPullError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]

"""How the size of each `pwrite` changes the cost of filling the page cache.

Writes a 1 GiB file (preallocated, as the engine's .part) from a reused buffer with
`os.pwrite` calls of several sizes, the sizes taking turns, each after a pause (`--pause`, so
that memory freed by the previous round has settled back into the allocator) and reports the
median wall and kernel time per size. No network, no hashing: only the copy into the page cache.

Why it matters: Linux sizes a file's page-cache folios by the length of the write that creates
them. Up to 32 KiB (order 3) the pages come from the per-CPU free lists, memory touched recently;
a larger write asks for a large folio from the buddy allocator's big free blocks. On a VM that
reports free memory to its host (virtio-balloon free page reporting, `page_reporting_order` 9
here) those blocks were handed back, and every 4 KiB of them costs a host page fault when first
written. See bench/README.md for the figures and the engine's `WRITE_SLICE`.

    .venv/bin/python bench/page_cache.py                  # 16 KiB, 32 KiB, 64 KiB, 1 MiB; 5 rounds
    .venv/bin/python bench/page_cache.py --sizes-kib 32,1024 --rounds 9 --pause 8
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

GiB = 1 << 30


def write_file(path: Path, total: int, size: int) -> tuple[float, float]:
    """(wall, kernel CPU) seconds to pwrite `total` bytes in calls of `size` into a new file."""
    buffer = memoryview(bytearray(os.urandom(min(size, 1 << 20)) * max(1, size // (1 << 20))))[:size]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, total)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        started = time.perf_counter()
        offset = 0
        while offset < total:
            offset += os.pwrite(fd, buffer[: min(size, total - offset)], offset)
        wall = time.perf_counter() - started
        kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    finally:
        os.close(fd)
        path.unlink()
    return wall, kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-kib", default="16,32,64,1024", help="write sizes in KiB, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause", type=float, default=8.0, help="seconds of rest before each write")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None, help="where the file goes (default: a temp dir)")
    args = parser.parse_args()
    sizes = [int(part) * 1024 for part in args.sizes_kib.split(",")]
    total = args.size_mib * 1024 * 1024
    results: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="modelpull-page-cache-") as scratch:
        path = Path(scratch) / "file.bin"
        for round_number in range(args.rounds):
            for size in sizes:
                time.sleep(args.pause)
                wall, kernel = write_file(path, total, size)
                results[size].append((wall, kernel))
                print(f"  round {round_number + 1}/{args.rounds}  {size // 1024:>5} KiB writes  "
                      f"wall {wall:5.2f} s  kernel {kernel:5.2f} s", flush=True)
    reporting = Path("/sys/module/page_reporting/parameters/page_reporting_order")
    order = reporting.read_text().strip() if reporting.exists() else "none"
    print(f"\n<!-- bench/page_cache.py --sizes-kib {args.sizes_kib} --rounds {args.rounds} --pause {args.pause:g}; "
          f"{args.size_mib} MiB; Linux {platform.release()}, {os.cpu_count()} CPUs, free page reporting order "
          f"{order}; {time.strftime('%Y-%m-%d %H:%M')} -->")
    print("| write size | wall (median) | kernel CPU (median) | every round's wall (s) |")
    print("|---|---:|---:|---|")
    for size in sizes:
        walls = [wall for wall, _ in results[size]]
        kernels = [kernel for _, kernel in results[size]]
        print(f"| {size // 1024} KiB | {statistics.median(walls):.2f} s | {statistics.median(kernels):.2f} s | "
              f"{' '.join(f'{wall:.2f}' for wall in walls)} |")


if __name__ == "__main__":
    main()

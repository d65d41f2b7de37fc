"""Which HTTP client should the transfer engine use? Measure it on this machine.

Streams one file (1 GiB by default) from a private local nginx to disk, computing its sha256 on
the way, with:

- aiohttp (``read_bufsize=1 MiB``, as the engine): ``resp.content.iter_chunked(1 MiB)``,
  ``iter_any()``, and ``iter_any()`` with the hashing and writing handed to one worker thread in
  ~1 MiB batches (overlaps on two cores);
- httpx (async): ``resp.aiter_raw()`` and ``resp.aiter_bytes(1 MiB)``;
- the standard library's blocking ``http.client`` in a thread, ``readinto`` a pool of 1 MiB
  buffers and ``write`` each, with the sha256 on a second thread (``socket-pipe``, what the
  engine's wire does), inline (``socket-inline``), or read back from the file by a thread that
  follows the written prefix (``socket-follow``);
- pycurl (libcurl), its write callback writing and queueing each chunk for a hasher thread
  (only when ``pycurl`` is installed: ``pip install pycurl``; not a dependency of modelpull);
- ``curl -o`` (no hash): the floor, what the disk and the loopback can do;
- ``sha256 only``: hashing the (cached) file, no network: the cost the Python clients carry.

Each client runs in its own process, round-robin, ``--runs`` times (median reported). For the
Python clients "wall" and "CPU" cover the transfer only (measured inside the process, from before
the request to the file closed), not the interpreter start and imports; the process totals are
shown too. For curl they are the whole process. Every download's sha256 is checked.

    .venv/bin/python bench/http_clients.py [--size-mib 1024] [--runs 3] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _nginx
from _nginx import MiB

CHUNK = 1 * MiB


# ---------------------------------------------------------------------- children (one per run)


async def _aiohttp(url: str, out: Path, digest, iterate: str) -> None:
    import aiohttp

    # read_bufsize as in the engine (transfer/_http.py): aiohttp's 64 KiB default pauses and
    # resumes the socket far more often.
    async with aiohttp.ClientSession(auto_decompress=False, trust_env=True, read_bufsize=CHUNK) as session:
        async with session.get(url) as response:
            response.raise_for_status()
            chunks = response.content.iter_chunked(CHUNK) if iterate == "chunked" else response.content.iter_any()
            with open(out, "wb") as sink:
                if iterate == "thread":
                    await _hash_and_write_in_thread(chunks, sink, digest)
                    return
                async for chunk in chunks:
                    digest.update(chunk)
                    sink.write(chunk)


async def _hash_and_write_in_thread(chunks, sink, digest) -> None:
    """Receive on the event loop while one worker thread hashes and writes the previous ~1 MiB.

    hashlib and file writes release the GIL on large buffers, so on two cores receiving and
    hashing overlap instead of taking turns.
    """
    loop = asyncio.get_running_loop()

    def hash_and_write(batch: list[bytes]) -> None:
        for chunk in batch:
            digest.update(chunk)
            sink.write(chunk)

    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        batch: list[bytes] = []
        batched = 0
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            if batched >= CHUNK:
                if pending is not None:
                    await pending  # at most one batch in flight: memory stays bounded
                pending = loop.run_in_executor(worker, hash_and_write, batch)
                batch, batched = [], 0
        if pending is not None:
            await pending
        hash_and_write(batch)


async def _httpx(url: str, out: Path, digest, iterate: str) -> None:
    import httpx

    async with httpx.AsyncClient(trust_env=True, timeout=60) as client:
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            chunks = response.aiter_raw() if iterate == "raw" else response.aiter_bytes(CHUNK)
            with open(out, "wb") as sink:
                async for chunk in chunks:
                    digest.update(chunk)
                    sink.write(chunk)


def _socket_pipe(url: str, out: Path, digest, hash_in_thread: bool = True) -> None:
    """Blocking http.client in this thread: readinto() a pool of 1 MiB buffers, write each,
    and hand it to a hasher thread (hashlib releases the GIL) that gives it back when done."""
    import http.client
    import queue
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
    connection.request("GET", parts.path)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    free: queue.Queue = queue.Queue()
    filled: queue.Queue = queue.Queue()
    for _ in range(8):
        free.put(bytearray(CHUNK))

    def hasher() -> None:
        while (item := filled.get()) is not None:
            buffer, size = item
            digest.update(memoryview(buffer)[:size])
            free.put(buffer)

    thread = threading.Thread(target=hasher)
    thread.start()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            buffer = free.get()
            view = memoryview(buffer)
            size = response.readinto(view)
            if not size:
                break
            os.write(fd, view[:size])
            if hash_in_thread:
                filled.put((buffer, size))
            else:
                digest.update(view[:size])
                free.put(buffer)
    finally:
        filled.put(None)
        thread.join()
        os.close(fd)
        connection.close()


def _socket_follow(url: str, out: Path, digest) -> None:
    """As the engine: http.client readinto1 + pwrite in this thread; a hasher thread follows the
    written prefix, reading it back from the page cache in 16 MiB blocks."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
    connection.request("GET", parts.path)
    response = connection.getresponse()
    total = int(response.headers["Content-Length"])
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, total)
    cond = threading.Condition()
    state = {"written": 0}

    def hasher() -> None:
        block = bytearray(16 * MiB)
        view = memoryview(block)
        hashed = 0
        while hashed < total:
            with cond:
                while state["written"] <= hashed:
                    cond.wait()
                target = state["written"]
            while hashed < target:
                count = os.preadv(fd, [view[: min(len(block), target - hashed)]], hashed)
                digest.update(view[:count])
                hashed += count

    thread = threading.Thread(target=hasher)
    thread.start()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = 0
    fp = response.fp
    while offset < total:
        filled = 0
        while filled < CHUNK and offset + filled < total:
            count = fp.readinto1(view[filled : min(CHUNK, total - offset)])
            if not count:
                raise RuntimeError("short body")
            filled += count
        os.pwrite(fd, view[:filled], offset)
        offset += filled
        with cond:
            state["written"] = offset
            cond.notify()
    thread.join()
    os.close(fd)
    connection.close()


def _pycurl_pipe(url: str, out: Path, digest) -> None:
    """libcurl (pycurl): its write callback writes each chunk and queues it for a hasher thread."""
    import queue
    import threading

    import pycurl

    filled: queue.Queue = queue.Queue(maxsize=64)

    def hasher() -> None:
        while (chunk := filled.get()) is not None:
            digest.update(chunk)

    thread = threading.Thread(target=hasher)
    thread.start()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(chunk: bytes) -> None:
        os.write(fd, chunk)
        filled.put(chunk)

    curl = pycurl.Curl()
    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.WRITEFUNCTION, write)
    curl.setopt(pycurl.BUFFERSIZE, 512 * 1024)
    try:
        curl.perform()
    finally:
        curl.close()
        filled.put(None)
        thread.join()
        os.close(fd)


def _hash_only(path: Path, digest) -> None:
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)


def child(client: str, source: str, out: Path) -> None:
    """Run one transfer; print {"wall": s, "cpu": s, "sha256": hex} as JSON on stdout."""
    if client.startswith("aiohttp"):
        import aiohttp  # noqa: F401  (imports outside the timed part)
    elif client.startswith("httpx"):
        import httpx  # noqa: F401
    digest = hashlib.sha256()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if client == "sha256-only":
        _hash_only(Path(source), digest)
    elif client.startswith("aiohttp"):
        asyncio.run(_aiohttp(source, out, digest, client.partition("-")[2]))
    elif client.startswith("httpx"):
        asyncio.run(_httpx(source, out, digest, client.partition("-")[2]))
    elif client == "socket-pipe":
        _socket_pipe(source, out, digest)
    elif client == "socket-inline":
        _socket_pipe(source, out, digest, hash_in_thread=False)
    elif client == "socket-follow":
        _socket_follow(source, out, digest)
    elif client == "pycurl-pipe":
        _pycurl_pipe(source, out, digest)
    else:
        raise SystemExit(f"unknown client {client}")
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    print(json.dumps({"wall": wall, "cpu": cpu, "sha256": digest.hexdigest()}))


# ------------------------------------------------------------------------------------ parent

# name -> label in the table
CLIENTS = {
    "curl": "curl -o (no hash)",
    "aiohttp-chunked": "aiohttp iter_chunked(1 MiB)",
    "aiohttp-any": "aiohttp iter_any()",
    "aiohttp-thread": "aiohttp iter_any(), hash+write thread",
    "httpx-raw": "httpx aiter_raw()",
    "httpx-bytes": "httpx aiter_bytes(1 MiB)",
    "socket-pipe": "http.client readinto, hash thread",
    "socket-inline": "http.client readinto, hash inline",
    "socket-follow": "http.client readinto1, hasher follows file",
    "pycurl-pipe": "pycurl, hash thread",
    "sha256-only": "sha256 only, no network",
}


def run_once(client: str, url: str, source: Path, out: Path, expected: str) -> dict:
    if out.exists():
        out.unlink()
    os.sync()  # start each run without the previous run's dirty pages being written back
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    if client == "curl":
        result = _nginx.run_measured(["curl", "-sS", "-f", "-o", str(out), url], env=env)
        if _nginx.sha256_file(out) != expected:
            raise RuntimeError("curl wrote wrong bytes")
        return {"wall": result.wall_seconds, "cpu": result.cpu_seconds,
                "process_wall": result.wall_seconds, "process_cpu": result.cpu_seconds,
                "rss": result.peak_rss_bytes}
    target = str(source) if client == "sha256-only" else url
    result = _nginx.run_measured([sys.executable, __file__, "--child", client, target, str(out)], env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["sha256"] != expected:
        raise RuntimeError(f"{client} computed sha256 {report['sha256']}, expected {expected}")
    if client != "sha256-only" and out.stat().st_size != source.stat().st_size:
        raise RuntimeError(f"{client} wrote {out.stat().st_size} bytes")
    return {"wall": report["wall"], "cpu": report["cpu"], "process_wall": result.wall_seconds,
            "process_cpu": result.cpu_seconds, "rss": result.peak_rss_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where the test files go (default: a temp dir)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset of " + ", ".join(CLIENTS))
    parser.add_argument("--child", nargs=3, metavar=("CLIENT", "SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return

    clients = [name for name in args.clients.split(",") if name]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    try:
        import pycurl  # noqa: F401
    except ImportError:
        if "pycurl-pipe" in clients:
            print("pycurl is not installed: skipping it (pip install pycurl to include it)")
            clients.remove("pycurl-pipe")
    _nginx.ensure_tools(("nginx", "curl"))
    with tempfile.TemporaryDirectory(prefix="modelpull-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        source = work / "www" / "model.bin"
        print(f"making a {args.size_mib} MiB file ...", flush=True)
        expected = _nginx.make_file(source, args.size_mib * MiB)
        _nginx.warm_page_cache(source)
        results: dict[str, list[dict]] = {name: [] for name in clients}
        with _nginx.start_nginx(work / "www") as nginx:
            url = nginx.url("model.bin")
            for run in range(args.runs):
                for name in clients:  # round-robin, so that drift hits every client alike
                    measured = run_once(name, url, source, work / "out.bin", expected)
                    results[name].append(measured)
                    print(f"run {run + 1}/{args.runs} {name:16} {measured['wall']:6.2f} s wall"
                          f" {measured['cpu']:6.2f} s CPU", flush=True)
    print_report(results, args.size_mib, args.runs)


def print_report(results: dict[str, list[dict]], size_mib: int, runs: int) -> None:
    med = {name: {key: _nginx.median(run[key] for run in rows) for key in rows[0]} for name, rows in results.items()}
    base = med.get("curl")
    headers = ["client", "wall", "CPU", "MiB/s", "wall ÷ curl", "CPU ÷ curl", "process wall", "process CPU", "peak RSS"]
    rows = []
    for name, stats in med.items():
        rows.append([
            CLIENTS[name],
            _nginx.fmt_seconds(stats["wall"]),
            _nginx.fmt_seconds(stats["cpu"]),
            f"{size_mib / stats['wall']:.0f}",
            _nginx.fmt_ratio(stats["wall"] / base["wall"]) if base else "-",
            _nginx.fmt_ratio(stats["cpu"] / base["cpu"]) if base else "-",
            _nginx.fmt_seconds(stats["process_wall"]),
            _nginx.fmt_seconds(stats["process_cpu"]),
            _nginx.fmt_bytes(stats["rss"]),
        ])
    print(f"\n{size_mib} MiB from a local nginx to disk with sha256 (curl: no hash), median of {runs} runs, "
          f"{os.cpu_count()} CPUs\n")
    print(_nginx.format_table(headers, rows))
    best_aiohttp = min((med[n] for n in med if n.startswith("aiohttp")), key=lambda s: s["wall"], default=None)
    best_httpx = min((med[n] for n in med if n.startswith("httpx")), key=lambda s: s["wall"], default=None)
    print()
    if best_aiohttp and base:
        print(f"best aiohttp / curl wall: {_nginx.fmt_ratio(best_aiohttp['wall'] / base['wall'])}")
    if best_aiohttp and best_httpx:
        print(f"best httpx / best aiohttp: wall {_nginx.fmt_ratio(best_httpx['wall'] / best_aiohttp['wall'])}, "
              f"CPU {_nginx.fmt_ratio(best_httpx['cpu'] / best_aiohttp['cpu'])}")
    print("\nmarkdown:\n")
    print(_nginx.format_markdown_table(headers, rows))


if __name__ == "__main__":
    main()

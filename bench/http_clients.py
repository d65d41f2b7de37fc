"""Which HTTP client should the transfer engine use? Measure it on this machine.

Streams one file (1 GiB by default) from a private local nginx to disk, computing its sha256 on
the way, with:

- aiohttp (``read_bufsize=1 MiB``, as the engine): ``resp.content.iter_chunked(1 MiB)``,
  ``iter_any()``, and ``iter_any()`` with the hashing and writing handed to one worker thread in
  ~1 MiB batches (overlaps on two cores);
- httpx (async): ``resp.aiter_raw()`` and ``resp.aiter_bytes(1 MiB)``;
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

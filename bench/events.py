"""The event fan-out under load (issue 10, finding 6): many `/events` streams while many jobs run.

    .venv/bin/python bench/events.py                          # 1000 streams, 500 jobs, 2 rounds
    .venv/bin/python bench/events.py --streams 200 --jobs 100 --hold 10 --settle 20   # a quick one

nginx serves the files on 127.0.0.1 (each request capped at --limit-rate, so the jobs keep
publishing progress); `modelpull serve` runs as a child process (default --max-active-jobs 3,
the other jobs queued). Each round, a separate process opens --streams `GET /events` streams on
raw sockets (most read everything, --slow of them never read after connecting: the subscribers
that used to make the server buffer without bound), holds them --hold seconds, then closes them.
Meanwhile this process measures `GET /health` back to back and samples the server's RSS. After
the last round it waits --settle seconds and samples the RSS again.

Targets: /health p99 <= 100 ms while the streams are open, peak RSS <= 250 MB, RSS <= 120 MB a
minute after the streams closed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nginx  # noqa: E402
from server import percentile, start_server, stop_server  # noqa: E402  (bench/server.py)

TARGET_P99_MS = 100.0
TARGET_PEAK_MB = 250.0
TARGET_SETTLED_MB = 120.0


# ---------------------------------------------------------------------- the streams (child process)


async def hold_streams(host: str, port: int, count: int, slow: int, hold: float) -> None:
    """Open `count` /events streams (the first `slow` never read), hold them, close them; print a
    JSON summary line."""
    received = [0] * count
    opened = 0

    async def one(index: int, stop: asyncio.Event) -> None:
        nonlocal opened
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
        writer.write(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        await writer.drain()
        opened += 1
        try:
            if index < slow:
                await stop.wait()
                return
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(1 << 16), 0.5)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    return
                received[index] += len(data)
        finally:
            writer.close()

    stop = asyncio.Event()
    tasks = []
    for index in range(count):
        tasks.append(asyncio.create_task(one(index, stop)))
        if index % 50 == 49:
            await asyncio.sleep(0.01)
    await asyncio.sleep(hold)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"opened": opened, "bytes": sum(received), "readers_with_data": sum(1 for r in received if r)}),
          flush=True)


# ---------------------------------------------------------------------- the measurement


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="modelpull-bench-events-"))
    root, models = work / "www", work / "models"
    root.mkdir()
    names = []
    for index in range(args.jobs):
        name = f"model-{index:04d}.bin"
        _nginx.make_file(root / name, args.size)
        names.append(name)
    _nginx.ensure_tools(("nginx",))
    nginx = _nginx.start_nginx(root, limit_rate=args.limit_rate)
    process, base = start_server(models, work / "state.db", args.active, work / "server.log",
                                 ("--max-event-streams", str(args.streams + 100)))
    host, port = base.removeprefix("http://").split(":")
    health_ms: list[float] = []
    rss: list[tuple[float, int]] = []
    rounds = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=20)) as client:
            answers = await asyncio.gather(*(client.post("/downloads", json={"model": nginx.url(n)}) for n in names))
            refused = [a.text for a in answers if a.status_code != 202]
            if refused:
                raise RuntimeError(f"{len(refused)} submissions refused: {refused[0]}")
            baseline_rss = _nginx.tree_rss(process.pid)
            t0 = time.monotonic()
            for round_index in range(args.rounds):
                streams = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--hold-streams", host, port, str(args.streams), str(args.slow),
                    str(args.hold), stdout=asyncio.subprocess.PIPE)
                async with httpx.AsyncClient(base_url=base, timeout=60) as probe:
                    while True:
                        if streams.returncode is not None:
                            break
                        started = time.perf_counter()
                        (await probe.get("/health")).raise_for_status()
                        health_ms.append((time.perf_counter() - started) * 1000)
                        if args.show_slow and health_ms[-1] > TARGET_P99_MS / 2:
                            print(f"  /health {health_ms[-1]:6.1f} ms at {time.monotonic() - t0:5.2f} s", flush=True)
                        rss.append((time.monotonic() - t0, _nginx.tree_rss(process.pid)))
                        try:
                            await asyncio.wait_for(streams.wait(), args.interval)
                        except asyncio.TimeoutError:
                            pass
                summary = json.loads((await streams.stdout.read()).decode().strip().splitlines()[-1])
                metrics = (await client.get("/metrics")).text
                resyncs = next((line.split()[-1] for line in metrics.splitlines()
                                if line.startswith("modelpull_event_stream_resyncs_total")), "?")
                rounds.append({**summary, "resyncs_total": resyncs})
                print(f"round {round_index + 1}: {summary}, resyncs so far {resyncs}", flush=True)
            closed_at = time.monotonic()
            while time.monotonic() - closed_at < args.settle:
                rss.append((time.monotonic() - t0, _nginx.tree_rss(process.pid)))
                await asyncio.sleep(1)
            settled_rss = _nginx.tree_rss(process.pid)
            counts = (await client.get("/health")).json()
    finally:
        stop_server(process)
        nginx.stop()

    peak = max(r for _, r in rss) / 2 ** 20
    settled = settled_rss / 2 ** 20
    p99 = percentile(health_ms, 99)
    headers = ["measure", "samples", "p50", "p99", "max", "target", "met"]
    rows = [
        ["GET /health while streams are open", len(health_ms), f"{percentile(health_ms, 50):.1f} ms",
         f"{p99:.1f} ms", f"{max(health_ms):.1f} ms", f"p99 <= {TARGET_P99_MS:.0f} ms",
         "yes" if p99 <= TARGET_P99_MS else "NO"],
        ["server RSS, peak", len(rss), f"{statistics.median(r for _, r in rss) / 2 ** 20:.0f} MB", "",
         f"{peak:.0f} MB", f"<= {TARGET_PEAK_MB:.0f} MB", "yes" if peak <= TARGET_PEAK_MB else "NO"],
        [f"server RSS {args.settle:.0f} s after the streams closed", 1, "", "", f"{settled:.0f} MB",
         f"<= {TARGET_SETTLED_MB:.0f} MB", "yes" if settled <= TARGET_SETTLED_MB else "NO"],
    ]
    print()
    print(f"{args.rounds} rounds of {args.streams} /events streams ({args.slow} never reading) held {args.hold:.0f} s; "
          f"{args.jobs} jobs of {_nginx.fmt_bytes(args.size)}, {args.active} active, nginx limit_rate {args.limit_rate}; "
          f"RSS before the streams {baseline_rss / 2 ** 20:.0f} MB; jobs at the end: active {counts.get('active')}, "
          f"queued {counts.get('queued')}")
    print(_nginx.format_table(headers, rows))
    print()
    print(_nginx.format_markdown_table(headers, rows))
    return 0 if all(row[-1] == "yes" for row in rows) else 1


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--hold-streams":
        host, port, count, slow, hold = sys.argv[2:7]
        asyncio.run(hold_streams(host, int(port), int(count), int(slow), float(hold)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=100, help="streams that never read after connecting")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024 * 1024, help="bytes per file")
    parser.add_argument("--active", type=int, default=3)
    parser.add_argument("--limit-rate", default="256k", help="nginx limit_rate per request (keeps jobs running)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds the streams stay open each round")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after the last round before the RSS check")
    parser.add_argument("--show-slow", action="store_true",
                        help="print every /health probe over half the target, with its time since the first round began")
    parser.add_argument("--interval", type=float, default=0.05, help="pause between /health probes (s)")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

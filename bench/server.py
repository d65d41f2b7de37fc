"""Server under load: many jobs submitted at once, API latency and memory while they run.

    .venv/bin/python bench/server.py                       # the full run: 200 jobs of 4 MiB, 3 active
    .venv/bin/python bench/server.py --jobs 30 --size 1m   # a quick one

nginx serves the files on 127.0.0.1 (each request capped at --limit-rate, so the run lasts long
enough to measure); `modelpull serve` runs as a child process with --max-active-jobs. All jobs are
POSTed at once (with their sha256); while they run, one client measures `GET /downloads` and
`GET /download-progress/{id}` (a random job each time) back to back, and the server's RSS is
sampled from /proc. At the end every job must be `completed` and every file's sha256 right.

Targets (issue 5): p99 <= 25 ms for both routes, RSS <= 200 MB, every digest right. `GET /health`
is measured alongside as a baseline: what the machine, the client and the event loop add to any call.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nginx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 25.0
TARGET_RSS_MB = 200.0


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    text = text.strip().lower()
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_server(models: Path, database: Path, active: int, log_path: Path,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`modelpull serve` as a child process (`extra`: more flags); (process, base URL)."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelpull.server.cli", "--host", "127.0.0.1", "--port", "0",
         "--models-dir", str(models), "--database", str(database), "--max-active-jobs", str(active),
         "--allow-private-urls", "--log-format", "json", *extra],
        stdout=log, stderr=log, cwd=str(REPO),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()[-2000:]}")
        for line in log_path.read_text().splitlines():
            if '"listening on' in line:
                return process, f"http://127.0.0.1:{json.loads(line)['port']}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not start")


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server from start_server(): SIGTERM, and SIGKILL if it is not gone in 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


async def run(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="modelpull-bench-server-"))
    root, models = work / "www", work / "models"
    root.mkdir()
    print(f"writing {args.jobs} files of {_nginx.fmt_bytes(size)} in {root} ...", flush=True)
    digests = {}
    for i in range(args.jobs):
        name = f"model-{i:04d}.bin"
        digests[name] = _nginx.make_file(root / name, size)

    _nginx.ensure_tools(("nginx",))
    nginx = _nginx.start_nginx(root, limit_rate=args.limit_rate)
    process, base = start_server(models, work / "state.db", args.active, work / "server.log")
    latencies: dict[str, list[float]] = {"GET /downloads": [], "GET /download-progress/{id}": [],
                                         "GET /health (baseline)": []}
    rss_samples: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60,
                                     limits=httpx.Limits(max_connections=50)) as client:
            started = time.perf_counter()
            responses = await asyncio.gather(*(
                client.post("/downloads", json={"model": nginx.url(name), "options": {"sha256": digest}})
                for name, digest in digests.items()
            ))
            submit_seconds = time.perf_counter() - started
            bad = [r.text for r in responses if r.status_code != 202]
            if bad:
                raise RuntimeError(f"{len(bad)} submissions refused: {bad[0]}")
            ids = [r.json()["id"] for r in responses]
            print(f"submitted {len(ids)} jobs in {submit_seconds:.2f} s", flush=True)

            stop = asyncio.Event()

            async def sample_rss() -> None:
                while not stop.is_set():
                    rss_samples.append(_nginx.tree_rss(process.pid))
                    await asyncio.sleep(0.1)

            sampler = asyncio.create_task(sample_rss())
            async with httpx.AsyncClient(base_url=base, timeout=60) as probe:
                rng = random.Random(0)
                last_report = time.monotonic()
                while True:
                    t0 = time.perf_counter()
                    listing = await probe.get("/downloads")
                    latencies["GET /downloads"].append((time.perf_counter() - t0) * 1000)
                    listing.raise_for_status()
                    active = listing.json()["total_active"]
                    t0 = time.perf_counter()
                    one = await probe.get(f"/download-progress/{rng.choice(ids)}")
                    latencies["GET /download-progress/{id}"].append((time.perf_counter() - t0) * 1000)
                    one.raise_for_status()
                    t0 = time.perf_counter()
                    (await probe.get("/health")).raise_for_status()
                    latencies["GET /health (baseline)"].append((time.perf_counter() - t0) * 1000)
                    if time.monotonic() - last_report > 5:
                        last_report = time.monotonic()
                        print(f"  {active} unfinished, {len(latencies['GET /downloads'])} probes", flush=True)
                    if active == 0:
                        break
                    await asyncio.sleep(args.interval)
            run_seconds = time.perf_counter() - started
            stop.set()
            await sampler

            jobs = [(await client.get(f"/downloads/{i}")).json() for i in ids]
        statuses: dict[str, int] = {}
        for job in jobs:
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
        wrong = [name for name, digest in digests.items() if _nginx.sha256_file(models / name) != digest] \
            if statuses.get("completed") == len(ids) else list(digests)
    finally:
        stop_server(process)
        nginx.stop()

    peak_rss_mb = max(rss_samples) / 2 ** 20 if rss_samples else float("nan")
    rows = []
    for route, values in latencies.items():
        p99 = percentile(values, 99)
        baseline = "baseline" in route  # the cheapest route: what the machine and client add to every call
        rows.append([route, len(values), f"{percentile(values, 50):.1f} ms", f"{p99:.1f} ms",
                     f"{max(values):.1f} ms", "" if baseline else f"<= {TARGET_P99_MS:.0f} ms",
                     "" if baseline else ("yes" if p99 <= TARGET_P99_MS else "NO")])
    rows.append(["server RSS (peak)", len(rss_samples), f"{statistics.median(rss_samples) / 2 ** 20:.0f} MB", "",
                 f"{peak_rss_mb:.0f} MB", f"<= {TARGET_RSS_MB:.0f} MB", "yes" if peak_rss_mb <= TARGET_RSS_MB else "NO"])
    rows.append(["jobs completed, digest right", len(ids), "", "", f"{len(ids) - len(wrong)}/{len(ids)}",
                 "all", "yes" if not wrong else "NO"])
    headers = ["measure", "samples", "p50", "p99", "max", "target", "met"]
    print()
    print(f"{len(ids)} jobs x {_nginx.fmt_bytes(size)}, {args.active} active, nginx limit_rate {args.limit_rate}, "
          f"{run_seconds:.1f} s, statuses {statuses}")
    print(_nginx.format_table(headers, rows))
    print()
    print(_nginx.format_markdown_table(headers, rows))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    met = all(r[-1] in ("yes", "") for r in rows)
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--size", default="4m", help="bytes per file (k/m/g suffixes), default 4m")
    parser.add_argument("--active", type=int, default=3, help="--max-active-jobs of the server, default 3")
    parser.add_argument("--limit-rate", default="1m", help="nginx limit_rate per request, default 1m (slow enough to measure while jobs run)")
    parser.add_argument("--interval", type=float, default=0.02, help="pause between probe pairs (s)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (files, server log)")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

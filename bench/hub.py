"""Issue 3's Hub benchmark: modelpull vs `huggingface_hub.snapshot_download`, from a fake Hub.

The Hub API is tests/fakes/hub.py (in this process); its LFS CDN role is played by a private
nginx serving the blobs by sha256, so the bytes come from the same fast server for both tools.
Each tool runs in its own fresh interpreter (`python -c`), into a fresh empty Hub cache,
round-robin, ``--runs`` times; medians are reported.

    (a) one 1 GiB LFS file, nginx `limit_rate 20m` (every connection capped at 20 MiB/s):
        target: modelpull >= 4x faster than snapshot_download (one connection per file)
    (b) 8 LFS files of 128 MiB, unthrottled:
        target: modelpull's wall time <= 0.8x snapshot_download's

    .venv/bin/python bench/hub.py                 # the real thing: ~3 GB of disk, a few minutes
    .venv/bin/python bench/hub.py --scale 0.05    # 51 MiB / 8 x 6.4 MiB: proves the script works

Run the real thing on a quiet machine: wall times on a shared, busy one say little.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import _nginx
from _nginx import GiB, MiB

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from fakes.hub import FakeHub  # noqa: E402  (tests/ is not a package on the path by default)

MODELPULL = """\
import sys, modelpull
repo, cache = sys.argv[1:3]
modelpull.pull("hf:" + repo, cache_dir=cache)
"""
HUGGINGFACE_HUB = """\
import sys
from huggingface_hub import snapshot_download
repo, cache = sys.argv[1:3]
snapshot_download(repo, cache_dir=cache)
"""
TOOLS = {"modelpull": MODELPULL, "huggingface_hub": HUGGINGFACE_HUB}


@dataclasses.dataclass
class Case:
    title: str
    repo_id: str
    sizes: list[int]
    limit_rate: str | None
    target: str  # how the ratio is judged, for the table
    wall: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def median(self, tool: str) -> float:
        return _nginx.median(self.wall[tool])


def child_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update({
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


def build_repo(hub: FakeHub, case: Case, sources: Path) -> None:
    files: dict[str, bytes | Path] = {"config.json": b'{"model_type": "bench"}\n'}
    for index, size in enumerate(case.sizes):
        name = "model.safetensors" if len(case.sizes) == 1 else f"model-{index + 1:05d}-of-{len(case.sizes):05d}.safetensors"
        path = sources / f"{case.repo_id.replace('/', '--')}-{name}"
        if not path.exists() or path.stat().st_size != size:
            _nginx.make_file(path, size)
        _nginx.warm_page_cache(path)
        files[name] = path
    hub.add_repo(case.repo_id, files)


def check_snapshot(cache: Path, case: Case) -> None:
    """Both tools must leave every file, complete, in the snapshot (proves an honest exit)."""
    snapshots = list(cache.glob(f"models--{case.repo_id.replace('/', '--')}/snapshots/*"))
    if len(snapshots) != 1:
        raise RuntimeError(f"no snapshot in {cache}")
    sizes = sorted(p.stat().st_size for p in snapshots[0].rglob("*.safetensors"))
    if sizes != sorted(case.sizes):
        raise RuntimeError(f"incomplete snapshot in {snapshots[0]}: sizes {sizes}, expected {sorted(case.sizes)}")


def run_case(case: Case, work: Path, runs: int) -> None:
    blobs = work / f"cdn-{case.repo_id.replace('/', '--')}"  # nginx's root: LFS blobs named by sha256
    blobs.mkdir()
    with _nginx.start_nginx(blobs, limit_rate=case.limit_rate) as nginx:
        with FakeHub(cdn_base_url=nginx.base_url) as hub:
            build_repo(hub, case, work / "sources")
            hub.export_blobs(blobs)
            env = child_env(hub.endpoint)
            timeout = max(120.0, case.total / (2 * MiB))
            limit = f", limit_rate {case.limit_rate}" if case.limit_rate else ", unthrottled"
            print(f"\n== {case.title} ({_nginx.fmt_bytes(case.total)}{limit}, {runs} runs)", flush=True)
            for run in range(runs):
                for tool, script in TOOLS.items():  # round-robin: drift on the machine hits both alike
                    cache = work / "cache"
                    shutil.rmtree(cache, ignore_errors=True)
                    cache.mkdir()
                    os.sync()
                    measured = _nginx.run_measured([sys.executable, "-c", script, case.repo_id, str(cache)],
                                                   env=env, timeout=timeout)
                    check_snapshot(cache, case)
                    case.wall.setdefault(tool, []).append(measured.wall_seconds)
                    print(f"  run {run + 1}/{runs}  {tool:16} {measured.wall_seconds:7.2f} s"
                          f"  {case.total / MiB / measured.wall_seconds:7.1f} MiB/s"
                          f"  CPU {measured.cpu_seconds:6.2f} s", flush=True)
            shutil.rmtree(work / "cache", ignore_errors=True)


def report(cases: list[Case], args: argparse.Namespace) -> None:
    a, b = cases
    speedup = a.median("huggingface_hub") / a.median("modelpull")
    wall_ratio = b.median("modelpull") / b.median("huggingface_hub")
    rows = [
        [a.title, _nginx.fmt_seconds(a.median("modelpull")), _nginx.fmt_seconds(a.median("huggingface_hub")),
         f"{speedup:.2f}x faster", a.target, "met" if speedup >= 4 else "NOT met"],
        [b.title, _nginx.fmt_seconds(b.median("modelpull")), _nginx.fmt_seconds(b.median("huggingface_hub")),
         f"{wall_ratio:.2f}x the time", b.target, "met" if wall_ratio <= 0.8 else "NOT met"],
    ]
    headers = ["case", "modelpull", "snapshot_download", "modelpull vs hf", "target", ""]
    print(f"\nMedians of {args.runs} runs, scale {args.scale:g}, {platform.node()} "
          f"({os.cpu_count()} CPUs), Python {platform.python_version()}")
    print(_nginx.format_table(headers, rows))
    if args.scale < 1:
        print("(scale < 1: a check that the script works, not a measurement; files under modelpull's "
              "64 MiB multipart threshold use one connection, and start-up costs dominate)")
    print("\nMarkdown:\n")
    print(_nginx.format_markdown_table(headers, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every file size (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and case (default 3)")
    parser.add_argument("--limit-rate", default="20m", help="nginx limit_rate for case (a) (default 20m)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    args = parser.parse_args()
    _nginx.ensure_tools(("nginx",))
    big = max(MiB, int(GiB * args.scale))
    shard = max(MiB, int(128 * MiB * args.scale))
    cases = [
        Case(f"(a) one {_nginx.fmt_bytes(big)} file, CDN {args.limit_rate}/connection", "bench/one-big",
             [big], args.limit_rate, ">= 4x faster"),
        Case(f"(b) 8 files of {_nginx.fmt_bytes(shard)}, unthrottled", "bench/eight-shards",
             [shard] * 8, None, "<= 0.8x the time"),
    ]
    with tempfile.TemporaryDirectory(prefix="modelpull-hub-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        (work / "sources").mkdir()
        for case in cases:
            run_case(case, work, args.runs)
    report(cases, args)


if __name__ == "__main__":
    main()

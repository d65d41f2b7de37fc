"""Issue 2's transfer benchmark: modelpull against curl and aria2c, from a local nginx.

In one run, each case measured ``--runs`` times (round-robin over the tools, medians reported):

1. unthrottled, a ``--size-mib`` file (1 GiB): ``modelpull pull URL --to DIR --sha256 HEX --quiet``
   vs ``curl -o`` vs ``aria2c -x16 -s16`` (curl and aria2c do not hash; modelpull verifies sha256
   and fsyncs the file before renaming it), and for reading those: ``curl -o`` then
   ``sha256sum -c`` (the same check by hand), then also ``sync FILE`` (the same durability);
2. the same file from an nginx with ``limit_rate 20m`` (each connection capped at 20 MiB/s):
   modelpull (default 8 connections, and ``--connections 16``) vs curl vs aria2c -x16 -s16;
3. modelpull's peak RSS (process tree) while downloading the same file, and a ``--big-size-mib``
   (4 GiB) one, unthrottled;
4. for reading the others: a 1 KiB file, modelpull vs curl, i.e. modelpull's fixed cost per
   download (interpreter start, imports, one request, verification, rename).

It prints the raw medians, then the ratios next to issue 2's targets, as a text table and as
markdown for the README. modelpull runs through its CLI (``.venv/bin/modelpull``) when that
exists, else through ``modelpull.pull()`` in ``python -c`` (``--modelpull`` forces one); when
neither works its rows are skipped and the curl/aria2c parts still run.

    .venv/bin/python bench/transfer.py                 # the real thing: ~10 GB of disk, minutes
    .venv/bin/python bench/transfer.py --quick         # 128 MiB / 512 MiB files: proves it works

Run the real thing on a quiet machine: wall times on a shared, busy one say little.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _nginx
from _nginx import MiB

MODELPULL_CLI = Path(sys.executable).parent / "modelpull"
API_WRAPPER = """\
import sys
import modelpull
url, models_dir, sha256, connections = sys.argv[1:5]
options = {"sha256": sha256}
if connections:
    options["connections"] = int(connections)
modelpull.pull(url, models_dir=models_dir, **options)
"""
CHILD_ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


# ------------------------------------------------------------------------------------- tools


@dataclasses.dataclass(frozen=True)
class Tool:
    """One way to download a URL into an empty directory."""

    name: str
    kind: str  # "curl", "aria2c", "modelpull"
    connections: int | None = None  # modelpull only: None = its default

    def command(self, url: str, out_dir: Path, sha256: str, driver: str) -> list[str]:
        if self.kind == "curl":
            return ["curl", "-sS", "-f", "-o", str(out_dir / "model.bin"), url]
        if self.kind in ("curl+sha256sum", "curl+sha256sum+sync"):
            # What a user runs by hand for modelpull's guarantees: the digest checked, and (with
            # sync FILE, an fsync) the file on disk before anything relies on it.
            script = 'curl -sS -f -o "$1" "$2" && echo "$3  $1" | sha256sum --quiet -c'
            if self.kind.endswith("+sync"):
                script += ' && sync "$1"'
            return ["sh", "-c", script, "sh", str(out_dir / "model.bin"), url, sha256]
        if self.kind == "aria2c":
            return ["aria2c", "-x16", "-s16", "--dir", str(out_dir), "--out", "model.bin",
                    "--allow-overwrite=true", "--auto-file-renaming=false", "--quiet=true", url]
        connections = [] if self.connections is None else ["--connections", str(self.connections)]
        if driver == "cli":
            return [str(MODELPULL_CLI), "pull", url, "--to", str(out_dir), "--sha256", sha256, "--quiet", *connections]
        return [sys.executable, "-c", API_WRAPPER, url, str(out_dir), sha256,
                "" if self.connections is None else str(self.connections)]


CURL = Tool("curl -o", "curl")
CURL_CHECKED = Tool("curl -o; sha256sum -c", "curl+sha256sum")
CURL_CHECKED_SYNCED = Tool("curl -o; sha256sum -c; sync FILE", "curl+sha256sum+sync")
ARIA2C = Tool("aria2c -x16 -s16", "aria2c")
MODELPULL = Tool("modelpull", "modelpull")
MODELPULL_16 = Tool("modelpull --connections 16", "modelpull", 16)


def find_modelpull_driver(forced: str) -> tuple[str | None, str]:
    """("cli" | "api" | None, why): how to run modelpull here."""
    if forced in ("auto", "cli") and MODELPULL_CLI.exists():
        probe = subprocess.run([str(MODELPULL_CLI), "pull", "--help"], capture_output=True, text=True)
        if probe.returncode == 0:
            return "cli", f"CLI {MODELPULL_CLI}"
        if forced == "cli":
            return None, f"{MODELPULL_CLI} pull --help failed: {probe.stderr.strip()[-300:]}"
    elif forced == "cli":
        return None, f"no {MODELPULL_CLI}"
    probe = subprocess.run([sys.executable, "-c", "import modelpull; modelpull.pull"], capture_output=True, text=True)
    if probe.returncode == 0:
        return "api", "modelpull.pull() via python -c"
    return None, "neither the modelpull CLI nor modelpull.pull() works yet: " + (
        probe.stderr.strip().splitlines() or ["?"])[-1]


# -------------------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Case:
    """One file from one server, downloaded by several tools."""

    title: str
    url: str
    size: int
    sha256: str
    tools: list[Tool]
    runs: int
    results: dict[str, list[_nginx.Measurement]] = dataclasses.field(default_factory=dict)

    def median_wall(self, tool: Tool) -> float | None:
        done = self.results.get(tool.name)
        return _nginx.median(m.wall_seconds for m in done) if done else None

    def peak_rss(self, tool: Tool) -> int | None:
        done = self.results.get(tool.name)
        return max(m.peak_rss_bytes for m in done) if done else None


def downloaded_file(out_dir: Path, size: int) -> Path:
    """The one finished file of `size` bytes under out_dir (modelpull decides its own layout)."""
    found = [path for path in out_dir.rglob("*")
             if path.is_file() and path.stat().st_size == size and not path.name.endswith((".part", ".aria2"))]
    if len(found) != 1:
        listing = ", ".join(f"{p.relative_to(out_dir)} ({p.stat().st_size})" for p in out_dir.rglob("*") if p.is_file())
        raise RuntimeError(f"expected one {size}-byte file in {out_dir}, found: {listing or 'nothing'}")
    return found[0]


def run_case(case: Case, work: Path, driver: str | None) -> None:
    timeout = max(120.0, case.size / (4 * MiB))  # nothing here should be slower than 4 MiB/s
    print(f"\n== {case.title} ({_nginx.fmt_bytes(case.size)}, {case.runs} runs)", flush=True)
    for run in range(case.runs):
        for tool in case.tools:  # round-robin, so that drift on the machine hits every tool alike
            out_dir = work / "out"
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir()
            os.sync()  # start without the previous run's dirty pages still being written back
            measured = _nginx.run_measured(tool.command(case.url, out_dir, case.sha256, driver or ""),
                                           env=CHILD_ENV, timeout=timeout)
            result = downloaded_file(out_dir, case.size)  # also proves the exit status was honest
            if run == 0 and _nginx.sha256_file(result) != case.sha256:  # once per tool: hashing costs time
                raise RuntimeError(f"{tool.name} wrote wrong bytes to {result}")
            case.results.setdefault(tool.name, []).append(measured)
            print(f"  run {run + 1}/{case.runs}  {tool.name:28} {measured.wall_seconds:7.2f} s"
                  f"  {case.size / MiB / measured.wall_seconds:7.0f} MiB/s"
                  f"  CPU {measured.cpu_seconds:6.2f} s  RSS {_nginx.fmt_mb(measured.peak_rss_bytes)}", flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)


# ------------------------------------------------------------------------------------ report


def raw_rows(cases: list[Case]) -> list[list[str]]:
    rows = []
    for case in cases:
        for tool in case.tools:
            done = case.results.get(tool.name)
            if not done:
                continue
            wall = _nginx.median(m.wall_seconds for m in done)
            rows.append([
                case.title, tool.name, _nginx.fmt_seconds(wall),
                f"{case.size / MiB / wall:.0f}" if case.size >= MiB else "-",
                _nginx.fmt_seconds(_nginx.median(m.cpu_seconds for m in done)),
                _nginx.fmt_mb(max(m.peak_rss_bytes for m in done)),
                " ".join(f"{m.wall_seconds:.2f}" for m in done),
            ])
    return rows


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def verdict(value: float | None, ok: bool | None) -> str:
    if value is None or ok is None:
        return "n/a"
    return "yes" if ok else "NO"


def ratio_rows(tiny: Case, unthrottled: Case, throttled: Case, big: Case | None) -> list[list[str]]:
    def show(value: float | None) -> str:
        return "n/a" if value is None else _nginx.fmt_ratio(value)

    rows = []
    fixed_modelpull, fixed_curl = tiny.median_wall(MODELPULL), tiny.median_wall(CURL)
    fixed = None if fixed_modelpull is None or fixed_curl is None else fixed_modelpull - fixed_curl
    rows.append(["1 KiB file: modelpull wall − curl wall (fixed cost)",
                 "n/a" if fixed is None else _nginx.fmt_seconds(fixed), "—", ""])
    modelpull_vs_curl = ratio(unthrottled.median_wall(MODELPULL), unthrottled.median_wall(CURL))
    rows.append(["unthrottled: modelpull wall ÷ curl wall", show(modelpull_vs_curl), "≤ 1.15×",
                 verdict(modelpull_vs_curl, modelpull_vs_curl is not None and modelpull_vs_curl <= 1.15)])
    modelpull_vs_aria = ratio(unthrottled.median_wall(MODELPULL), unthrottled.median_wall(ARIA2C))
    rows.append(["unthrottled: modelpull wall ÷ aria2c wall", show(modelpull_vs_aria), "—", ""])
    for tool in (CURL_CHECKED, CURL_CHECKED_SYNCED):
        versus = ratio(unthrottled.median_wall(MODELPULL), unthrottled.median_wall(tool))
        rows.append([f"unthrottled: modelpull wall ÷ ({tool.name}) wall", show(versus), "—", ""])
    for tool in (MODELPULL, MODELPULL_16):
        speedup = ratio(throttled.median_wall(CURL), throttled.median_wall(tool))
        rows.append([f"{throttled.title}: curl wall ÷ {tool.name} wall", show(speedup), "≥ 6×",
                     verdict(speedup, speedup is not None and speedup >= 6)])
    for tool in (MODELPULL, MODELPULL_16):
        versus = ratio(throttled.median_wall(tool), throttled.median_wall(ARIA2C))
        rows.append([f"{throttled.title}: {tool.name} wall ÷ aria2c wall", show(versus), "≤ 1.00×",
                     verdict(versus, versus is not None and versus <= 1.0)])
    small_rss = unthrottled.peak_rss(MODELPULL)
    for case, rss in ((unthrottled, small_rss), (big, big.peak_rss(MODELPULL) if big else None)):
        if case is None:
            continue
        rows.append([f"peak RSS of modelpull, {case.size // MiB} MiB file",
                     "n/a" if rss is None else _nginx.fmt_mb(rss), "≤ 120 MB",
                     verdict(rss, rss is not None and rss <= 120e6)])
    if big is not None:
        growth = ratio(big.peak_rss(MODELPULL), small_rss)
        rows.append([f"peak RSS {big.size // MiB} MiB ÷ {unthrottled.size // MiB} MiB", show(growth),
                     "≈ 1× (flat)", verdict(growth, growth is not None and growth <= 1.10)])
    return rows


def print_report(cases: list[Case], tiny: Case, unthrottled: Case, throttled: Case, big: Case | None,
                 driver_note: str, args: argparse.Namespace) -> None:
    raw_headers = ["case", "tool", "wall (median)", "MiB/s", "CPU", "peak RSS", "all runs (s)"]
    ratio_headers = ["measure", "measured", "target (issue 2)", "met"]
    raw, ratios = raw_rows(cases), ratio_rows(tiny, unthrottled, throttled, big)
    about = (f"{platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}; modelpull: {driver_note}; "
             f"medians of {args.runs} runs; load average before: {args.load_before}")
    print("\n" + about + "\n")
    print(_nginx.format_table(raw_headers, raw))
    print()
    print(_nginx.format_table(ratio_headers, ratios))
    print("\nmarkdown for the README:\n")
    print(f"<!-- bench/transfer.py --size-mib {args.size_mib} --big-size-mib {args.big_size_mib} "
          f"--runs {args.runs}; {about} -->")
    print(_nginx.format_markdown_table(ratio_headers, ratios))
    print()
    print(_nginx.format_markdown_table(raw_headers, raw))


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=None, help="the main file (default 1024; --quick 128)")
    parser.add_argument("--big-size-mib", type=int, default=None,
                        help="the file for the RSS check (default 4096; --quick 512; 0 skips it)")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and case (default 3)")
    parser.add_argument("--quick", action="store_true", help="small files (128 MiB, 512 MiB): proves the script works")
    parser.add_argument("--limit-rate", default="20m", help="nginx limit_rate for the throttled case (default 20m)")
    parser.add_argument("--modelpull", choices=("auto", "cli", "api"), default="auto",
                        help="how to run modelpull (default: the CLI if it exists)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    args = parser.parse_args()
    if args.size_mib is None:
        args.size_mib = 128 if args.quick else 1024
    if args.big_size_mib is None:
        args.big_size_mib = 512 if args.quick else 4096
    args.load_before = " ".join(f"{load:.2f}" for load in os.getloadavg())

    _nginx.ensure_tools(("nginx", "curl", "aria2c"))
    driver, driver_note = find_modelpull_driver(args.modelpull)
    print(f"modelpull: {driver_note}", flush=True)
    modelpull_tools = [MODELPULL] if driver else []
    modelpull_16 = [MODELPULL_16] if driver else []

    with tempfile.TemporaryDirectory(prefix="modelpull-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        www = work / "www"
        www.mkdir()
        print(f"making a {args.size_mib} MiB file ...", flush=True)
        sha256 = _nginx.make_file(www / "model.bin", args.size_mib * MiB)
        tiny_sha256 = _nginx.make_file(www / "tiny.bin", 1024)
        _nginx.warm_page_cache(www / "model.bin")
        with _nginx.start_nginx(www) as fast, _nginx.start_nginx(www, limit_rate=args.limit_rate) as slow:
            unthrottled = Case("unthrottled", fast.url("model.bin"), args.size_mib * MiB, sha256,
                               [CURL, *modelpull_tools, ARIA2C, CURL_CHECKED, CURL_CHECKED_SYNCED], args.runs)
            throttled = Case(f"limit_rate {args.limit_rate}", slow.url("model.bin"), args.size_mib * MiB, sha256,
                             [CURL, *modelpull_tools, *modelpull_16, ARIA2C], args.runs)
            tiny = Case("1 KiB file (fixed cost)", fast.url("tiny.bin"), 1024, tiny_sha256,
                        [CURL, *modelpull_tools], args.runs)
            cases = [tiny, unthrottled, throttled]
            run_case(tiny, work, driver)
            run_case(unthrottled, work, driver)
            run_case(throttled, work, driver)
            big = None
            if driver and args.big_size_mib:
                (www / "model.bin").unlink()  # make room: the big file and its copy next
                print(f"\nmaking a {args.big_size_mib} MiB file ...", flush=True)
                big_sha256 = _nginx.make_file(www / "model.bin", args.big_size_mib * MiB)
                big = Case("unthrottled, RSS", fast.url("model.bin"), args.big_size_mib * MiB, big_sha256,
                           [MODELPULL], 1)
                cases.append(big)
                run_case(big, work, driver)
    print_report(cases, tiny, unthrottled, throttled, big, driver_note, args)


if __name__ == "__main__":
    main()

"""Issue 13's transfer benchmark: modelpull with its defaults against aria2c and curl, from a local nginx.

One run measures every case below ``--runs`` times (default 5), the tools of a case taking turns
(round-robin), and reports medians and paired ratios (the median over rounds of A's time ÷ B's
time in the same round, so that a machine whose speed drifts hits both alike):

====================================  ==================================================  ===============
case                                  compared                                            target
====================================  ==================================================  ===============
1 GiB, nginx ``limit_rate 20m``       modelpull (defaults) ÷ ``aria2c -x16 -s16 -k8M``    ≤ 1.00×
256 MiB, same                         modelpull (defaults) ÷ aria2c                       ≤ 1.20×
256 MiB, same                         modelpull ``--connections 16`` ÷ aria2c             (for reading)
1 GiB unthrottled, sha256 + fsync     modelpull ``--sha256`` ÷ ``curl -o`` (no hash)      ≤ 1.55×
1 KiB file (fixed cost)               modelpull wall, median                              ≤ 0.15 s
1 GiB unthrottled (one connection     modelpull (defaults) ÷ ``--connections 1``:         ≤ 1.03×
fills the link)                       what the ramp costs there
====================================  ==================================================  ===============

``--before PATH`` adds a second modelpull CLI (another checkout's ``.venv/bin/modelpull``, e.g.
main's code) to every modelpull row, run in the same rounds: the table then shows before and
after side by side. Also measured: ``curl -o; sha256sum -c`` (the same check by hand), aria2c
unthrottled, modelpull's peak RSS, and with ``--big-size-mib`` a bigger file for RSS flatness.

Every modelpull run is ``modelpull pull URL --to DIR --sha256 HEX --quiet`` (the file is hashed
and fsync'd before its rename); curl and aria2c neither hash nor fsync. Every download is checked
(one file of the right size; its sha256 on each tool's first run).

    .venv/bin/python bench/transfer.py --before /path/to/main/.venv/bin/modelpull
    .venv/bin/python bench/transfer.py --quick          # 128 MiB / 64 MiB files, 2 runs: does it work?
    .venv/bin/python bench/transfer.py --tiny-only --runs 9   # the 1 KiB row alone (the fixed cost)

Wall times on a shared, busy machine say little: the report prints the load average before and
after; quote ratios.
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
from typing import Callable

import _nginx
from _nginx import MiB

MODELPULL_CLI = Path(sys.executable).parent / "modelpull"
CHILD_ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
for _variable in ("MODELPULL_CONNECTIONS", "MODELPULL_MULTIPART_THRESHOLD"):  # the defaults are measured
    CHILD_ENV.pop(_variable, None)


# ------------------------------------------------------------------------------------- tools


@dataclasses.dataclass(frozen=True)
class Tool:
    """One way to download a URL into an empty directory."""

    name: str
    kind: str  # "curl", "curl+sha256sum", "aria2c", "modelpull"
    connections: int | None = None  # modelpull only: None = its default
    cli: Path | None = None  # modelpull only: which installation

    def command(self, url: str, out_dir: Path, sha256: str) -> list[str]:
        if self.kind == "curl":
            return ["curl", "-sS", "-f", "-o", str(out_dir / "model.bin"), url]
        if self.kind == "curl+sha256sum":
            # What a user runs by hand for modelpull's digest check.
            script = 'curl -sS -f -o "$1" "$2" && echo "$3  $1" | sha256sum --quiet -c'
            return ["sh", "-c", script, "sh", str(out_dir / "model.bin"), url, sha256]
        if self.kind == "aria2c":
            return ["aria2c", "-x16", "-s16", "-k8M", "--dir", str(out_dir), "--out", "model.bin",
                    "--allow-overwrite=true", "--auto-file-renaming=false", "--quiet=true", url]
        assert self.cli is not None
        connections = [] if self.connections is None else ["--connections", str(self.connections)]
        return [str(self.cli), "pull", url, "--to", str(out_dir), "--sha256", sha256, "--quiet", *connections]


CURL = Tool("curl -o", "curl")
CURL_CHECKED = Tool("curl -o; sha256sum -c", "curl+sha256sum")
ARIA2C = Tool("aria2c -x16 -s16 -k8M", "aria2c")


@dataclasses.dataclass(frozen=True)
class Modelpull:
    """One installation of modelpull ("after": this checkout; "before": --before) and its variants."""

    label: str  # "" for this checkout, "before" for --before
    cli: Path

    def tool(self, connections: int | None = None) -> Tool:
        name = "modelpull" + (f" ({self.label})" if self.label else "")
        if connections is not None:
            name += f" --connections {connections}"
        return Tool(name, "modelpull", connections, self.cli)


def working_cli(path: Path) -> str | None:
    """None if `path pull --help` works, else why not."""
    if not path.exists():
        return f"no {path}"
    probe = subprocess.run([str(path), "pull", "--help"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"{path} pull --help failed: {probe.stderr.strip()[-300:]}"


_STALE_BYTECODE = """
import importlib.util, pathlib, modelpull
stale = 0
for source in pathlib.Path(modelpull.__file__).parent.rglob("*.py"):
    try:
        header = pathlib.Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
    except OSError:
        stale += 1
        continue
    info = source.stat()
    stale += header[8:16] != (int(info.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little") + (
        info.st_size & 0xFFFFFFFF).to_bytes(4, "little")
print(stale)
"""


def stale_bytecode(cli: Path) -> str:
    """How many of modelpull's modules that CLI's Python compiles from source (no .pyc, or an old
    one): with PYTHONDONTWRITEBYTECODE set, at every start (an editable install has none until
    `make install` compiles them). "?" for a CLI that is not a Python script."""
    first_line = cli.read_bytes().split(b"\n", 1)[0]
    python = first_line[2:].decode().strip() if first_line.startswith(b"#!") else ""
    if "python" not in Path(python).name:
        return "?"
    probe = subprocess.run([python, "-c", _STALE_BYTECODE], capture_output=True, text=True, env=CHILD_ENV)
    return probe.stdout.strip() or "?"


# -------------------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Case:
    """One file from one server, downloaded by several tools in turn."""

    title: str
    url: str
    size: int
    sha256: str
    tools: list[Tool]
    runs: int
    results: dict[str, list[_nginx.Measurement]] = dataclasses.field(default_factory=dict)

    def walls(self, tool: Tool) -> list[float]:
        return [m.wall_seconds for m in self.results.get(tool.name, [])]

    def median_wall(self, tool: Tool) -> float | None:
        walls = self.walls(tool)
        return _nginx.median(walls) if walls else None

    def paired_ratio(self, tool: Tool, other: Tool) -> float | None:
        """Median over rounds of tool's wall ÷ other's wall in the same round."""
        pairs = list(zip(self.walls(tool), self.walls(other)))
        return _nginx.median(a / b for a, b in pairs) if pairs else None

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


def run_case(case: Case, work: Path) -> None:
    timeout = max(120.0, case.size / (4 * MiB))  # nothing here should be slower than 4 MiB/s
    print(f"\n== {case.title} ({_nginx.fmt_bytes(case.size)}, {case.runs} runs)", flush=True)
    for run in range(case.runs):
        for tool in case.tools:  # round-robin, so that drift on the machine hits every tool alike
            out_dir = work / "out"
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir()
            os.sync()  # start without the previous run's dirty pages still being written back
            measured = _nginx.run_measured(tool.command(case.url, out_dir, case.sha256), env=CHILD_ENV,
                                           timeout=timeout)
            result = downloaded_file(out_dir, case.size)  # also proves the exit status was honest
            if run == 0 and _nginx.sha256_file(result) != case.sha256:  # once per tool: hashing costs time
                raise RuntimeError(f"{tool.name} wrote wrong bytes to {result}")
            case.results.setdefault(tool.name, []).append(measured)
            print(f"  run {run + 1}/{case.runs}  {tool.name:40} {measured.wall_seconds:7.2f} s"
                  f"  CPU {measured.cpu_seconds:6.2f} s  RSS {_nginx.fmt_mb(measured.peak_rss_bytes)}", flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)


# ------------------------------------------------------------------------------------ report


@dataclasses.dataclass
class Cases:
    tiny: Case
    unthrottled: Case | None  # None with --tiny-only, as the two below
    throttled_big: Case | None
    throttled_small: Case | None
    rss: Case | None

    def all(self) -> list[Case]:
        return [case for case in (self.tiny, self.unthrottled, self.throttled_big, self.throttled_small, self.rss)
                if case is not None]


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


def issue_rows(cases: Cases, after: Modelpull, before: Modelpull | None) -> list[list[str]]:
    """Issue 13's table: one row per target, before and after side by side."""

    def show(value: float | None, seconds: bool = False) -> str:
        if value is None:
            return "n/a"
        return _nginx.fmt_seconds(value) if seconds else _nginx.fmt_ratio(value)

    def met(value: float | None, limit: float | None) -> str:
        if value is None or limit is None:
            return ""
        return "yes" if value <= limit else "NO"

    def wall(case: Case, tool: Tool) -> str:
        value = case.median_wall(tool)
        return "n/a" if value is None else _nginx.fmt_seconds(value)

    rows = []
    versions = [after] if before is None else [before, after]

    def ratio_row(case: Case | None, what: str, connections: int | None, peer_of: Callable[[Modelpull], Tool],
                  limit: float | None, target: str) -> None:
        """The row `<case's title><what>`; none for a case not run (--tiny-only)."""
        if case is None:
            return
        measured = {v.label: case.paired_ratio(v.tool(connections), peer_of(v)) for v in versions}
        walls = " / ".join(wall(case, v.tool(connections)) for v in versions)
        peer = peer_of(after)
        now = measured[after.label]
        rows.append([f"{case.title}{what}", walls, f"{peer.name} {wall(case, peer)}",
                     *([show(measured["before"])] if before else []), show(now), target, met(now, limit)])

    def aria2c(_: Modelpull) -> Tool:
        return ARIA2C

    def curl(_: Modelpull) -> Tool:
        return CURL

    def one_connection(version: Modelpull) -> Tool:  # each version against its own single connection
        return version.tool(1)

    big, small, unthrottled = cases.throttled_big, cases.throttled_small, cases.unthrottled
    ratio_row(big, ": defaults ÷ aria2c", None, aria2c, 1.0, "≤ 1.00×")
    ratio_row(small, ": defaults ÷ aria2c", None, aria2c, 1.2, "≤ 1.20×")
    ratio_row(small, ": --connections 16 ÷ aria2c", 16, aria2c, None, "—")
    ratio_row(unthrottled, ", sha256 + fsync: ÷ curl", None, curl, 1.55, "≤ 1.55×")
    ratio_row(unthrottled, ": defaults ÷ --connections 1 (the ramp's cost)", None, one_connection, 1.03, "≤ 1.03×")
    tiny = cases.tiny
    fixed = {v.label: tiny.median_wall(v.tool()) for v in versions}
    now = fixed[after.label]
    rows.append([f"{tiny.title}: modelpull wall", " / ".join(show(fixed[v.label], True) for v in versions),
                 f"{CURL.name} {wall(tiny, CURL)}", *([show(fixed["before"], True)] if before else []),
                 show(now, True), "≤ 0.15 s", met(now, 0.15)])
    if unthrottled is not None:
        rss = {v.label: unthrottled.peak_rss(v.tool()) for v in versions}
        rows.append([f"peak RSS, {unthrottled.title}", " / ".join(
            "n/a" if rss[v.label] is None else _nginx.fmt_mb(rss[v.label]) for v in versions), "",
            *([""] if before else []), "", "", ""])
    if cases.rss is not None:
        rows.append([f"peak RSS, {cases.rss.title}", _nginx.fmt_mb(cases.rss.peak_rss(after.tool()) or 0), "",
                     *([""] if before else []), "", "", ""])
    return rows


def print_report(cases: Cases, after: Modelpull, before: Modelpull | None, args: argparse.Namespace) -> None:
    walls = "modelpull wall (before / after)" if before else "modelpull wall"
    issue_headers = ["case", walls, "peer wall", *(["ratio before"] if before else []),
                     "ratio" + (" after" if before else ""), "target", "met"]
    raw_headers = ["case", "tool", "wall (median)", "MiB/s", "CPU", "peak RSS", "all runs (s)"]
    issue, raw = issue_rows(cases, after, before), raw_rows(cases.all())
    load_after = " ".join(f"{load:.2f}" for load in os.getloadavg())
    about = (f"{platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}; medians of {args.runs} runs, ratios paired by round; "
             f"load average before {args.load_before}, after {load_after}"
             + (f"; before = {before.cli}" if before else "")
             + (f"; modules without fresh bytecode (compiled at every start, PYTHONDONTWRITEBYTECODE is set): "
                + (f"before {stale_bytecode(before.cli)}, after " if before else "") + stale_bytecode(after.cli)
                if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""))
    print("\n" + about + "\n")
    print(_nginx.format_table(issue_headers, issue))
    print()
    print(_nginx.format_table(raw_headers, raw))
    print("\nmarkdown:\n")
    print(f"<!-- bench/transfer.py --size-mib {args.size_mib} --small-size-mib {args.small_size_mib} "
          f"--runs {args.runs}{' --tiny-only' if args.tiny_only else ''}; {about} -->")
    print(_nginx.format_markdown_table(issue_headers, issue))
    print()
    print(_nginx.format_markdown_table(raw_headers, raw))


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=None, help="the big file (default 1024; --quick 128)")
    parser.add_argument("--small-size-mib", type=int, default=None,
                        help="the throttled small file (default 256; --quick 64)")
    parser.add_argument("--big-size-mib", type=int, default=0,
                        help="a file for the RSS check, unthrottled, modelpull only (e.g. 4096; default 0: skipped)")
    parser.add_argument("--runs", type=int, default=None, help="rounds per case (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="small files, 2 runs: proves the script works")
    parser.add_argument("--limit-rate", default="20m", help="nginx limit_rate for the throttled cases (default 20m)")
    parser.add_argument("--before", type=Path, default=None,
                        help="another modelpull CLI (e.g. main's .venv/bin/modelpull) measured in the same rounds")
    parser.add_argument("--tiny-only", action="store_true",
                        help="only the 1 KiB case (the fixed cost): a short run while working on start-up")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    args = parser.parse_args()
    args.size_mib = args.size_mib or (128 if args.quick else 1024)
    args.small_size_mib = args.small_size_mib or (64 if args.quick else 256)
    args.runs = args.runs or (2 if args.quick else 5)
    args.load_before = " ".join(f"{load:.2f}" for load in os.getloadavg())

    _nginx.ensure_tools(("nginx", "curl", "aria2c"))
    problem = working_cli(MODELPULL_CLI)
    if problem:
        sys.exit(f"modelpull: {problem}")
    after = Modelpull("", MODELPULL_CLI)
    before = None
    if args.before is not None:
        problem = working_cli(args.before)
        if problem:
            sys.exit(f"--before: {problem}")
        before = Modelpull("before", args.before)
    versions = [after] if before is None else [before, after]

    def each(*connections: int | None) -> list[Tool]:
        return [version.tool(count) for count in connections for version in versions]

    with tempfile.TemporaryDirectory(prefix="modelpull-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        www = work / "www"
        www.mkdir()
        tiny_sha256 = _nginx.make_file(www / "tiny.bin", 1024)
        if not args.tiny_only:
            print(f"making {args.size_mib} MiB and {args.small_size_mib} MiB files ...", flush=True)
            big_sha256 = _nginx.make_file(www / "big.bin", args.size_mib * MiB)
            small_sha256 = _nginx.make_file(www / "small.bin", args.small_size_mib * MiB)
            for name in ("big.bin", "small.bin"):
                _nginx.warm_page_cache(www / name)
        with _nginx.start_nginx(www) as fast, _nginx.start_nginx(www, limit_rate=args.limit_rate) as slow:
            cases = Cases(
                tiny=Case("1 KiB file", fast.url("tiny.bin"), 1024, tiny_sha256, [CURL, *each(None)], args.runs),
                unthrottled=None, throttled_big=None, throttled_small=None, rss=None,
            )
            if not args.tiny_only:
                cases.unthrottled = Case(f"{args.size_mib} MiB unthrottled", fast.url("big.bin"),
                                         args.size_mib * MiB, big_sha256,
                                         [CURL, *each(None, 1), ARIA2C, CURL_CHECKED], args.runs)
                cases.throttled_big = Case(f"{args.size_mib} MiB limit_rate {args.limit_rate}", slow.url("big.bin"),
                                           args.size_mib * MiB, big_sha256, [*each(None), ARIA2C], args.runs)
                cases.throttled_small = Case(f"{args.small_size_mib} MiB limit_rate {args.limit_rate}",
                                             slow.url("small.bin"), args.small_size_mib * MiB, small_sha256,
                                             [*each(None, 16), ARIA2C], args.runs)
            for case in cases.all():
                run_case(case, work)
            if args.big_size_mib and not args.tiny_only:
                for name in ("big.bin", "small.bin"):
                    (www / name).unlink()  # make room: the big file and its copy next
                print(f"\nmaking a {args.big_size_mib} MiB file ...", flush=True)
                rss_sha256 = _nginx.make_file(www / "rss.bin", args.big_size_mib * MiB)
                cases.rss = Case(f"{args.big_size_mib} MiB unthrottled", fast.url("rss.bin"),
                                 args.big_size_mib * MiB, rss_sha256, [after.tool()], 1)
                run_case(cases.rss, work)
    print_report(cases, after, before, args)


if __name__ == "__main__":
    main()

"""Shared pieces for the benchmarks in bench/: a private nginx, test files, measured runs, tables.

Not part of the package and not used by the test suite. Every benchmark imports it as
``import _nginx`` (bench/ is on ``sys.path`` when a script in it runs). The API below is stable:

``ensure_tools(tools=("nginx", "aria2c", "curl"))``
    Installs what is missing with ``apt-get update`` + ``apt-get install -y``, waiting for the
    dpkg lock when another apt is already running. Raises ``RuntimeError`` if it cannot.

``start_nginx(root, *, host="127.0.0.1", port=0, limit_rate=None, extra_locations=None,
workers=1) -> Nginx``
    Serves the directory ``root`` over HTTP from a private nginx (own prefix under a temp dir:
    nginx.conf, pid file, logs, temp paths), running as our child with ``daemon off``.
    ``port=0`` picks a free port. ``limit_rate`` (nginx syntax, e.g. ``"20m"`` = 20 MiB/s) caps
    every request (hence every connection of a multi-connection client) separately.
    ``extra_locations`` is raw nginx config (a string or a list of strings) placed inside the
    ``server`` block, e.g. ``'location /slow/ { limit_rate 1m; }'``. Static files get ETag,
    Last-Modified and byte ranges (nginx's defaults); ``sendfile on``; access log off.
    ``Nginx`` has ``.base_url`` (no trailing slash), ``.url(name)``, ``.prefix``, ``.stop()``,
    and is a context manager that stops it on exit.

``make_file(path, size) -> str``
    Writes ``size`` random bytes to ``path`` (16 MiB blocks of os.urandom) and returns the hex sha256.

``run_measured(cmd, *, env=None, cwd=None, check=True, timeout=None) -> Measurement``
    Runs ``cmd`` (an argv list, in its own process group) with stdout/stderr captured to files,
    and returns ``Measurement(wall_seconds, cpu_seconds, peak_rss_bytes, returncode, stdout,
    stderr)``. CPU is user+sys of the process and its reaped children (``os.wait4``). Peak RSS is
    sampled from /proc every 10 ms: the larger of the summed VmRSS of the process tree and the
    largest VmHWM (the kernel's own per-process peak, which also catches spikes between samples).
    ``check=True`` raises ``RuntimeError`` (with the tail of stderr) on a non-zero exit; past
    ``timeout`` seconds the process group is killed and ``RuntimeError`` raised.

``measure(cmd, **kwargs) -> (wall_seconds, peak_rss_bytes)``
    ``run_measured`` reduced to the two numbers most callers want.

``sha256_file(path)``, ``warm_page_cache(path)``, ``tree_rss(pid)``
    The sha256 of a file; read a file once so that runs are served from memory; the RSS of a
    process and its descendants.

``median(values)``, ``fmt_seconds(s)``, ``fmt_bytes(n)``, ``fmt_mb(n)``, ``fmt_ratio(x)``
    Small helpers for reports.

``format_table(headers, rows) -> str`` / ``format_markdown_table(headers, rows) -> str``
    A plain aligned table for the terminal, and the same rows as a GitHub markdown table.
    Cells are converted with ``str()``; numbers are right-aligned.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

MiB = 1024 * 1024
GiB = 1024 * MiB

# Command name -> Debian package that provides it.
_PACKAGES = {"nginx": "nginx", "aria2c": "aria2", "curl": "curl"}
_DPKG_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")


# --------------------------------------------------------------------------------------- tools


def _nginx_binary() -> str | None:
    # Debian installs nginx in /usr/sbin, which is not always on a non-root PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def _have(tool: str) -> bool:
    return (_nginx_binary() if tool == "nginx" else shutil.which(tool)) is not None


def _apt_busy() -> bool:
    """True while another apt/dpkg holds one of the locks (checked with `fuser` when present)."""
    fuser = shutil.which("fuser") or shutil.which("fuser", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if fuser:
        held = subprocess.run([fuser, *_DPKG_LOCKS], capture_output=True)
        return held.returncode == 0
    probe = subprocess.run(["pgrep", "-x", "apt-get|apt|dpkg|unattended-upgr"], capture_output=True)
    return probe.returncode == 0


def _apt_get(*args: str, lock_wait: float) -> None:
    deadline = time.monotonic() + lock_wait
    while True:
        while _apt_busy() and time.monotonic() < deadline:
            time.sleep(2)
        # DPkg::Lock::Timeout makes apt itself wait for the lock if we lost the race.
        done = subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=120", *args],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return
        locked = "lock" in done.stderr.lower()
        if not locked or time.monotonic() >= deadline:
            raise RuntimeError(f"apt-get {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
        time.sleep(2)


def ensure_tools(tools: Iterable[str] = ("nginx", "aria2c", "curl"), *, lock_wait: float = 1800) -> None:
    """Install the missing ones of `tools` (command names) with apt-get; no-op if all are there."""
    missing = [tool for tool in tools if not _have(tool)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise RuntimeError(f"missing {', '.join(missing)} and no apt-get to install them")
    packages = sorted({_PACKAGES.get(tool, tool) for tool in missing})
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    _apt_get("update", lock_wait=lock_wait)
    _apt_get("install", "-y", "--no-install-recommends", *packages, lock_wait=lock_wait)
    still_missing = [tool for tool in missing if not _have(tool)]
    if still_missing:
        raise RuntimeError(f"apt-get installed {packages} but {still_missing} is still not on PATH")


# --------------------------------------------------------------------------------------- nginx


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _nginx_conf(prefix: Path, root: Path, host: str, port: int, limit_rate: str | None,
                extra_locations: str, workers: int) -> str:
    # When we are root the workers would drop to "nobody", who cannot enter a 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    limit = f"limit_rate {limit_rate};" if limit_rate else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
{user}
daemon off;
master_process on;
worker_processes {workers};
pid {prefix / 'nginx.pid'};
error_log {prefix / 'logs' / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{temp}
    server {{
        listen {host}:{port};
        server_name localhost;
        root {root};
        location / {{ {limit} }}
        {extra_locations}
    }}
}}
"""


@dataclasses.dataclass
class Nginx:
    """A running private nginx; see start_nginx()."""

    process: subprocess.Popen
    prefix: Path
    host: str
    port: int
    _tempdir: tempfile.TemporaryDirectory | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name.lstrip('/')}"

    def error_log(self) -> str:
        log = self.prefix / "logs" / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown; SIGQUIT would wait for clients
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_nginx(root: Path, *, host: str = "127.0.0.1", port: int = 0, limit_rate: str | None = None,
                extra_locations: str | Sequence[str] | None = None, workers: int = 1) -> Nginx:
    """Serve `root` from a private nginx on host:port; see the module docstring."""
    binary = _nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed; call ensure_tools() first")
    if isinstance(extra_locations, str) or extra_locations is None:
        extra = extra_locations or ""
    else:
        extra = "\n        ".join(extra_locations)
    root = Path(root).resolve()
    attempts = 5 if port == 0 else 1  # a picked port can be taken between the probe and nginx's bind
    last_error = ""
    for _ in range(attempts):
        tempdir = tempfile.TemporaryDirectory(prefix="modelpull-nginx-")
        prefix = Path(tempdir.name)
        (prefix / "logs").mkdir()
        (prefix / "tmp").mkdir()
        chosen = port or _free_port(host)
        conf = prefix / "nginx.conf"
        conf.write_text(_nginx_conf(prefix, root, host, chosen, limit_rate, extra, workers))
        with open(prefix / "logs" / "stderr.log", "wb") as stderr:
            process = subprocess.Popen(
                [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log")],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            )
        server = Nginx(process, prefix, host, chosen, tempdir)
        if _wait_listening(server, timeout=10):
            return server
        last_error = (server.error_log() + (prefix / "logs" / "stderr.log").read_text(errors="replace"))
        server.stop()
        if "in use" not in last_error:
            break
    raise RuntimeError(f"nginx did not start: {last_error.strip()[-1500:]}")


def _wait_listening(server: Nginx, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with socket.create_connection((server.host, server.port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------------------- files


def make_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their sha256 (hex)."""
    digest = hashlib.sha256()
    block = 16 * MiB
    with open(path, "wb") as out:
        left = size
        while left > 0:
            chunk = os.urandom(min(block, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(16 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def warm_page_cache(path: Path) -> None:
    """Read `path` once so that every measured run is served from memory, not the first one only."""
    with open(path, "rb") as source:
        while source.read(16 * MiB):
            pass


# --------------------------------------------------------------------------------- measurement


class Measurement(NamedTuple):
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.extend(int(child) for child in listing.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in bytes; zeros if it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, hwm


def _tree_memory(pid: int) -> tuple[int, int]:
    """(sum of VmRSS over `pid` and its descendants, largest VmHWM among them)."""
    total = high_water = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        rss, hwm = _memory(current)
        total += rss
        high_water = max(high_water, hwm)
        todo.extend(_children(current))
    return total, high_water


def tree_rss(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, in bytes."""
    return _tree_memory(pid)[0]


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 check: bool = True, timeout: float | None = None,
                 sample_interval: float = 0.01) -> Measurement:
    """Run `cmd`; return its wall time, CPU time, peak RSS and output. See the module docstring."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        # Its own process group, so that a timeout or Ctrl-C ends its children too.
        process = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   env=env, cwd=cwd, start_new_session=True)
        peak = 0
        timed_out = False
        done = threading.Event()

        def kill_group() -> None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        def sample() -> None:
            nonlocal peak, timed_out
            while not done.is_set():
                # VmHWM is the kernel's exact peak of one process (it catches spikes between
                # samples); the sampled sum covers a tree of several processes.
                peak = max(peak, *_tree_memory(process.pid))
                if timeout is not None and time.perf_counter() - started > timeout:
                    timed_out = True
                    kill_group()
                    return
                done.wait(sample_interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            kill_group()
            process.wait()
            raise
        finally:
            done.set()
        wall = time.perf_counter() - started
        sampler.join()
        kill_group()  # leftovers of the group, if any
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, tell Popen
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    result = Measurement(
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        # Not ru_maxrss: Linux carries the parent's high-water mark across fork+exec into it.
        peak_rss_bytes=peak,
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr,
    )
    if timed_out:
        raise RuntimeError(f"{' '.join(cmd)} took more than {timeout:.0f} s and was killed")
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {result.returncode}: {(stderr or stdout).strip()[-1500:]}"
        )
    return result


def measure(cmd: Sequence[str], **kwargs) -> tuple[float, int]:
    """(wall_seconds, peak_rss_bytes) of running `cmd`; kwargs as for run_measured()."""
    result = run_measured(cmd, **kwargs)
    return result.wall_seconds, result.peak_rss_bytes


# ------------------------------------------------------------------------------------- reports


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.2f} s"


def fmt_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def fmt_mb(count: float) -> str:
    """Decimal megabytes, the unit the targets in issue 2 use."""
    return f"{count / 1e6:.1f} MB"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}×"


# "12", "1.5 s", "0.97×", "60.5 MB", "547 MiB/s", "0.23 0.18 0.28": right-aligned.
_NUMERIC = re.compile(r"^[-+]?\d[\d.,]*(?: [\d.,]+)*(?: ?(?:s|×|%|[KMG]i?B|B|MiB/s))?$")


def _is_number(cell: str) -> bool:
    return bool(_NUMERIC.match(cell))


def format_table(headers: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A plain, aligned text table; numeric-looking cells are right-aligned."""
    cells = [[str(cell) for cell in headers]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if _is_number(cell) else cell.ljust(width) for cell, width in zip(row, widths)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def format_markdown_table(headers: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """The same rows as a GitHub-flavoured markdown table."""
    head = [str(cell) for cell in headers]
    body = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    align = ["---:" if body and all(_is_number(row[i]) for row in body) else "---" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)

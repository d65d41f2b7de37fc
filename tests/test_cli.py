"""The `modelpull` command, run as a real subprocess against the local fake file server."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from modelpull._progress import DownloadProgress, DownloadStatus
from modelpull._bars import BarsView
from modelpull.cli import LogView, main

from interrupted_pull import pull_interrupted

SECRET = "hf_s3cr3t_token_value"


def _data(size: int, seed: int = 7) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 32  # 1 KiB of varied bytes
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "models"


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "MODELPULL_HOME": str(home),
        "MODELPULL_MAX_RETRIES": "1",
        "MODELPULL_STALL_TIMEOUT": "5",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("HF_TOKEN", None)
    return env


def run_cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelpull", *args],
        capture_output=True, text=True, timeout=timeout, env=_env(home), cwd=home.parent,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process, for what is decided before any download starts."""
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse's own refusals
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---- success --------------------------------------------------------------------------


def test_pull_downloads_the_file_and_prints_its_path_last(file_server, home):
    data = _data(300_000)
    url = file_server.add_file("/tiny.gguf", data)

    result = run_cli(home, "pull", url)

    assert result.returncode == 0, result.stderr
    path = Path(_lines(result.stdout)[-1])
    assert path == home / "tiny.gguf" or path.resolve() == (home / "tiny.gguf").resolve()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_pull_to_dir_with_sha256_and_connections(file_server, tmp_path, home):
    data = _data(200_000)
    url = file_server.add_file("/weights.bin", data)
    target = tmp_path / "elsewhere"

    result = run_cli(home, "pull", url, "--to", str(target), "--sha256",
                     hashlib.sha256(data).hexdigest().upper(), "--connections", "2")

    assert result.returncode == 0, result.stderr
    path = Path(_lines(result.stdout)[-1])
    assert path.resolve() == (target / "weights.bin").resolve()
    assert path.read_bytes() == data
    assert not home.exists() or not any(home.iterdir())


def test_quiet_prints_only_the_path(file_server, home):
    url = file_server.add_file("/quiet.bin", _data(100_000))

    result = run_cli(home, "pull", "--quiet", url)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert _lines(result.stdout) == [_lines(result.stdout)[-1]]
    assert Path(result.stdout.strip()).is_file()


# What a plain URL's fixed cost must not include (also checked with `python -X importtime`): the
# server, the Hub client, aiohttp, rich (no bars with --quiet), and what the download path used to
# import for little: filelock (the engine takes the flock itself), urllib.request (proxies only
# when one is set), uuid, the local-models listing (`_local`, `_url_folder`, `_inventory`), and the
# `crc32c` package's own start (its version read from importlib.metadata, its command line), and
# yarl for a URL that needs no quoting (see tests/test_urls.py).
HEAVY_FOR_A_URL = (
    "aiohttp", "huggingface_hub", "fastapi", "uvicorn", "starlette", "modelpull.server", "rich",
    "filelock", "urllib.request", "uuid", "modelpull.providers._local", "modelpull.providers._url_folder",
    "modelpull._inventory", "importlib.metadata", "crc32c._cli", "yarl", "multidict",
)


@pytest.mark.parametrize("output", [["--quiet"], ["--json"], []], ids=["quiet", "json", "log-lines-to-a-pipe"])
def test_a_plain_url_pull_imports_none_of_the_heavy_modules(file_server, home, output):
    data = _data(1024)
    url = file_server.add_file("/tiny.bin", data)
    report = (
        "import sys\n"
        "from modelpull.cli import main\n"
        "status = main(sys.argv[1:])\n"
        f"heavy = sorted(m for m in sys.modules if m.startswith({HEAVY_FOR_A_URL!r}))\n"
        "print('imported:', ' '.join(heavy))\n"
        "sys.exit(status)\n"
    )
    env = {k: v for k, v in _env(home).items() if not k.lower().endswith("_proxy")}  # a proxy needs urllib
    env.pop("FORCE_COLOR", None)
    env.pop("TTY_COMPATIBLE", None)
    result = subprocess.run(
        [sys.executable, "-c", report, "pull", url, "--sha256", hashlib.sha256(data).hexdigest(), *output],
        capture_output=True, text=True, timeout=60, env=env, cwd=home.parent,
    )
    assert result.returncode == 0, result.stderr
    assert _lines(result.stdout)[-1].strip() == "imported:", result.stdout
    if not output:  # the log's lines, without rich
        assert _lines(result.stderr)[0].startswith("starting: ")
        assert _lines(result.stderr)[-1].startswith("✓ Downloaded tiny.bin")


def test_json_prints_one_progress_object_per_line_ending_complete(file_server, home):
    data = _data(250_000)
    url = file_server.add_file("/model.gguf", data)

    result = run_cli(home, "pull", "--json", url)

    assert result.returncode == 0, result.stderr
    items = [DownloadProgress.from_dict(json.loads(line)) for line in result.stdout.splitlines()]
    assert items[0].status is DownloadStatus.STARTING
    assert items[-1].status is DownloadStatus.COMPLETE
    assert items[-1].percent == 100.0
    assert Path(items[-1].local_path).read_bytes() == data


# ---- failures -------------------------------------------------------------------------


def test_not_found_exits_1_with_one_error_line(file_server, home):
    url = file_server.url("/missing.gguf")

    result = run_cli(home, "pull", url)

    assert result.returncode == 1
    errors = [line for line in _lines(result.stderr) if line.startswith("error:")]
    assert len(errors) == 1 and _lines(result.stderr)[-1] == errors[0]
    assert "404" in errors[0] or "not found" in errors[0].lower()
    assert result.stdout == ""
    assert not (home / "missing.gguf").exists()


def test_quiet_failure_prints_exactly_the_error_line(file_server, home):
    result = run_cli(home, "pull", "-q", file_server.url("/missing.gguf"))

    assert result.returncode == 1
    assert len(_lines(result.stderr)) == 1 and result.stderr.startswith("error: ")
    assert result.stdout == ""


def test_token_is_never_printed(file_server, home):
    url = file_server.add_file("/private.gguf", _data(1000))
    file_server.add_fault("/private.gguf", "status", times=10, methods=("GET", "HEAD"), code=401)

    result = run_cli(home, "pull", "--token", SECRET, url)

    assert result.returncode == 1
    assert _lines(result.stderr)[-1].startswith("error:")
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("args, message", [
    (["pull", "not-a-reference"], "is not a model reference"),
    (["pull", "gopher:thing"], "is not a valid model reference"),
    (["pull", "https://example.com/a.gguf", "--revision", "main"], "--revision applies to hf: and mlx:"),
    (["pull", "hf:org/name@v1", "--revision", "v2"], "two revisions given"),
    (["pull", "hf:org/name", "--direct"], "--direct applies to ollama:"),
])
def test_invalid_input_exits_2_with_a_clear_line(capsys, args, message):
    status, stdout, stderr = run_main(capsys, *args)

    assert status == 2
    assert len(_lines(stderr)) == 1
    assert stderr.startswith("error: ") and message in stderr
    assert stdout == ""


@pytest.mark.parametrize("flag, value, message", [
    ("--connections", "0", "between 1 and 64"),
    ("--sha256", "abc123", "64 hexadecimal digits"),
    ("--base-url", "localhost:11434", "is not an http(s) URL"),
])
def test_bad_flag_values_are_refused_by_name(capsys, flag, value, message):
    status, _stdout, stderr = run_main(capsys, "pull", "ollama:llama3", flag, value)

    assert status == 2
    assert flag in stderr and message in stderr


def test_help_and_version(home):
    version = run_cli(home, "--version")
    assert version.returncode == 0 and version.stdout.startswith("modelpull ")

    help_text = run_cli(home, "pull", "--help")
    assert help_text.returncode == 0
    for form in ("https://", "hf:", "mlx:", "ollama:", "--json", "--to DIR"):
        assert form in help_text.stdout


# ---- Ctrl-C and resume ----------------------------------------------------------------


def test_ctrl_c_keeps_partial_data_and_the_same_command_resumes(file_server, home):
    data = _data(2_000_000)
    path = "/slow.gguf"
    url = file_server.add_file(path, data, throttle_bps=400_000)  # 5 s for the whole file
    returncode, stderr = pull_interrupted([url], _env(home), home.parent, min_bytes=200_000)

    assert returncode == 130, stderr
    assert _lines(stderr)[-1] == (
        f"interrupted: partial data kept in {home}; run the same command again to resume"
    )
    assert not (home / "slow.gguf").exists()
    partials = list(home.rglob("*.part"))
    assert len(partials) == 1
    kept = partials[0].stat().st_size
    assert kept > 0

    # Unthrottled now, same bytes and validators: the rerun continues where it stopped.
    file_server.add_file(path, data)
    file_server.reset_log()
    result = run_cli(home, "pull", url)

    assert result.returncode == 0, result.stderr
    assert Path(_lines(result.stdout)[-1]).read_bytes() == data
    gets = file_server.requests_for(path, "GET")
    assert gets and min(r.range_start or 0 for r in gets) > 0
    assert file_server.bytes_sent < len(data)


# ---- the views, in process ------------------------------------------------------------


def _item(status: DownloadStatus, message: str, **fields) -> DownloadProgress:
    return DownloadProgress(status=status, message=message, **fields)


def _screen(view: BarsView) -> str:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(view.renderable)
    return out.getvalue()


def test_bars_show_a_total_a_row_per_moving_file_and_the_latest_notice():
    view = BarsView(Console(file=io.StringIO(), force_terminal=True, width=120), label="org/model")
    common = dict(total_bytes=3_000_000, files_total=3, speed_bps=1_000_000.0, eta_seconds=2.0)

    def moving(name: str, done: int) -> dict:
        return {"name": name, "downloaded_bytes": done, "total_bytes": 1_000_000, "status": "downloading"}

    view.show(_item(DownloadStatus.STARTING, "Starting download of org/model"))
    view.show(_item(DownloadStatus.DOWNLOADING, "Downloading org/model", downloaded_bytes=500_000,
                    files_completed=0, current_file="a.safetensors",
                    active_files=[moving("a.safetensors", 500_000)], **common))
    view.show(_item(DownloadStatus.DOWNLOADING, "Downloading org/model: retrying in 2.0 s",
                    downloaded_bytes=1_500_000, files_completed=1, current_file="b.safetensors",
                    active_files=[moving("b.safetensors", 250_000), moving("c.safetensors", 250_000)], **common))
    during = _screen(view)
    view.show(_item(DownloadStatus.COMPLETE, "Downloaded org/model", percent=100.0, downloaded_bytes=3_000_000,
                    files_completed=3, local_path="/x", **{**common, "eta_seconds": 0.0}))
    view.finish()
    after = _screen(view)

    lines = during.splitlines()
    assert lines[0].startswith("total (1/3 files)") and "50.0%" in lines[0] and "1.5/3.0 MB" in lines[0]
    assert "1.0 MB/s" in lines[0]
    assert lines[1].strip().startswith("a.safetensors") and "1.0/1.0 MB" in lines[1]
    assert lines[2].strip().startswith("b.safetensors") and "0.2/1.0 MB" in lines[2]
    assert lines[3].strip().startswith("c.safetensors") and "0.2/1.0 MB" in lines[3]
    assert lines[4] == "Downloading org/model: retrying in 2.0 s"
    lines = after.splitlines()
    assert lines[0].startswith("total (3/3 files)") and "100.0%" in lines[0] and "3.0/3.0 MB" in lines[0]
    assert all("1.0/1.0 MB" in line for line in lines[1:4]) and len(lines) == 4


def test_log_view_prints_new_messages_and_a_heartbeat_not_every_item():
    out = io.StringIO()
    now = [0.0]
    view = LogView(out, clock=lambda: now[0])
    downloading = dict(downloaded_bytes=1, total_bytes=10, percent=10.0)
    view.show(_item(DownloadStatus.STARTING, "Starting"))
    for step in range(50):  # 5 s of items at ten a second, same message
        now[0] = step / 10
        view.show(_item(DownloadStatus.DOWNLOADING, "Downloading x", **downloading))
    now[0] = 5.05
    view.show(_item(DownloadStatus.DOWNLOADING, "Downloading x: retrying in 2.0 s", **downloading))
    now[0] = 20.0
    view.show(_item(DownloadStatus.DOWNLOADING, "Downloading x", **downloading))
    view.show(_item(DownloadStatus.COMPLETE, "Downloaded x"))

    lines = out.getvalue().splitlines()
    assert lines[0] == "starting: Starting"
    assert lines[1].startswith("downloading: Downloading x [10.0%")
    assert lines[2].startswith("downloading: Downloading x: retrying in 2.0 s")
    assert lines[3].startswith("downloading: Downloading x [")
    assert len(lines) == 4

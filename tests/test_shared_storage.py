"""Several downloads, processes and tools on one disk: locks, takeover, one server per folder.

Real processes (the `modelpull` CLI, `modelpull serve`) and huggingface_hub's own
`hf_hub_download`, against the fault-injecting file server and the fake Hub on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fakes.hub import add_sample_repo
from polling import eventually
from modelpull import DownloadStatus, download_model

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"MODELPULL_HOME": str(home), "MODELPULL_STALL_TIMEOUT": "5", "PYTHONUNBUFFERED": "1"})
    env.pop("HF_TOKEN", None)
    return env


def start_pull(home: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelpull", "pull", url, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(home), cwd=home.parent,
    )


def kill_all(*processes: subprocess.Popen[str] | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- two downloads of one file ---------------------------------------------------------------

def test_two_cli_processes_on_one_url_fetch_it_once(file_server, tmp_path):
    home = tmp_path / "models"
    data = os.urandom(3 * MiB)
    url = file_server.add_file("/model.bin", data, throttle_bps=1 * MiB)  # 3 s: the second starts meanwhile
    first = start_pull(home, url)
    second = None
    try:
        assert eventually(lambda: file_server.bytes_sent > 0)
        second = start_pull(home, url)
        first_out, first_err = finish(first)
        second_out, second_err = finish(second)
    finally:
        kill_all(first, second)

    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert "waiting for another download of model.bin" in second_err
    assert first_out.strip() == second_out.strip() == str(home / "model.bin")
    assert sha256((home / "model.bin").read_bytes()) == sha256(data)
    served = sum(r.bytes_sent for r in file_server.requests_for("/model.bin", "GET"))
    print(f"two CLI processes: served {served} bytes for a {len(data)}-byte file")
    assert served == len(data), f"served {served} bytes for a {len(data)}-byte file"


PULL_SCRIPT = """
import asyncio, sys
from modelpull import download_model

async def main():
    last = None
    async for last in download_model("url", sys.argv[1], models_dir=sys.argv[2], connections=4,
                                     piece_size=1 << 20, multipart_threshold=1 << 20, retry_backoff=0.01):
        print(last.status.value, last.message, flush=True)
    sys.exit(0 if last.status.value == "complete" else 1)

asyncio.run(main())
"""


def start_script_pull(home: Path, url: str) -> subprocess.Popen[str]:
    """A download through `download_model()` in another process, printing every progress message."""
    return subprocess.Popen([sys.executable, "-c", PULL_SCRIPT, url, str(home)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(home))


def test_a_killed_lock_holder_is_taken_over_and_its_partial_resumed(file_server, tmp_path):
    home = tmp_path / "models"
    size, connections, piece = 16 * MiB, 4, 1 * MiB
    data = os.urandom(size)
    url = file_server.add_file("/big.bin", data, throttle_bps=1 * MiB)  # 4 s on 4 connections
    holder = start_script_pull(home, url)
    waiter = None
    try:
        assert eventually(lambda: file_server.bytes_sent >= size // 8)
        waiter = start_script_pull(home, url)
        assert waiter.stdout is not None
        for line in waiter.stdout:  # the waiter has planned and sits on the lock
            if "waiting for another download of big.bin" in line:
                break
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        before_takeover = file_server.bytes_sent
        out, err = finish(waiter)
    finally:
        kill_all(holder, waiter)

    assert waiter.returncode == 0, err
    assert sha256((home / "big.bin").read_bytes()) == sha256(data)
    assert before_takeover < size
    print(f"takeover: served {file_server.bytes_sent} for {size} bytes, {before_takeover} before the kill")
    # What the holder had made durable is kept: only its unclaimed chunks are fetched again
    # (one unwritten chunk per connection, and what arrived since its last fdatasync + claim).
    assert file_server.bytes_sent <= size + connections * piece + 4 * MiB, (
        f"served {file_server.bytes_sent} for {size} bytes ({before_takeover} before the kill)"
    )


async def test_modelpull_and_hf_hub_download_on_one_file_fetch_it_once(fake_hub, hf_env):
    from huggingface_hub import hf_hub_download

    sample = add_sample_repo(fake_hub, lfs_size=1_000_000)
    path = "model.safetensors"
    content = sample.files[path]
    fake_hub.cdn_rate = 1_000_000  # about a second for the file
    sha = fake_hub.file(sample.repo_id, path, sample.revision).etag

    items = []

    async def ours() -> None:
        async for item in download_model("huggingface", sample.repo_id, revision=sample.revision,
                                          filename=path, retry_backoff=0.01):
            items.append(item)

    task = asyncio.create_task(ours())
    while not [r for r in fake_hub.cdn_gets() if sha in r.path]:
        await asyncio.sleep(0.01)
    theirs = await asyncio.to_thread(hf_hub_download, sample.repo_id, path, revision=sample.revision,
                                     cache_dir=hf_env)
    await task

    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    assert Path(theirs).read_bytes() == content
    assert cdn_bytes_asked(fake_hub, sha, len(content)) == len(content)


async def test_hf_hub_download_first_then_modelpull_waits_and_fetches_nothing(fake_hub, hf_env):
    from huggingface_hub import hf_hub_download

    sample = add_sample_repo(fake_hub, lfs_size=1_000_000)
    path = "model.safetensors"
    content = sample.files[path]
    fake_hub.cdn_rate = 1_000_000
    sha = fake_hub.file(sample.repo_id, path, sample.revision).etag

    result: list[str] = []
    theirs = threading.Thread(target=lambda: result.append(
        hf_hub_download(sample.repo_id, path, revision=sample.revision, cache_dir=hf_env)))
    theirs.start()
    while not [r for r in fake_hub.cdn_gets() if sha in r.path]:
        await asyncio.sleep(0.01)
    items = [item async for item in download_model("huggingface", sample.repo_id, revision=sample.revision,
                                                   filename=path, retry_backoff=0.01)]
    await asyncio.to_thread(theirs.join)

    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    assert any("waiting for another download of model.safetensors" in i.message for i in items)
    assert Path(items[-1].local_path).read_bytes() == content
    assert Path(result[0]).read_bytes() == content
    assert cdn_bytes_asked(fake_hub, sha, len(content)) == len(content)


def cdn_bytes_asked(hub, sha: str, size: int) -> int:
    """Body bytes the CDN was asked for `sha` (whole file without Range, else the range)."""
    total = 0
    for request in hub.cdn_gets():
        if sha not in request.path:
            continue
        spec = request.headers.get("range")
        if not spec:
            total += size
            continue
        first, _, last = spec.removeprefix("bytes=").partition("-")
        total += min(int(last) if last else size - 1, size - 1) - int(first) + 1
    return total


# ---- one server per models dir ---------------------------------------------------------------

def test_a_second_server_on_one_models_dir_refuses_to_start(tmp_path):
    home = tmp_path / "models"
    env = cli_env(home)
    command = [sys.executable, "-m", "modelpull", "serve", "--port", "0", "--models-dir", str(home),
               "--log-format", "text"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "listening on" in line:
                break
        else:
            pytest.fail("the first server did not start")
        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first, timeout=15)

    assert second.returncode == 1
    assert f"pid {first.pid}" in second.stderr
    assert str(home) in second.stderr
    assert "PostgreSQL" in second.stderr
    assert "Traceback" not in second.stderr

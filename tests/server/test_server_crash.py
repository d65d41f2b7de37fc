"""A server process killed with SIGKILL mid-download: restarted, it finishes the job, verified."""
from __future__ import annotations

import time

from server_helpers import file_sha256, random_bytes, sha256


def test_sigkill_mid_download_then_restart_finishes_with_the_right_sha256(spawn_server, file_server, tmp_path):
    data = random_bytes(3_000_000, seed=50)
    url = file_server.add_file("/crash/model.gguf", data, throttle_bps=600_000)
    models = tmp_path / "models"
    args = ["--models-dir", str(models), "--database", str(tmp_path / "state.db"), "--allow-private-urls",
            "--log-format", "json"]

    first = spawn_server(*args)
    job_id = first.client.post("/downloads", json={"model": url, "options": {"sha256": sha256(data)}}).json()["id"]
    deadline = time.monotonic() + 30
    while (first.client.get(f"/downloads/{job_id}").json()["downloaded_bytes"] or 0) < 1_200_000:
        assert time.monotonic() < deadline, "the download never got going"
        time.sleep(0.05)
    time.sleep(1.1)  # let the store's once-a-second progress write happen (not needed to resume)
    first.kill()
    assert not (models / "model.gguf").exists()

    second = spawn_server(*args)
    deadline = time.monotonic() + 60
    while (job := second.client.get(f"/downloads/{job_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"never finished after the restart: {job}"
        time.sleep(0.05)
    assert job["status"] == "completed", job
    assert job["downloaded_bytes"] == job["total_bytes"] == len(data)
    assert file_sha256(models / "model.gguf") == sha256(data)
    gets = file_server.requests_for("/crash/model.gguf", "GET")
    assert len(gets) >= 2
    resumed_from = gets[-1].range_start or 0
    assert resumed_from > 0, [g.range for g in gets]  # continued from the partial data
    assert sum(g.bytes_sent for g in gets) < 2 * len(data)
    second.stop()
    log = (tmp_path / "server-1.log").read_text()
    assert "resuming unfinished downloads" in log

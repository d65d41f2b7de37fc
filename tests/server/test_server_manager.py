"""The download manager through the API: limits, sharing, persistence, retention, many jobs."""
from __future__ import annotations

import time

from server_helpers import assert_error, file_sha256, make_gguf, random_bytes, sha256

SLOW = 150_000


def test_active_jobs_are_limited_and_the_rest_queue(start_server, file_server):
    server = start_server(max_active_jobs=1)
    urls = [file_server.add_file(f"/q{i}.bin", random_bytes(400_000, seed=i), throttle_bps=SLOW) for i in range(3)]
    ids = [server.submit(u)["id"] for u in urls]
    server.wait_bytes(ids[0])
    statuses = [server.job(i)["status"] for i in ids]
    assert statuses == ["downloading", "queued", "queued"]
    assert server.job(ids[2])["message"].startswith("Queued")
    listing = server.client.get("/downloads").json()
    assert listing["summary"]["queued"] == 2 and listing["summary"]["downloading"] == 1
    # Cancelling the running one lets the next start.
    server.client.delete(f"/downloads/{ids[0]}")
    server.wait_bytes(ids[1])
    assert server.job(ids[2])["status"] == "queued"
    # A queued job can be paused (it leaves the queue) and resumed.
    assert server.client.post(f"/downloads/{ids[2]}/pause").status_code == 200
    assert server.job(ids[2])["status"] == "paused"
    assert server.client.post(f"/downloads/{ids[2]}/resume").status_code == 200
    assert server.job(ids[2])["status"] == "queued"
    server.client.post("/downloads/cancel")


def test_the_same_source_twice_is_fetched_once_and_both_ids_follow_it(server, file_server):
    data = random_bytes(700_000, seed=21)
    url = file_server.add_file("/shared.gguf", data, throttle_bps=350_000)
    first = server.submit(url)["id"]
    server.wait_bytes(first)
    second = server.client.post("/engines", json={"engine_id": "also", "model_path": url})
    assert second.status_code == 202
    both = [server.job(first), server.job("also")]
    assert both[0]["shared_with"] == ["also"] and both[1]["shared_with"] == [first]
    assert both[1]["downloaded_bytes"] > 0  # it joined mid-way, not from zero
    done = [server.wait_status(i, "completed", "failed") for i in (first, "also")]
    assert [d["status"] for d in done] == ["completed", "completed"]
    assert done[0]["local_path"] == done[1]["local_path"]
    assert len(file_server.requests_for("/shared.gguf", "GET")) == 1
    assert file_sha256(server.settings.home / "shared.gguf") == sha256(data)
    assert server.client.get("/engines/also").json()["status"] == "failed"  # random bytes: not a model
    assert done[1]["shared_with"] == []


def test_cancelling_one_follower_keeps_the_transfer_for_the_other(server, file_server):
    data = random_bytes(600_000, seed=22)
    url = file_server.add_file("/pair.bin", data, throttle_bps=300_000)
    a = server.submit(url)["id"]
    b = server.submit(url)["id"]
    server.wait_bytes(a)
    assert server.client.delete(f"/downloads/{a}").json()["previous_status"] == "downloading"
    assert server.job(a)["status"] == "cancelled"
    assert server.wait_status(b, "completed", "failed")["status"] == "completed"
    assert file_sha256(server.settings.home / "pair.bin") == sha256(data)


def test_pause_answers_at_once_and_other_calls_are_not_blocked(server, file_server):
    urls = [file_server.add_file(f"/p{i}.bin", random_bytes(500_000, seed=30 + i), throttle_bps=SLOW)
            for i in range(2)]
    a, b = (server.submit(u)["id"] for u in urls)
    server.wait_bytes(a)
    server.wait_bytes(b)
    assert server.client.post(f"/downloads/{a}/pause").status_code == 200
    # Right after: the other job and the listing still answer, and the paused job says paused.
    assert server.job(b)["status"] == "downloading"
    assert server.client.get("/downloads").status_code == 200
    assert server.job(a)["status"] == "paused"
    server.client.post("/downloads/cancel")


def test_unfinished_jobs_resume_after_a_restart(start_server, file_server, server_settings, tmp_path):
    data = random_bytes(1_200_000, seed=40)
    url = file_server.add_file("/restart.bin", data, throttle_bps=300_000)
    first = start_server()
    model = make_gguf(tmp_path / "kept.gguf")
    assert first.client.post("/engines", json={"engine_id": "kept", "model_path": str(model)}).status_code == 201
    job_id = first.submit(url, options={"sha256": sha256(data)})["id"]
    queued = first.submit(file_server.add_file("/later.bin", b"L" * 5000))["id"]
    paused_url = file_server.add_file("/paused.bin", random_bytes(300_000, seed=41), throttle_bps=SLOW)
    paused = first.submit(paused_url)["id"]
    first.wait_bytes(paused)
    first.client.post(f"/downloads/{paused}/pause")
    first.wait_bytes(job_id, 200_000)
    first.stop()  # a clean stop: the transfer stops, its partial data stays

    second = start_server()
    assert second.job(paused)["status"] == "paused"  # a paused job stays paused
    assert second.client.get("/engines/kept").json()["model_info"]["format"] == "gguf"  # engines too
    done = second.wait_status(job_id, "completed", "failed", timeout=60)
    assert done["status"] == "completed", done
    assert file_sha256(second.settings.home / "restart.bin") == sha256(data)
    ranges = [r.range_start for r in file_server.requests_for("/restart.bin", "GET")]
    assert len(ranges) >= 2 and ranges[-1] and ranges[-1] > 0, ranges  # continued, not restarted
    assert second.wait_status(queued, "completed")["status"] == "completed"


def test_finished_jobs_are_pruned_after_the_retention_time(start_server, file_server):
    server = start_server(retention_seconds=0.5)
    job_id = server.submit(file_server.add_file("/r.bin", b"r" * 100))["id"]
    server.wait_status(job_id, "completed")
    deadline = time.monotonic() + 20
    while server.client.get(f"/downloads/{job_id}").status_code != 404:
        assert time.monotonic() < deadline, "never pruned"
        time.sleep(0.05)
    assert_error(server.client.get(f"/download-progress/{job_id}"), 404)


def test_two_hundred_queued_jobs(start_server, file_server):
    server = start_server(max_active_jobs=3)
    urls = [file_server.add_file(f"/many/{i}.bin", random_bytes(2_000, seed=i)) for i in range(200)]
    ids = [server.submit(u)["id"] for u in urls]
    assert len(set(ids)) == 200
    listing = server.client.get("/downloads")
    assert listing.status_code == 200
    deadline = time.monotonic() + 90
    while server.client.get("/downloads").json()["total_active"]:
        assert time.monotonic() < deadline, "jobs never finished"
        assert server.manager.running_transfers <= 3
        time.sleep(0.1)
    for i, job_id in enumerate(ids):
        job = server.job(job_id)
        assert job["status"] == "completed", job
        assert (server.settings.home / f"{i}.bin").read_bytes() == random_bytes(2_000, seed=i)
    metrics = server.client.get("/metrics").text
    assert 'modelpull_jobs{status="completed"} 200' in metrics
    assert "modelpull_jobs_completed_total 200" in metrics

"""What the web page reads from the job JSON: places in line, per-file progress, absolute paths,
Cancel keeping or deleting the partial data, and dismissing a finished job."""
from __future__ import annotations


import pytest

from server_helpers import assert_error, random_bytes
from polling import eventually

pytestmark = pytest.mark.timeout(90)

SLOW = 150_000



def test_queued_jobs_say_their_place_in_line_and_move_up(start_server, file_server):
    server = start_server(max_active_jobs=1)
    urls = [file_server.add_file(f"/line{i}.bin", random_bytes(300_000, seed=i), throttle_bps=SLOW) for i in range(4)]
    ids = [server.submit(u)["id"] for u in urls]
    jobs = [server.job(i) for i in ids]
    assert [j["queue_position"] for j in jobs] == [None, 1, 2, 3]
    assert jobs[3]["message"] == "Queued: 3rd in line"
    assert jobs[0]["started_at"] is not None and jobs[3]["started_at"] is None

    server.client.post(f"/downloads/{ids[0]}/cancel")

    moved = server.wait(ids[3], lambda job: job["queue_position"] == 2)
    assert moved["message"] == "Queued: 2nd in line"
    assert server.job(ids[1])["queue_position"] is None
    server.client.post("/downloads/cancel")


def test_paths_are_absolute_even_with_a_relative_models_dir(start_server, file_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = start_server(home="relative-models")
    url = file_server.add_file("/where.bin", b"w" * 1000)
    job = server.submit(url)
    assert job["local_path"] == str(tmp_path / "relative-models" / "where.bin")
    done = server.wait_status(job["id"], "completed", "failed")
    assert done["local_path"] == str(tmp_path / "relative-models" / "where.bin")


def test_cancel_deletes_the_partial_data_unless_asked_to_keep_it(server, file_server):
    kept_url = file_server.add_file("/kept.bin", random_bytes(2_000_000, seed=5), throttle_bps=SLOW)
    gone_url = file_server.add_file("/gone.bin", random_bytes(2_000_000, seed=6), throttle_bps=SLOW)
    kept = server.submit(kept_url)["id"]
    gone = server.submit(gone_url)["id"]
    server.wait_bytes(kept)
    server.wait_bytes(gone)

    answer = server.client.post(f"/downloads/{kept}/cancel", params={"keep_partial": "true"})
    assert answer.status_code == 200 and answer.json()["previous_status"] == "downloading"
    assert server.client.delete(f"/downloads/{gone}").status_code == 200

    assert "partial data kept" in server.job(kept)["message"]
    assert "partial data deleted" in server.job(gone)["message"]
    home = server.settings.home
    assert eventually(lambda: not list(home.glob("gone.bin*")))
    assert eventually(lambda: not server.manager.running_transfers)
    assert (home / "kept.bin.part").stat().st_size > 0
    # The kept bytes are reused: the same URL again resumes instead of starting over.
    again = server.submit(kept_url)["id"]
    done = server.wait_status(again, "completed", "failed")
    assert done["status"] == "completed"
    ranges = [r.headers.get("Range") for r in file_server.requests_for("/kept.bin", "GET")]
    assert any(r and not r.startswith("bytes=0-") for r in ranges[1:]), ranges


def test_a_finished_job_can_be_dismissed_but_a_running_one_cannot(server, file_server):
    slow = server.submit(file_server.add_file("/busy.bin", random_bytes(1_000_000, seed=7), throttle_bps=SLOW))["id"]
    done = server.submit(file_server.add_file("/done.bin", b"d" * 1000))["id"]
    server.wait_status(done, "completed")

    assert_error(server.client.post(f"/downloads/{slow}/dismiss"), 400, code="download_not_finished")
    answer = server.client.post(f"/downloads/{done}/dismiss")
    assert answer.status_code == 200, answer.text

    assert_error(server.client.get(f"/downloads/{done}"), 404)
    assert (server.settings.home / "done.bin").is_file()  # dismissing never deletes files
    server.client.post("/downloads/cancel")


def test_a_multi_file_job_lists_each_file_with_its_bytes(fake_hub, hf_env, start_server):
    files = {"config.json": b"{}", "a.safetensors": b"a" * 300_000, "b.safetensors": b"b" * 200_000}
    fake_hub.add_repo("org/several", files)
    server = start_server()
    job = server.submit("hf:org/several")
    done = server.wait_status(job["id"], "completed", "failed")
    assert done["status"] == "completed", done
    listed = {f["name"]: f for f in done["files"]}
    assert set(listed) == set(files)
    for name, data in files.items():
        assert listed[name]["total_bytes"] == len(data) == listed[name]["downloaded_bytes"]
        assert listed[name]["status"] == "complete"


def test_serve_tells_a_person_where_the_page_and_the_api_docs_are(spawn_server, tmp_path):
    models = tmp_path / "served-models"
    server = spawn_server("--models-dir", str(models))

    assert eventually(lambda: "Press Ctrl-C to stop." in server.log_path.read_text())
    lines = server.log_path.read_text().splitlines()
    banner = lines[lines.index(next(line for line in lines if line.startswith("modelpull "))):]
    assert banner[0].startswith("modelpull ") and banner[0].endswith(f"is serving on {server.url}")
    assert banner[1] == f"  web page:  {server.url}/"
    assert banner[2] == f"  API docs:  {server.url}/docs"
    assert banner[3] == f"  models in: {models}"
    assert server.client.get("/").status_code == 200
    assert server.client.get("/docs").status_code == 200


@pytest.mark.parametrize("keep", [False, True])
def test_cancelling_a_paused_hub_download_honours_keep_or_delete(fake_hub, hf_env, start_server, keep):
    fake_hub.add_repo("org/paused", {"config.json": b"{}", "model.safetensors": random_bytes(1_500_000, seed=9)})
    fake_hub.cdn_rate = 150_000
    server = start_server()
    job = server.submit("hf:org/paused")["id"]
    server.wait_bytes(job, 100_000)
    assert server.client.post(f"/downloads/{job}/pause").status_code == 200
    blobs = server.settings.home / "huggingface" / "hub" / "models--org--paused" / "blobs"
    assert eventually(lambda: not server.manager.running_transfers and list(blobs.glob("*.part")))

    answer = server.client.post(f"/downloads/{job}/cancel", params={"keep_partial": str(keep).lower()})

    assert answer.status_code == 200 and answer.json()["previous_status"] == "paused"
    assert bool(list(blobs.glob("*.part"))) is keep

"""/local-models: list, show, delete (409 while in use) and verify jobs, over real HTTP."""
from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

import httpx

from server_helpers import assert_error, gguf_bytes, random_bytes, sse_events


def pull(server, url: str) -> dict:
    job = server.submit(url)
    return server.wait_status(job["id"], "completed")


def test_list_and_show_a_downloaded_file(server, file_server, tmp_path):
    data = gguf_bytes(tmp_path, arch="qwen2", context_length=32768)
    pull(server, file_server.add_file("/tiny.gguf", data))

    listing = server.client.get("/local-models").json()
    (model,) = listing["models"]
    assert model["id"] == "url:tiny.gguf" and model["size_on_disk"] == len(data)
    assert listing["totals"]["url"]["models"] == 1 and listing["disks"][0]["free"] > 0
    shown = server.client.get(f"/local-models/{quote(model['id'], safe='')}").json()
    assert shown["files"][0]["size"] == len(data)
    assert shown["formats"][0]["architecture"] == "qwen2" and shown["formats"][0]["context_length"] == 32768
    assert_error(server.client.get("/v1/local-models/url:nothing"), 404, code="local_model_not_found")


def test_delete_is_refused_with_409_while_an_engine_uses_the_file_then_works(server, file_server, tmp_path):
    data = gguf_bytes(tmp_path)
    url = file_server.add_file("/chat.gguf", data)
    response = server.client.post("/engines", json={"engine_id": "chat", "model_path": url})
    assert response.status_code == 202, response.text
    server.wait_status("chat", "completed")

    refused = server.client.delete("/local-models/url:chat.gguf")

    error = assert_error(refused, 409, code="model_in_use")
    assert "engine 'chat'" in error["message"]
    assert (server.settings.home / "chat.gguf").is_file()
    assert server.client.delete("/engines/chat").status_code == 200
    removed = server.client.delete("/local-models/url:chat.gguf")
    assert removed.status_code == 200 and removed.json()["freed_bytes"] >= len(data) - 4096
    assert server.client.get("/local-models").json()["models"] == []


def test_delete_is_refused_while_the_download_runs(server, file_server):
    url = file_server.add_file("/slow.bin", random_bytes(2_000_000), throttle_bps=200_000)
    job = server.submit(url)
    server.wait_bytes(job["id"])

    listing = server.client.get("/local-models").json()
    (partial,) = [m for m in listing["models"] if m["status"] == "partial"]
    assert partial["id"] == "partial:url:slow.bin"
    assert_error(server.client.delete(f"/local-models/{partial['id']}"), 409, code="model_in_use")
    server.client.post(f"/downloads/{job['id']}/cancel")


def test_a_verify_job_reports_progress_on_the_event_streams_and_finds_a_flipped_byte(server, file_server):
    data = random_bytes(3_000_000)
    url = file_server.add_file("/w.bin", data)
    job = server.submit(url, options={"sha256": hashlib.sha256(data).hexdigest()})
    server.wait_status(job["id"], "completed")
    path = server.settings.home / "w.bin"
    with open(path, "r+b") as handle:
        handle.seek(5)
        handle.write(b"\xff" if data[5] != 0xFF else b"\x00")

    with httpx.stream("GET", server.url + "/events", timeout=20) as feed:
        started = server.client.post("/local-models/url:w.bin/verify")
        assert started.status_code == 202
        job = started.json()
        verify_events = []
        for line in feed.iter_lines():
            if line.startswith("data: ") and '"checked_bytes"' in line:
                verify_events.append(json.loads(line[6:]))
                if verify_events[-1]["status"] == "completed":
                    break
    final = verify_events[-1]
    assert final["id"] == job["id"] and final["percent"] == 100.0
    assert final["results"][0]["status"] == "corrupt" and "w.bin" in final["message"]
    assert any(0 < e["percent"] < 100 for e in verify_events) or len(verify_events) >= 2
    assert server.client.get(f"/local-models/verifications/{job['id']}").json()["status"] == "completed"
    own = server.client.get(f"/local-models/verifications/{job['id']}/events").text
    last = sse_events(own)[-1]
    assert last["event"] == "verify" and json.loads(last["data"])["status"] == "completed"

"""Jobs and their streams: POST /downloads, SSE with Last-Event-ID, AbstractCore's routes, /events."""
from __future__ import annotations

import json

import httpx
import httpx_sse
import pytest

from server_helpers import assert_error, file_sha256, gguf_bytes, random_bytes, sha256, sse_events

JOB_KEYS = {
    "id", "provider", "model", "options", "status", "message", "percent", "downloaded_bytes", "total_bytes",
    "speed_bps", "eta_seconds", "files_completed", "files_total", "current_file", "files", "queue_position", "local_path", "error_code",
    "error_message", "engine_id", "shared_with", "created_at", "started_at", "finished_at", "updated_at", "event_id",
}
SLOW = 150_000


def test_post_downloads_runs_a_job_to_a_verified_file(server, file_server):
    data = random_bytes(300_000, seed=7)
    url = file_server.add_file("/files/tiny.gguf", data)
    response = server.client.post("/downloads", json={"provider": "url", "model": url,
                                                      "options": {"sha256": sha256(data), "connections": 2}})
    assert response.status_code == 202
    job = response.json()
    assert set(job) == JOB_KEYS
    assert response.headers["location"] == f"/downloads/{job['id']}"
    assert job["id"].startswith("dl-") and job["provider"] == "url" and job["model"] == url
    assert job["status"] in ("queued", "downloading")
    done = server.wait_status(job["id"], "completed", "failed")
    assert done["status"] == "completed", done
    assert done["percent"] == 100.0 and done["downloaded_bytes"] == done["total_bytes"] == len(data)
    assert done["local_path"] == str(server.settings.home / "tiny.gguf")
    assert file_sha256(server.settings.home / "tiny.gguf") == sha256(data)
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert done["error_code"] is None and done["error_message"] is None


def test_a_reference_without_provider_and_a_chosen_id(server, file_server):
    url = file_server.add_file("/ref.bin", b"r" * 1000)
    job = server.submit(f"url:{url}", id="mine.v1:a")
    assert job["id"] == "mine.v1:a" and job["provider"] == "url"
    server.wait_status("mine.v1:a", "completed")
    # A finished id may be used again; a running one may not.
    slow = file_server.add_file("/ref-slow.bin", random_bytes(1_000_000), throttle_bps=SLOW)
    server.submit(slow, id="mine.v1:a")
    assert_error(server.client.post("/downloads", json={"model": slow, "id": "mine.v1:a"}), 409, "id",
                 "download_id_exists")
    server.client.delete("/downloads/mine.v1:a")


def test_dest_inside_the_models_dir_and_refusals(server, file_server):
    url = file_server.add_file("/d.bin", b"d" * 500)
    job = server.submit(url, options={"dest": "sub/dir"})
    done = server.wait_status(job["id"], "completed")
    assert done["local_path"] == str(server.settings.home / "sub" / "dir" / "d.bin")
    assert (server.settings.home / "sub" / "dir" / "d.bin").read_bytes() == b"d" * 500
    post = server.client.post
    assert_error(post("/downloads", json={"model": url, "options": {"dest": "../outside"}}), 400,
                 "options.dest", "invalid_destination")
    assert_error(post("/downloads", json={"model": url, "options": {"dest": "/etc"}}), 400, "options.dest")
    assert_error(post("/downloads", json={"model": url, "options": {"models_dir": "/tmp"}}), 400,
                 "options.models_dir")
    assert_error(post("/downloads", json={"model": url, "options": {"bogus": 1}}), 400, "options.bogus",
                 "unknown_option")
    assert_error(post("/downloads", json={"provider": "lmstudio", "model": "x"}), 400, "provider",
                 "unsupported_provider")
    assert_error(post("/downloads", json={"provider": "url"}), 400, "model")
    assert_error(post("/downloads", json={"model": "not a reference"}), 400, "provider")
    assert_error(post("/downloads", json={"model": url, "options": []}), 400, "options")
    assert_error(post("/downloads", json={"model": url, "surprise": True}), 400, "surprise", "unknown_field")
    assert_error(post("/downloads", json={"model": url, "id": "bad id"}), 400, "id")
    assert_error(post("/downloads", json={"model": "http://169.254.169.254/latest/x"}), 422, "model",
                 "url_not_allowed")
    assert_error(server.client.get("/downloads/unknown"), 404)
    assert_error(server.client.get("/downloads/b@d"), 400)


def test_job_events_over_sse_with_a_reconnect_using_last_event_id(server, file_server):
    data = random_bytes(800_000, seed=11)
    url = file_server.add_file("/sse.bin", data, throttle_bps=400_000)
    job_id = server.submit(url, options={"sha256": sha256(data)})["id"]

    seen: list[httpx_sse.ServerSentEvent] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with httpx_sse.connect_sse(client, "GET", f"/downloads/{job_id}/events") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for event in source.iter_sse():
                seen.append(event)
                if json.loads(event.data)["downloaded_bytes"]:
                    break  # drop the connection mid-download
        assert seen, "no event before the disconnect"
        last_id = seen[-1].id
        assert json.loads(seen[-1].data)["status"] == "downloading"

        resumed: list[httpx_sse.ServerSentEvent] = []
        with httpx_sse.connect_sse(client, "GET", f"/downloads/{job_id}/events",
                                   headers={"Last-Event-ID": last_id}) as source:
            for event in source.iter_sse():
                resumed.append(event)
        # The stream ended by itself at the final state.
        final = json.loads(resumed[-1].data)
        assert final["status"] == "completed" and final["percent"] == 100.0
        ids = [int(e.id) for e in seen + resumed]
        assert ids == sorted(set(ids)), "event ids strictly increase, none repeated across the reconnect"
        assert int(resumed[0].id) > int(last_id)
        for event in seen + resumed:
            assert event.event == "message"
            assert set(json.loads(event.data)) == JOB_KEYS
        # Reconnecting after the end: 204, which tells an EventSource to stop.
        after = client.get(f"/downloads/{job_id}/events", headers={"Last-Event-ID": resumed[-1].id})
        assert after.status_code == 204
        # A new client (no Last-Event-ID) gets the final state and the end of the stream.
        fresh = sse_events(client.get(f"/downloads/{job_id}/events").text)
        assert [json.loads(e["data"])["status"] for e in fresh] == ["completed"]
    assert file_sha256(server.settings.home / "sse.bin") == sha256(data)


def test_abstractcore_eventsource_route(server, file_server):
    data = random_bytes(200_000, seed=5)
    url = file_server.add_file("/ac.bin", data)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with httpx_sse.connect_sse(client, "GET", "/api/models/download",
                                   params={"provider": "url", "model": url}) as source:
            job_id = source.response.headers["x-download-id"]
            items = [json.loads(e.data) for e in source.iter_sse()]
    assert items[-1] == {"done": True}
    progress = items[:-1]
    for item in progress:
        assert set(item) == {"status", "message", "percent", "downloaded_bytes", "total_bytes"}
    assert progress[-1]["status"] == "complete" and progress[-1]["percent"] == 100.0
    assert progress[-1]["downloaded_bytes"] == progress[-1]["total_bytes"] == len(data)
    assert {p["status"] for p in progress} <= {"queued", "starting", "downloading", "verifying", "complete"}
    assert server.job(job_id)["status"] == "completed"


def test_abstractcore_stream_reports_errors_as_data(server, file_server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        body = client.get("/api/models/download", params={"provider": "lmstudio", "model": "x"})
        assert body.status_code == 200
        [only] = [json.loads(e["data"]) for e in sse_events(body.text)]
        assert set(only) == {"error"} and "does not support model downloads" in only["error"]

        missing = file_server.add_file("/missing.bin", b"x")
        file_server.add_fault("/missing.bin", "status", times=10, methods=("GET", "HEAD"), code=404)
        text = client.post("/api/models/pull", json={"provider": "url", "model": missing}).text
        items = [json.loads(e["data"]) for e in sse_events(text)]
        assert items[-2]["status"] == "error"
        assert set(items[-1]) == {"error"} and items[-1]["error"]
    assert_error(server.client.post("/api/models/pull", json={"provider": "url"}), 400, "model")
    # The EventSource route: a missing model is an error event, not a JSON 400.
    refused = server.client.get("/api/models/download", params={"provider": "url"})
    assert refused.headers["content-type"].startswith("text/event-stream")
    [event] = sse_events(refused.text)
    assert json.loads(event["data"]) == {"error": "'model' is required and must be a non-empty string"}
    assert event["id"] == "refused/end"


def test_a_closed_stream_does_not_stop_the_download(server, file_server):
    data = random_bytes(600_000, seed=9)
    url = file_server.add_file("/keep.bin", data, throttle_bps=300_000)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/api/models/pull",
                           json={"provider": "url", "model": url, "auth_token": "tok-abcdef-123456"}) as response:
            job_id = response.headers["x-download-id"]
            for line in response.iter_lines():
                if line.startswith("data:") and json.loads(line[5:])["downloaded_bytes"]:
                    break  # the browser tab closes here
    done = server.wait_status(job_id, "completed", "failed")
    assert done["status"] == "completed"
    assert file_sha256(server.settings.home / "keep.bin") == sha256(data)
    # The token went to the file server, and nowhere back to us.
    assert file_server.requests_for("/keep.bin", "GET")[0].headers.get("Authorization") == "Bearer tok-abcdef-123456"
    assert "tok-abcdef-123456" not in json.dumps(server.job(job_id))


def test_the_events_feed_snapshot_then_changes(start_server, file_server, tmp_path):
    # Retention long enough for the stream to open before the first job is pruned, even on a
    # loaded machine; the stream is read until both the prune and the engine's load arrived
    # (in whichever order: the load may take longer than the retention).
    server = start_server(retention_seconds=2.0)
    first = server.submit(file_server.add_file("/e1.bin", b"1" * 1000))
    server.wait_status(first["id"], "completed")
    url = file_server.add_file("/e2.gguf", gguf_bytes(tmp_path))
    events: list[httpx_sse.ServerSentEvent] = []
    removed = loaded = False
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with httpx_sse.connect_sse(client, "GET", "/events") as source:
            for event in source.iter_sse():
                events.append(event)
                if event.event == "ready":
                    assert server.client.post("/engines", json={"engine_id": "feed", "model_path": url}).status_code == 202
                if event.event == "job-removed" and json.loads(event.data)["id"] == first["id"]:
                    removed = True
                if event.event == "engine" and json.loads(event.data)["status"] == "loaded":
                    loaded = True
                if removed and loaded:
                    break
    kinds = [e.event for e in events]
    ready = kinds.index("ready")
    snapshot = [json.loads(e.data) for e in events[:ready]]
    assert [j["id"] for j in snapshot] == [first["id"]] and snapshot[0]["status"] == "completed"
    assert json.loads(events[ready].data) == {"jobs": 1, "engines": 0}
    later = events[ready + 1:]
    feed_states = [json.loads(e.data)["status"] for e in later if e.event == "job" and json.loads(e.data)["id"] == "feed"]
    assert feed_states[0] == "queued" and "completed" in feed_states
    engine_events = [json.loads(e.data) for e in later if e.event == "engine"]
    assert engine_events and engine_events[-1]["engine_id"] == "feed" and engine_events[-1]["status"] == "loaded"
    ids = [int(e.id) for e in events if e.id]
    assert ids == sorted(ids)
    # The retention prune removed the first job: gone from the API too.
    assert_error(server.client.get(f"/downloads/{first['id']}"), 404)


def test_engine_removal_is_an_event(server, tmp_path):
    from server_helpers import make_gguf

    path = make_gguf(tmp_path / "gone.gguf")
    assert server.client.post("/engines", json={"engine_id": "bye", "model_path": str(path)}).status_code == 201
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with httpx_sse.connect_sse(client, "GET", "/v1/events") as source:
            for event in source.iter_sse():
                if event.event == "ready":
                    assert json.loads(event.data) == {"jobs": 0, "engines": 1}
                    server.client.delete("/engines/bye")
                if event.event == "engine-removed":
                    assert json.loads(event.data) == {"engine_id": "bye"}
                    break


@pytest.mark.parametrize("provider", ["huggingface", "mlx", "ollama"])
def test_provider_references_are_accepted_when_the_provider_is_installed(shared_server, provider):
    """Beyond Kolosal: model_path may be a provider reference; a malformed one is a 422."""
    from modelpull.providers import get_provider

    try:
        get_provider(provider)
    except ValueError:
        pytest.skip(f"provider {provider} has not landed")
    prefix = {"huggingface": "hf"}.get(provider, provider)
    bad = shared_server.client.post("/engines", json={"engine_id": "ref", "model_path": f"{prefix}:bad name/x y/z"})
    assert_error(bad, 422, "model_path")


def test_abstractcore_reconnect_follows_the_same_job(server, file_server):
    """An EventSource reconnects with Last-Event-ID: the same job, never a new one; after the
    closing frame, 204 (the EventSource stops)."""
    data = random_bytes(400_000, seed=11)
    url = file_server.add_file("/resume-ac.bin", data, throttle_bps=400_000)
    params = {"provider": "url", "model": url}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("GET", "/api/models/download", params=params) as first:
            job_id = first.headers["x-download-id"]
            lines = first.iter_lines()
            assert next(lines) == "retry: 3000"
            last_id = next(line for line in lines if line.startswith("id: "))[4:]
        assert last_id.startswith(f"{job_id}/")
        again = client.get("/api/models/download", params=params, headers={"Last-Event-ID": last_id})
        assert again.headers["x-download-id"] == job_id
        events = sse_events(again.text)
        assert all(e["id"] and e["id"].startswith(f"{job_id}/") for e in events)
        assert events[-1]["id"] == f"{job_id}/end" and json.loads(events[-1]["data"]) == {"done": True}
        assert len(server.client.get("/downloads").json()["active_downloads"]) == 0
        assert [j for j in server.manager.jobs] == [job_id]  # no second job
        # The client saw the end: the reconnect is told to stop.
        assert client.get("/api/models/download", params=params,
                          headers={"Last-Event-ID": f"{job_id}/end"}).status_code == 204
        assert client.post("/api/models/pull", json=params,
                           headers={"Last-Event-ID": f"{job_id}/end"}).status_code == 204
    assert file_sha256(server.settings.home / "resume-ac.bin") == sha256(data)

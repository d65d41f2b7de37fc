"""Kolosal's download API, through real HTTP: the seed's shapes field for field, every status code."""
from __future__ import annotations

import time

import pytest

from server_helpers import assert_error, gguf_bytes, make_gguf, random_bytes, safetensors_bytes

SLOW = 200_000  # bytes per second: keeps a 1-2 MB download in flight while a test acts on it

PROGRESS_KEYS = {"downloaded_bytes", "total_bytes", "percentage", "download_speed_bps"}
STARTED_KEYS = {"message", "engine_id", "download_status", "download_url", "local_path", "progress_endpoint", "note"}


def _check_progress_shape(body: dict, *, engine: bool) -> None:
    """The seed's `GET /download-progress/{id}` shape, with its types."""
    expected = {"model_id", "status", "url", "local_path", "progress", "timing"}
    if engine and body["status"] not in ("completed", "failed", "cancelled"):
        expected.add("engine_creation")
    if body["status"] == "failed":
        expected.add("error_message")
    assert set(body) == expected, body
    assert set(body["progress"]) == PROGRESS_KEYS
    assert isinstance(body["progress"]["downloaded_bytes"], int)
    assert isinstance(body["progress"]["total_bytes"], int)
    assert isinstance(body["progress"]["percentage"], float)
    assert isinstance(body["progress"]["download_speed_bps"], int)
    timing = body["timing"]
    assert isinstance(timing["start_time"], int) and timing["start_time"] > 1_600_000_000_000  # ms
    assert isinstance(timing["elapsed_seconds"], int)
    assert set(timing) <= {"start_time", "elapsed_seconds", "estimated_remaining_seconds", "end_time"}
    # Always there (the seed's clients read it): null until known, 0 once completed.
    remaining = timing["estimated_remaining_seconds"]
    if body["status"] == "completed":
        assert remaining == 0
    elif body["status"] in ("queued", "paused", "failed", "cancelled"):
        assert remaining is None
    else:
        assert remaining is None or isinstance(remaining, int)
    if body["status"] in ("completed", "failed", "cancelled"):
        assert isinstance(timing["end_time"], int) and timing["end_time"] >= timing["start_time"]
    else:
        assert "end_time" not in timing


def test_post_engines_with_a_url_answers_202_then_creates_the_engine(server, file_server, tmp_path):
    data = gguf_bytes(tmp_path, arch="qwen2", context_length=32768)
    url = file_server.add_file("/models/qwen-tiny.gguf", data)

    response = server.client.post("/engines", json={"engine_id": "my-model", "model_path": url,
                                                     "load_immediately": True})
    assert response.status_code == 202, response.text
    body = response.json()
    # The seed's "Response for Started Download", key for key.
    assert set(body) == STARTED_KEYS
    assert body["message"] == ("Model download started successfully. Engine will be created once download "
                               "completes.")
    assert body["engine_id"] == "my-model"
    assert body["download_status"] == "started"
    assert body["download_url"] == url
    assert body["local_path"] == str(server.settings.home / "qwen-tiny.gguf")
    assert body["progress_endpoint"] == "/download-progress/my-model"
    assert body["note"] == ("Check download progress using the progress_endpoint. Engine creation will be "
                            "deferred until download completes.")

    done = server.wait_status("my-model", "completed")
    assert "engine 'my-model' created" in done["message"]
    progress = server.client.get(body["progress_endpoint"]).json()
    _check_progress_shape(progress, engine=True)
    assert progress["model_id"] == "my-model"
    assert progress["url"] == url
    assert progress["progress"] == {"downloaded_bytes": len(data), "total_bytes": len(data),
                                    "percentage": 100.0, "download_speed_bps": 0}

    engine = server.client.get("/engines/my-model").json()
    assert engine["status"] == "loaded"
    assert engine["local_path"] == body["local_path"]
    assert engine["download_id"] == "my-model"
    info = engine["model_info"]
    assert info["format"] == "gguf"
    assert info["architecture"] == "qwen2"
    assert info["context_length"] == 32768
    assert info["quantization"] == "Q4_K_M"
    assert info["parameter_count"] == 16 * 8 + 4 * 8
    assert engine["loading_parameters"]["n_ctx"] == 4096
    listing = server.client.get("/engines").json()
    assert listing["total_count"] == 1 and listing["engines"][0]["engine_id"] == "my-model"


def test_download_progress_while_downloading_has_the_seed_shape_and_engine_creation(server, file_server):
    url = file_server.add_file("/slow/model.gguf", random_bytes(2_000_000), throttle_bps=SLOW)
    assert server.client.post("/engines", json={"engine_id": "slow-engine", "model_path": url,
                                                "main_gpu_id": 1}).status_code == 202
    server.wait_bytes("slow-engine")
    body = server.client.get("/download-progress/slow-engine").json()
    _check_progress_shape(body, engine=True)
    assert body["status"] == "downloading"
    assert body["engine_creation"] == {"engine_id": "slow-engine", "load_immediately": True, "main_gpu_id": 1}
    assert 0 < body["progress"]["downloaded_bytes"] < 2_000_000
    assert body["progress"]["total_bytes"] == 2_000_000
    # The seed's /downloads shape, with total_active at the top level and in summary.
    listing = server.client.get("/downloads").json()
    assert set(listing) == {"active_downloads", "total_active", "summary", "timestamp"}
    assert listing["total_active"] == listing["summary"]["total_active"] == 1
    assert listing["summary"]["startup_downloads"] == 1 and listing["summary"]["regular_downloads"] == 0
    assert isinstance(listing["timestamp"], int) and listing["timestamp"] >= body["timing"]["start_time"]
    [entry] = listing["active_downloads"]
    _check_progress_shape(entry, engine=True)
    assert entry["model_id"] == "slow-engine"
    # A GET on the engine says where to look while it downloads.
    assert_error(server.client.get("/engines/slow-engine"), 404, "engine_id", "engine_pending")
    # Same id, same URL, while it downloads: 202 in_progress.
    again = server.client.post("/engines", json={"engine_id": "slow-engine", "model_path": url})
    assert again.status_code == 202
    assert again.json()["download_status"] == "in_progress"
    assert again.json()["progress_endpoint"] == "/download-progress/slow-engine"
    server.client.delete("/downloads/slow-engine")


def test_engine_with_a_file_already_on_disk_is_created_at_once_201(server, tmp_path):
    path = make_gguf(tmp_path / "local.gguf", arch="llama", context_length=4096)
    response = server.client.post("/engines", json={
        "engine_id": "local", "model_path": str(path), "load_immediately": False,
        "loading_parameters": {"n_ctx": 8192, "n_gpu_layers": 0},
    })
    assert response.status_code == 201, response.text
    body = response.json()
    assert {k: body[k] for k in ("engine_id", "model_path", "status", "load_immediately", "main_gpu_id",
                                 "message")} == {
        "engine_id": "local", "model_path": str(path), "status": "created", "load_immediately": False,
        "main_gpu_id": 0, "message": "Engine added successfully",
    }
    assert body["loading_parameters"] == {
        "n_ctx": 8192, "n_keep": 2048, "use_mlock": True, "use_mmap": True, "cont_batching": True,
        "warmup": False, "n_parallel": 1, "n_gpu_layers": 0, "n_batch": 2048, "n_ubatch": 512,
    }
    assert "download_info" not in body
    assert body["model_info"]["architecture"] == "llama"
    # The id is now taken.
    assert_error(server.client.post("/engines", json={"engine_id": "local", "model_path": str(path)}),
                 409, "engine_id", "engine_id_exists")
    # Delete by the path id, then it is gone.
    deleted = server.client.delete("/engines/local")
    assert deleted.json() == {"engine_id": "local", "status": "removed", "message": "Engine removed successfully"}
    assert_error(server.client.delete("/engines/local"), 404)
    assert_error(server.client.get("/engines/local"), 404, "engine_id", "engine_not_found")
    assert path.exists()


def test_a_url_already_downloaded_gives_201_with_download_info(server, file_server, tmp_path):
    url = file_server.add_file("/done.gguf", gguf_bytes(tmp_path))
    assert server.client.post("/engines", json={"engine_id": "first", "model_path": url}).status_code == 202
    server.wait_status("first", "completed")
    gets = len(file_server.requests_for("/done.gguf", "GET"))

    response = server.client.post("/engines", json={"engine_id": "second", "model_path": url})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["download_info"] == {"source_url": url, "local_path": str(server.settings.home / "done.gguf"),
                                     "was_downloaded": True}
    assert body["status"] == "loaded"
    assert len(file_server.requests_for("/done.gguf", "GET")) == gets  # nothing fetched again


def test_partial_data_on_disk_answers_resuming(server, file_server):
    url = file_server.add_file("/resumable.gguf", random_bytes(2_000_000), throttle_bps=SLOW)
    server.submit(url, id="plain")
    server.wait_bytes("plain")
    assert server.client.post("/downloads/plain/pause").status_code == 200
    server.wait(server.job("plain")["id"], lambda j: j["status"] == "paused")
    # Another engine for the same URL finds the partial file and resumes it.
    deadline = time.monotonic() + 10
    while server.manager.running_transfers and time.monotonic() < deadline:
        time.sleep(0.02)
    response = server.client.post("/engines", json={"engine_id": "resumer", "model_path": url})
    assert response.status_code == 202, response.text
    assert response.json()["download_status"] == "resuming"
    assert response.json()["message"].startswith("Model download resume started successfully")
    server.client.delete("/downloads/resumer")
    server.client.delete("/downloads/plain")


@pytest.mark.parametrize("model_path, code", [
    ("ftp://example.com/model.gguf", "invalid_model_url"),
    ("http://", "invalid_model_url"),
    ("https://example.com/", "invalid_model_url"),
    ("http://169.254.169.254/latest/meta-data", "url_not_allowed"),
    ("http://[fe80::1]/model.gguf", "url_not_allowed"),
    ("hf:", "invalid_model_url"),
    ("ollama:has space", "invalid_model_url"),
    ("https://exa mple.com/x.gguf", "invalid_model_url"),
    ("https://example.com/a model.gguf", "invalid_model_url"),
    ("https://exa%20mple.com/x.gguf", "invalid_model_url"),
    ("https://-bad-.example.com/x.gguf", "invalid_model_url"),
    ("https://a..b/x.gguf", "invalid_model_url"),
    ("https://example.com:99999/x.gguf", "invalid_model_url"),
    ("https:/example.com/x.gguf", "invalid_model_url"),
    ("http:///x.gguf", "invalid_model_url"),
    ("https://example.com/a\\tb.gguf", "invalid_model_url"),
])
def test_invalid_or_refused_urls_answer_422_with_a_detailed_message(shared_server, model_path, code):
    model_path = model_path.replace("\\t", "\t")
    for route, body in (("/engines", {"engine_id": "x", "model_path": model_path}),
                        ("/models", {"model_id": "x", "model_path": model_path})):
        error = assert_error(shared_server.client.post(route, json=body), 422, "model_path", code)
        assert len(error["message"]) > 20
    if model_path.startswith(("http://", "https://")):
        error = assert_error(shared_server.client.post("/downloads", json={"model": model_path}), 422, "model", code)
    # Refused before a job exists.
    assert_error(shared_server.client.get("/download-progress/x"), 404)


DASHBOARD_FORM = {  # what the Kolosal dashboard's "Add Model" posts with its form's defaults
    "model_type": "llm", "model_load": True, "model_gpu": -1, "model_context": 4096, "model_batch": 512,
    "model_layer": 0, "model_parallel": 1, "model_memory": True, "model_perform": True,
    "model_inference": "llama-cpu",
}


def _check_status(body: dict, engines: dict) -> None:
    """Kolosal's /status shape (also in /health)."""
    assert body["status"] == "healthy" and isinstance(body["timestamp"], str) and body["server"]
    loaded = sum(1 for s in engines.values() if s == "loaded")
    assert body["node_manager"] == {"total_engines": len(engines), "loaded_engines": loaded,
                                    "unloaded_engines": len(engines) - loaded, "autoscaling": "disabled"}
    assert {e["engine_id"]: e["status"] for e in body["engines"]} == engines


def test_the_dashboard_adds_lists_and_removes_a_model(server, file_server, tmp_path):
    """The Kolosal dashboard's calls: GET /status, POST /models, GET /downloads, DELETE /models/{id}."""
    _check_status(server.client.get("/status").json(), {})
    data = gguf_bytes(tmp_path)
    url = file_server.add_file("/dash/tiny.gguf", data, throttle_bps=SLOW)
    response = server.client.post("/models", json={**DASHBOARD_FORM, "model_id": "dash", "model_path": url})
    assert response.status_code == 202, response.text
    assert set(response.json()) == STARTED_KEYS
    listed = server.client.get("/v1/downloads").json()["active_downloads"]
    assert [d["model_id"] for d in listed] == ["dash"]
    assert listed[0]["timing"]["estimated_remaining_seconds"] is None or listed[0]["status"] == "downloading"
    server.wait_status("dash", "completed")
    progress = server.client.get("/download-progress/dash").json()
    assert progress["timing"]["estimated_remaining_seconds"] == 0
    engine = server.client.get("/engines/dash").json()
    assert engine["loading_parameters"]["n_ctx"] == 4096 and engine["loading_parameters"]["n_batch"] == 512
    assert engine["loading_parameters"]["n_gpu_layers"] == 0 and engine["loading_parameters"]["warmup"] is True
    assert engine["main_gpu_id"] == -1 and engine["status"] == "loaded"
    for route in ("/status", "/v1/status", "/health", "/v1/health"):
        _check_status(server.client.get(route).json(), {"dash": "loaded"})
    # An unloaded engine counts as such; an empty number field (0) means the default.
    path = make_gguf(tmp_path / "later.gguf")
    created = server.client.post("/v1/models", json={**DASHBOARD_FORM, "model_id": "later", "model_path": str(path),
                                                     "model_load": False, "model_context": 0})
    assert created.status_code == 201, created.text
    assert created.json()["loading_parameters"]["n_ctx"] == 4096
    _check_status(server.client.get("/status").json(), {"dash": "loaded", "later": "unloaded"})
    # Removing forgets the engine, never the file.
    removed = server.client.delete("/models/dash")
    assert removed.status_code == 200 and removed.json()["status"] == "removed"
    assert (server.settings.home / "tiny.gguf").read_bytes() == data
    _check_status(server.client.get("/status").json(), {"later": "unloaded"})
    assert_error(server.client.delete("/models/dash"), 404, "engine_id")


@pytest.mark.parametrize("field, value", [
    ("model_gpu", 99), ("model_context", -5), ("model_batch", "big"), ("model_load", "yes"),
    ("model_layer", 5000), ("surprise", 1),
])
def test_dashboard_fields_are_checked_and_named(shared_server, field, value):
    body = {**DASHBOARD_FORM, "model_id": "bad", "model_path": "http://127.0.0.1:9/x.gguf", field: value}
    assert_error(shared_server.client.post("/models", json=body), 400, field)


def test_options_and_405_name_every_method_of_the_path(shared_server):
    options = shared_server.client.options("/downloads")
    assert options.status_code == 204 and options.headers["allow"] == "DELETE, GET, OPTIONS, POST"
    refused = shared_server.client.put("/v1/engines/x")
    assert_error(refused, 405, None, "method_not_allowed")
    assert refused.headers["allow"] == "DELETE, GET, OPTIONS"


def test_cors_only_for_the_origins_the_operator_lists(start_server):
    preflight = {"Origin": "http://127.0.0.1:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    closed = start_server()
    assert "access-control-allow-origin" not in closed.client.options("/models", headers=preflight).headers
    assert "access-control-allow-origin" not in closed.client.get("/status", headers={"Origin": preflight["Origin"]}).headers
    server = start_server(cors_origins=("http://127.0.0.1:3000",), api_key="k3y")
    answer = server.client.options("/models", headers=preflight)  # no key: a preflight never carries one
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
    assert "POST" in answer.headers["access-control-allow-methods"]
    ok = server.client.get("/status", headers={"Origin": "http://127.0.0.1:3000"})
    assert ok.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
    import httpx

    anonymous = httpx.get(server.url + "/status", headers={"Origin": "http://127.0.0.1:3000"})
    assert anonymous.status_code == 401 and anonymous.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
    other = server.client.options("/models", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_missing_local_file_is_400(shared_server):
    missing = shared_server.settings.home / "no.gguf"
    error = assert_error(shared_server.client.post("/engines", json={"engine_id": "x", "model_path": str(missing)}),
                         400, "model_path", "model_path_not_found")
    assert "does not exist" in error["message"]


def test_a_local_file_that_is_not_a_model_is_400_and_leaves_no_engine(server, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a model at all")
    error = assert_error(server.client.post("/engines", json={"engine_id": "x", "model_path": str(path)}),
                         400, "model_path", "invalid_model_format")
    assert "neither a GGUF nor a safetensors" in error["message"]
    assert server.client.get("/engines").json() == {"engines": [], "total_count": 0}


def test_safetensors_is_accepted(server, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes())
    response = server.client.post("/engines", json={"engine_id": "st", "model_path": str(path)})
    assert response.status_code == 201, response.text
    info = response.json()["model_info"]
    assert info["format"] == "safetensors" and info["parameter_count"] == 16 and info["dtype"] == "F16"


def test_a_downloaded_file_that_is_not_a_model_fails_the_engine_not_the_download(server, file_server):
    url = file_server.add_file("/weights.bin", b"PK\x03\x04 this is a zip, not a model" * 100)
    assert server.client.post("/engines", json={"engine_id": "zip", "model_path": url}).status_code == 202
    job = server.wait_status("zip", "completed", "failed")
    assert job["status"] == "completed"
    assert "engine 'zip' not created" in job["message"]
    engine = server.client.get("/engines/zip").json()
    assert engine["status"] == "failed"
    assert "neither a GGUF nor a safetensors" in engine["error_message"]
    # A failed registration does not hold the id.
    assert server.client.post("/engines", json={"engine_id": "zip", "model_path": url}).status_code == 400


@pytest.mark.parametrize("params, field", [
    ({"n_ctx": 0}, "loading_parameters.n_ctx"),
    ({"n_ctx": 1_000_001}, "loading_parameters.n_ctx"),
    ({"n_ctx": 1024, "n_keep": 2048}, "loading_parameters.n_keep"),
    ({"n_batch": 8193}, "loading_parameters.n_batch"),
    ({"n_batch": 256, "n_ubatch": 512}, "loading_parameters.n_ubatch"),
    ({"n_parallel": 17}, "loading_parameters.n_parallel"),
    ({"n_gpu_layers": 1001}, "loading_parameters.n_gpu_layers"),
    ({"n_ctx": "4096"}, "loading_parameters.n_ctx"),
    ({"n_ctx": True}, "loading_parameters.n_ctx"),
    ({"use_mmap": "yes"}, "loading_parameters.use_mmap"),
    ({"n_threads": 4}, "loading_parameters.n_threads"),
])
def test_bad_loading_parameters_are_400_naming_the_field(shared_server, tmp_path, params, field):
    path = make_gguf(tmp_path / "m.gguf")
    error = assert_error(shared_server.client.post("/engines", json={"engine_id": "p", "model_path": str(path),
                                                              "loading_parameters": params}),
                         400, field, "invalid_parameter")
    assert field in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"engine_id": "a", "model_path": "x", "main_gpu_id": 16}, "main_gpu_id"),
    ({"engine_id": "a", "model_path": "x", "main_gpu_id": -2}, "main_gpu_id"),
    ({"engine_id": "a", "model_path": "x", "load_immediately": "true"}, "load_immediately"),
    ({"engine_id": "a b", "model_path": "x"}, "engine_id"),
    ({"engine_id": "a" * 129, "model_path": "x"}, "engine_id"),
    ({"model_path": "x"}, "engine_id"),
    ({"engine_id": "a"}, "model_path"),
    ({"engine_id": 5, "model_path": "x"}, "engine_id"),
    ({"engine_id": "a", "model_path": "x", "loading_parameters": []}, "loading_parameters"),
])
def test_bad_engine_fields_are_400_naming_the_field(shared_server, body, param):
    assert_error(shared_server.client.post("/engines", json=body), 400, param)


def test_download_progress_404_and_400(shared_server):
    assert_error(shared_server.client.get("/download-progress/unknown"), 404, "model_id", "download_not_found")
    assert_error(shared_server.client.get("/download-progress/bad%20id"), 400, "model_id", "invalid_path_format")
    assert_error(shared_server.client.get("/download-progress/" + "a" * 129), 400)


def test_cancel_pause_resume(server, file_server):
    data = random_bytes(1_500_000, seed=3)
    url = file_server.add_file("/cpr.bin", data, throttle_bps=SLOW)
    server.submit(url, id="cpr")
    server.wait_bytes("cpr")

    paused = server.client.post("/downloads/cpr/pause")
    assert paused.json() == {"success": True, "message": "Download paused; partial data kept", "model_id": "cpr"}
    assert server.job("cpr")["status"] == "paused"  # at once, not after the transfer stopped
    assert server.client.post("/downloads/cpr/pause").json()["message"] == "Download was already paused"
    kept = server.job("cpr")["downloaded_bytes"]
    assert kept > 0

    resumed = server.client.post("/downloads/cpr/resume")
    assert resumed.json() == {"success": True, "message": "Download resumed", "model_id": "cpr"}
    job = server.wait_bytes("cpr", kept + 1)
    assert job["percent"] is None or job["percent"] >= kept * 100 / len(data) - 0.01  # never restarts

    before = server.client.get("/download-progress/cpr").json()["status"]
    cancel = server.client.delete("/downloads/cpr")
    assert cancel.status_code == 200
    body = cancel.json()
    assert set(body) == {"success", "message", "model_id", "previous_status", "timestamp"}
    assert body["success"] is True and body["model_id"] == "cpr" and body["previous_status"] == before
    assert server.job("cpr")["status"] == "cancelled"
    progress = server.client.get("/download-progress/cpr").json()
    _check_progress_shape(progress, engine=False)
    # Finished: cancel, pause and resume are refused; unknown ids are 404.
    assert_error(server.client.post("/downloads/cpr/cancel"), 400, None, "download_finished")
    assert_error(server.client.post("/downloads/cpr/pause"), 400)
    assert_error(server.client.post("/downloads/cpr/resume"), 400)
    for method, path in (("DELETE", "/downloads/nope"), ("POST", "/downloads/nope/cancel"),
                         ("POST", "/downloads/nope/pause"), ("POST", "/downloads/nope/resume")):
        assert_error(server.client.request(method, path), 404)
    # The partial data went with the cancel.
    deadline = time.monotonic() + 10
    while server.manager.running_transfers and time.monotonic() < deadline:
        time.sleep(0.02)
    leftovers = [p.name for p in server.settings.home.iterdir() if p.name.startswith("cpr.bin")]
    assert leftovers == []


def test_post_cancel_route_and_cancel_all(server, file_server):
    urls = [file_server.add_file(f"/all{i}.bin", random_bytes(1_000_000, seed=i), throttle_bps=SLOW)
            for i in range(4)]
    ids = [server.submit(u, id=f"all{i}")["id"] for i, u in enumerate(urls)]
    one = server.client.post(f"/downloads/{ids[0]}/cancel")
    assert one.status_code == 200 and one.json()["model_id"] == ids[0]
    response = server.client.post("/downloads/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["summary"] == {"total_downloads": 4, "successful_cancellations": 3, "failed_cancellations": 1}
    assert sorted(c["model_id"] for c in body["cancelled_downloads"]) == ids[1:]
    assert body["failed_cancellations"] == [{"model_id": ids[0], "status": "cancelled",
                                             "reason": "Already completed, failed, or cancelled"}]
    assert all(server.job(i)["status"] == "cancelled" for i in ids)
    assert server.client.get("/downloads").json()["total_active"] == 0


def test_every_route_is_also_under_v1(server, tmp_path):
    path = make_gguf(tmp_path / "v1.gguf")
    created = server.client.post("/v1/engines", json={"engine_id": "v1", "model_path": str(path)})
    assert created.status_code == 201
    assert server.client.get("/v1/engines").json()["total_count"] == 1
    assert server.client.get("/v1/engines/v1").json()["engine_id"] == "v1"
    assert server.client.get("/v1/downloads").json()["total_active"] == 0
    assert_error(server.client.get("/v1/download-progress/none"), 404)
    assert server.client.delete("/v1/engines/v1").status_code == 200


def test_failed_download_reports_error_message(server, file_server):
    url = file_server.add_file("/gone.gguf", b"x" * 1000)
    file_server.add_fault("/gone.gguf", "status", times=20, methods=("GET", "HEAD"), code=404)
    assert server.client.post("/engines", json={"engine_id": "gone", "model_path": url}).status_code == 202
    server.wait_status("gone", "failed")
    body = server.client.get("/download-progress/gone").json()
    _check_progress_shape(body, engine=True)
    assert body["status"] == "failed"
    assert body["error_message"]
    assert server.job("gone")["error_code"]
    # A failed download can be asked for again: the id is not held.
    retry = server.client.post("/engines", json={"engine_id": "gone", "model_path": url})
    assert retry.status_code == 202

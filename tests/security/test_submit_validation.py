"""Finding 8: sloppy edges at submit.

A malformed reference or option is a 400/422 before a job exists (not a 202 and a job that
fails later); the `local_path` shown at submit is the file name the download will really use;
`?api_key=` opens only the GET event streams an EventSource needs; and the queue of waiting
jobs has a bound (429 with Retry-After past `max_queued_jobs`).
"""
from __future__ import annotations

import pytest

from server_helpers import assert_error

pytestmark = pytest.mark.timeout(60)

KEY = "k3y-for-security-tests"


@pytest.mark.parametrize("model", [
    "ollama:../x",
    "ollama:library/../x:latest",
    "ollama:ns\n/model",
    "hf:org/name@../../x",
    "hf:org/name@/etc",
    "hf:../name",
    "hf:org/na--me",
    "hf:org/name:../../outside.txt",
    "mlx:org/name@a/../../b",
])
def test_a_malformed_reference_is_refused_before_a_job_exists(shared_server, model):
    response = shared_server.client.post("/downloads", json={"model": model})

    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code)
    assert shared_server.client.get("/downloads").json()["total_active"] == 0


@pytest.mark.parametrize("options, param", [
    ({"filename": "../../escape.gguf"}, "options.filename"),
    ({"filename": "sub/model.gguf"}, "options.filename"),
    ({"filename": "model\0.gguf"}, "options.filename"),
    ({"filename": ".."}, "options.filename"),
    ({"filename": " model.gguf "}, "options.filename"),
    ({"connections": 0}, "options.connections"),
])
def test_a_bad_url_option_is_a_400_naming_it(shared_server, options, param):
    response = shared_server.client.post("/downloads", json={"model": "http://127.0.0.1:9/model.gguf",
                                                             "options": options})

    assert_error(response, 400, param, "invalid_parameter")


def test_a_hub_filename_that_climbs_out_is_a_400(shared_server):
    response = shared_server.client.post("/downloads", json={"model": "hf:org/name",
                                                             "options": {"filename": "../../x"}})

    assert_error(response, 400, "options.filename", "invalid_parameter")


def test_an_engine_reference_with_a_bad_revision_is_a_422(shared_server):
    response = shared_server.client.post("/engines", json={"engine_id": "bad-rev", "model_path": "hf:org/n@../../x"})

    assert_error(response, 422, "model_path", "invalid_model_url")


def test_the_local_path_shown_at_submit_is_where_the_file_goes(server, file_server):
    url = file_server.add_file("/files/model.gguf", b"GGUF" + bytes(1000))

    job = server.submit(url, options={"filename": "renamed.gguf"})
    done = server.wait_status(job["id"], "completed", "failed")

    assert job["local_path"] == str(server.settings.home / "renamed.gguf")
    assert done["status"] == "completed", done
    assert done["local_path"] == job["local_path"]


def test_the_query_api_key_opens_only_event_streams(start_server):
    server = start_server(api_key=KEY)
    anonymous = server.client.__class__(base_url=server.url, timeout=20)
    try:
        for method, path in (("GET", "/downloads"), ("GET", "/engines"), ("POST", "/downloads/cancel"),
                             ("GET", "/v1/downloads"), ("GET", "/metrics")):
            response = anonymous.request(method, path, params={"api_key": KEY})
            assert_error(response, 401, None, "invalid_api_key")
        with anonymous.stream("GET", "/events", params={"api_key": KEY}) as response:
            assert response.status_code == 200
        with anonymous.stream("GET", "/v1/events", params={"api_key": KEY}) as response:
            assert response.status_code == 200
        # The header works everywhere.
        assert server.client.get("/downloads").status_code == 200
    finally:
        anonymous.close()


def test_past_max_queued_jobs_a_new_download_is_429_with_retry_after(start_server, file_server):
    server = start_server(max_active_jobs=1, max_queued_jobs=2)
    slow = file_server.add_file("/slow.bin", bytes(2_000_000), throttle_bps=100_000)
    running = server.submit(slow, id="running")
    server.wait_bytes(running["id"])
    for number in range(2):
        server.submit(file_server.add_file(f"/queued-{number}.bin", b"x" * 100), id=f"queued-{number}")

    response = server.client.post("/downloads", json={"model": file_server.add_file("/third.bin", b"y")})

    error = assert_error(response, 429, None, "too_many_queued")
    assert "max-queued-jobs" in error["message"]
    assert int(response.headers["Retry-After"]) > 0
    server.client.post("/downloads/cancel")

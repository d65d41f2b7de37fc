"""What the server refuses and what it never says: API key, tokens, bad bodies, URL policy, ops routes."""
from __future__ import annotations

import json

import httpx
import pytest

from server_helpers import assert_error, random_bytes, sse_events

TOKEN = "hf_SeCrEt_T0ken_4242_never_shown"


def test_the_api_key_guards_every_route_but_health(start_server):
    server = start_server(api_key="k3y-for-tests")
    anonymous = httpx.Client(base_url=server.url, timeout=10)
    for method, path in (("GET", "/downloads"), ("GET", "/v1/engines"), ("POST", "/downloads"),
                         ("GET", "/events"), ("GET", "/metrics"), ("GET", "/status"),
                         ("GET", "/download-progress/x"), ("POST", "/api/models/pull")):
        response = anonymous.request(method, path)
        assert_error(response, 401, None, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = anonymous.get("/downloads", headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401)
    assert anonymous.get("/downloads", headers={"Authorization": "Basic k3y-for-tests"}).status_code == 401
    assert anonymous.get("/health").status_code == 200
    assert server.client.get("/downloads").status_code == 200  # the fixture sends the Bearer key
    # EventSource cannot send headers: ?api_key= works too.
    with anonymous.stream("GET", "/events", params={"api_key": "k3y-for-tests"}) as response:
        assert response.status_code == 200
    anonymous.close()


def test_a_token_never_appears_in_responses_or_logs(server, file_server, log_capture):
    data = random_bytes(50_000, seed=1)
    good = file_server.add_file("/private/model.gguf", data)
    refused = file_server.add_file("/private/denied.gguf", b"x")
    file_server.add_fault("/private/denied.gguf", "status", times=20, methods=("GET", "HEAD"), code=401,
                          body=f"bad token {TOKEN}".encode())
    bodies: list[str] = []

    def keep(response: httpx.Response) -> httpx.Response:
        bodies.append(response.text)
        bodies.append(json.dumps(dict(response.headers)))
        return response

    ok = keep(server.client.post("/downloads", json={"model": good, "token": TOKEN})).json()
    denied = keep(server.client.post("/downloads", json={"model": refused, "token": TOKEN})).json()
    keep(server.client.post("/engines", json={"engine_id": "tok", "model_path": refused, "token": TOKEN}))
    stream = keep(server.client.get("/api/models/download", params={"provider": "url", "model": refused,
                                                                      "token": TOKEN}))
    keep(server.client.post("/api/models/pull", json={"provider": "url", "model": good, "auth_token": TOKEN}))
    for job_id in (ok["id"], denied["id"], "tok"):
        server.wait_status(job_id, "completed", "failed")
    failed = keep(server.client.get(f"/downloads/{denied['id']}")).json()
    assert failed["status"] == "failed" and failed["error_code"]
    for path in ("/downloads", f"/download-progress/{denied['id']}", "/download-progress/tok", "/engines",
                 f"/downloads/{ok['id']}", "/metrics", "/health"):
        keep(server.client.get(path))
    keep(server.client.post(f"/downloads/{denied['id']}/resume", json={"token": TOKEN}))
    server.wait_status(denied["id"], "failed")
    with server.client.stream("GET", "/events") as response:
        for line in response.iter_lines():
            bodies.append(line)
            if line.startswith("event: ready"):
                break

    # The token did reach the source.
    assert file_server.requests_for("/private/model.gguf", "GET")[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert "error" in sse_events(stream.text)[-1]["data"]
    everything = "\n".join(bodies)
    assert TOKEN not in everything
    logs = log_capture.text()
    assert "/api/models/download" in logs
    assert TOKEN not in logs
    access = [json.loads(line) for line in log_capture.lines if '"path": "/api/models/download"' in line]
    assert access and "token=***" in access[0]["query"]
    # Not in the database either.
    assert TOKEN.encode() not in server.settings.database.read_bytes()


@pytest.mark.parametrize("content, status, code", [
    (b'{"engine_id": "x", "model_path": ', 400, "invalid_json"),
    (b"\xff\xfe not utf-8", 400, "invalid_json"),
    (b"[1, 2, 3]", 400, "invalid_json"),
    (b"", 400, "empty_body"),
    (b'{"engine_id": NaN}', 400, "invalid_json"),
    (b"[" * 50_000 + b"]" * 50_000, 413, "body_too_large"),
    (b"[" * 30_000 + b"]" * 30_000, 400, "invalid_json"),
    (b'{"engine_id": "' + b"a" * 70_000 + b'"}', 413, "body_too_large"),
])
def test_malformed_bodies_are_4xx_in_kolosal_shape(shared_server, content, status, code):
    for path in ("/engines", "/downloads", "/api/models/pull", "/v1/engines"):
        response = shared_server.client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert_error(response, status, code=code)


def test_a_chunked_oversized_body_is_413(shared_server):
    def chunks():
        for _ in range(100):
            yield b" " * 1024

    response = shared_server.client.post("/downloads", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, code="body_too_large")


def test_unknown_routes_methods_and_query_errors_keep_the_shape(shared_server):
    assert_error(shared_server.client.get("/nowhere"), 404, code="route_not_found")
    assert_error(shared_server.client.put("/downloads"), 405, code="method_not_allowed")
    # AbstractCore's EventSource route answers refusals inside the stream (an EventSource cannot read a 400).
    refused = shared_server.client.get("/api/models/download", params={"model": "x"})
    assert refused.status_code == 200 and refused.headers["content-type"].startswith("text/event-stream")
    assert "'provider' is missing" in refused.text
    assert_error(shared_server.client.get("/engines/bad%20id"), 400, "engine_id")
    assert_error(shared_server.client.delete("/engines/bad%20id"), 400, "engine_id")
    assert_error(shared_server.client.get("/downloads/x/events"), 404)


def test_private_addresses_need_the_policy(start_server, file_server):
    strict = start_server(allow_private_urls=False)
    url = file_server.add_file("/local.bin", b"x" * 100)
    error = assert_error(strict.client.post("/downloads", json={"model": url}), 422, "model", "url_not_allowed")
    assert "MODELPULL_ALLOW_PRIVATE_URLS" in error["message"]
    assert_error(strict.client.post("/engines", json={"engine_id": "l", "model_path": url}), 422, "model_path")
    assert_error(strict.client.post("/downloads", json={"model": "http://localhost:9/x.bin"}), 422)


def test_a_redirect_to_a_metadata_address_fails_the_download(server, file_server):
    url = file_server.add_redirect("/bounce.bin", "http://169.254.169.254/latest/meta-data/iam")
    job = server.submit(url, options={"max_retries": 0, "retry_backoff": 0})
    failed = server.wait_status(job["id"], "failed", "completed")
    assert failed["status"] == "failed"
    assert "169.254.169.254" in failed["error_message"] or "Refusing" in failed["error_message"]


def test_health_metrics_and_docs(server, file_server):
    health = server.client.get("/health").json()
    assert health["status"] == "healthy" and {"version", "active", "queued", "uptime_seconds"} <= set(health)
    missing = file_server.add_file("/m.bin", b"x")
    file_server.add_fault("/m.bin", "status", times=10, methods=("GET", "HEAD"), code=404)
    job = server.submit(missing)
    server.wait_status(job["id"], "failed")
    server.wait_status(server.submit(file_server.add_file("/ok.bin", b"y" * 1234))["id"], "completed")
    metrics = server.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for needle in ("modelpull_jobs_active 0", "modelpull_jobs_queued 0", 'modelpull_jobs{status="failed"} 1',
                   'modelpull_job_failures_total{reason="', "modelpull_downloaded_bytes_total 1234",
                   'modelpull_http_requests_total{method="GET",status="200"}', "modelpull_engines 0"):
        assert needle in text, needle
    assert server.client.get("/docs").status_code == 200
    spec = server.client.get("/openapi.json").json()
    for path in ("/engines", "/download-progress/{model_id}", "/downloads", "/downloads/{model_id}/events",
                 "/api/models/download", "/api/models/pull", "/events", "/health", "/metrics"):
        assert path in spec["paths"], path

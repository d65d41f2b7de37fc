"""The Ollama fakes behave like the real registry and server, so tests against them mean something."""
from __future__ import annotations

import hashlib
import json
import time

import httpx
import ollama
import pytest
from fakes.ollama import (
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    NOT_FOUND_ERROR,
    REMOTE_STORE,
    ModelName,
    PullFault,
    ShowFault,
    make_model,
)

ACCEPT = {"Accept": MANIFEST_MEDIA_TYPE}


def test_model_names_take_ollamas_defaults():
    assert ModelName.parse("llama3") == ModelName("registry.ollama.ai", "library", "llama3", "latest")
    assert ModelName.parse("llama3:8b").tag == "8b"
    assert ModelName.parse("jmorgan/llama3").namespace == "jmorgan"
    assert ModelName.parse("127.0.0.1:5000/ns/m:q4") == ModelName("127.0.0.1:5000", "ns", "m", "q4")
    assert ModelName.parse("127.0.0.1:5000/ns/m").tag == "latest"


def test_a_made_model_has_a_real_gguf_layer_and_a_consistent_manifest():
    model = make_model("tinyllama", model_size=50_000)
    manifest = json.loads(model.manifest)
    assert manifest["mediaType"] == MANIFEST_MEDIA_TYPE
    assert [layer["digest"] for layer in manifest["layers"]] == [b.digest for b in model.layers]
    assert len(model.layers) >= 3 and model.layers[0].media_type == MODEL_MEDIA_TYPE
    assert model.model_layer.data[:4] == b"GGUF"
    for blob in model.blobs:
        assert blob.digest == "sha256:" + hashlib.sha256(blob.data).hexdigest()


def test_registry_serves_the_raw_manifest_only_with_the_v2_accept_header(fake_ollama_registry):
    model = fake_ollama_registry.add_model("tinyllama", model_size=20_000, manifest_indent=3)
    url = fake_ollama_registry.url("/v2/library/tinyllama/manifests/latest")
    good = httpx.get(url, headers=ACCEPT)
    assert good.status_code == 200 and good.content == model.manifest
    assert good.headers["content-type"] == MANIFEST_MEDIA_TYPE
    assert httpx.get(url).status_code == 406
    missing = httpx.get(fake_ollama_registry.url("/v2/library/nope/manifests/latest"), headers=ACCEPT)
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_registry_redirects_blobs_to_a_cdn_on_another_host_that_honours_range(fake_ollama_registry):
    model = fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    blob = model.model_layer
    redirect = httpx.get(fake_ollama_registry.blob_url(model, blob))
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith("http://127.0.0.2:") and "X-Amz-Signature=" in location

    assert httpx.get(location).content == blob.data
    part = httpx.get(location, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == blob.data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{blob.size}"
    beyond = httpx.get(location, headers={"Range": f"bytes={blob.size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{blob.size}"


def test_registry_bearer_challenge_then_token_is_accepted(fake_ollama_registry):
    fake_ollama_registry.require_auth = True
    fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    url = fake_ollama_registry.url("/v2/library/tinyllama/manifests/latest")
    challenged = httpx.get(url, headers=ACCEPT)
    assert challenged.status_code == 401
    challenge = challenged.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="{fake_ollama_registry.base_url}/token"')
    assert 'scope="repository:library/tinyllama:pull"' in challenge
    token = httpx.get(
        fake_ollama_registry.url("/token"),
        params={"service": "ollama.com", "scope": "repository:library/tinyllama:pull"},
    ).json()["token"]
    authorized = httpx.get(url, headers={**ACCEPT, "Authorization": f"Bearer {token}"})
    assert authorized.status_code == 200


def test_corrupted_blob_no_longer_matches_its_digest(fake_ollama_registry):
    model = fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    fake_ollama_registry.corrupt(model.model_layer, offset=5000)
    served = httpx.get(fake_ollama_registry.blob_url(model, model.model_layer), follow_redirects=True).content
    assert len(served) == model.model_layer.size and served != model.model_layer.data


def test_official_client_consumes_a_streamed_pull(fake_ollama_server):
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    client = ollama.Client(host=fake_ollama_server.base_url)
    statuses = [part.status for part in client.pull("tinyllama", stream=True)]

    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    pulled = {s.removeprefix("pulling ") for s in statuses if s.startswith("pulling ") and s != "pulling manifest"}
    assert pulled == {blob.hex[:12] for blob in model.blobs}
    assert [m.model for m in client.list().models] == ["tinyllama:latest"]


def test_progress_lines_carry_digest_total_and_completed(fake_ollama_server):
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    parts = list(ollama.Client(host=fake_ollama_server.base_url).pull("tinyllama", stream=True))
    layer = [p for p in parts if p.digest == model.model_layer.digest]
    assert layer[0].completed is None  # omitempty: the first tick has nothing done yet
    assert all(p.total == model.model_layer.size for p in layer)
    assert layer[-1].completed == model.model_layer.size


def test_second_pull_reports_each_blob_complete_at_once(fake_ollama_server):
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    client = ollama.Client(host=fake_ollama_server.base_url)
    list(client.pull("tinyllama", stream=True))
    again = [p for p in client.pull("tinyllama", stream=True) if p.digest]
    assert len(again) == len(model.blobs)
    assert all(p.completed == p.total for p in again)


def test_unknown_model_is_an_error_line_after_a_200(fake_ollama_server):
    with httpx.stream("POST", fake_ollama_server.url("/api/pull"), json={"model": "nope"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines == [{"status": "pulling manifest"}, {"error": NOT_FOUND_ERROR}]

    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(ollama.Client(host=fake_ollama_server.base_url).pull("nope", stream=True))


def test_injected_http_500_reaches_the_official_client(fake_ollama_server):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    fake_ollama_server.inject(PullFault(http_status=500, error="disk full"))
    with pytest.raises(ollama.ResponseError) as raised:
        list(ollama.Client(host=fake_ollama_server.base_url).pull("tinyllama", stream=True))
    assert raised.value.status_code == 500 and "disk full" in raised.value.error


def test_non_streaming_pull_answers_one_object(fake_ollama_server):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    client = ollama.Client(host=fake_ollama_server.base_url)
    assert client.pull("tinyllama", stream=False).status == "success"
    with pytest.raises(ollama.ResponseError) as raised:
        client.pull("nope", stream=False)
    assert raised.value.status_code == 500


def test_older_name_field_and_version(fake_ollama_server):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    response = httpx.post(fake_ollama_server.url("/api/pull"), json={"name": "tinyllama", "stream": False})
    assert response.json() == {"status": "success"}
    assert fake_ollama_server.pulls[-1].model == "tinyllama"
    assert httpx.get(fake_ollama_server.url("/api/version")).json() == {"version": fake_ollama_server.version}


def test_stream_cut_short_ends_without_success(fake_ollama_server):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    fake_ollama_server.inject(PullFault(cut_after_lines=3))
    with httpx.stream("POST", fake_ollama_server.url("/api/pull"), json={"model": "tinyllama"}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 3 and all("error" not in line for line in lines)

    fake_ollama_server.inject(PullFault(cut_after_lines=3, abrupt=True))
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", fake_ollama_server.url("/api/pull"), json={"model": "tinyllama"}) as response:
            list(response.iter_lines())


def test_server_notices_a_client_that_leaves(fake_ollama_server):
    fake_ollama_server.ticks_per_layer = 500
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    with httpx.stream("POST", fake_ollama_server.url("/api/pull"), json={"model": "tinyllama"}) as response:
        next(response.iter_lines())
    record = fake_ollama_server.pulls[-1]
    deadline = time.monotonic() + 5
    while not record.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert record.disconnected and record.finished


# --------------------------------------------------------------------------- /api/show


def test_official_client_shows_a_pulled_model_with_its_blob_in_the_modelfile(fake_ollama_server):
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    client = ollama.Client(host=fake_ollama_server.base_url)
    client.pull("tinyllama", stream=False)
    shown = client.show("tinyllama")

    lines = shown.modelfile.splitlines()
    assert lines[:4] == [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        "# FROM tinyllama:latest",
        "",
    ]
    blob = f"{REMOTE_STORE}/blobs/sha256-{model.model_layer.hex}"
    assert lines[4] == f"FROM {blob}"
    assert [line for line in lines if line.startswith("FROM ")] == [f"FROM {blob}"]
    assert "PARAMETER stop <|user|>" in lines
    assert shown.template == model.layers[1].data.decode()
    assert shown.license == model.layers[2].data.decode()
    assert 'stop                           "<|user|>"' in shown.parameters

    assert shown.details.format == "gguf" and shown.details.family == "llama"
    assert shown.details.parameter_size == "1.1B" and shown.details.quantization_level == "Q4_0"
    # model_info is the GGUF's own metadata, read from the model layer, without general.name.
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.modelinfo["general.parameter_count"] > 0
    assert "general.name" not in shown.modelinfo
    assert shown.capabilities == ["completion"]


def test_a_server_with_a_real_store_writes_what_it_pulls_there(fake_ollama_server, tmp_path):
    fake_ollama_server.models_path = tmp_path / "models"
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    client = ollama.Client(host=fake_ollama_server.base_url)
    client.pull("tinyllama", stream=False)

    from_line = next(line for line in client.show("tinyllama").modelfile.splitlines() if line.startswith("FROM "))
    blob = tmp_path / "models" / "blobs" / f"sha256-{model.model_layer.hex}"
    assert from_line == f"FROM {blob}"
    assert blob.read_bytes() == model.model_layer.data
    manifest = tmp_path / "models" / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "latest"
    assert manifest.read_bytes() == model.manifest


def test_show_of_a_model_not_in_the_store_is_404(fake_ollama_server):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)  # pullable, not pulled
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=fake_ollama_server.base_url).show("tinyllama")
    assert raised.value.status_code == 404 and raised.value.error == "model 'tinyllama' not found"


def test_show_accepts_the_older_name_field_and_refuses_an_empty_request(fake_ollama_server):
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    ollama.Client(host=fake_ollama_server.base_url).pull("tinyllama", stream=False)
    shown = httpx.post(fake_ollama_server.url("/api/show"), json={"name": "tinyllama:latest"})
    assert shown.status_code == 200 and model.model_layer.hex in shown.json()["modelfile"]

    missing = httpx.post(fake_ollama_server.url("/api/show"), json={})
    assert missing.status_code == 400 and missing.json() == {"error": "model is required"}


def test_injected_show_faults_are_taken_one_per_request(fake_ollama_server):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    client = ollama.Client(host=fake_ollama_server.base_url)
    client.pull("tinyllama", stream=False)
    fake_ollama_server.inject_show(ShowFault(500, "boom"), ShowFault(404, "404 page not found", plain_text=True))

    with pytest.raises(ollama.ResponseError) as raised:
        client.show("tinyllama")
    assert raised.value.status_code == 500 and raised.value.error == "boom"
    unrouted = httpx.post(fake_ollama_server.url("/api/show"), json={"model": "tinyllama"})
    assert unrouted.status_code == 404 and unrouted.text == "404 page not found"
    assert client.show("tinyllama").modelfile

"""Beyond Kolosal: engines and jobs from provider references (hf:, mlx:, ollama:) against the fakes."""
from __future__ import annotations

import json

import pytest

from server_helpers import assert_error, gguf_bytes

pytestmark = pytest.mark.timeout(90)


def test_an_engine_from_a_hugging_face_reference(fake_hub, hf_env, start_server, tmp_path, log_capture):
    fake_hub.add_repo("org/tiny-gguf", {"model.gguf": gguf_bytes(tmp_path, arch="phi3"), "README.md": b"# tiny"})
    server = start_server()
    response = server.client.post("/engines", json={"engine_id": "hf-engine",
                                                    "model_path": "hf:org/tiny-gguf:model.gguf"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["download_status"] == "started" and body["local_path"] is None
    done = server.wait_status("hf-engine", "completed", "failed")
    assert done["status"] == "completed", done
    # The Hub cache lands inside the models dir.
    assert done["local_path"].startswith(str(server.settings.home / "huggingface" / "hub"))
    engine = server.client.get("/engines/hf-engine").json()
    assert engine["status"] == "loaded" and engine["model_info"]["architecture"] == "phi3"
    progress = server.client.get("/download-progress/hf-engine").json()
    assert progress["url"] == "org/tiny-gguf" and progress["progress"]["percentage"] == 100.0


def test_a_gated_repo_with_a_token_through_post_downloads(fake_hub, hf_env, start_server, log_capture):
    token = "hf_gated_token_for_the_server_test"
    fake_hub.add_token(token)
    fake_hub.add_repo("org/gated", {"config.json": b"{}", "weights.safetensors": b"\x00" * 4000}, gated=True)
    fake_hub.grant("org/gated", token)
    server = start_server()
    job = server.submit("org/gated", provider="huggingface", token=token)
    done = server.wait_status(job["id"], "completed", "failed")
    assert done["status"] == "completed", done
    assert done["files_total"] == 2 and done["files_completed"] == 2
    # Without the token the same repo fails with a code a client can act on.
    anonymous = server.submit("hf:org/gated")
    failed = server.wait_status(anonymous["id"], "completed", "failed")
    assert failed["status"] == "failed" and failed["error_code"] == "gated_repo", failed
    assert token not in json.dumps([done, failed]) and token not in log_capture.text()
    assert token.encode() not in server.settings.database.read_bytes()


def test_hub_folders_must_stay_inside_the_models_dir(shared_server):
    for key in ("cache_dir", "local_dir"):
        response = shared_server.client.post("/downloads", json={"provider": "huggingface", "model": "org/x",
                                                                 "options": {key: "/tmp/elsewhere"}})
        assert_error(response, 400, f"options.{key}", "invalid_destination")
    response = shared_server.client.post("/downloads", json={"provider": "ollama", "model": "tiny",
                                                             "options": {"models_path": "../up"}})
    assert_error(response, 400, "options.models_path", "invalid_destination")
    response = shared_server.client.post("/downloads", json={"provider": "ollama", "model": "tiny",
                                                             "options": {"registry": "http://169.254.169.254"}})
    assert_error(response, 422, "options.registry", "url_not_allowed")


def test_an_ollama_model_straight_from_a_registry(fake_ollama_registry, start_server):
    model = fake_ollama_registry.add_model("tinyllama", model_size=60_000)
    server = start_server()
    job = server.submit("tinyllama", provider="ollama",
                        options={"direct": True, "registry": fake_ollama_registry.base_url})
    done = server.wait_status(job["id"], "completed", "failed")
    assert done["status"] == "completed", done
    store = server.settings.home / "ollama"
    assert done["local_path"] == str(store / "blobs" / f"sha256-{model.model_layer.hex}")
    assert (store / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "latest").is_file()


def test_an_engine_from_an_ollama_reference_through_the_ollama_server(monkeypatch, start_server, tmp_path):
    from fakes.ollama import FakeOllamaServer

    with FakeOllamaServer(interval=0.005, models_path=tmp_path / "ollama-store") as ollama:
        ollama.add_model("tinyllama", model_size=40_000)
        monkeypatch.setenv("OLLAMA_HOST", ollama.base_url)
        server = start_server()
        response = server.client.post("/engines", json={"engine_id": "llama", "model_path": "ollama:tinyllama"})
        assert response.status_code == 202, response.text
        done = server.wait_status("llama", "completed", "failed")
        assert done["status"] == "completed", done
        engine = server.client.get("/engines/llama").json()
        assert engine["local_path"] == done["local_path"]
        assert engine["status"] in ("loaded", "failed")
        if engine["status"] == "loaded":
            assert engine["model_info"]["format"] == "gguf"

"""Shared pytest fixtures. Each block is owned by the part of the suite that uses it."""
from __future__ import annotations

import pytest


# ---- fake HTTP file servers (tests/fakes/fileserver.py) ---------------------------------

@pytest.fixture
def file_server():
    """A fault-injecting file server on 127.0.0.1 (random port), stopped after the test."""
    from fakes.fileserver import FileServer

    with FileServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def other_host_server():
    """A second file server on 127.0.0.2: "another host" for cross-host redirects."""
    from fakes.fileserver import FileServer

    with FileServer("127.0.0.2") as server:
        yield server


# ---- fake Hugging Face Hub (tests/fakes/hub.py) -----------------------------------------

@pytest.fixture
def fake_hub():
    """A fake Hub on 127.0.0.1 with its LFS CDN on 127.0.0.2 (random ports), stopped after the test."""
    from fakes.hub import FakeHub

    with FakeHub() as hub:
        yield hub


@pytest.fixture
def hf_env(fake_hub, tmp_path, monkeypatch):
    """Point `huggingface_hub` (this process) and modelpull's Hugging Face provider at `fake_hub`.

    huggingface_hub reads its endpoint, cache and offline flag at import time, so the
    constants module is patched as well as the environment. No token from the machine leaks
    in. Yields the Hub cache folder.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hf-home" / "hub"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        fake_hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    yield cache


# ---- fake Ollama registry and server (tests/fakes/ollama.py) ----------------------------

@pytest.fixture
def fake_ollama_registry():
    """A fake registry.ollama.ai on 127.0.0.1 whose blobs redirect to a CDN on 127.0.0.2."""
    from fakes.ollama import FakeOllamaRegistry

    with FakeOllamaRegistry() as registry:
        yield registry


@pytest.fixture
def fake_ollama_server():
    """A fake `ollama serve` on 127.0.0.1 with fast progress ticks (5 ms instead of 60)."""
    from fakes.ollama import FakeOllamaServer

    with FakeOllamaServer(interval=0.005) as server:
        yield server


# ---- a small file system (disk full, space reservations) ------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, when this process may mount one (root on Linux)."""
    import shutil
    import subprocess
    import sys

    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8) to make a small filesystem")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)

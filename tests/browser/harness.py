"""What the browser tests run against: a real modelpull server on a free port, Debian's Chromium
driven by Playwright, and a small GGUF file maker. Shared by conftest.py and screenshot.py.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from modelpull._settings import Settings
from modelpull.server.app import create_app

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def find_chromium() -> str | None:
    """Debian's Chromium (`apt-get install chromium`); Playwright's own browsers are never used."""
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class RunningServer:
    """`modelpull serve` in a background thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RunningServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.settings), log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="modelpull-serve", daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the modelpull server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._server = None

    def api(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """A request to the server from outside the page (with the API key when one is set)."""
        headers = {}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        return httpx.request(method, self.url + path, json=json, headers=headers, timeout=10)

    def __enter__(self) -> "RunningServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def server_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a test server: its own models dir and database, loopback URLs allowed."""
    values: dict[str, Any] = {
        "home": home, "database": home / ".modelpull" / "state.db", "allow_private_urls": True,
        "stall_timeout": 10.0,
    }
    values.update(overrides)
    return dataclasses.replace(Settings(), **values)


def make_gguf(
    *, name: str, architecture: str = "qwen2", parameter_count: int | None = None,
    file_type: int = 15, context_length: int = 32768, payload_bytes: int = 4096,
) -> bytes:
    """A small but valid GGUF file (one f32 tensor of about `payload_bytes`) with the metadata the
    server reads: name, architecture, parameter count, file type (15 = Q4_K_M), context length."""
    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.gguf"
        writer = gguf.GGUFWriter(str(path), architecture)
        writer.add_name(name)
        writer.add_file_type(file_type)
        writer.add_context_length(context_length)
        if parameter_count is not None:
            writer.add_uint64("general.parameter_count", parameter_count)
        writer.add_tensor("token_embd.weight", np.zeros(max(1, payload_bytes // 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()

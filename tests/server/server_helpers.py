"""Helpers shared by the server tests: model files, digests, Kolosal error checks, SSE parsing."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx


# ---- model files -----------------------------------------------------------------------


def make_gguf(path: Path, *, arch: str = "llama", context_length: int = 2048, file_type: int = 15,
              name: str = "Tiny Test Model") -> Path:
    """A real (tiny) GGUF file written with the gguf package."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(context_length)
    writer.add_block_count(1)
    writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_bytes(tmp_path: Path, **kwargs: Any) -> bytes:
    return make_gguf(tmp_path / "tmp-model.gguf", **kwargs).read_bytes()


def safetensors_bytes() -> bytes:
    header = {"weight": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 32]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + bytes(32)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_bytes(size: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


ERROR_KEYS = {"message", "type", "param", "code"}


def assert_error(response: httpx.Response, status: int, param: Any = ..., code: Any = ...) -> dict[str, Any]:
    """The response is Kolosal's error shape with this status (and param / code when given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not ...:
        assert body["error"]["param"] == param, body
    if code is not ...:
        assert body["error"]["code"] == code, body
    return body["error"]


def sse_events(text: str) -> list[dict[str, Any]]:
    """Parse a complete SSE body into [{"id", "event", "data"}]."""
    events = []
    for block in re.split(r"\n\n", text):
        if not block.strip() or block.startswith(":"):
            continue
        event: dict[str, Any] = {"id": None, "event": None, "data": []}
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            if key == "data":
                event["data"].append(value)
            elif key in ("id", "event"):
                event[key] = value
        event["data"] = "\n".join(event["data"])
        events.append(event)
    return events

"""The security tests reuse the server tests' fixtures (a real uvicorn on 127.0.0.1, its logs).

Each test here plays an attacker against one finding of issue 10, with a hostile fake (a Hub
whose listing carries `../`, absolute and NUL names, a registry with a hostile digest, an API
client asking for the server's own folders, an upstream that redirects or rebinds to loopback),
and fails on the code before the fix.
"""
from __future__ import annotations

import collections
import importlib.util
import socket
import sys
import threading
from pathlib import Path

import pytest

_SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"
if str(_SERVER_TESTS) not in sys.path:
    sys.path.insert(0, str(_SERVER_TESTS))  # server_helpers

_spec = importlib.util.spec_from_file_location("server_test_fixtures", _SERVER_TESTS / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _fixtures
_spec.loader.exec_module(_fixtures)

log_capture = _fixtures.log_capture
server_settings = _fixtures.server_settings
start_server = _fixtures.start_server
server = _fixtures.server
shared_server = _fixtures.shared_server

PUBLIC_ADDRESS = "93.184.216.34"  # never connected to: the policy or the test stops first


class RebindingDns:
    """Names whose first lookup answers a public address and every later one loopback, the way
    an attacker's DNS server rebinds a name between a check and a connection. Installed at
    `socket.getaddrinfo`, the bottom every client (asyncio, http.client, httpcore) resolves through."""

    def __init__(self, real) -> None:
        self._real = real
        self._lock = threading.Lock()
        self.names: set[str] = set()
        self.lookups: collections.Counter[str] = collections.Counter()

    def add(self, name: str) -> str:
        self.names.add(name)
        return name

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.names:
            return self._real(host, port, family, type, proto, flags)
        with self._lock:
            self.lookups[name] += 1
            first = self.lookups[name] == 1
        address = PUBLIC_ADDRESS if first else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 0)))]


@pytest.fixture
def rebinding_dns(monkeypatch) -> RebindingDns:
    dns = RebindingDns(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", dns.getaddrinfo)
    return dns


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Point the server's Hugging Face provider at `endpoint`, with the server's own HF_TOKEN."""

    def configure(endpoint: str, token: str | None = None) -> None:
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        if token:
            monkeypatch.setenv("HF_TOKEN", token)

    return configure

"""The security tests reuse the server tests' fixtures (a real uvicorn on 127.0.0.1, its logs).

Each test here plays an attacker against one finding of issue 10, with a hostile fake (a Hub
whose listing carries `../`, absolute and NUL names, a registry with a hostile digest, an API
client asking for the server's own folders), and fails on the code before the fix.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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

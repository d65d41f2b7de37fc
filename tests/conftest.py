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

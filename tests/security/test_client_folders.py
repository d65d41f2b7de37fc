"""Finding 2: a folder an API client chooses never reaches the server's own state.

The server keeps its database (and WAL, locks) in `<models dir>/.modelpull`. A client naming that
folder, or a folder holding it, as where a repo's files go, could overwrite the database with a
repo file called `state.db`. Such options are refused with 400 and a reason, before a job exists.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from server_helpers import assert_error

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def state_server(start_server):
    """A server whose database sits where it does by default: <models dir>/.modelpull/state.db."""
    return start_server(database=None)


@pytest.mark.parametrize("model, option, folder", [
    ("hf:org/evil", "local_dir", ".modelpull"),  # the repo's state.db lands on the database
    ("hf:org/evil", "local_dir", "."),  # its .modelpull/state.db does
    ("hf:org/evil", "local_dir", "sub/../.modelpull"),
    ("hf:org/evil", "cache_dir", ".modelpull/hub"),
    ("hf:org/evil", "cache_dir", "."),
    ("ollama:evil", "models_path", ".modelpull"),
    ("ollama:evil", "models_path", "."),
    ("http://127.0.0.1:9/state.db", "dest", ".modelpull"),
])
def test_a_client_folder_in_or_over_the_server_state_is_refused(state_server, model, option, folder):
    database = Path(state_server.settings.database_url)
    before = database.read_bytes()

    response = state_server.client.post("/downloads", json={"model": model, "options": {option: folder}})

    error = assert_error(response, 400, f"options.{option}", "invalid_destination")
    assert "server's own state" in error["message"], error
    assert state_server.client.get("/downloads").json()["total_active"] == 0
    assert database.read_bytes()[:16] == before[:16]


def test_a_hub_repo_cannot_overwrite_the_database_through_local_dir(fake_hub, hf_env, state_server):
    fake_hub.add_repo("org/evil", {"state.db": b"not a database any more", ".modelpull/state.db": b"nor this"})
    database = Path(state_server.settings.database_url)

    for folder in (".modelpull", "."):
        response = state_server.client.post("/downloads", json={"model": "hf:org/evil",
                                                                 "options": {"local_dir": folder}})
        assert response.status_code == 400, response.text

    assert database.read_bytes().startswith(b"SQLite format 3\0")
    assert state_server.client.get("/health").status_code == 200


def test_a_url_file_cannot_take_the_database_name(start_server, tmp_path):
    server = start_server(database=tmp_path / "models" / "jobs.db")

    response = server.client.post("/downloads", json={"model": "http://127.0.0.1:9/x.bin",
                                                     "options": {"filename": "jobs.db-wal"}})

    assert_error(response, 400, "options.filename", "invalid_destination")


def test_a_folder_beside_the_state_is_still_accepted(fake_hub, hf_env, state_server):
    fake_hub.add_repo("org/fine", {"config.json": b"{}"})

    job = state_server.submit("hf:org/fine", options={"local_dir": "fine"})
    job = state_server.wait_status(job["id"], "completed", "failed")

    assert job["status"] == "completed", job
    assert (state_server.settings.home / "fine" / "config.json").read_bytes() == b"{}"

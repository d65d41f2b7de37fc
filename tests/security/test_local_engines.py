"""Finding 5: POST /engines with a local path is no window onto the machine's files.

Only files under the models dir or an operator-listed `--local-model-root` may be registered.
Outside them the answer is one 400 whether the path exists, is a folder or is a readable file,
and no answer ever carries bytes of the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server_helpers import assert_error, make_gguf

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(start_server):
    """A server that lists no local model root: only its models dir is open to POST /engines."""
    return start_server(local_model_roots=())


def engine_answer(server, path) -> tuple[int, dict]:
    response = server.client.post("/engines", json={"engine_id": "probe", "model_path": str(path)})
    return response.status_code, response.json()


def test_paths_outside_the_allowed_roots_all_get_the_same_answer(server, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    secret = elsewhere / "secret.txt"
    secret.write_bytes(b"TOPSECRET-bytes")
    make_gguf(elsewhere / "real.gguf")
    probes = [elsewhere / "missing.gguf", secret, elsewhere, elsewhere / "real.gguf", "/proc/self/environ",
              server.settings.home / ".." / ".." / secret.relative_to(secret.parents[1])]

    answers = []
    for probe in probes:
        status, body = engine_answer(server, probe)
        assert status == 400, body
        assert body["error"]["code"] == "model_path_not_allowed", body
        answers.append(body["error"]["message"].replace(str(probe), "<path>"))

    assert len(set(answers)) == 1, answers
    assert "TOPSECRET" not in json.dumps(answers) and b"TOPSECRET".hex()[:8] not in json.dumps(answers)
    assert server.client.get("/engines").json()["total_count"] == 0


def test_a_symlink_in_the_models_dir_does_not_open_the_way_out(server, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    make_gguf(elsewhere / "real.gguf")
    server.settings.home.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, server.settings.home / "door")

    status, body = engine_answer(server, server.settings.home / "door" / "real.gguf")

    assert status == 400 and body["error"]["code"] == "model_path_not_allowed", body


def test_a_folder_inside_the_models_dir_does_not_lend_its_symlinks_a_way_out(server, tmp_path_factory):
    # The folder passes the root check; the model file in it is a link to one outside every
    # root. It is read as if it were not there: no engine, no metadata of the outside file.
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    make_gguf(elsewhere / "outside.gguf")
    folder = server.settings.home / "innocent"
    folder.mkdir(parents=True)
    os.symlink(elsewhere / "outside.gguf", folder / "model.gguf")

    error = assert_error(server.client.post("/engines", json={"engine_id": "f", "model_path": str(folder)}),
                         400, "model_path", "invalid_model_format")

    assert "outside" not in json.dumps(error), error
    assert server.client.get("/engines").json()["total_count"] == 0


def test_a_folder_with_links_inside_the_models_dir_still_makes_an_engine(server):
    # The Hugging Face cache's own layout: a snapshot folder of links to blobs beside it.
    blobs = server.settings.home / "repo" / "blobs"
    blobs.mkdir(parents=True)
    make_gguf(blobs / "0123abcd")
    snapshot = server.settings.home / "repo" / "snapshots" / "main"
    snapshot.mkdir(parents=True)
    os.symlink("../../blobs/0123abcd", snapshot / "model.gguf")

    response = server.client.post("/engines", json={"engine_id": "snap", "model_path": str(snapshot)})

    assert response.status_code == 201, response.text


def test_a_file_that_is_not_a_model_never_has_its_bytes_echoed(server):
    notes = server.settings.home / "notes.txt"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_bytes(b"\x7fELF-like secret header")

    error = assert_error(server.client.post("/engines", json={"engine_id": "n", "model_path": str(notes)}),
                         400, "model_path", "invalid_model_format")

    assert "7f454c46" not in error["message"] and "ELF" not in error["message"], error


def test_models_under_the_models_dir_or_a_listed_root_are_accepted(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("local-models")
    server = start_server(local_model_roots=(root,))
    inside = make_gguf(root / "listed.gguf")
    server.settings.home.mkdir(parents=True, exist_ok=True)
    in_models = make_gguf(server.settings.home / "here.gguf")

    for engine_id, path in (("listed", inside), ("here", in_models), ("relative", os.path.relpath(in_models))):
        response = server.client.post("/engines", json={"engine_id": engine_id, "model_path": str(path)})
        assert response.status_code == 201, response.text

    missing = server.client.post("/engines", json={"engine_id": "m", "model_path": str(root / "gone.gguf")})
    assert_error(missing, 400, "model_path", "model_path_not_found")


def test_the_local_model_root_flag_and_variable_reach_the_settings(monkeypatch, tmp_path):
    from modelpull.server.cli import settings_from_args

    monkeypatch.setenv("MODELPULL_LOCAL_MODEL_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    from_env, _ = settings_from_args([])
    from_flags, _ = settings_from_args(["--local-model-root", str(tmp_path / "c"), "--local-model-root", "/d",
                                        "--max-queued-jobs", "5"])

    assert from_env.local_model_roots == (tmp_path / "a", tmp_path / "b")
    assert from_flags.local_model_roots == (tmp_path / "c", Path("/d"))
    assert from_flags.max_queued_jobs == 5

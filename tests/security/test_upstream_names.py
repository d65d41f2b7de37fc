"""Finding 1 (and the listing half of 8): names an upstream sends never decide where files land.

A hostile Hub lists digests and blob ids that are paths (`../`, absolute) and names with NUL;
a hostile registry lists digests with a trailing newline. Each job must fail with the upstream's
error code and a message naming the bad entry, and nothing may appear outside the models dir.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes.hub import add_sample_repo

pytestmark = pytest.mark.timeout(60)


def files_outside(root: Path, models: Path) -> set[Path]:
    """Every file, folder and link below `root` that is not the models dir, the database or a log."""
    found = set()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here == models or models in here.parents:
            dirs.clear()
            continue
        found.update(here / name for name in dirs + files if not name.startswith(("state.db", "server-")))
    return found - {models}


@pytest.fixture
def hub_server(fake_hub, hf_env, start_server, tmp_path):
    server = start_server()
    before = files_outside(tmp_path, server.settings.home)
    yield server
    assert files_outside(tmp_path, server.settings.home) == before, "the job created files outside the models dir"


def run_hub_job(server, repo_id: str) -> dict:
    job = server.submit(f"hf:{repo_id}", options={"retry_backoff": 0.01})
    return server.wait_status(job["id"], "completed", "failed", "cancelled")


def edit_entry(path: str, **changes):
    def edit(siblings: list[dict]) -> list[dict]:
        for sibling in siblings:
            if sibling["rfilename"] == path:
                for key, value in changes.items():
                    if key == "lfs_sha256":
                        sibling["lfs"]["sha256"] = value
                    else:
                        sibling[key] = value
        return siblings
    return edit


def test_a_blob_id_that_climbs_out_of_the_cache_fails_the_listing(fake_hub, hub_server, tmp_path):
    sample = add_sample_repo(fake_hub, "org/climb")
    fake_hub.edit_listing(sample.repo_id, edit_entry("config.json", blobId="../../../../../outside/pwned"))

    job = run_hub_job(hub_server, sample.repo_id)

    assert job["status"] == "failed", job
    assert job["error_code"] == "hub_error", job
    assert "config.json" in job["message"] and "git object id" in job["message"], job["message"]


def test_an_absolute_sha256_of_the_right_size_does_not_complete_with_a_link_to_it(
        fake_hub, hub_server, tmp_path_factory):
    sample = add_sample_repo(fake_hub, "org/absolute")
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.bin"
    secret.write_bytes(b"s" * len(sample.main_files["model.safetensors"]))
    fake_hub.edit_listing(sample.repo_id, edit_entry("model.safetensors", lfs_sha256=str(secret)))

    job = run_hub_job(hub_server, sample.repo_id)

    assert job["status"] == "failed", job
    assert job["error_code"] == "hub_error", job
    assert "model.safetensors" in job["message"] and "sha256" in job["message"], job["message"]
    links = [p for p in hub_server.settings.home.rglob("*") if p.is_symlink()]
    assert all(secret != p.resolve() for p in links), links


@pytest.mark.parametrize("name", ["../../../../outside.txt", "/etc/outside.txt", "conf\0ig.json", "a\\..\\..\\b"])
def test_a_listed_file_name_that_is_not_a_plain_relative_path_fails_the_listing(fake_hub, hub_server, name):
    sample = add_sample_repo(fake_hub, "org/names")
    fake_hub.edit_listing(sample.repo_id, edit_entry("README.md", rfilename=name))

    job = run_hub_job(hub_server, sample.repo_id)

    assert job["status"] == "failed", job
    assert job["error_code"] == "hub_error", job
    assert repr(name) in job["message"], job["message"]


def test_a_hub_that_answers_no_json_is_a_hub_error_not_an_internal_one(fake_hub, hub_server):
    fake_hub.answer_api_with(b"<html><body>Please log in to the proxy</body></html>")

    job = run_hub_job(hub_server, "org/anything")

    assert job["status"] == "failed", job
    assert job["error_code"] == "hub_error", job
    assert "JSON" in job["message"] and "please report" not in job["message"], job["message"]


@pytest.mark.parametrize("digest", ["sha256:{hex}\n", "sha256:../../../../outside", "sha256:{HEX}", "md5:{hex}"])
def test_a_registry_digest_that_is_not_64_lowercase_hex_fails_the_manifest(
        fake_ollama_registry, start_server, tmp_path, digest):
    server = start_server()
    before = files_outside(tmp_path, server.settings.home)
    model = fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    real = model.model_layer.hex
    hostile = digest.format(hex=real, HEX=real.upper())

    def edit(manifest: dict) -> dict:
        for layer in manifest["layers"]:
            if layer["digest"] == model.model_layer.digest:
                layer["digest"] = hostile
        return manifest

    fake_ollama_registry.edit_manifest(model, edit)

    job = server.submit("ollama:tinyllama", options={"direct": True, "registry": fake_ollama_registry.base_url})
    job = server.wait_status(job["id"], "completed", "failed", "cancelled")

    assert job["status"] == "failed", job
    assert job["error_code"] == "bad_manifest", job
    assert repr(hostile) in job["message"], job["message"]
    assert files_outside(tmp_path, server.settings.home) == before


def test_a_symlink_planted_in_the_cache_does_not_carry_files_out(fake_hub, hub_server, tmp_path_factory):
    sample = add_sample_repo(fake_hub, "org/linked")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    repo_folder = hub_server.settings.home / "huggingface" / "hub" / "models--org--linked"
    repo_folder.mkdir(parents=True)
    (repo_folder / "blobs").symlink_to(elsewhere, target_is_directory=True)

    job = run_hub_job(hub_server, sample.repo_id)

    assert job["status"] == "failed", job
    assert job["error_code"] == "unsafe_path", job
    assert "outside" in job["message"], job["message"]
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name, said", [
    ("config.json/README.md", "'config.json' is listed as a file and as the folder of 'config.json/README.md'"),
    ("config.json", "'config.json' is listed twice"),
])
def test_a_listing_whose_names_cannot_all_be_files_fails_before_any_download(fake_hub, hub_server, name, said):
    """A file that is also another file's folder (or one path listed twice) would end, halfway
    through the download, as a raw "Not a directory": the listing is refused first."""
    sample = add_sample_repo(fake_hub, "org/tree")
    fake_hub.edit_listing(sample.repo_id, edit_entry("README.md", rfilename=name))

    job = run_hub_job(hub_server, sample.repo_id)

    assert job["status"] == "failed", job
    assert job["error_code"] == "hub_error", job
    assert said in job["message"] and "Not a directory" not in job["message"], job["message"]
    assert not any(hub_server.settings.home.rglob("*.safetensors")), "a file was downloaded from a refused listing"

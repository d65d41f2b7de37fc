"""The fake Hub is faithful: the official `huggingface_hub` client works against it unchanged."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from fakes.hub import add_sample_repo

pytestmark = pytest.mark.timeout(60)


def test_snapshot_download_of_a_branch_returns_every_file_byte_identical(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    folder = Path(snapshot_download(sample.repo_id, revision=sample.revision, endpoint=fake_hub.endpoint))

    assert folder == hf_env / "models--org--tiny-model" / "snapshots" / sample.commit
    assert {p: (folder / p).read_bytes() for p in sample.files} == sample.files
    assert (hf_env / "models--org--tiny-model" / "refs" / "release" / "v2").read_text() == sample.commit


def test_lfs_files_come_from_the_cdn_host_and_regular_files_from_the_hub(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    snapshot_download(sample.repo_id, revision=sample.revision, endpoint=fake_hub.endpoint)

    cdn_paths = sorted(r.path.strip("/") for r in fake_hub.cdn_gets())
    lfs_digests = sorted(fake_hub.file(sample.repo_id, p, sample.revision).sha256 for p in sample.lfs_paths)
    assert cdn_paths == lfs_digests
    hub_gets = {r.path for r in fake_hub.hub_requests("GET") if "/resolve/" in r.path}
    assert hub_gets == {f"/{sample.repo_id}/resolve/{sample.commit}/{p}"
                        for p in sample.files if p not in sample.lfs_paths}


def test_hf_hub_download_links_a_nested_file_to_its_blob(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    path = "weights/deep/part-00001.safetensors"

    local = Path(hf_hub_download(sample.repo_id, path, revision=sample.commit, endpoint=fake_hub.endpoint))

    assert local.read_bytes() == sample.files[path]
    sha256 = fake_hub.file(sample.repo_id, path, sample.revision).sha256
    assert os.readlink(local) == f"../../../../blobs/{sha256}"


def test_hf_hub_download_from_main_of_a_regular_file(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    local = Path(hf_hub_download(sample.repo_id, "config.json", endpoint=fake_hub.endpoint))

    assert local.read_bytes() == sample.main_files["config.json"]
    assert local.parent.name == sample.main_commit
    assert os.readlink(local) == f"../../blobs/{fake_hub.file(sample.repo_id, 'config.json').blob_id}"


def test_a_dataset_is_served_under_its_own_prefix(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, "org/tiny-data", repo_type="dataset")

    folder = Path(snapshot_download(sample.repo_id, repo_type="dataset", endpoint=fake_hub.endpoint))

    assert folder.parent.parent.name == "datasets--org--tiny-data"
    assert {p: (folder / p).read_bytes() for p in sample.main_files} == sample.main_files
    assert any(r.path.startswith("/datasets/org/tiny-data/resolve/") for r in fake_hub.hub_requests("HEAD"))


def test_a_private_repo_needs_a_token_that_never_reaches_the_cdn(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, "org/secret", private=True)
    fake_hub.add_token("hf_reader")
    fake_hub.grant(sample.repo_id, "hf_reader")

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        snapshot_download(sample.repo_id, endpoint=fake_hub.endpoint, token=False)
    folder = Path(snapshot_download(sample.repo_id, endpoint=fake_hub.endpoint, token="hf_reader"))

    assert anonymous.value.response.status_code == 401
    assert (folder / "model.safetensors").read_bytes() == sample.main_files["model.safetensors"]
    assert fake_hub.cdn_gets() and fake_hub.cdn_authorization_headers == []
    assert all(r.headers.get("authorization") == "Bearer hf_reader"
               for r in fake_hub.hub_requests() if r.status == 200)


def test_the_cdn_refuses_an_authorization_header_and_records_it(fake_hub):
    sample = add_sample_repo(fake_hub)
    sha256 = fake_hub.file(sample.repo_id, "model.safetensors").sha256

    response = httpx.get(f"{fake_hub.cdn_base_url}/{sha256}", headers={"authorization": "Bearer hf_x"})

    assert response.status_code == 400
    assert fake_hub.cdn_authorization_headers == ["Bearer hf_x"]


def test_a_missing_repo_is_401_anonymous_and_404_with_a_token(fake_hub, hf_env):
    fake_hub.add_token("hf_valid")
    api = HfApi(endpoint=fake_hub.endpoint)

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        api.repo_info("org/nope", token=False)
    with pytest.raises(RepositoryNotFoundError) as with_token:
        api.repo_info("org/nope", token="hf_valid")

    assert anonymous.value.response.status_code == 401
    assert with_token.value.response.status_code == 404
    assert with_token.value.response.headers["X-Error-Code"] == "RepoNotFound"


def test_a_gated_repo_lists_files_but_refuses_them_until_approved(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, "org/gated", gated=True)
    fake_hub.add_token("hf_waiting")
    fake_hub.add_token("hf_approved")
    fake_hub.grant(sample.repo_id, "hf_approved")
    api = HfApi(endpoint=fake_hub.endpoint)

    info = api.repo_info(sample.repo_id, token=False)
    with pytest.raises(GatedRepoError) as anonymous:
        hf_hub_download(sample.repo_id, "config.json", endpoint=fake_hub.endpoint, token=False)
    with pytest.raises(GatedRepoError) as waiting:
        hf_hub_download(sample.repo_id, "config.json", endpoint=fake_hub.endpoint, token="hf_waiting")
    local = hf_hub_download(sample.repo_id, "config.json", endpoint=fake_hub.endpoint, token="hf_approved")

    assert info.gated == "manual" and info.sha == sample.main_commit
    assert anonymous.value.response.status_code == 401
    assert "Access to model org/gated is restricted" in str(anonymous.value)
    assert waiting.value.response.status_code == 403
    assert "not in the authorized list" in str(waiting.value)
    assert Path(local).read_bytes() == sample.main_files["config.json"]


def test_auth_check_tells_approved_tokens_from_others(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, "org/gated", gated=True)
    fake_hub.add_token("hf_waiting")
    api = HfApi(endpoint=fake_hub.endpoint)

    with pytest.raises(GatedRepoError) as waiting:
        api.auth_check(sample.repo_id, token="hf_waiting")

    assert waiting.value.response.status_code == 403


def test_an_invalid_token_is_refused_even_on_a_public_repo(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(endpoint=fake_hub.endpoint).repo_info(sample.repo_id, token="hf_bogus")

    assert not isinstance(refused.value, RepositoryNotFoundError)
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"


def test_unknown_revision_and_unknown_file_carry_their_error_codes(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    with pytest.raises(RevisionNotFoundError):
        snapshot_download(sample.repo_id, revision="no-such-branch", endpoint=fake_hub.endpoint)
    with pytest.raises(EntryNotFoundError) as missing:
        hf_hub_download(sample.repo_id, "nope.bin", endpoint=fake_hub.endpoint)

    assert missing.value.response.headers["X-Repo-Commit"] == sample.main_commit


def test_the_tree_is_paginated_with_link_headers(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    listed = HfApi(endpoint=fake_hub.endpoint).list_repo_tree(sample.repo_id, revision=sample.revision,
                                                              recursive=True)
    files = {f.path: f for f in listed if hasattr(f, "blob_id")}

    assert set(files) == set(sample.files)
    assert files["model.safetensors"].lfs.sha256 == fake_hub.file(sample.repo_id, "model.safetensors",
                                                                  sample.revision).sha256
    assert files["config.json"].lfs is None
    tree_pages = [r for r in fake_hub.hub_requests("GET") if "/tree/" in r.path]
    assert len(tree_pages) > 1


def test_a_429_with_retry_after_is_retried_by_the_official_client(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    fake_hub.fail_next(429, where="api", retry_after=0)

    listed = list(HfApi(endpoint=fake_hub.endpoint).list_repo_tree(sample.repo_id, recursive=True))

    assert listed
    statuses = [r.status for r in fake_hub.hub_requests("GET")]
    assert statuses[:2] == [429, 200]


def test_the_cdn_honours_ranges_and_can_corrupt_a_byte(fake_hub):
    sample = add_sample_repo(fake_hub)
    blob = fake_hub.file(sample.repo_id, "model.safetensors")
    url = f"{fake_hub.cdn_base_url}/{blob.sha256}"
    data = sample.main_files["model.safetensors"]

    middle = httpx.get(url, headers={"Range": "bytes=10-19"})
    tail = httpx.get(url, headers={"Range": "bytes=-5"})
    beyond = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    fake_hub.corrupt(blob.sha256, offset=15)
    corrupted = httpx.get(url)

    assert middle.status_code == 206 and middle.content == data[10:20]
    assert middle.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert tail.status_code == 206 and tail.content == data[-5:]
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert len(corrupted.content) == len(data) and corrupted.content != data
    assert corrupted.content[15] == data[15] ^ 0xFF


def test_resolve_head_carries_the_headers_the_client_reads(fake_hub):
    sample = add_sample_repo(fake_hub)
    blob = fake_hub.file(sample.repo_id, "model.safetensors")
    base = f"{fake_hub.endpoint}/{sample.repo_id}/resolve/main"

    lfs = httpx.head(f"{base}/model.safetensors")
    regular = httpx.head(f"{base}/config.json")

    assert lfs.status_code == 302
    assert lfs.headers["Location"].startswith(fake_hub.cdn_base_url + "/" + blob.sha256)
    assert lfs.headers["X-Linked-Etag"] == f'"{blob.sha256}"'
    assert lfs.headers["X-Linked-Size"] == str(blob.size)
    assert lfs.headers["X-Repo-Commit"] == sample.main_commit
    assert regular.status_code == 200
    assert regular.headers["ETag"] == f'"{fake_hub.file(sample.repo_id, "config.json").blob_id}"'
    assert regular.headers["Content-Length"] == str(len(sample.main_files["config.json"]))
    assert not any(h.lower().startswith("x-xet") for h in (*lfs.headers, *regular.headers))

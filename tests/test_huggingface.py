"""The Hugging Face provider against the fake Hub: layout, verification, progress, errors."""
from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download, snapshot_download, try_to_load_from_cache

from fakes.hub import add_sample_repo
from modelpull import DownloadProgress, DownloadStatus, download_model

pytestmark = pytest.mark.timeout(60)

# Small pieces so that the LFS files go through several ranged requests to the CDN.
RANGED = {"multipart_threshold": 50_000, "piece_size": 32_768, "connections": 4}


async def collect(model: str, provider: str = "huggingface", **options) -> list[DownloadProgress]:
    options.setdefault("retry_backoff", 0.01)
    return [item async for item in download_model(provider, model, **options)]


def final(items: list[DownloadProgress]) -> DownloadProgress:
    assert items[0].status is DownloadStatus.STARTING
    return items[-1]


def go_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


# ---- the snapshot on disk ------------------------------------------------------------------

async def test_a_branch_is_verified_and_laid_out_for_huggingface_hub_offline(fake_hub, hf_env, monkeypatch):
    sample = add_sample_repo(fake_hub)

    done = final(await collect(sample.repo_id, revision=sample.revision, **RANGED))

    snapshot = hf_env / "models--org--tiny-model" / "snapshots" / sample.commit
    assert done.status is DownloadStatus.COMPLETE, done.message
    assert done.local_path == str(snapshot)
    assert (hf_env / "models--org--tiny-model" / "refs" / "release" / "v2").read_bytes() == sample.commit.encode()
    go_offline(monkeypatch)
    assert snapshot_download(sample.repo_id, revision=sample.revision, cache_dir=hf_env) == str(snapshot)
    for path, content in sample.files.items():
        local = hf_hub_download(sample.repo_id, path, revision=sample.revision, cache_dir=hf_env)
        assert Path(local).read_bytes() == content, path
        assert try_to_load_from_cache(sample.repo_id, path, cache_dir=hf_env, revision=sample.revision) == local


async def test_snapshot_links_are_relative_and_point_at_blobs_named_by_etag(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    await collect(sample.repo_id, revision=sample.revision)

    snapshot = hf_env / "models--org--tiny-model" / "snapshots" / sample.commit
    for path in sample.files:
        link = snapshot / path
        etag = fake_hub.file(sample.repo_id, path, sample.revision).etag
        assert link.is_symlink()
        assert os.readlink(link) == "../" * (path.count("/") + 2) + f"blobs/{etag}"


async def test_a_second_download_transfers_nothing_and_says_so(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    await collect(sample.repo_id, revision=sample.revision)
    fake_hub.clear_log()

    items = await collect(sample.repo_id, revision=sample.revision)

    assert final(items).status is DownloadStatus.COMPLETE
    assert fake_hub.cdn_gets() == []
    assert not any("/resolve/" in r.path for r in fake_hub.hub_requests())
    assert any("already" in item.message for item in items if item.status is DownloadStatus.DOWNLOADING)
    assert "already" in final(items).message


async def test_files_cached_by_huggingface_hub_are_not_fetched_again(fake_hub, hf_env, tmp_path):
    sample = add_sample_repo(fake_hub)
    cache = tmp_path / "shared-cache"
    snapshot_download(sample.repo_id, revision=sample.revision, cache_dir=cache)
    fake_hub.clear_log()

    done = final(await collect(sample.repo_id, revision=sample.revision, cache_dir=str(cache)))

    assert done.status is DownloadStatus.COMPLETE
    assert done.local_path == str(cache / "models--org--tiny-model" / "snapshots" / sample.commit)
    assert done.downloaded_bytes == done.total_bytes == sum(map(len, sample.files.values()))
    assert fake_hub.cdn_gets() == []


async def test_main_is_the_default_revision(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    done = final(await collect(sample.repo_id))

    assert Path(done.local_path).name == sample.main_commit
    assert {p: (Path(done.local_path) / p).read_bytes() for p in sample.main_files} == sample.main_files
    assert (hf_env / "models--org--tiny-model" / "refs" / "main").read_text() == sample.main_commit


async def test_a_commit_sha_revision_writes_no_ref(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    done = final(await collect(sample.repo_id, revision=sample.commit))

    assert done.status is DownloadStatus.COMPLETE
    assert not (hf_env / "models--org--tiny-model" / "refs").exists()


async def test_one_filename_gives_the_path_of_that_file(fake_hub, hf_env, monkeypatch):
    sample = add_sample_repo(fake_hub)
    path = "weights/deep/part-00001.safetensors"

    done = final(await collect(sample.repo_id, revision=sample.revision, filename=path))

    assert Path(done.local_path).read_bytes() == sample.files[path]
    assert done.files_total == 1 and done.total_bytes == len(sample.files[path])
    go_offline(monkeypatch)
    assert Path(hf_hub_download(sample.repo_id, path, revision=sample.revision)).read_bytes() == sample.files[path]


async def test_patterns_select_the_files(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    done = final(await collect(sample.repo_id, revision=sample.revision, allow_patterns=["*.json", "weights/*"],
                               ignore_patterns="tokenizer/*"))

    got = sorted(str(p.relative_to(done.local_path)) for p in Path(done.local_path).rglob("*") if p.is_file())
    assert got == ["config.json", "weights/deep/part-00001.safetensors"]


async def test_a_local_dir_gets_plain_files_that_huggingface_hub_recognises(fake_hub, hf_env, tmp_path, monkeypatch):
    sample = add_sample_repo(fake_hub)
    target = tmp_path / "plain"

    done = final(await collect(sample.repo_id, revision=sample.revision, local_dir=str(target)))

    assert done.local_path == str(target)
    for path, content in sample.files.items():
        assert not (target / path).is_symlink() and (target / path).read_bytes() == content
    fake_hub.clear_log()
    local = hf_hub_download(sample.repo_id, "model.safetensors", revision=sample.commit, local_dir=target)
    assert Path(local).read_bytes() == sample.files["model.safetensors"]
    assert fake_hub.requests == []  # recognised from its metadata, no request at all
    again = await collect(sample.repo_id, revision=sample.revision, local_dir=str(target))
    assert "already" in final(again).message and fake_hub.cdn_gets() == []


async def test_a_dataset(fake_hub, hf_env, monkeypatch):
    sample = add_sample_repo(fake_hub, "org/tiny-data", repo_type="dataset")

    done = final(await collect(sample.repo_id, repo_type="dataset"))

    assert Path(done.local_path).parent.parent.name == "datasets--org--tiny-data"
    go_offline(monkeypatch)
    folder = Path(snapshot_download(sample.repo_id, repo_type="dataset"))
    assert {p: (folder / p).read_bytes() for p in sample.main_files} == sample.main_files


async def test_identical_files_share_one_blob_and_empty_files_work(fake_hub, hf_env, monkeypatch):
    same = b'{"shared": true}\n'
    fake_hub.add_repo("org/dupes", {"a/config.json": same, "b/config.json": same, "empty.txt": b"",
                                    "w.safetensors": b"\x01" * 5000, "copy.safetensors": b"\x01" * 5000})

    items = await collect("org/dupes")

    done = final(items)
    assert done.status is DownloadStatus.COMPLETE, done.message
    assert done.files_total == 3  # three distinct blobs
    go_offline(monkeypatch)
    folder = Path(snapshot_download("org/dupes"))
    assert (folder / "a/config.json").read_bytes() == (folder / "b/config.json").read_bytes() == same
    assert (folder / "empty.txt").read_bytes() == b""
    assert (folder / "copy.safetensors").read_bytes() == b"\x01" * 5000


# ---- the token and the CDN -----------------------------------------------------------------

async def test_the_token_goes_to_the_hub_and_never_to_the_cdn(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, "org/secret", private=True)
    fake_hub.add_token("hf_reader")
    fake_hub.grant(sample.repo_id, "hf_reader")

    items = await collect(sample.repo_id, token="hf_reader", **RANGED)

    assert final(items).status is DownloadStatus.COMPLETE, final(items).message
    assert len(fake_hub.cdn_gets()) >= 2  # the probe and at least one more ranged request
    assert fake_hub.cdn_authorization_headers == []
    resolves = [r for r in fake_hub.hub_requests() if "/resolve/" in r.path]
    assert resolves and all(r.headers.get("authorization") == "Bearer hf_reader" for r in resolves)
    assert not any("hf_reader" in str(item.to_dict()) for item in items)


@pytest.mark.parametrize("variable", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
async def test_the_token_comes_from_the_environment(fake_hub, hf_env, monkeypatch, variable):
    sample = add_sample_repo(fake_hub, "org/gated", gated=True)
    fake_hub.add_token("hf_approved")
    fake_hub.grant(sample.repo_id, "hf_approved")
    monkeypatch.setenv(variable, "hf_approved")

    done = final(await collect(sample.repo_id))

    assert done.status is DownloadStatus.COMPLETE, done.message
    assert fake_hub.cdn_authorization_headers == []


async def test_a_corrupted_cdn_byte_is_a_digest_mismatch_and_nothing_lands_in_the_snapshot(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    blob = fake_hub.file(sample.repo_id, "model.safetensors", sample.revision)
    fake_hub.corrupt(blob.sha256, offset=blob.size // 2)

    done = final(await collect(sample.repo_id, revision=sample.revision, **RANGED))

    storage = hf_env / "models--org--tiny-model"
    assert done.status is DownloadStatus.ERROR
    assert done.error_code == "digest_mismatch"
    assert not (storage / "snapshots" / sample.commit / "model.safetensors").exists()
    assert not (storage / "blobs" / blob.sha256).exists()
    assert not list((storage / "blobs").glob(f"{blob.sha256}*"))  # no partial kept either


# ---- progress ------------------------------------------------------------------------------

async def test_progress_counts_bytes_of_the_whole_snapshot(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, lfs_size=400_000)
    fake_hub.cdn_rate = 4_000_000  # long enough for several progress items
    total = sum(map(len, sample.files.values()))

    items = await collect(sample.repo_id, revision=sample.revision, **RANGED)

    downloading = [i for i in items if i.status is DownloadStatus.DOWNLOADING]
    assert downloading[0].total_bytes == total
    assert downloading[0].files_total == len(sample.files)
    counts = [i.downloaded_bytes for i in items[1:]]
    assert counts == sorted(counts)
    assert all(i.total_bytes == total for i in items[1:])
    done = final(items)
    assert done.status is DownloadStatus.COMPLETE and done.percent == 100.0
    assert done.downloaded_bytes == total and done.files_completed == len(sample.files)
    assert done.local_path == str(hf_env / "models--org--tiny-model" / "snapshots" / sample.commit)


async def test_closing_the_stream_stops_the_download_and_the_next_one_resumes(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, lfs_size=2_000_000)
    fake_hub.cdn_rate = 200_000  # the whole repo would take about 20 s
    regular_bytes = sum(len(c) for p, c in sample.files.items() if p not in sample.lfs_paths)
    stream = download_model("huggingface", sample.repo_id, revision=sample.revision, **RANGED)
    async for item in stream:
        if item.status is DownloadStatus.DOWNLOADING and item.downloaded_bytes > regular_bytes:
            break  # some LFS bytes have arrived from the CDN
    await stream.aclose()  # the test's timeout is the bound on "promptly"
    await asyncio.sleep(0.3)  # requests already on the wire reach the server's log
    settled = len(fake_hub.cdn_gets())
    await asyncio.sleep(0.5)

    assert len(fake_hub.cdn_gets()) == settled  # no retry, no new piece after the close
    blobs = hf_env / "models--org--tiny-model" / "blobs"
    assert list(blobs.glob("*.part"))  # partial data kept
    fake_hub.cdn_rate = None
    done = final(await collect(sample.repo_id, revision=sample.revision, **RANGED))
    assert done.status is DownloadStatus.COMPLETE, done.message
    assert Path(done.local_path, "model.safetensors").read_bytes() == sample.files["model.safetensors"]


# ---- errors --------------------------------------------------------------------------------

async def test_a_missing_repo(fake_hub, hf_env):
    done = final(await collect("org/nope"))

    assert done.status is DownloadStatus.ERROR
    assert done.error_code == "repo_not_found"
    assert done.message.startswith("Model 'org/nope' not found on Hugging Face Hub")


async def test_a_private_repo_without_access_reads_as_missing(fake_hub, hf_env):
    add_sample_repo(fake_hub, "org/secret", private=True)
    fake_hub.add_token("hf_other")

    anonymous = final(await collect("org/secret"))
    other = final(await collect("org/secret", token="hf_other"))

    assert anonymous.error_code == other.error_code == "repo_not_found"
    assert "provide a token" in anonymous.message


async def test_a_gated_repo_without_a_token(fake_hub, hf_env):
    add_sample_repo(fake_hub, "org/gated", gated=True)

    done = final(await collect("org/gated"))

    assert done.error_code == "gated_repo"
    assert done.message.startswith("Model 'org/gated' is gated: provide a Hugging Face token with token= or HF_TOKEN")
    assert fake_hub.cdn_gets() == []


async def test_a_gated_repo_with_a_token_not_yet_approved(fake_hub, hf_env):
    add_sample_repo(fake_hub, "org/gated", gated=True)
    fake_hub.add_token("hf_waiting")

    done = final(await collect("org/gated", token="hf_waiting"))

    assert done.error_code == "gated_no_access"
    assert f"{fake_hub.endpoint}/org/gated" in done.message
    assert "hf_waiting" not in done.message


async def test_an_invalid_token(fake_hub, hf_env):
    add_sample_repo(fake_hub)

    done = final(await collect("org/tiny-model", token="hf_bogus"))

    assert done.error_code == "invalid_token"
    assert "rejected" in done.message and "hf_bogus" not in done.message


async def test_a_missing_revision(fake_hub, hf_env):
    add_sample_repo(fake_hub)

    done = final(await collect("org/tiny-model", revision="v9"))

    assert done.error_code == "revision_not_found"
    assert "'v9'" in done.message


@pytest.mark.parametrize("options, named", [({"filename": "nope.bin"}, "nope.bin"),
                                            ({"allow_patterns": ["*.gguf"]}, "*.gguf")])
async def test_a_file_or_pattern_that_matches_nothing(fake_hub, hf_env, options, named):
    add_sample_repo(fake_hub)

    done = final(await collect("org/tiny-model", **options))

    assert done.error_code == "entry_not_found"
    assert named in done.message


async def test_rate_limiting_is_waited_out(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    fake_hub.fail_next(429, where="api", retry_after=0)
    fake_hub.fail_next(429, where="resolve", retry_after=0)

    done = final(await collect(sample.repo_id))

    assert done.status is DownloadStatus.COMPLETE, done.message
    assert [r.status for r in fake_hub.hub_requests()].count(429) == 2


async def test_rate_limiting_that_does_not_end(fake_hub, hf_env):
    add_sample_repo(fake_hub)
    fake_hub.fail_next(429, where="api", retry_after=0, times=10)

    done = final(await collect("org/tiny-model", max_retries=2))

    assert done.error_code == "rate_limited"
    assert [r.status for r in fake_hub.hub_requests()] == [429, 429, 429]


async def test_an_unreachable_hub(hf_env):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    done = final(await collect("org/tiny-model", base_url=f"http://127.0.0.1:{port}", max_retries=1))

    assert done.error_code == "hub_unreachable"
    assert done.message.startswith(f"Cannot connect to Hugging Face Hub at http://127.0.0.1:{port}")


async def test_an_unknown_option_and_a_bad_repo_type(fake_hub, hf_env):
    unknown = final(await collect("org/tiny-model", branch="main"))
    bad_type = final(await collect("org/tiny-model", repo_type="space"))

    assert unknown.error_code == bad_type.error_code == "invalid_request"


# ---- AbstractCore's own suite, against the fake Hub ------------------------------------------

class TestHuggingFaceDownload:
    """AbstractCore's tests/download/test_model_download.py, pointed at the fake Hub by HF_ENDPOINT."""

    @pytest.fixture(autouse=True)
    def tiny_random_gpt2(self, fake_hub, hf_env):
        fake_hub.add_repo("hf-internal-testing/tiny-random-gpt2", {
            "config.json": b'{"model_type": "gpt2", "n_layer": 2}',
            "model.safetensors": b"\0" * 20_000,
            "pytorch_model.bin": b"\1" * 20_000,
            "vocab.json": b'{"a": 0}',
        })

    @pytest.mark.parametrize("provider", ["huggingface", "mlx"])
    async def test_download_small_model(self, provider):
        progress_updates = []
        async for progress in download_model(provider, "hf-internal-testing/tiny-random-gpt2"):
            progress_updates.append(progress)
            assert isinstance(progress, DownloadProgress)
            assert isinstance(progress.status, DownloadStatus)
            assert isinstance(progress.message, str)

        assert len(progress_updates) >= 2
        assert progress_updates[0].status == DownloadStatus.STARTING
        assert progress_updates[-1].status == DownloadStatus.COMPLETE
        assert progress_updates[-1].percent == 100.0

    @pytest.mark.parametrize("provider", ["huggingface", "mlx"])
    async def test_download_nonexistent_model(self, provider):
        progress_updates = []
        async for progress in download_model(provider, "nonexistent-org/nonexistent-model-xyz"):
            progress_updates.append(progress)

        assert progress_updates[-1].status == DownloadStatus.ERROR
        assert "not found" in progress_updates[-1].message.lower()

    async def test_unsupported_provider_raises(self):
        with pytest.raises(ValueError, match="does not support"):
            async for _ in download_model("openai", "gpt-4"):
                pass

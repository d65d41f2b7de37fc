"""Models on disk: listed, verified, repaired and removed over layouts the official tools wrote."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, snapshot_download
from huggingface_hub.utils import _shared_blobs

from disk_damage import flip_byte
from fakes.hub import add_sample_repo
from modelpull import DownloadStatus, download_model
from modelpull._inventory import CORRUPT, OK, InUse, Inventory, Use

pytestmark = pytest.mark.timeout(60)


def hub_inventory(cache: Path, **kwargs) -> Inventory:
    return Inventory(roots={"huggingface": [cache]}, **kwargs)


async def pulled(provider: str, model: str, **options):
    items = [item async for item in download_model(provider, model, retry_backoff=0.01, **options)]
    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    return items[-1]


# ---- the Hub cache, written by huggingface_hub --------------------------------------------

def test_revisions_written_by_huggingface_hub_are_listed_as_scan_cache_dir_sees_them(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    snapshot_download(sample.repo_id)
    snapshot_download(sample.repo_id, revision=sample.revision)

    models = hub_inventory(hf_env).models()

    scanned = {r.commit_hash: r for repo in scan_cache_dir(hf_env).repos for r in repo.revisions}
    assert {m.revision for m in models} == set(scanned) == {sample.main_commit, sample.commit}
    for model in models:
        revision = scanned[model.revision]
        assert model.id == f"hf:{sample.repo_id}@{model.revision}"
        assert sorted(model.refs) == sorted(revision.refs)
        assert model.size_on_disk == revision.size_on_disk
        assert {f.name for f in model.files} == {str(f.file_path.relative_to(revision.snapshot_path))
                                                 for f in revision.files}
    # README.md and the tokenizer are the same blob in both revisions: the total counts them once.
    (repo,) = scan_cache_dir(hf_env).repos
    assert hub_inventory(hf_env).summary()["totals"]["huggingface"]["size_on_disk"] == repo.size_on_disk


def test_removing_one_revision_keeps_the_blobs_the_other_uses_and_scan_cache_dir_agrees(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    snapshot_download(sample.repo_id)
    snapshot_download(sample.repo_id, revision=sample.revision)
    inventory = hub_inventory(hf_env)
    (branch,) = inventory.find(f"hf:{sample.repo_id}@{sample.revision}")

    freed = inventory.remove(branch)

    cache = scan_cache_dir(hf_env)
    assert cache.warnings == []
    (repo,) = cache.repos
    assert [r.commit_hash for r in repo.revisions] == [sample.main_commit]
    (main,) = repo.revisions
    for file in main.files:  # every file of main still readable
        assert file.file_path.read_bytes() == sample.main_files[str(file.file_path.relative_to(main.snapshot_path))]
    shared = {"README.md", "tokenizer/tokenizer.json"}
    assert freed == sum(len(c) for p, c in sample.files.items() if p not in shared)
    assert not (hf_env / "models--org--tiny-model" / "refs" / "release" / "v2").exists()


def test_removing_the_last_revision_removes_the_repo(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    snapshot_download(sample.repo_id)
    inventory = hub_inventory(hf_env)

    for model in inventory.find(f"hf:{sample.repo_id}"):
        inventory.remove(model)

    assert scan_cache_dir(hf_env).repos == frozenset()
    assert inventory.models() == []


def test_a_shared_blob_store_entry_counts_once_and_goes_with_its_last_user(fake_hub, hf_env):
    weights = os.urandom(300_000)
    fake_hub.add_repo("org/a", {"model.safetensors": weights, "config.json": b'{"a": 1}'})
    fake_hub.add_repo("org/b", {"model.safetensors": weights, "config.json": b'{"b": 1}'})
    snapshot_download("org/a")
    snapshot_download("org/b")
    xet_hash = "ab" * 32
    etag = fake_hub.file("org/a", "model.safetensors").etag
    for repo in ("org/a", "org/b"):  # huggingface_hub 2.x moves a Xet file into the shared store
        blob = hf_env / f"models--{repo.replace('/', '--')}" / "blobs" / etag
        assert _shared_blobs.publish_blob_to_shared_store(blob_path=str(blob), xet_hash=xet_hash,
                                                          cache_dir=hf_env, expected_size=len(weights))
    store_entry = _shared_blobs.shared_blob_path(hf_env, xet_hash)
    inventory = hub_inventory(hf_env)

    total = inventory.summary()["totals"]["huggingface"]["size_on_disk"]
    assert total == len(weights) + len(b'{"a": 1}') + len(b'{"b": 1}')
    (a,) = inventory.find("hf:org/a")
    inventory.remove(a)
    assert store_entry.is_file()  # org/b still links to it
    (b,) = inventory.find("hf:org/b")
    assert inventory.verify([b])[0].status == OK
    inventory.remove(b)
    assert not store_entry.exists() and not store_entry.with_name(xet_hash + ".refs").exists()
    assert scan_cache_dir(hf_env).warnings == []


async def test_a_flipped_byte_is_caught_and_repair_fetches_only_that_file(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    await pulled("huggingface", sample.repo_id, revision=sample.revision)
    inventory = hub_inventory(hf_env)
    (model,) = inventory.models()
    target = next(f for f in model.files if f.name == "weights/deep/part-00001.safetensors")
    flip_byte(target.path)

    checks = inventory.verify([model])

    assert {c.file.name: c.status for c in checks if c.status != OK} == {target.name: CORRUPT}
    fake_hub.clear_log()
    items = [i async for i in inventory.repair(model, [c.file for c in checks if c.status == CORRUPT],
                                               retry_backoff=0.01)]
    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    fetched = {r.path for r in fake_hub.hub_requests() if "/resolve/" in r.path}
    assert fetched == {f"/{sample.repo_id}/resolve/{sample.commit}/{target.name}"}
    assert all(c.status == OK for c in inventory.verify(inventory.models()))


def test_remove_is_refused_while_an_engine_uses_the_model(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    folder = Path(snapshot_download(sample.repo_id))
    inventory = hub_inventory(hf_env, uses=lambda: [Use("engine 'chat'", [folder / "model.safetensors"])])
    (model,) = inventory.models()

    with pytest.raises(InUse, match="engine 'chat'"):
        inventory.remove(model)
    assert folder.is_dir()


def test_a_download_huggingface_hub_left_unfinished_is_a_partial_that_prune_removes(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    snapshot_download(sample.repo_id)
    blobs = hf_env / "models--org--tiny-model" / "blobs"
    (blobs / ("f" * 64 + ".incomplete")).write_bytes(b"x" * 5000)
    inventory = hub_inventory(hf_env)

    partial = [m for m in inventory.models() if m.status == "partial"]
    assert [m.id for m in partial] == ["partial:hf:org/tiny-model"]
    assert partial[0].size_on_disk > 0
    assert inventory.prunable(older_than_days=1) == []  # too young
    leftovers = inventory.prunable()
    assert [left.model.id for left in leftovers] == ["partial:hf:org/tiny-model"]
    inventory.prune(leftovers)
    assert not list(blobs.glob("*.incomplete"))
    assert [m.status for m in inventory.models()] == ["complete"]


# ---- Ollama's store -----------------------------------------------------------------------

async def test_ollama_models_are_listed_shown_and_removed_as_ollama_rm_does(fake_ollama_registry, tmp_path):
    first = fake_ollama_registry.add_model("tinyllama", model_size=60_000)
    second = fake_ollama_registry.add_model("tinyllama:other", model_size=60_000, seed=1)
    store = tmp_path / "ollama"
    for name in ("tinyllama", "tinyllama:other"):
        await pulled("ollama", name, direct=True, registry=fake_ollama_registry.base_url, models_path=str(store))
    inventory = Inventory(roots={"ollama": [store]})

    models = {m.id: m for m in inventory.models()}
    assert set(models) == {"ollama:tinyllama:latest", "ollama:tinyllama:other"}
    latest = models["ollama:tinyllama:latest"]
    assert latest.size_on_disk == first.total_size  # the sum of its layers, as `ollama list` shows
    assert latest.digest == f"sha256:{first.model_layer.hex}"
    shown = inventory.show(latest)
    assert shown["formats"][0]["format"] == "gguf" and shown["formats"][0]["architecture"] == "llama"
    assert shown["formats"][0]["context_length"] == 2048
    assert [m.id for m in inventory.find("tinyllama")] == [latest.id]

    inventory.remove(latest)

    left = {p.name for p in (store / "blobs").iterdir()}
    assert left == {f"sha256-{b.hex}" for b in (*second.blobs,)}
    assert not (store / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "latest").exists()


# ---- URL downloads ------------------------------------------------------------------------

async def test_a_url_download_is_listed_with_its_source_verified_and_removed_with_its_record(file_server, tmp_path):
    import hashlib

    data = os.urandom(50_000)
    url = file_server.add_file("/model.gguf", data)
    digest = hashlib.sha256(data).hexdigest()
    await pulled("url", url + "?token=secret", models_dir=str(tmp_path), sha256=digest)
    inventory = Inventory(roots={"url": [tmp_path]})

    (model,) = inventory.models()
    assert model.id == "url:model.gguf" and model.source == url
    assert "secret" not in str(inventory.summary())
    assert model.digest == f"sha256:{digest}" and inventory.verify([model])[0].status == OK
    flip_byte(tmp_path / "model.gguf")
    assert inventory.verify([model])[0].status == CORRUPT
    assert [m.id for m in inventory.find(url)] == [model.id]

    inventory.remove(model)

    assert not (tmp_path / "model.gguf").exists()
    assert not (tmp_path / ".modelpull" / "sources" / "model.gguf.json").exists()
    assert inventory.models() == []


async def test_a_file_another_process_is_downloading_is_not_removed(file_server, tmp_path):
    from modelpull.transfer._lock import DestinationLock, default_lock_path

    url = file_server.add_file("/busy.bin", b"b" * 10_000)
    await pulled("url", url, models_dir=str(tmp_path))
    inventory = Inventory(roots={"url": [tmp_path]})
    (model,) = inventory.models()
    lock = DestinationLock(default_lock_path(tmp_path / "busy.bin"))  # what a writing download holds
    assert lock.try_acquire()
    try:
        with pytest.raises(InUse, match="a download is writing busy.bin"):
            inventory.remove(model)
    finally:
        lock.release()
    inventory.remove(model)
    assert not (tmp_path / "busy.bin").exists()


def test_a_model_file_put_in_the_folder_by_hand_is_listed_and_removable(tmp_path):
    (tmp_path / "mine.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    (tmp_path / ".hidden").write_bytes(b"x")
    inventory = Inventory(roots={"url": [tmp_path]})

    (model,) = inventory.models()

    assert model.id == "file:mine.gguf" and model.size_on_disk == 104 and model.source is None
    assert inventory.verify([model])[0].status == "unchecked"
    inventory.remove(model)
    assert not (tmp_path / "mine.gguf").exists() and (tmp_path / ".hidden").exists()


def test_a_revision_no_branch_names_is_detached_and_pruned_as_hf_cache_prune_does(fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    snapshot_download(sample.repo_id)  # main
    snapshot_download(sample.repo_id, revision=sample.commit)  # by commit: no ref names it
    inventory = hub_inventory(hf_env)

    leftovers = inventory.prunable()

    assert [left.model.revision for left in leftovers] == [sample.commit]
    assert "detached revision" in leftovers[0].description
    inventory.prune(leftovers)
    (repo,) = scan_cache_dir(hf_env).repos
    assert [r.commit_hash for r in repo.revisions] == [sample.main_commit]

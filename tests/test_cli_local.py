"""`modelpull list / show / verify / rm / prune`, run as real subprocesses over real layouts."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import scan_cache_dir, snapshot_download
from safetensors.numpy import save_file

from disk_damage import flip_byte
from fakes.hub import add_sample_repo
from fakes.ollama import make_gguf

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "models"
    home.mkdir()
    monkeypatch.setenv("MODELPULL_HOME", str(home))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpull", *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ), input=stdin)


def pull_url(url: str, home: Path, data: bytes) -> None:
    done = cli("pull", "--quiet", url, "--sha256", hashlib.sha256(data).hexdigest())
    assert done.returncode == 0, done.stderr


# ---- list and show -------------------------------------------------------------------------

def test_list_shows_every_source_with_totals_and_free_disk(home, fake_hub, hf_env, file_server):
    sample = add_sample_repo(fake_hub)
    snapshot_download(sample.repo_id)
    data = make_gguf(40_000)
    pull_url(file_server.add_file("/tiny.gguf", data), home, data)
    (home / "half.bin.part").write_bytes(b"\1" * 3000)

    listed = json.loads(cli("list", "--json").stdout)
    text = cli("list").stdout

    ids = {m["id"]: m for m in listed["models"]}
    assert set(ids) == {f"hf:{sample.repo_id}@{sample.main_commit}", "url:tiny.gguf", "partial:url:half.bin"}
    assert ids["url:tiny.gguf"]["source"].endswith("/tiny.gguf")
    assert ids["partial:url:half.bin"]["status"] == "partial" and ids["partial:url:half.bin"]["size_on_disk"] > 0
    assert listed["totals"]["huggingface"]["size_on_disk"] == scan_cache_dir(hf_env).size_on_disk
    assert listed["disks"] and listed["disks"][0]["free"] > 0
    assert f"hf:{sample.repo_id}@{sample.main_commit}" in text and "complete (main)" in text
    assert "partial:url:half.bin" in text and "free disk:" in text and "URL downloads: 1 model(s), 1 unfinished" in text


def test_show_reads_gguf_metadata_and_the_safetensors_header(home, file_server):
    data = make_gguf(40_000, name="tiny")
    pull_url(file_server.add_file("/tiny.gguf", data), home, data)
    weights = home.parent / "w.safetensors"
    save_file({"embed": np.zeros((4, 8), dtype=np.float16), "head": np.zeros((8,), dtype=np.float32)}, str(weights))
    raw = weights.read_bytes()
    pull_url(file_server.add_file("/w.safetensors", raw), home, raw)

    gguf_info = json.loads(cli("show", "url:tiny.gguf", "--json").stdout)["formats"][0]
    text = cli("show", "w.safetensors").stdout

    assert gguf_info["format"] == "gguf" and gguf_info["architecture"] == "llama"
    assert gguf_info["context_length"] == 2048 and gguf_info["parameter_count"] > 0
    assert "SAFETENSORS" in text and "40 parameters" in text and "dtypes F16, F32" in text
    assert "sha256:" + hashlib.sha256(raw).hexdigest() in text
    missing = cli("show", "nothing-here")
    assert missing.returncode == 1 and "No local model 'nothing-here'" in missing.stderr


# ---- verify and repair ---------------------------------------------------------------------

def test_verify_catches_a_flipped_byte_and_repair_fetches_only_that_file(home, fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    assert cli("pull", "--quiet", f"hf:{sample.repo_id}").returncode == 0
    blob = hf_env / "models--org--tiny-model" / "blobs" / fake_hub.file(sample.repo_id, "model.safetensors").etag
    assert cli("verify", "--all").returncode == 0
    flip_byte(blob)

    bad = cli("verify", f"hf:{sample.repo_id}")
    assert bad.returncode == 1
    assert "corrupt" in bad.stdout and "model.safetensors" in bad.stdout and "--repair" in bad.stderr
    assert bad.stdout.count("ok ") == 3
    fake_hub.clear_log()

    fixed = cli("verify", "--all", "--repair")

    assert fixed.returncode == 0, fixed.stderr
    assert "repaired" in fixed.stdout and "model.safetensors" in fixed.stdout
    resolved = [r.path for r in fake_hub.hub_requests() if "/resolve/" in r.path]
    assert resolved == [f"/{sample.repo_id}/resolve/{sample.main_commit}/model.safetensors"]
    assert len(fake_hub.cdn_gets()) >= 1
    assert cli("verify", "--all").returncode == 0


def test_verify_needs_refs_or_all_and_reports_a_missing_blob(home, file_server):
    data = b"abc" * 1000
    pull_url(file_server.add_file("/f.bin", data), home, data)
    (home / "f.bin").unlink()

    assert cli("verify").returncode == 2
    result = cli("verify", "--json", "f.bin")
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[0])["status"] == "missing"


# ---- rm and prune --------------------------------------------------------------------------

def test_rm_asks_first_and_scan_cache_dir_agrees_afterwards(home, fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)
    snapshot_download(sample.repo_id)
    snapshot_download(sample.repo_id, revision=sample.revision)
    ref = f"hf:{sample.repo_id}@{sample.revision}"

    refused = cli("rm", ref)  # not a terminal: nobody to ask
    assert refused.returncode == 2 and "pass -y" in refused.stderr
    done = cli("rm", ref, "-y")

    assert done.returncode == 0, done.stderr
    assert f"removed hf:{sample.repo_id}@{sample.commit}" in done.stdout and "freed" in done.stderr
    (repo,) = scan_cache_dir(hf_env).repos
    assert [r.commit_hash for r in repo.revisions] == [sample.main_commit]


def test_rm_is_refused_while_a_server_engine_uses_the_model(home, file_server):
    from modelpull.server.store import SQLiteJobStore

    data = make_gguf(20_000)
    pull_url(file_server.add_file("/chat.gguf", data), home, data)
    async def register_engine() -> None:  # what a server using this MODELPULL_HOME keeps
        store = SQLiteJobStore(home / ".modelpull" / "state.db")
        await store.open()
        store.save_engine({"engine_id": "chat", "status": "loaded", "local_path": str(home / "chat.gguf"),
                           "created_at": 1})
        await store.close()

    asyncio.run(register_engine())

    refused = cli("rm", "chat.gguf", "-y")

    assert refused.returncode == 1
    assert "engine 'chat'" in refused.stderr and "stop it first" in refused.stderr
    assert (home / "chat.gguf").is_file()


def test_prune_dry_run_then_prune_with_an_age(home, file_server):
    (home / "old.bin.part").write_bytes(b"\1" * 4096)
    os.utime(home / "old.bin.part", (0, 1_000_000))
    (home / "new.bin.part").write_bytes(b"\1" * 4096)

    dry = cli("prune", "--older-than", "30", "--dry-run")
    assert dry.returncode == 0 and "would delete" in dry.stdout and "old.bin" in dry.stdout
    assert "new.bin" not in dry.stdout and "would free 4.1 kB" in dry.stderr
    assert (home / "old.bin.part").exists()

    done = cli("prune", "--older-than", "30")
    assert done.returncode == 0 and not (home / "old.bin.part").exists() and (home / "new.bin.part").exists()
    assert "freed 4.1 kB" in done.stderr

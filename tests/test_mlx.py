"""The MLX provider: the Hugging Face provider with MLX's names and layout check."""
from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants, snapshot_download

from modelpull import DownloadStatus, ModelPullError, download_model, pull
from modelpull.providers._hf_cache import RepoFile
from modelpull.providers.huggingface import HubTarget
from modelpull.providers.mlx import MlxProvider

pytestmark = pytest.mark.timeout(60)

MLX_FILES = {
    "config.json": b'{"model_type": "qwen2", "quantization": {"group_size": 64, "bits": 4}}',
    "model.safetensors": bytes(range(256)) * 400,
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b"{}",
}


async def collect(model: str, **options):
    return [item async for item in download_model("mlx", model, retry_backoff=0.01, **options)]


async def test_a_bare_name_means_mlx_community(fake_hub, hf_env, monkeypatch):
    commit = fake_hub.add_repo("mlx-community/Tiny-4bit", MLX_FILES)

    items = await collect("Tiny-4bit")

    done = items[-1]
    assert items[0].status is DownloadStatus.STARTING
    assert done.status is DownloadStatus.COMPLETE, done.message
    assert done.local_path == str(hf_env / "models--mlx-community--Tiny-4bit" / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = Path(snapshot_download("mlx-community/Tiny-4bit"))
    assert {p: (folder / p).read_bytes() for p in MLX_FILES} == MLX_FILES


async def test_an_org_name_is_kept(fake_hub, hf_env):
    fake_hub.add_repo("someone/Tiny-mlx", MLX_FILES)

    done = (await collect("someone/Tiny-mlx"))[-1]

    assert done.status is DownloadStatus.COMPLETE, done.message
    assert "models--someone--Tiny-mlx" in done.local_path


@pytest.mark.parametrize("files, lacks", [
    ({"model.gguf": b"GGUF" * 10, "README.md": b"# gguf"}, "no config.json and no *.safetensors weights"),
    ({"config.json": b"{}", "pytorch_model.bin": b"\0" * 100}, "no *.safetensors weights"),
])
async def test_a_repo_that_is_not_an_mlx_model_is_refused_before_downloading(fake_hub, hf_env, files, lacks):
    fake_hub.add_repo("someone/not-mlx", files)

    done = (await collect("someone/not-mlx"))[-1]

    assert done.status is DownloadStatus.ERROR
    assert done.error_code == "not_mlx_model"
    assert "does not look like an MLX model" in done.message and lacks in done.message
    assert fake_hub.cdn_gets() == [] and not any("/resolve/" in r.path for r in fake_hub.hub_requests())


def test_the_snapshot_check_names_a_missing_weight_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    target = HubTarget("mlx-community/x", "model", "main", "https://huggingface.co", None, tmp_path, None)
    files = [RepoFile("config.json", 2, "a" * 40), RepoFile("model.safetensors", 9, "b" * 40, "c" * 64)]

    with pytest.raises(ModelPullError) as refused:
        MlxProvider().check_snapshot(target, tmp_path, files)

    assert refused.value.code == "not_mlx_model" and "model.safetensors" in refused.value.message


def test_pull_with_an_mlx_reference(fake_hub, hf_env):
    fake_hub.add_repo("mlx-community/Tiny-4bit", MLX_FILES)
    branch = fake_hub.add_commit("mlx-community/Tiny-4bit", {**MLX_FILES, "extra.txt": b"v2"}, branch="v2")

    folder = pull("mlx:Tiny-4bit@v2", retry_backoff=0.01)

    assert folder.name == branch
    assert (folder / "extra.txt").read_bytes() == b"v2"

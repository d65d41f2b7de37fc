"""`modelpull pull`'s flags for users of `hf download`, `ollama pull` and curl, as real subprocesses
against the fakes; the saved Hugging Face login; the rate limit's arithmetic."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.hub import add_sample_repo
from fakes.ollama import make_model
from modelpull import DownloadStatus, download_model
from modelpull.cli import _rate
from modelpull.transfer._rate import RateLimit

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "models"
    monkeypatch.setenv("MODELPULL_HOME", str(home))
    monkeypatch.setenv("MODELPULL_MAX_RETRIES", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpull", "pull", *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))


def snapshot_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---- Hub references -----------------------------------------------------------------------

def test_include_and_exclude_are_repeatable_globs(home, fake_hub, hf_env):
    sample = add_sample_repo(fake_hub)

    done = cli(f"hf:{sample.repo_id}", "--revision", sample.revision, "--include", "*.json",
               "--include", "weights/*", "--exclude", "tokenizer/*", "--quiet")

    assert done.returncode == 0, done.stderr
    assert snapshot_files(Path(done.stdout.strip())) == ["config.json", "weights/deep/part-00001.safetensors"]


def test_repo_type_dataset(home, fake_hub, hf_env):
    sample = add_sample_repo(fake_hub, "org/tiny-data", repo_type="dataset")

    done = cli("hf:org/tiny-data", "--repo-type", "dataset", "--quiet")

    assert done.returncode == 0, done.stderr
    assert "datasets--org--tiny-data" in done.stdout
    assert snapshot_files(Path(done.stdout.strip())) == sorted(sample.main_files)


def test_output_puts_one_hub_file_or_one_url_where_asked(home, fake_hub, hf_env, file_server, tmp_path):
    sample = add_sample_repo(fake_hub)
    target = tmp_path / "out" / "weights.safetensors"

    done = cli(f"hf:{sample.repo_id}:model.safetensors", "-o", str(target), "--quiet")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target) and target.read_bytes() == sample.main_files["model.safetensors"]
    url = file_server.add_file("/a.bin", b"a" * 5000)
    assert cli(url, "--output", str(tmp_path / "named.bin"), "--quiet").returncode == 0
    assert (tmp_path / "named.bin").read_bytes() == b"a" * 5000
    refused = cli(f"hf:{sample.repo_id}", "-o", str(target))
    assert refused.returncode == 2 and "-o/--output names one file" in refused.stderr


def test_dry_run_plans_without_moving_a_byte_then_says_what_is_present(home, fake_hub, hf_env, file_server):
    sample = add_sample_repo(fake_hub)
    fake_hub.clear_log()

    plan = cli(f"hf:{sample.repo_id}", "--dry-run", "--json")

    assert plan.returncode == 0, plan.stderr
    (planned,) = [json.loads(line) for line in plan.stdout.splitlines()]
    assert sorted(f["name"] for f in planned["files"]) == sorted(sample.main_files)
    assert planned["to_download_bytes"] == sum(map(len, sample.main_files.values())) and planned["fits"]
    assert fake_hub.cdn_gets() == [] and not any("/resolve/" in r.path for r in fake_hub.hub_requests())
    assert not (hf_env / "models--org--tiny-model" / "snapshots").exists()
    assert cli(f"hf:{sample.repo_id}", "--quiet").returncode == 0
    again = cli(f"hf:{sample.repo_id}", "--dry-run")
    assert again.stdout.count("present") == len(sample.main_files) and "0 B to download" in again.stdout
    url = file_server.add_file("/plan.bin", b"p" * 7000)
    file_server.reset_log()
    url_plan = cli(url, "--dry-run")
    assert url_plan.returncode == 0 and "plan.bin" in url_plan.stdout and "to fetch" in url_plan.stdout
    assert {r.method for r in file_server.requests} == {"HEAD"}


# ---- several references, rate limit --------------------------------------------------------

def test_several_references_are_fetched_in_one_call_each_reported(home, file_server):
    first = file_server.add_file("/one.bin", b"1" * 300_000, throttle_bps=2_000_000)
    second = file_server.add_file("/two.bin", b"2" * 300_000, throttle_bps=2_000_000)

    done = cli(first, second, "--limit-rate", "8M")
    as_json = cli(first, second, "--json")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(home / "one.bin"), str(home / "two.bin")]
    assert "one.bin: " in done.stderr and "two.bin: " in done.stderr  # log lines name their download
    refs = {json.loads(line)["ref"] for line in as_json.stdout.splitlines()}
    assert refs == {first, second}
    assert file_server.max_concurrent_gets == 2  # at the same time, not one after the other


def test_one_failed_reference_fails_the_call_and_is_named(home, file_server):
    good = file_server.add_file("/good.bin", b"g" * 1000)
    missing = file_server.url("/missing.bin")

    done = cli(good, missing)

    assert done.returncode == 1
    assert done.stdout.strip() == str(home / "good.bin")
    assert f"error: {missing}: " in done.stderr


@pytest.mark.parametrize("text, value", [("500K", 512_000), ("20M", 20 * 1024 ** 2), ("1.5G", int(1.5 * 1024 ** 3)),
                                         ("4096", 4096)])
def test_limit_rate_values(text, value):
    assert _rate(text) == value


def test_a_bad_limit_rate_is_refused_by_name(home):
    done = cli("https://example.com/a.bin", "--limit-rate", "fast")
    assert done.returncode == 2 and "--limit-rate" in done.stderr and "not a rate" in done.stderr


def test_the_rate_limit_holds_every_caller_to_one_budget():
    clock = [0.0]
    slept: list[float] = []
    limit = RateLimit(1000, clock=lambda: clock[0], sleep=slept.append)

    limit.take(500)  # two downloads sharing one limit: each waits for the other's bytes too
    limit.take(500)
    limit.take(1000)
    clock[0] = 10.0  # after a quiet spell, a quarter second's worth may go at once
    limit.take(500)

    assert slept == pytest.approx([0.5, 1.0, 2.0, 0.25])
    assert limit.taken == 2500


async def test_limit_rate_counts_every_byte_of_the_download(file_server, tmp_path):
    url = file_server.add_file("/capped.bin", os.urandom(200_000))
    limit = RateLimit(50 * 1024 * 1024)

    items = [i async for i in download_model("url", url, models_dir=str(tmp_path), limit_rate=limit)]

    assert items[-1].status is DownloadStatus.COMPLETE and limit.taken == 200_000


# ---- Ollama direct ---------------------------------------------------------------------------

def test_ollama_insecure_and_registry_flags(home, fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add(make_model("myuser/tiny:q4", model_size=20_000))
    reference = "ollama:" + fake_ollama_registry.reference(model)  # 127.0.0.1:<port>/myuser/tiny:q4
    store = tmp_path / "store"

    refused = cli(reference, "--direct", "--to", str(store))  # https to a plain-http registry
    done = cli(reference, "--direct", "--insecure", "--to", str(store), "--quiet")
    by_registry = cli("ollama:myuser/tiny:q4", "--registry", fake_ollama_registry.base_url,
                      "--to", str(tmp_path / "other"), "--quiet")

    assert refused.returncode == 1
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(store / "blobs" / f"sha256-{model.model_layer.hex}")
    assert by_registry.returncode == 0, by_registry.stderr


async def test_the_library_takes_insecure_true(fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add(make_model("myuser/tiny:q4", model_size=20_000))
    items = [i async for i in download_model("ollama", fake_ollama_registry.reference(model), direct=True,
                                             insecure=True, models_path=str(tmp_path), retry_backoff=0.01)]
    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message


def test_base_url_with_direct_is_an_error(home):
    done = cli("ollama:llama3", "--direct", "--base-url", "http://127.0.0.1:11434")
    assert done.returncode == 2 and "--base-url" in done.stderr and "--direct" in done.stderr


# ---- the saved Hugging Face login ---------------------------------------------------------

async def test_the_saved_login_is_used_after_token_and_hf_token(fake_hub, hf_env, tmp_path, monkeypatch):
    sample = add_sample_repo(fake_hub, "org/secret", private=True)
    fake_hub.add_token("hf_saved")
    fake_hub.grant(sample.repo_id, "hf_saved")
    (tmp_path / "hf-home").mkdir(exist_ok=True)
    (tmp_path / "hf-home" / "token").write_text("hf_saved\n")  # what `hf auth login` writes

    async def final(**kwargs):
        return [i async for i in download_model("huggingface", sample.repo_id, retry_backoff=0.01, **kwargs)][-1]

    assert (await final()).status is DownloadStatus.COMPLETE
    monkeypatch.setenv("HF_TOKEN", "hf_unknown")  # the environment comes first
    assert (await final()).error_code == "invalid_token"
    assert (await final(token="hf_saved")).status is DownloadStatus.COMPLETE  # and the argument before it
    monkeypatch.delenv("HF_TOKEN")
    elsewhere = tmp_path / "elsewhere-token"
    elsewhere.write_text("hf_unknown")
    monkeypatch.setenv("HF_TOKEN_PATH", str(elsewhere))
    assert (await final()).error_code == "invalid_token"


async def test_token_messages_name_the_argument_in_the_library_and_the_flag_in_the_cli(fake_hub, hf_env, home):
    add_sample_repo(fake_hub, "org/gated", gated=True)

    library = [i async for i in download_model("huggingface", "org/gated")][-1]
    command = cli("hf:org/gated")

    assert "token=" in library.message and "--token" not in library.message
    assert command.returncode == 1 and "--token" in command.stderr and "token=" not in command.stderr

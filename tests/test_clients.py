"""What a person meets first in the library and the CLI: a host name that does not exist fails at
once, Ctrl-C names the folder the data is really in, bars fit 80 columns and show a failure,
`pull(progress=True)`, and a `help(download_model)` that lists what it accepts."""
from __future__ import annotations

import io
import os
import re
import socket
from pathlib import Path

import pytest
from rich.console import Console

import modelpull
from modelpull import DownloadStatus, download_model, pull
from modelpull._api import data_location
from modelpull._bars import BarsView
from modelpull._plan import TransferOptions
from modelpull._progress import DownloadProgress
from modelpull.providers import get_provider, provider_names

from interrupted_pull import pull_interrupted

NO_SUCH_HOST = "no-such-host.invalid"  # RFC 2606: never resolves


def _dns_says_no_such_name() -> bool:
    try:
        socket.getaddrinfo(NO_SUCH_HOST, 443)
    except socket.gaierror as exc:
        return exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
    return False


needs_nxdomain = pytest.mark.skipif(not _dns_says_no_such_name(),
                                    reason="this machine's resolver does not answer 'no such name' for .invalid")


async def _items(provider: str, model: str, **kwargs) -> list[DownloadProgress]:
    return [item async for item in download_model(provider, model, **kwargs)]


# ---- a name that does not resolve -------------------------------------------------------


@needs_nxdomain
@pytest.mark.parametrize("provider, model, kwargs, where", [
    ("url", f"https://{NO_SUCH_HOST}/model.gguf", {}, "the URL"),
    ("huggingface", "org/model", {"base_url": f"https://{NO_SUCH_HOST}"}, "the Hub endpoint"),
    ("ollama", f"{NO_SUCH_HOST}/library/model:1b", {"direct": True}, "the Ollama registry address"),
    ("ollama", "model:1b", {"base_url": f"http://{NO_SUCH_HOST}:11434"}, "the Ollama server address"),
])
async def test_a_host_that_does_not_resolve_fails_at_once_with_what_to_check(provider, model, kwargs, where,
                                                                             tmp_path):
    items = await _items(provider, model, models_dir=str(tmp_path), max_retries=5, retry_backoff=5.0, **kwargs)

    final = items[-1]
    assert final.status is DownloadStatus.ERROR
    assert final.error_code == "unknown_host", final
    assert f"'{NO_SUCH_HOST}' does not resolve" in final.message and where in final.message
    # No retry was scheduled (with retry_backoff=5 a single one would be visible as a notice).
    assert not any("retrying" in item.message for item in items)


# ---- Ctrl-C names the folder the data is in ---------------------------------------------


def test_ctrl_c_on_a_hub_download_names_the_hub_cache_folder(fake_hub, tmp_path):
    fake_hub.add_repo("org/slow", {"config.json": b"{}", "model.safetensors": os.urandom(2_000_000)})
    fake_hub.cdn_rate = 300_000
    cache = tmp_path / "hf-cache"
    env = {**os.environ, "HF_ENDPOINT": fake_hub.endpoint, "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "hf-home"), "MODELPULL_HOME": str(tmp_path / "models"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("HF_TOKEN", None)
    returncode, stderr = pull_interrupted(["hf:org/slow"], env, tmp_path, min_bytes=100_000)

    assert returncode == 130, stderr
    repo_folder = cache / "models--org--slow"
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: partial data kept in {repo_folder}; run the same command again to resume")
    assert list(repo_folder.rglob("*.part")), "the partial data is where the message says"


def test_every_provider_says_where_its_data_is(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-store"))
    monkeypatch.delenv("OLLAMA_HOST", raising=False)

    assert data_location("url", "https://example.com/a.gguf", models_dir=str(tmp_path / "m")) == str(tmp_path / "m")
    assert data_location("huggingface", "Org/Repo") == str(tmp_path / "hub" / "models--Org--Repo")
    assert data_location("mlx", "Llama-3.2-1B-Instruct-4bit") == str(
        tmp_path / "hub" / "models--mlx-community--Llama-3.2-1B-Instruct-4bit")
    assert data_location("hf", "org/x", local_dir=str(tmp_path / "plain")) == str(tmp_path / "plain")
    assert data_location("ollama", "llama3.2:1b", direct=True) == str(tmp_path / "ollama-store")
    assert data_location("ollama", "llama3.2:1b", base_url="http://gpu-box:11434") == (
        "the store of the Ollama server at http://gpu-box:11434")


# ---- bars -------------------------------------------------------------------------------


def _rendered(view: BarsView, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(view.renderable)
    return out.getvalue().splitlines()


def test_bars_fit_80_columns_and_a_failure_is_marked_on_every_unfinished_bar():
    view = BarsView(Console(file=io.StringIO(), force_terminal=True, width=80), label="org/model")
    long_name = "model-00001-of-00004-with-a-rather-long-descriptive-name.safetensors"
    moving = [{"name": long_name, "downloaded_bytes": 1_000_000, "total_bytes": 1_000_000, "status": "verifying"},
              {"name": "b.safetensors", "downloaded_bytes": 250_000, "total_bytes": 1_000_000,
               "status": "downloading"}]
    common = dict(total_bytes=2_000_000, files_total=2, files_completed=0)
    view.show(DownloadProgress(DownloadStatus.DOWNLOADING, "Downloading org/model", downloaded_bytes=1_250_000,
                               speed_bps=123_400_000.0, eta_seconds=3725.0, active_files=moving, **common))
    during = _rendered(view, 80)
    view.show(DownloadProgress(DownloadStatus.ERROR, "digest mismatch", downloaded_bytes=1_250_000,
                               error_code="digest_mismatch", **common))
    view.finish()
    after = _rendered(view, 80)

    assert all(len(line) <= 80 for line in during + after), during + after
    assert len([line for line in during if "━" in line]) == 3  # total + two files, one line each
    assert "123.4 MB/s" in during[0] and "1h02m" in during[0]
    assert "…" in during[1]  # the long name is cut, not wrapped
    bars = [line for line in after if "━" in line]
    assert len(bars) == 3 and all(line.rstrip().endswith("failed") for line in bars)


# ---- pull(progress=...) -----------------------------------------------------------------


def test_pull_with_progress_shows_it_on_stderr(file_server, tmp_path, capsys):
    url = file_server.add_file("/shown.gguf", os.urandom(300_000), throttle_bps=600_000)

    path = pull(url, models_dir=str(tmp_path), progress=True)

    assert path == tmp_path / "shown.gguf" and path.stat().st_size == 300_000
    err = capsys.readouterr().err  # not a terminal here: log lines, not bars
    assert "starting: Starting download of" in err and "downloading: Downloading shown.gguf" in err


def test_pull_with_a_callable_gets_every_item(file_server, tmp_path):
    url = file_server.add_file("/called.gguf", os.urandom(50_000))
    seen: list[DownloadProgress] = []

    pull(url, models_dir=str(tmp_path), progress=seen.append)

    assert seen[0].status is DownloadStatus.STARTING and seen[-1].status is DownloadStatus.COMPLETE


# ---- help(download_model) ---------------------------------------------------------------


def test_download_models_docstring_lists_providers_options_fields_codes_and_an_example():
    doc = modelpull.download_model.__doc__
    for name in provider_names():
        assert f'"{name}"' in doc
        for option in get_provider(name).option_names:
            assert option in doc, (name, option)
    for option in TransferOptions.NAMES:
        assert option in doc
    for field in DownloadProgress.__dataclass_fields__:
        assert field in doc, field
    source = Path(modelpull.__file__).parent
    codes = set()
    for path in [*source.glob("*.py"), *source.glob("providers/*.py"), *source.glob("transfer/*.py")]:
        codes |= set(re.findall(r'code ?= ?"([a-z_]+)"', path.read_text()))
    missing = sorted(code for code in codes - {"error", "source_error"} if code not in doc)
    assert not missing, f"error codes not in help(download_model): {missing}"
    assert "asyncio.run(main())" in doc and "pull(" in doc

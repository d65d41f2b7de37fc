"""The Ollama provider, through a fake Ollama server and straight from a fake registry."""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from fakes.ollama import REMOTE_STORE, FakeOllamaRegistry, PullFault, ShowFault, make_model

import modelpull
from modelpull import DownloadProgress, DownloadStatus, download_model
from modelpull._errors import InvalidRequest
from modelpull.providers import ollama as ollama_provider
from modelpull.providers.ollama import OllamaName, model_path_from_modelfile

FAST = {"retry_backoff": 0.01, "retry_max_delay": 0.05, "max_retries": 2}


async def collect(model: str, **kwargs) -> list[DownloadProgress]:
    return [item async for item in download_model("ollama", model, **kwargs)]


def closed_port_url() -> str:
    """A local address where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def percents(items: list[DownloadProgress]) -> list[float]:
    return [i.percent for i in items if i.percent is not None]


def assert_one_terminal_item_last(items: list[DownloadProgress]) -> None:
    assert items[0].status is DownloadStatus.STARTING
    terminal = [i for i in items if i.status.is_terminal]
    assert terminal == [items[-1]]


def store_files(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "text, expected",
    [
        ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
        ("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
        ("myuser/mymodel", ("registry.ollama.ai", "myuser", "mymodel", "latest")),
        ("hf.co/org/repo:Q4_K_M", ("hf.co", "org", "repo", "Q4_K_M")),
        ("127.0.0.1:5000/ns/m", ("127.0.0.1:5000", "ns", "m", "latest")),
    ],
)
def test_names_take_ollamas_defaults(text, expected):
    name = OllamaName.parse(text)
    assert (name.host, name.namespace, name.model, name.tag) == expected


@pytest.mark.parametrize("text", ["", "a/b/c/d", "bad name", "model:", "../etc:passwd", "m:t/x"])
def test_malformed_names_are_refused(text):
    with pytest.raises(InvalidRequest, match="not a valid Ollama model name"):
        OllamaName.parse(text)


async def test_malformed_name_is_an_error_item():
    items = await collect("a/b/c/d", direct=True)
    assert items[-1].status is DownloadStatus.ERROR and items[-1].error_code == "invalid_request"


# --------------------------------------------------------------------------- through a server


async def test_server_pull_of_a_multi_layer_model(fake_ollama_server):
    model = fake_ollama_server.add_model("tinyllama", model_size=40_000)
    items = await collect("tinyllama", base_url=fake_ollama_server.base_url)

    assert_one_terminal_item_last(items)
    final = items[-1]
    assert final.status is DownloadStatus.COMPLETE and final.percent == 100.0
    assert final.total_bytes == final.downloaded_bytes == model.total_size
    assert final.files_total == len(model.blobs)
    assert any(i.status is DownloadStatus.VERIFYING for i in items)
    assert fake_ollama_server.pulls[-1].body == {"model": "tinyllama", "stream": True}
    for blob in model.blobs:
        assert any(i.message == f"pulling {blob.hex[:12]}" for i in items)


async def test_server_percent_is_one_overall_number_that_never_goes_back(fake_ollama_server, fake_ollama_registry):
    model = fake_ollama_server.add_model("tinyllama", model_size=40_000)
    fake_ollama_registry.add(model)  # the manifest's sizes: the whole model's size from the start
    items = await collect("tinyllama", base_url=fake_ollama_server.base_url, registry=fake_ollama_registry.base_url)
    seen = percents(items)
    assert seen == sorted(seen)
    assert 0.0 < seen[len(seen) // 4] < 100.0  # it moves during the pull, not only at the end
    # A later layer starts at 0 of its own bytes; the overall percent does not (AbstractCore's did).
    second_layer = [i for i in items if i.message == f"pulling {model.layers[1].hex[:12]}"]
    assert second_layer and min(i.percent for i in second_layer) > 90.0
    assert all(p < 100.0 for p in percents(items[:-1]))  # 100 means done
    downloaded = [i.downloaded_bytes for i in items if i.downloaded_bytes is not None]
    assert downloaded == sorted(downloaded)


async def test_abstractcore_style_download(fake_ollama_server):
    # The shape of AbstractCore's own Ollama test, run against the fake server.
    fake_ollama_server.add_model("gemma3:1b", model_size=20_000)
    progress_list = []
    async for progress in download_model("ollama", "gemma3:1b", base_url=fake_ollama_server.base_url):
        progress_list.append(progress)
    assert progress_list[0].status == DownloadStatus.STARTING
    assert progress_list[-1].status == DownloadStatus.COMPLETE
    assert progress_list[-1].percent == 100.0
    assert fake_ollama_server.pulls, "base_url was not used"

    progress_list = [p async for p in download_model("ollama", "nonexistent-model-xyz:latest",
                                                     base_url=fake_ollama_server.base_url)]
    assert progress_list[0].status == DownloadStatus.STARTING
    assert progress_list[-1].status == DownloadStatus.ERROR


async def test_unknown_model_error_line_becomes_model_not_found(fake_ollama_server):
    items = await collect("nope", base_url=fake_ollama_server.base_url)
    assert_one_terminal_item_last(items)
    assert items[-1].error_code == "model_not_found"
    assert "Model 'nope:latest' not found in the Ollama registry" in items[-1].message
    assert "file does not exist" in items[-1].message


@pytest.mark.parametrize(
    "fault, code, text",
    [
        (PullFault(error_after_lines=4, error="digest mismatch, file must be downloaded again"),
         "ollama_error", "digest mismatch, file must be downloaded again"),
        (PullFault(http_status=500, error="mkdir /root/.ollama: permission denied"),
         "ollama_error", "mkdir /root/.ollama: permission denied"),
        (PullFault(cut_after_lines=5), "incomplete_stream", "before it finished"),
        (PullFault(cut_after_lines=5, abrupt=True), "incomplete_stream", "before it finished"),
    ],
    ids=["error-line", "http-500", "cut-short", "connection-dropped"],
)
async def test_every_failed_server_pull_ends_with_one_error_item(fake_ollama_server, fault, code, text):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    fake_ollama_server.inject(fault)
    items = await collect("tinyllama", base_url=fake_ollama_server.base_url)
    assert_one_terminal_item_last(items)
    assert items[-1].status is DownloadStatus.ERROR
    assert items[-1].error_code == code and text in items[-1].message


async def test_refused_connection_says_ollama_is_not_running():
    url = closed_port_url()
    items = await collect("tinyllama", base_url=url)
    assert_one_terminal_item_last(items)
    assert items[-1].error_code == "ollama_unreachable"
    assert items[-1].message == f"Cannot connect to Ollama server at {url}. Is Ollama running?"


async def test_ollama_host_is_the_server_when_no_base_url(fake_ollama_server, monkeypatch):
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    monkeypatch.setenv("OLLAMA_HOST", fake_ollama_server.base_url.removeprefix("http://"))
    items = await collect("tinyllama")
    assert items[-1].status is DownloadStatus.COMPLETE
    assert len(fake_ollama_server.pulls) == 1


async def test_closing_the_stream_closes_the_pull(fake_ollama_server):
    fake_ollama_server.ticks_per_layer = 1000  # a long pull
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    stream = download_model("ollama", "tinyllama", base_url=fake_ollama_server.base_url)
    async for item in stream:
        if item.percent is not None:
            break
    await stream.aclose()

    record = fake_ollama_server.pulls[-1]
    deadline = time.monotonic() + 5
    while not record.finished and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert record.disconnected and record.finished
    assert not any(line.get("status") == "success" for line in record.lines)


# --------------------------------------------------------------------------- where a server keeps the model


async def test_server_pull_local_path_is_the_blob_the_server_names(fake_ollama_server):
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    items = await collect("tinyllama", base_url=fake_ollama_server.base_url)

    final = items[-1]
    assert final.status is DownloadStatus.COMPLETE
    # The path as the server sees it, even though that store is not on this machine.
    assert final.local_path == f"{REMOTE_STORE}/blobs/sha256-{model.model_layer.hex}"
    shows = [r for r in fake_ollama_server.requests if r.path == "/api/show"]
    assert [r.body for r in shows] == [{"model": "tinyllama", "name": "tinyllama"}]
    assert "Ollama name" not in final.message


def test_blocking_pull_through_a_server_returns_its_gguf_blob(fake_ollama_server, tmp_path):
    fake_ollama_server.models_path = tmp_path / "server-store"
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    path = modelpull.pull("ollama:tinyllama", base_url=fake_ollama_server.base_url)
    assert path == tmp_path / "server-store" / "blobs" / f"sha256-{model.model_layer.hex}"
    assert path.read_bytes() == model.model_layer.data  # the GGUF an engine can load


async def test_failed_show_falls_back_to_the_model_in_this_machines_store(fake_ollama_server, tmp_path, monkeypatch):
    store = tmp_path / "models"
    fake_ollama_server.models_path = store
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    model = fake_ollama_server.add_model("tinyllama", model_size=20_000)
    fake_ollama_server.inject_show(ShowFault(500, "boom"))

    final = (await collect("tinyllama", base_url=fake_ollama_server.base_url))[-1]
    assert final.status is DownloadStatus.COMPLETE
    assert final.local_path == str(store / "blobs" / f"sha256-{model.model_layer.hex}")
    assert fake_ollama_server.show_faults == []  # /api/show was asked, and failed


async def test_no_show_and_no_local_store_leaves_the_ollama_name_and_says_so(
    fake_ollama_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty"))
    fake_ollama_server.add_model("tinyllama", model_size=20_000)
    fake_ollama_server.inject_show(ShowFault(404, "404 page not found", plain_text=True))  # a server without it

    items = await collect("tinyllama", base_url=fake_ollama_server.base_url)
    assert_one_terminal_item_last(items)
    final = items[-1]
    assert final.status is DownloadStatus.COMPLETE and final.percent == 100.0
    assert final.local_path == "tinyllama:latest"
    assert "POST /api/show answered HTTP 404" in final.message
    assert "local_path is the model's Ollama name 'tinyllama:latest'" in final.message


def ollama_show_modelfile(from_line: str) -> str:
    return (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM llava:latest\n\n"
        f"{from_line}\n"
        f"FROM /root/.ollama/models/blobs/sha256-{'b' * 64}\n"  # a projector
        'TEMPLATE """{{ .Prompt }}\nFROM /not/this/one"""\n'
        "PARAMETER stop <|user|>\n"
    )


@pytest.mark.parametrize(
    "from_line, expected",
    [
        (f"FROM /root/.ollama/models/blobs/sha256-{'a' * 64}", f"/root/.ollama/models/blobs/sha256-{'a' * 64}"),
        (f"FROM /srv/my models/blobs/sha256-{'a' * 64}", f"/srv/my models/blobs/sha256-{'a' * 64}"),
        (f"FROM C:\\Users\\me\\.ollama\\models\\blobs\\sha256-{'a' * 64}",
         f"C:\\Users\\me\\.ollama\\models\\blobs\\sha256-{'a' * 64}"),
        (f"FROM /old/store/blobs/sha256:{'a' * 64}", f"/old/store/blobs/sha256:{'a' * 64}"),
        ("FROM qwen3-mlx:latest", None),  # an MLX model: a name, not a blob
        ("FROM ", None),  # a model without a model layer
        (f"FROM blobs/sha256-{'a' * 64}", None),  # not a path the server could mean
    ],
)
def test_the_first_from_line_of_the_modelfile_is_the_model_blob(from_line, expected):
    assert model_path_from_modelfile(ollama_show_modelfile(from_line)) == expected


def test_a_modelfile_without_from_names_no_blob():
    assert model_path_from_modelfile('# FROM llama3:latest\nTEMPLATE "x"\n') is None
    assert model_path_from_modelfile("") is None


# --------------------------------------------------------------------------- straight from the registry


def direct_options(registry: FakeOllamaRegistry, store: Path, **extra) -> dict:
    return {"direct": True, "registry": registry.base_url, "models_path": str(store), **FAST, **extra}


async def test_direct_pull_writes_exactly_ollamas_store(fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add_model("tinyllama", model_size=300_000, manifest_indent=3)
    store = tmp_path / "models"
    items = await collect("tinyllama", **direct_options(fake_ollama_registry, store))

    assert_one_terminal_item_last(items)
    final = items[-1]
    assert final.status is DownloadStatus.COMPLETE, final.message
    assert final.local_path == str(store / "blobs" / f"sha256-{model.model_layer.hex}")
    assert Path(final.local_path).read_bytes()[:4] == b"GGUF"
    for blob in model.blobs:
        assert (store / "blobs" / f"sha256-{blob.hex}").read_bytes() == blob.data
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "latest"
    assert manifest.read_bytes() == model.manifest  # the raw bytes, not a re-serialisation
    assert store_files(store) == {f"blobs/sha256-{b.hex}" for b in model.blobs} | {
        "manifests/registry.ollama.ai/library/tinyllama/latest"
    }
    seen = percents(items)
    assert seen == sorted(seen) and seen[-1] == 100.0


async def test_direct_second_pull_transfers_nothing(fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add_model("tinyllama", model_size=100_000)
    options = direct_options(fake_ollama_registry, tmp_path / "models")
    assert (await collect("tinyllama", **options))[-1].status is DownloadStatus.COMPLETE
    cdn_before = len(fake_ollama_registry.cdn_requests)
    blob_requests_before = len(fake_ollama_registry.requests_for("blobs"))

    items = await collect("tinyllama", **options)
    assert items[-1].status is DownloadStatus.COMPLETE
    assert "already downloaded" in items[-1].message
    assert len(fake_ollama_registry.cdn_requests) == cdn_before
    assert len(fake_ollama_registry.requests_for("blobs")) == blob_requests_before
    assert items[-1].local_path.endswith(model.model_layer.hex)


async def test_direct_pull_uses_the_bearer_challenge_and_keeps_the_token_off_the_cdn(
    fake_ollama_registry, tmp_path
):
    fake_ollama_registry.require_auth = True
    model = fake_ollama_registry.add_model("tinyllama", model_size=400_000)
    items = await collect(
        "tinyllama",
        **direct_options(fake_ollama_registry, tmp_path / "models"),
        connections=4, multipart_threshold=64 * 1024, piece_size=64 * 1024,
    )
    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message

    manifests = fake_ollama_registry.requests_for("manifests")
    assert [r.status for r in manifests] == [401, 200]
    assert all(r.headers.get("Accept") == "application/vnd.docker.distribution.manifest.v2+json" for r in manifests)
    assert len(fake_ollama_registry.requests_for("token")) == 1
    blob_requests = fake_ollama_registry.requests_for("blobs")
    assert blob_requests and all(r.status == 307 for r in blob_requests)
    assert all(r.headers.get("Authorization") == f"Bearer {fake_ollama_registry.token}" for r in blob_requests)

    cdn_gets = [r for r in fake_ollama_registry.cdn_requests if r.method == "GET"]
    assert all("Authorization" not in r.headers for r in cdn_gets)
    model_layer_gets = [r for r in cdn_gets if model.model_layer.hex in r.path]
    assert len(model_layer_gets) > 1 and all(r.range for r in model_layer_gets)  # several ranged pieces
    assert not any(fake_ollama_registry.token in item.message for item in items)


async def test_direct_pull_survives_a_dropped_cdn_connection(fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add_model("tinyllama", model_size=200_000)
    fake_ollama_registry.cdn.add_fault(fake_ollama_registry.cdn_path(model.model_layer), "drop_after", bytes=50_000)
    store = tmp_path / "models"
    items = await collect("tinyllama", **direct_options(fake_ollama_registry, store))
    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    assert (store / "blobs" / f"sha256-{model.model_layer.hex}").read_bytes() == model.model_layer.data


async def test_direct_unknown_model_or_tag_is_model_not_found(fake_ollama_registry, tmp_path):
    fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    for name in ("nope", "tinyllama:70b"):
        items = await collect(name, **direct_options(fake_ollama_registry, tmp_path / "models"))
        assert_one_terminal_item_last(items)
        assert items[-1].error_code == "model_not_found"
        assert f"Model '{OllamaName.parse(name).display}' not found in the Ollama registry" in items[-1].message


async def test_direct_unreachable_registry(tmp_path):
    url = closed_port_url()
    items = await collect("tinyllama", direct=True, registry=url, models_path=str(tmp_path), **FAST)
    assert_one_terminal_item_last(items)
    assert items[-1].error_code == "registry_unreachable" and url in items[-1].message


async def test_direct_digest_mismatch_keeps_nothing(fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add_model("tinyllama", model_size=100_000)
    fake_ollama_registry.corrupt(model.model_layer, offset=12_345)
    store = tmp_path / "models"
    items = await collect("tinyllama", **direct_options(fake_ollama_registry, store))
    assert_one_terminal_item_last(items)
    assert items[-1].error_code == "digest_mismatch"
    assert not (store / "blobs" / f"sha256-{model.model_layer.hex}").exists()
    assert not (store / "manifests").exists()


async def test_no_server_anywhere_falls_back_to_the_registry_and_says_so(fake_ollama_registry, tmp_path, monkeypatch):
    model = fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setattr(ollama_provider, "DEFAULT_SERVER", closed_port_url())
    store = tmp_path / "models"
    items = await collect("tinyllama", registry=fake_ollama_registry.base_url, models_path=str(store), **FAST)
    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    assert any("No Ollama server at" in i.message and "straight from the registry" in i.message for i in items)
    assert (store / "blobs" / f"sha256-{model.model_layer.hex}").is_file()


async def test_store_defaults_to_ollama_models(fake_ollama_registry, tmp_path, monkeypatch):
    model = fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-store"))
    items = await collect("tinyllama", direct=True, registry=fake_ollama_registry.base_url, **FAST)
    assert items[-1].local_path == str(tmp_path / "ollama-store" / "blobs" / f"sha256-{model.model_layer.hex}")


def test_blocking_pull_of_an_ollama_reference(fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add_model("tinyllama", model_size=20_000)
    path = modelpull.pull(
        "ollama:tinyllama:latest", direct=True, registry=fake_ollama_registry.base_url,
        models_path=str(tmp_path), **FAST,
    )
    assert path == tmp_path / "blobs" / f"sha256-{model.model_layer.hex}"


async def test_direct_pull_of_a_name_with_its_own_registry_host(fake_ollama_registry, tmp_path):
    model = fake_ollama_registry.add(make_model("myuser/tiny:q4", model_size=20_000))
    reference = fake_ollama_registry.reference(model)  # 127.0.0.1:<port>/myuser/tiny:q4
    store = tmp_path / "models"
    items = await collect(reference, **direct_options(fake_ollama_registry, store))
    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    host = fake_ollama_registry.base_url.removeprefix("http://")
    assert (store / "manifests" / host / "myuser" / "tiny" / "q4").read_bytes() == model.manifest

"""What clients saw go wrong with two sources: a Hub mirror without `/auth-check`, and the overall
percent of an Ollama model with two large layers pulled through an Ollama server."""
from __future__ import annotations

import pytest

from fakes.hub import add_sample_repo
from fakes.ollama import FakeOllamaServer
from modelpull import DownloadProgress, DownloadStatus, download_model


async def collect(provider: str, model: str, **options) -> list[DownloadProgress]:
    return [item async for item in download_model(provider, model, **options)]


# ---- a Hub without /auth-check ----------------------------------------------------------


@pytest.mark.parametrize("token, granted, outcome", [
    ("hf_reader", True, "complete"),
    (None, False, "gated_repo"),
    ("hf_waiting", False, "gated_no_access"),
])
async def test_a_hub_that_answers_404_to_auth_check_goes_on_and_the_files_answer_decides(
        fake_hub, hf_env, token, granted, outcome):
    fake_hub.auth_check_route = False
    sample = add_sample_repo(fake_hub, "org/gated", gated=True)
    if token:
        fake_hub.add_token(token)
    if granted:
        fake_hub.grant(sample.repo_id, token)

    items = await collect("huggingface", sample.repo_id, token=token)

    final = items[-1]
    assert any(r.path.endswith("/auth-check") for r in fake_hub.hub_requests("GET"))  # it was asked, and 404'd
    assert "auth-check" not in final.message and "404 Client Error" not in final.message
    if outcome == "complete":
        assert final.status is DownloadStatus.COMPLETE, final.message
    else:
        assert final.status is DownloadStatus.ERROR and final.error_code == outcome, final
        assert "is gated" in final.message
        assert fake_hub.cdn_gets() == []  # decided before any byte moved


# ---- Ollama through its server: the overall percent of two large layers ---------------


def _percent_trace(items: list[DownloadProgress]) -> list[tuple[str, float, int, int]]:
    return [(i.message, i.percent, i.downloaded_bytes, i.total_bytes) for i in items
            if i.percent is not None and i.status is DownloadStatus.DOWNLOADING]


@pytest.fixture
def two_layer_pull(fake_ollama_registry):
    """A vision-like model (a 400 kB model layer, then a 400 kB projector) in the registry and
    pullable through a fake Ollama server."""
    with FakeOllamaServer(interval=0.002, ticks_per_layer=8) as server:
        model = fake_ollama_registry.add_model("llava-tiny:7b", model_size=400_000, projector_size=400_000)
        server.add(model)
        yield server, model


async def test_the_percent_follows_the_bytes_across_both_layers_with_the_manifests_sizes(
        two_layer_pull, fake_ollama_registry):
    server, model = two_layer_pull

    items = await collect("ollama", "llava-tiny:7b", base_url=server.base_url,
                          registry=fake_ollama_registry.base_url)

    assert items[-1].status is DownloadStatus.COMPLETE and items[-1].percent == 100.0
    trace = _percent_trace(items)
    projector = model.layers[1]
    second = [p for message, p, _, _ in trace if message == f"pulling {projector.hex[:12]}"]
    assert second and min(second) < 60.0 < max(second)  # it moves through the second layer
    # The manifest is read alongside the pull; from the second layer on its sizes are known.
    trace = trace[[message for message, *_ in trace].index(f"pulling {projector.hex[:12]}"):]
    assert all(total == model.total_size for _, _, _, total in trace)
    percents = [p for _, p, _, _ in trace]
    assert percents == sorted(percents) and max(percents) < 100.0
    for _, percent, done, total in trace:
        assert percent == pytest.approx(min(99.9, done * 100 / total), abs=0.01)


async def test_without_the_registry_the_percent_never_freezes_for_a_whole_layer(two_layer_pull):
    server, model = two_layer_pull

    # No `registry`: the name's registry (registry.ollama.ai) is out of reach here.
    items = await collect("ollama", "llava-tiny:7b", base_url=server.base_url)

    assert items[-1].status is DownloadStatus.COMPLETE and items[-1].percent == 100.0
    projector = model.layers[1]
    second = [p for message, p, _, _ in _percent_trace(items) if message == f"pulling {projector.hex[:12]}"]
    assert len(set(second)) > 3, second  # it moves with the second layer's bytes, not held at 99.9

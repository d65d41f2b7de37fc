"""Finding 3: the server's metadata clients (huggingface_hub, aiohttp for Ollama) obey the URL
policy on the address they actually connect to: after a redirect, after a DNS rebind; and the
server's own HF_TOKEN goes to the operator's Hub only."""
from __future__ import annotations

import pytest

SERVER_TOKEN = "hf_server_own_token_9f8e7d6c"


@pytest.fixture
def admin():
    """A loopback service nobody outside may reach (an admin API): it records every request."""
    from fakes.fileserver import FileServer

    with FileServer("127.0.0.1") as server:
        server.add_file("/admin/delete-everything", b"{}")
        yield server


@pytest.fixture
def upstream():
    """The hostile upstream: a server that answers with redirects."""
    from fakes.fileserver import FileServer

    with FileServer("127.0.0.1") as server:
        yield server


def _through(monkeypatch, proxy) -> None:
    """Send the server's plain-http requests through `proxy` (the test's own calls go direct)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _failed(server, job_id: str) -> dict:
    job = server.wait_status(job_id, "failed", "completed")
    assert job["status"] == "failed", job
    return job


def test_a_hub_metadata_redirect_to_a_loopback_admin_path_is_refused(start_server, hub_env, upstream, admin):
    # The operator's Hub endpoint (allowed, even on loopback) answers repo_info with a 302 to
    # another loopback port.
    hub_env(upstream.base_url, token=SERVER_TOKEN)
    upstream.add_redirect("/api/models/org/model/revision/main", admin.url("/admin/delete-everything"))
    server = start_server(allow_private_urls=False)
    job = _failed(server, server.submit("hf:org/model", options={"max_retries": 0})["id"])
    assert admin.requests == []
    assert job["error_code"] == "url_not_allowed", job
    assert "127.0.0.1" in job["error_message"] and SERVER_TOKEN not in job["error_message"]


def test_a_hub_name_that_rebinds_to_loopback_is_refused_at_connect(start_server, hub_env, fake_hub,
                                                                    rebinding_dns):
    fake_hub.add_repo("org/model", {"config.json": b"{}"})
    hub_env("https://huggingface.co", token=SERVER_TOKEN)
    server = start_server(allow_private_urls=False)
    name = rebinding_dns.add("hub.rebind.test")
    # The submit check sees a public address; the connection would reach loopback.
    job = server.submit("hf:org/model", base_url=f"http://{name}:{fake_hub.port}",
                        options={"max_retries": 0})
    job = _failed(server, job["id"])
    assert fake_hub.hub_requests() == []
    assert job["error_code"] == "url_not_allowed", job


def test_a_hub_name_reached_through_a_proxy_is_checked_before_the_request(start_server, hub_env, fake_hub,
                                                                          rebinding_dns, monkeypatch):
    from fakes.proxy import ForwardProxy

    fake_hub.add_repo("org/model", {"config.json": b"{}"})
    hub_env("https://huggingface.co", token=SERVER_TOKEN)
    with ForwardProxy() as proxy:
        _through(monkeypatch, proxy)
        server = start_server(allow_private_urls=False)
        name = rebinding_dns.add("hub.proxied.test")
        job = server.submit("hf:org/model", base_url=f"http://{name}:{fake_hub.port}", options={"max_retries": 0})
        job = _failed(server, job["id"])
        assert proxy.requests == [] and fake_hub.hub_requests() == []
        assert job["error_code"] == "url_not_allowed", job


def test_an_ollama_name_reached_through_a_proxy_is_checked_before_the_request(start_server, rebinding_dns,
                                                                              monkeypatch, admin):
    from fakes.proxy import ForwardProxy

    with ForwardProxy() as proxy:
        _through(monkeypatch, proxy)
        server = start_server(allow_private_urls=False)
        name = rebinding_dns.add("ollama.proxied.test")
        job = _failed(server, server.submit("ollama:llama3", base_url=f"http://{name}:{admin.port}")["id"])
        assert proxy.requests == [] and admin.requests == []
        assert job["error_code"] == "url_not_allowed", job


def test_the_servers_hf_token_never_goes_to_a_client_chosen_base_url(start_server, hub_env, fake_hub):
    fake_hub.add_repo("org/model", {"config.json": b"{}"})
    hub_env("https://hub.example.internal", token=SERVER_TOKEN)
    server = start_server(allow_private_urls=True)
    job = server.submit("hf:org/model", base_url=fake_hub.endpoint)
    server.wait_status(job["id"], "failed", "completed")
    sent = [r.headers.get("authorization", "") for r in fake_hub.hub_requests()]
    assert sent, "the Hub was never asked"
    assert not any(SERVER_TOKEN in header for header in sent)


def test_the_operators_loopback_hub_endpoint_serves_file_bytes(start_server, hub_env, fake_hub):
    """Issue 15: HF_ENDPOINT is the operator's, like OLLAMA_HOST: allowed even on loopback."""
    fake_hub.add_repo("org/model", {"config.json": b'{"a": 1}', "tokenizer.json": b"{}"})
    hub_env(fake_hub.endpoint)
    server = start_server(allow_private_urls=False)
    job = server.wait_status(server.submit("hf:org/model")["id"], "failed", "completed")
    assert job["status"] == "completed", job


def test_an_ollama_server_redirect_to_a_bare_ip_is_refused(start_server, monkeypatch, upstream, admin):
    # OLLAMA_HOST is the operator's (allowed); its 307 to another loopback port is not.
    monkeypatch.setenv("OLLAMA_HOST", upstream.base_url)
    upstream.add_redirect("/api/pull", admin.url("/api/pull"), code=307)
    upstream.add_redirect("/api/show", admin.url("/api/show"), code=307)
    server = start_server(allow_private_urls=False)
    job = _failed(server, server.submit("ollama:llama3")["id"])
    assert admin.requests == []
    assert job["error_code"] == "url_not_allowed", job

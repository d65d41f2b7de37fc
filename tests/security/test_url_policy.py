"""Finding 4: the URL policy's ranges (PROTOCOLS.md section 6), as unit tests of the one policy
and as what a client of the server sees when it submits such an address."""
from __future__ import annotations

import socket

import pytest

from server_helpers import assert_error


def UrlPolicy(allow_private: bool, always_allowed=()):  # noqa: N802 - imported late: main has no such module
    from modelpull.transfer._policy import UrlPolicy as policy

    return policy(allow_private, always_allowed)

# Refused by default, allowed with --allow-private-urls.
PRIVATE = [
    "100.64.0.1",  # carrier-grade NAT
    "100.101.102.103",  # Tailscale
    "2002:c0a8:101::1",  # 6to4 wrapping 192.168.1.1
    "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
    "2002:a00:1::5",  # 6to4 wrapping 10.0.0.1
    "fec0::1",  # site-local
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "::ffff:100.64.0.1",  # IPv4-mapped carrier-grade NAT
    "::ffff:192.168.0.1",
    "fd12:3456::1",  # unique-local
    "::1",
    "127.0.0.1",
]
# Refused whatever the operator allows.
NEVER = [
    "169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1",
    "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
    "fe80::1", "169.254.1.1",
]
PUBLIC = ["8.8.8.8", "2606:4700:4700::1111", "2002:808:808::1", "64:ff9b::808:808", "::ffff:8.8.8.8"]


def _literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@pytest.mark.parametrize("address", PRIVATE)
def test_private_ranges_are_refused_unless_allowed(address):
    assert UrlPolicy(allow_private=False)("h", 80, address)
    assert UrlPolicy(allow_private=True)("h", 80, address) is None


@pytest.mark.parametrize("address", NEVER)
def test_metadata_and_unroutable_addresses_are_always_refused(address):
    assert UrlPolicy(allow_private=True)("h", 80, address)
    assert UrlPolicy(allow_private=True, always_allowed=[("h", 80)])("h", 80, address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_even_when_wrapped(address):
    assert UrlPolicy(allow_private=False)("h", 80, address) is None


def test_a_wrapped_address_is_named_in_the_refusal():
    reason = UrlPolicy(allow_private=False)("h", 80, "2002:c0a8:101::1")
    assert "192.168.1.1" in reason and "6to4" in reason and "--allow-private-urls" in reason


def test_operator_configured_hosts_pass_by_host_and_port_only():
    policy = UrlPolicy(allow_private=False, always_allowed=[("127.0.0.1", 11434)])
    assert policy("127.0.0.1", 11434, "127.0.0.1") is None
    assert policy("127.0.0.1", 8080, "127.0.0.1")
    assert policy("metadata.google.internal", 80, "8.8.8.8")


@pytest.mark.parametrize("address", ["100.64.0.1", "2002:c0a8:101::1", "fec0::1", "::ffff:100.64.0.1"])
def test_the_server_refuses_the_new_ranges_at_submit(start_server, address):
    strict = start_server(allow_private_urls=False)
    url = f"http://{_literal(address)}/model.gguf"
    assert_error(strict.client.post("/downloads", json={"model": url}), 422, "model", "url_not_allowed")


def test_allow_private_urls_allows_ipv6_loopback(start_server):
    lenient = start_server(allow_private_urls=True)
    response = lenient.client.post("/downloads", json={"model": "http://[::1]:9/model.gguf"})
    assert response.status_code == 202, response.text


def test_a_name_that_does_not_resolve_is_refused_at_submit(start_server):
    server = start_server(allow_private_urls=True)
    error = assert_error(server.client.post("/downloads", json={"model": "http://no-such-host.invalid/m.gguf"}),
                         422, "model", "unknown_host")
    assert "no-such-host.invalid" in error["message"] and "does not resolve" in error["message"]


class _DnsDownAtFirst:
    """A name whose first `failures` lookups get EAI_AGAIN (DNS did not answer: the network is
    down) and later ones 127.0.0.1, at `socket.getaddrinfo`, where every client resolves."""

    def __init__(self, real, name: str, failures: int) -> None:
        self.real, self.name, self.failures, self.lookups = real, name, failures, 0

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        if (host.decode() if isinstance(host, bytes) else host) != self.name:
            return self.real(host, port, family, type, proto, flags)
        self.lookups += 1
        if self.lookups <= self.failures:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port or 0)))]


def test_a_dns_that_does_not_answer_now_queues_the_job_and_its_connections_retry(start_server, file_server,
                                                                                monkeypatch):
    """EAI_AGAIN is not "no such host": a submit while DNS is down is accepted (each connection
    is checked by the policy once DNS answers) and the download retries until it does."""
    data = b"gguf" * 4096
    file_server.add_file("/flaky.gguf", data)
    dns = _DnsDownAtFirst(socket.getaddrinfo, "dns-down.example", failures=2)
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    server = start_server(allow_private_urls=True)

    job = server.submit(f"http://dns-down.example:{file_server.port}/flaky.gguf")

    done = server.wait_status(job["id"], "completed", "failed")
    assert done["status"] == "completed", done
    assert dns.lookups >= 3  # the submit's, the one that failed in the job, the one that connected


def test_resolve_tells_no_such_name_from_no_answer(monkeypatch):
    from modelpull.transfer import _policy

    def down(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def nxdomain(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(_policy, "getaddrinfo", down)
    with pytest.raises(socket.gaierror) as raised:
        _policy.resolve("dns-down.example", 80)
    assert not isinstance(raised.value, _policy.UnknownHost) and not _policy.no_such_name(raised.value)
    monkeypatch.setattr(_policy, "getaddrinfo", nxdomain)
    with pytest.raises(_policy.UnknownHost, match="'gone.example' does not resolve"):
        _policy.resolve("gone.example", 80)

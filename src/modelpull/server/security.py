"""What the server refuses: bad ids, URLs to places it must not reach, paths outside the models
dir, requests without the API key, and tokens in logs.

The URL policy is enforced twice: on the URL a client submits (a clear 422 at once), and in the
resolver of the shared HTTP session, so a redirect or a DNS answer that points at a refused
address fails the download too.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import socket
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Query parameters whose values are secrets, redacted in access logs.
SECRET_PARAMS = frozenset({"token", "auth_token", "access_token", "api_key", "key", "hf_token"})

# Cloud metadata services: refused even when private addresses are allowed.
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.azure.internal"})
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "168.63.129.16")
)


class UrlRefused(ValueError):
    """A URL the policy does not allow; the message says why and what to do."""

    def __init__(self, message: str, code: str = "url_not_allowed") -> None:
        super().__init__(message)
        self.code = code


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value or ""))


def api_key_matches(expected: str, authorization: str | None, query_key: str | None) -> bool:
    """True when the request carries `expected` as a Bearer token (or `?api_key=` for EventSource)."""
    supplied = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            supplied = value.strip()
    if supplied is None:
        supplied = query_key
    if not supplied:
        return False
    return hmac.compare_digest(supplied.encode(), expected.encode())


# ------------------------------------------------------------------------------ URL policy


def address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """Why `address` may not be contacted, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        return "it is a cloud metadata service"
    if address.is_link_local:
        return "it is a link-local address"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "it is not a routable unicast address"
    if not allow_private and (address.is_loopback or address.is_private):
        return (
            "it is a loopback or private network address (set MODELPULL_ALLOW_PRIVATE_URLS=1 "
            "or --allow-private-urls to allow them)"
        )
    return None


def check_url_syntax(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; UrlRefused (code invalid_model_url) when malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"'{_shown(url)}' is not a valid URL: {exc}", "invalid_model_url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UrlRefused(
            f"Unsupported URL scheme '{parts.scheme}' in '{_shown(url)}': only http and https "
            "URLs can be downloaded",
            "invalid_model_url",
        )
    host = parts.hostname
    if not host:
        raise UrlRefused(f"'{_shown(url)}' has no host name", "invalid_model_url")
    if not parts.path or parts.path == "/":
        raise UrlRefused(
            f"'{_shown(url)}' names no file: give the URL of the model file itself",
            "invalid_model_url",
        )
    return host, port or (443 if parts.scheme.lower() == "https" else 80)


async def check_url(url: str, allow_private: bool) -> None:
    """Refuse URLs that are malformed or point at addresses the policy forbids (resolving DNS)."""
    host, port = check_url_syntax(url)
    check_host_name(host)
    addresses = await _resolve_all(host, port)
    for address in addresses:
        reason = address_refusal(address, allow_private)
        if reason:
            raise UrlRefused(f"Refusing to download from '{host}': {reason}")


def check_host_name(host: str) -> None:
    if host.lower().rstrip(".") in _METADATA_HOSTS:
        raise UrlRefused(f"Refusing to download from '{host}': it is a cloud metadata service")


async def _resolve_all(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        # An unresolvable host is not a policy question: the download reports it clearly.
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def address_check(allow_private: bool, always_allowed: Iterable[tuple[str, int]] = ()):
    """The policy as the transfer wire asks it: (host, port, address) -> why not, or None."""
    allowed = {(h.lower(), p) for h, p in always_allowed}

    def check(host: str, port: int, address: str) -> str | None:
        if host.lower().rstrip(".") in _METADATA_HOSTS:
            return "it is a cloud metadata service"
        permitted = allow_private or (host.lower(), port) in allowed
        return address_refusal(ipaddress.ip_address(address.split("%")[0]), permitted)

    return check


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that drops addresses the URL policy refuses (redirects, DNS rebinding).

    `always_allowed` holds (host, port) pairs the server itself was configured to reach (a local
    Ollama server), allowed whatever the private-address policy says.
    """

    def __init__(self, allow_private: bool, always_allowed: Iterable[tuple[str, int]] = ()) -> None:
        self._inner = DefaultResolver()
        self._check = address_check(allow_private, always_allowed)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        check_host_name(host)
        results = await self._inner.resolve(host, port, family)
        kept = []
        reasons = []
        for result in results:
            reason = self._check(host, port, result["host"])
            if reason:
                reasons.append(reason)
            else:
                kept.append(result)
        if not kept:
            raise AddressRefused(f"Refusing to connect to '{host}': {reasons[0] if reasons else 'no address'}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class AddressRefused(aiohttp.ClientConnectionError):
    """A connection the URL policy forbids (after a redirect, or a DNS answer)."""


def policy_trace(allow_private: bool, always_allowed: Iterable[tuple[str, int]] = ()) -> aiohttp.TraceConfig:
    """Checks every request's URL before it is sent: IP literals never reach the resolver."""
    check = address_check(allow_private, always_allowed)

    async def on_request_start(session, context, params) -> None:
        host = (params.url.host or "").strip("[]")
        port = params.url.port or 0
        try:
            check_host_name(host)
        except UrlRefused as exc:
            raise AddressRefused(str(exc)) from None
        try:
            ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return  # a name: PolicyResolver checks what it resolves to
        reason = check(host, port, host)
        if reason:
            raise AddressRefused(f"Refusing to connect to {host}: {reason}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace


# ------------------------------------------------------------------------------ paths


def inside(root: Path, candidate: Path) -> bool:
    """True when `candidate` resolves to `root` or a path below it."""
    root_resolved = root.resolve()
    resolved = candidate.resolve()
    return resolved == root_resolved or root_resolved in resolved.parents


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refused (ValueError) when it would leave `root`."""
    candidate = Path(relative)
    if candidate.is_absolute():
        target = candidate
    else:
        target = root / candidate
    if not inside(root, target):
        raise ValueError(f"'{relative}' is outside the models directory")
    return target


# ------------------------------------------------------------------------------ redaction


def redact_query(query: str) -> str:
    """The query string with secret parameters' values replaced by '***'."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    redacted = [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in pairs]
    return urlencode(redacted, safe="/:*")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every non-empty secret replaced by '***'."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _shown(url: str) -> str:
    """A URL as shown in messages: without its query string (which may carry a signature)."""
    return url.split("?", 1)[0]

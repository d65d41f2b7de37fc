"""huggingface_hub's HTTP client with the URL policy on every connection it opens.

huggingface_hub (>= 1.0) makes its requests through one shared httpx client (httpx2 in 2.x),
built by a factory that `set_client_factory` replaces. The client built here has a transport
whose connections ask the policy of the current run (`use_policy`, a ContextVar that
`asyncio.to_thread` carries into the worker thread) about the address they actually connect to:

    request -> every redirect hop that needs a new connection -> network backend connect_tcp()
            -> _policy.connect(): the policy's DNS seam, each address checked, then connect

so neither a 302 to a loopback admin path nor a name that rebinds to loopback gets through, and
no Authorization header reaches such a place. Connections are pooled per policy, so one made
without a policy (the library) is never reused under one (the server). Through a proxy the
target is not connected to here: its name is checked before the request instead.

The factory is installed the first time a policy is used; without one (the library alone)
huggingface_hub keeps its own client.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import urllib.request
import weakref
from typing import Any, Iterator

from ..transfer._policy import AddressCheck, allowed_addresses, check_name

try:  # huggingface_hub 2.x makes its requests with httpx2, 1.x with httpx
    import httpcore2 as _core
    import httpx2 as hub_http
except ImportError:  # pragma: no cover
    import httpcore as _core  # type: ignore[no-redef]
    import httpx as hub_http  # type: ignore[no-redef]

_POLICY: contextvars.ContextVar[AddressCheck | None] = contextvars.ContextVar("modelpull_hub_policy", default=None)
_install_lock = threading.Lock()
_installed = False


@contextlib.contextmanager
def use_policy(policy: AddressCheck | None) -> Iterator[None]:
    """Make huggingface_hub's requests in this context (and threads started from it) obey `policy`."""
    if policy is not None:
        _install()
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        from huggingface_hub import set_client_factory

        set_client_factory(_client)
        _installed = True


def _client() -> Any:
    """What huggingface_hub's default factory makes, on our transport."""
    from huggingface_hub.utils import _http

    hook = getattr(_http, "hf_request_event_hook", None)
    return hub_http.Client(
        transport=_PolicyTransport(),
        event_hooks={"request": [hook]} if hook else {},
        follow_redirects=True,
        timeout=None,
    )


class _PolicyBackend(_core.SyncBackend):
    """Opens every TCP connection through the policy: the address checked is the one connected."""

    def __init__(self, policy: AddressCheck) -> None:
        self._policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> Any:
        last_error: Exception | None = None
        for info in allowed_addresses(host, port, self._policy):  # AddressRefused passes through as is
            try:
                # The base class connects to the literal address just allowed; TLS still checks `host`.
                return super().connect_tcp(info[4][0], port, timeout, local_address, socket_options)
            except _core.ConnectError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error


class _Routes:
    """One policy's transports: direct, and one per proxy (HTTP(S)_PROXY, NO_PROXY as when made)."""

    def __init__(self, policy: AddressCheck | None) -> None:
        self.policy = policy
        self.proxies = urllib.request.getproxies_environment()
        self.direct = hub_http.HTTPTransport()
        if policy is not None:
            self.direct._pool._network_backend = _PolicyBackend(policy)  # no public knob for it
        self.proxied: dict[str, Any] = {}
        self._lock = threading.Lock()

    def for_url(self, url: Any) -> Any:
        scheme, host = url.scheme, url.host
        proxy = self.proxies.get(scheme)
        if not proxy or urllib.request.proxy_bypass_environment(host, self.proxies):
            return self.direct
        if self.policy is not None:
            check_name(host, url.port or (443 if scheme == "https" else 80), self.policy)
        with self._lock:
            if proxy not in self.proxied:
                self.proxied[proxy] = hub_http.HTTPTransport(proxy=proxy)
            return self.proxied[proxy]

    def close(self) -> None:
        for transport in (self.direct, *self.proxied.values()):
            transport.close()


class _PolicyTransport(hub_http.BaseTransport):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plain = _Routes(None)
        self._by_policy: weakref.WeakKeyDictionary[Any, _Routes] = weakref.WeakKeyDictionary()

    def handle_request(self, request: Any) -> Any:
        policy = _POLICY.get()
        with self._lock:
            if policy is None:
                routes = self._plain
            else:
                routes = self._by_policy.get(policy)
                if routes is None:
                    routes = self._by_policy[policy] = _Routes(policy)
        return routes.for_url(request.url).handle_request(request)  # DNS outside the lock

    def close(self) -> None:
        with self._lock:
            routes = [self._plain, *self._by_policy.values()]
        for route in routes:
            route.close()

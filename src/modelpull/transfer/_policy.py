"""The URL policy: which addresses modelpull may connect to on someone else's behalf.

One gate for every outbound connection the server makes, each asking it for the address it
is about to connect to (after DNS, on every redirect hop), never for the name in a URL:

    the wire (file bytes)              connect(): resolve, check each address, connect to one
    the Hub client (huggingface_hub)   providers/_hub_http.py: its network backend calls connect()
    aiohttp (registries, Ollama's API) _aiohttp.py: a resolver that drops refused addresses, and
                                       IP literals checked before each request (redirects are
                                       followed by hand, one request per hop)

`resolve()` is the one place a name becomes addresses, so a name that answers a public address
when a job is submitted and loopback when it connects (DNS rebinding) is refused at connect.

Stdlib only: the wire imports this, and a plain URL download must stay cheap to start.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port, address) -> why that address may not be contacted, or None.
AddressCheck = Callable[[str, int, str], "str | None"]

ALLOW_HINT = "set MODELPULL_ALLOW_PRIVATE_URLS=1 or --allow-private-urls to allow them"

# Cloud metadata services: refused even when private addresses are allowed.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.azure.internal"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "168.63.129.16")
)

_net = ipaddress.ip_network
# Never contacted, whatever the operator allows: not one host, or 0.0.0.0 (which Linux routes to
# loopback), or link-local, where cloud metadata services live beside the well-known address.
_NEVER = (
    _net("0.0.0.0/8"), _net("224.0.0.0/4"), _net("240.0.0.0/4"), _net("169.254.0.0/16"),
    _net("::/128"), _net("ff00::/8"), _net("fe80::/10"),
)
# Private networks by name, for the message; anything else that is not global counts as private too.
_PRIVATE = (
    (_net("127.0.0.0/8"), "loopback"), (_net("::1/128"), "loopback"),
    (_net("10.0.0.0/8"), "private network"), (_net("172.16.0.0/12"), "private network"),
    (_net("192.168.0.0/16"), "private network"),
    (_net("100.64.0.0/10"), "carrier-grade NAT (and Tailscale)"),
    (_net("fc00::/7"), "unique-local"), (_net("fec0::/10"), "site-local"),
)
# IPv6 forms that carry an IPv4 address: judged by the IPv4 address they lead to.
_NAT64 = _net("64:ff9b::/96")
_IPV4_COMPATIBLE = _net("::/96")  # deprecated ::a.b.c.d; never routed
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


class AddressRefused(ConnectionError):
    """The policy forbids this connection (after a redirect, or a DNS answer)."""


class UnknownHost(OSError):
    """A name DNS has no address for (it says so: not a resolver that did not answer now)."""


# getaddrinfo()'s answers for "no such name" (NXDOMAIN, no address records), as opposed to
# EAI_AGAIN, "DNS did not answer now", which a retry may cure (a laptop back on the network).
_NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None), socket.EAI_FAIL) if code is not None
)


def no_such_name(exc: BaseException) -> bool:
    """True when `exc` is DNS saying the name does not exist (UnknownHost, or getaddrinfo()'s own
    error with one of those codes): the one test of it, for this module and every HTTP client."""
    if isinstance(exc, UnknownHost):
        return True
    return isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME


def unwrap(address: IPAddress) -> tuple[IPAddress, str]:
    """The IPv4 address an IPv6 address wraps (IPv4-mapped, NAT64, 6to4), and the form's name."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped, "IPv4-mapped"
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
        if address.sixtofour is not None:
            return address.sixtofour, "6to4"
    return address, ""


def address_refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why `address` may not be contacted, or None when it may."""
    inner, form = unwrap(address)
    wrapped = f" (wrapped in {form} form {address})" if form else ""
    if inner in METADATA_ADDRESSES or address in METADATA_ADDRESSES:
        return f"{inner}{wrapped} is a cloud metadata service"
    if any(inner in network for network in _NEVER) or (
        isinstance(inner, ipaddress.IPv6Address) and inner in _IPV4_COMPATIBLE and inner != _LOOPBACK_V6
    ):
        return f"{inner}{wrapped} is not a routable unicast address"
    if allow_private:
        return None
    kind = next((name for network, name in _PRIVATE if inner in network), None)
    if kind is None and not inner.is_global:
        kind = "non-public"
    if kind is not None:
        return f"{inner}{wrapped} is a {kind} address ({ALLOW_HINT})"
    return None


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (brackets and zone ids allowed), or None for a name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


def host_refusal(host: str) -> str | None:
    """Refusals that need no DNS: metadata names."""
    if host.lower().rstrip(".") in METADATA_HOSTS:
        return f"'{host}' is a cloud metadata service"
    return None


class UrlPolicy:
    """The policy as every client asks it: `policy(host, port, address)` -> why not, or None.

    `always_allowed` holds the (host, port) pairs the operator configured (a local Ollama,
    the Hub endpoint, proxies): reachable whatever the private-address rule says, never
    when they are metadata services.
    """

    def __init__(self, allow_private: bool, always_allowed: Iterable[tuple[str, int]] = ()) -> None:
        self.allow_private = allow_private
        self.always_allowed = frozenset((h.lower().strip("[]"), p) for h, p in always_allowed)

    def __call__(self, host: str, port: int, address: str) -> str | None:
        name = host.lower().strip("[]")
        reason = host_refusal(name)
        if reason:
            return reason
        parsed = parse_address(address)
        if parsed is None:
            return f"'{address}' is not an IP address"
        permitted = self.allow_private or (name.rstrip("."), port) in self.always_allowed
        return address_refusal(parsed, permitted)


# ---------------------------------------------------------------------------- DNS and connecting


def getaddrinfo(host: str, port: int) -> list[tuple]:
    """The one DNS seam: every client of the policy resolves here (tests rebind names here)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def resolve(host: str, port: int) -> list[tuple]:
    """getaddrinfo()'s answers for `host`; UnknownHost when DNS says there is no such name. Any
    other resolver failure (EAI_AGAIN: DNS did not answer now) stays a socket.gaierror, which
    callers retry like any other connection failure."""
    try:
        infos = getaddrinfo(host.strip("[]"), port)
    except socket.gaierror as exc:
        if not no_such_name(exc):
            raise
        raise UnknownHost(f"'{host}' does not resolve ({exc.strerror or exc}): check the host name") from exc
    if not infos:
        raise UnknownHost(f"'{host}' does not resolve: check the host name")
    return infos


def allowed_addresses(host: str, port: int, check: AddressCheck) -> list[tuple]:
    """The getaddrinfo() answers for `host` that `check` allows; AddressRefused when none is."""
    refusals: list[str] = []
    allowed = []
    for info in resolve(host, port):
        reason = check(host, port, info[4][0])
        if reason:
            refusals.append(reason)
        else:
            allowed.append(info)
    if not allowed:
        raise AddressRefused(f"Refusing to connect to '{host}': {refusals[0] if refusals else 'no address'}")
    return allowed


def connect(host: str, port: int, timeout: float | None, check: AddressCheck) -> socket.socket:
    """A TCP socket to the first address of `host` that `check` allows (AddressRefused if none)."""
    last_error: OSError | None = None
    for family, kind, proto, _, address in allowed_addresses(host, port, check):
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    assert last_error is not None
    raise last_error


def check_name(host: str, port: int, check: AddressCheck) -> None:
    """Through a proxy the target is not connected to here: check what its name resolves to."""
    literal = parse_address(host)
    if literal is not None:
        answers = [str(literal)]
    else:
        try:
            answers = [info[4][0] for info in resolve(host, port)]
        except OSError:
            answers = []  # no answer here (a proxy may resolve what this machine cannot): it will say
        reason = host_refusal(host)
        if reason:
            raise AddressRefused(f"Refusing to connect to '{host}': {reason}")
    for address in answers:
        reason = check(host, port, address)
        if reason:
            raise AddressRefused(f"Refusing to connect to '{host}': {reason}")

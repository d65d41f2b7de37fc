"""What the server refuses: bad ids, URLs to places it must not reach, paths outside the models
dir, requests without the API key, and tokens in logs.

The URL policy itself (`transfer/_policy.py`) is asked twice: here, on the URL a client submits
(a clear 422 at once), and by every HTTP client the server uses, on the address each connection
goes to, so a redirect or a DNS answer that points at a refused address fails the download too.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..transfer._policy import UnknownHost, UrlPolicy, host_refusal, parse_address, resolve

from .._paths import is_within

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Query parameters whose values are secrets, redacted in access logs.
SECRET_PARAMS = frozenset({"token", "auth_token", "access_token", "api_key", "key", "hf_token"})


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
    bad = next((c for c in url if c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise UrlRefused(
            f"{_shown(url)!r} is not a valid URL: it contains {'a space' if bad == ' ' else repr(bad)} "
            "(percent-encode it in a path, e.g. %20; a host name never has one)", "invalid_model_url",
        )
    host = parts.hostname
    if not host:
        raise UrlRefused(f"'{_shown(url)}' has no host name", "invalid_model_url")
    if not _valid_host(host):
        raise UrlRefused(
            f"'{_shown(url)}' is not a valid URL: '{host}' is not a host name (letters, digits, '-' and "
            "'.' only) nor an IP address", "invalid_model_url",
        )
    if not parts.path or parts.path == "/":
        raise UrlRefused(
            f"'{_shown(url)}' names no file: give the URL of the model file itself",
            "invalid_model_url",
        )
    return host, port or (443 if parts.scheme.lower() == "https" else 80)


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _valid_host(host: str) -> bool:
    """A DNS name (IDNA allowed) or an IP literal, as `urlsplit().hostname` gives it."""
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii").lower().rstrip(".")
    except (UnicodeError, ValueError):
        return False
    labels = ascii_host.split(".")
    return 0 < len(ascii_host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


async def check_url(url: str, policy: UrlPolicy) -> None:
    """Refuse, before a job exists, URLs that are malformed, name a host DNS says does not exist
    (code unknown_host), or lead to an address the policy forbids.

    This is the early, clear answer; the policy is asked again at every connection (the address
    a name resolves to then, every redirect hop), which is what stops DNS rebinding. So a
    resolver that does not answer now (EAI_AGAIN: the network is down) refuses nothing: the job
    is queued and its connections retry, each checked when DNS answers.
    """
    host, port = check_url_syntax(url)
    reason = host_refusal(host)
    if reason:
        raise UrlRefused(f"Refusing to download from '{host}': {reason}")
    literal = parse_address(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            infos = await asyncio.to_thread(resolve, host, port)
        except UnknownHost as exc:
            raise UrlRefused(f"Cannot download from {exc}", "unknown_host") from None
        except OSError:  # DNS did not answer now: the connections will ask again, and retry
            return
        addresses = [info[4][0] for info in infos]
    for address in addresses:
        reason = policy(host, port, address)
        if reason:
            raise UrlRefused(f"Refusing to download from '{host}': {reason}")


# ------------------------------------------------------------------------------ paths


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative` (or an absolute path), refused (ValueError) when it resolves outside `root`."""
    if "\0" in relative:
        raise ValueError("a path cannot hold a NUL character")
    candidate = Path(relative)
    target = candidate if candidate.is_absolute() else root / candidate
    if not is_within(target, root):
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


_URL_IN_TEXT = re.compile(r"(?i)\b(https?://)([^\s/?#@]*@)?([^\s?#'\"]*)(\?[^\s#'\")\]]*)?")


def redact_urls(text: str) -> str:
    """`text` with every URL's user info and query string (signatures, tokens) removed."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: m.group(1) + m.group(3), text)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every non-empty secret replaced by '***'."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _shown(url: str) -> str:
    """A URL as shown in messages: without its query string (which may carry a signature)."""
    return url.split("?", 1)[0]

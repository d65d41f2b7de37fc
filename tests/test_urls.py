"""normalized_url: the shortcut for URLs already in normal form gives exactly what yarl gives.

A plain URL download does not import yarl (its start-up cost); every URL the shortcut passes
unchanged must be one yarl would also leave unchanged, or the wire would send a different
request than before. Checked on hand-picked edge cases and on random URLs built from the
pieces that matter (case, ports, dot segments, characters needing quotes, IDNA, empty parts).
"""
from __future__ import annotations

import random

import pytest
from yarl import URL

from modelpull.transfer._http import _PLAIN, next_hop, normalized_url, origin, public_url


def _yarl(text: str) -> str | type:
    try:
        return str(URL(text))
    except (ValueError, TypeError) as exc:
        return type(exc)


def _ours(text: str) -> str | type:
    try:
        return normalized_url(text)
    except (ValueError, TypeError) as exc:
        return type(exc)


EDGES = [
    "http://example.com", "http://example.com/", "https://example.com/a/b.gguf?download=true",
    "http://Example.com/a", "HTTP://example.com/a", "http://example.com:80/a", "https://example.com:443/a",
    "http://example.com:080/a", "http://example.com:8080/a", "http://example.com:65535/", "http://example.com:65536/",
    "http://example.com:0/", "http://example.com/a/../b", "http://example.com/./b", "http://example.com/a/.",
    "http://example.com/a/..", "http://example.com/.hidden/..x", "http://example.com/a%2fb", "http://example.com/%7Ea",
    "http://example.com/a b", "http://example.com/a?q=a b", "http://example.com/a?", "http://example.com/a#",
    "http://example.com/a?q#f", "http://example.com/a?q=[1]", "http://example.com/[a]", "http://example.com/a|b",
    "http://u:p@example.com/a", "http://@example.com/a", "http://[::1]:8/a", "http://[0:0::1]/", "http://127.0.0.1/a",
    "http://xn--bcher-kva.example/a", "http://bücher.example/a", "http://a_b.example/a", "http://-a.example/",
    "http://a-.example/", "http://a..example/", "http://example.com./a", "http://example.com//a", "http://example.com/a;p=1",
    "http://example.com/a?x=/?:@!$'()*+,;=", "http://example.com/a#/?:@", "http://example.com/é", "http://example.com\\a",
    "ftp://example.com/a", "example.com/a", "http:///a", "http://", "http://[bad/a",
]


@pytest.mark.parametrize("text", EDGES)
def test_edge_cases_come_out_as_yarl_gives_them(text):
    assert _ours(text) == _yarl(text)


def test_random_urls_come_out_as_yarl_gives_them():
    pick = random.Random(1302).choice
    # Plain pieces weighted up, so that a fair share of the URLs take the shortcut.
    schemes = ["http", "https"] * 4 + ["HTTP", "ftp", "Https"]
    labels = ["a", "example", "x-y", "9", "xn--bcher-kva"] * 4 + ["EXAMPLE", "a_b", "bücher", "-z", "z-", ""]
    ports = [""] * 8 + [":8080", ":1", ":65535"] * 2 + [":80", ":443", ":080", ":65536", ":0"]
    segments = ["a", "b.gguf", "", "~x", "q;p=1", "x@y:z", "'!$&()*+,='", "a.", ".a"] * 3 + [
        ".", "..", "%2f", "%2F", "%41", "a b", "é", "[x]", "a|b", "%", "%zz", "a\tb"]
    queries = ["", "?q", "?q=1&r=2", "?x=/?:@"] * 3 + ["?", "?q=a b", "?q=%41", "?q=[1]", "?q=é"]
    fragments = ["", "#f", "#/a?b"] * 3 + ["#", "#a b"]
    seen_plain = 0
    for _ in range(20000):
        host = ".".join(pick(labels) for _ in range(pick([1, 2, 3])))
        path = "".join("/" + pick(segments) for _ in range(pick([0, 1, 2, 3])))
        text = f"{pick(schemes)}://{host}{pick(ports)}{path}{pick(queries)}{pick(fragments)}"
        assert _ours(text) == _yarl(text), text
        seen_plain += _PLAIN.fullmatch(text) is not None
    assert seen_plain > 1000  # the shortcut itself was exercised, not only yarl behind it


def test_redirect_targets_are_normalized_and_lose_credentials_across_origins():
    sent = {"Authorization": "Bearer t", "Accept": "*/*"}
    home = origin("https://example.com/a/b")

    target, headers = next_hop("https://example.com/a/b", "../c d?x=1", home, sent)
    assert (target, headers) == ("https://example.com/c%20d?x=1", sent)

    target, headers = next_hop("https://example.com/a/b", "https://EXAMPLE.com:443/z", home, sent)
    assert (target, headers) == ("https://example.com/z", sent)  # the same origin, written differently

    target, headers = next_hop("https://example.com/a/b", "//cdn.example.net/blob", home, sent)
    assert (target, headers) == ("https://cdn.example.net/blob", {"Accept": "*/*"})


def test_public_url_keeps_no_query_fragment_or_user_info():
    assert public_url("https://user:secret@Example.com/a b?token=t#frag") == "https://example.com/a%20b"
    assert public_url("http://[bad/x?token=t") == "http://[bad/x"  # not a URL: still nothing after '?'

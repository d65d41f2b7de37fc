"""Model references, as typed on the command line or in `POST /engines`.

    https://host/path/model.gguf            provider "url"
    url:https://host/path/model.gguf        the same, explicitly
    hf:org/name[@revision][:path-or-glob]   provider "huggingface" (also huggingface:)
    mlx:name | mlx:org/name[@revision]      provider "mlx" (a bare name means mlx-community/<name>)
    ollama:name[:tag]                       provider "ollama"
    ollama:host/namespace/name:tag          the same, with registry host and namespace

A path part with a glob character (`*?[`) becomes `allow_patterns`, otherwise `filename`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

_GLOB_CHARS = set("*?[")


@dataclasses.dataclass
class Reference:
    provider: str
    model: str
    options: dict[str, Any]


def is_reference(text: str) -> bool:
    """True when `text` names a model by reference (URL or provider prefix), not a local path."""
    try:
        parse_reference(text)
    except ValueError:
        return False
    return True


def parse_reference(text: str) -> Reference:
    """Split a reference into provider, model and options; ValueError with the syntax if malformed."""
    ref = (text or "").strip()
    lowered = ref.lower()
    if lowered.startswith(("http://", "https://")):
        return Reference("url", ref, {})
    prefix, sep, rest = ref.partition(":")
    prefix = prefix.lower()
    if not sep or not rest:
        raise ValueError(
            f"'{text}' is not a model reference: use an http(s) URL, hf:org/name, "
            "mlx:name or ollama:name[:tag]"
        )
    if prefix == "url":
        return parse_reference(rest) if rest.lower().startswith(("http://", "https://")) else _bad(text)
    if prefix in ("hf", "huggingface", "mlx"):
        return _hub_reference("huggingface" if prefix != "mlx" else "mlx", rest, text)
    if prefix == "ollama":
        if not rest or any(c.isspace() for c in rest):
            _bad(text)
        return Reference("ollama", rest, {})
    _bad(text)
    raise AssertionError  # unreachable


def _hub_reference(provider: str, rest: str, text: str) -> Reference:
    options: dict[str, Any] = {}
    repo_part, sep, path = rest.partition(":")
    if sep:
        if not path:
            _bad(text)
        if _GLOB_CHARS & set(path):
            options["allow_patterns"] = [path]
        else:
            options["filename"] = path
    repo, sep, revision = repo_part.partition("@")
    if sep:
        if not revision:
            _bad(text)
        options["revision"] = revision
    if not repo or repo.count("/") > 1 or repo.startswith("/") or repo.endswith("/"):
        _bad(text)
    return Reference(provider, repo, options)


def _bad(text: str) -> Reference:
    raise ValueError(
        f"'{text}' is not a valid model reference. Forms: https://host/file, "
        "hf:org/name[@revision][:path-or-glob], mlx:name, ollama:name[:tag]"
    )

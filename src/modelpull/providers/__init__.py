"""The provider registry: one module per source, one line per registration.

A provider turns a model reference into a `Plan` (files with url, size, digest and
destination) and maps its source's errors to clear ones. It knows nothing of sockets'
retries or progress bars.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._base import Provider

if TYPE_CHECKING:  # what is on disk: only the inventory's faces need it, not a download
    from ._local import LocalStore

# name -> "module:Class"; imported on first use so a provider's dependencies load only when needed.
_REGISTRY: dict[str, str] = {
    "url": "modelpull.providers.url:UrlProvider",
    "huggingface": "modelpull.providers.huggingface:HuggingFaceProvider",
    "mlx": "modelpull.providers.mlx:MlxProvider",
    "ollama": "modelpull.providers.ollama:OllamaProvider",
}
# name -> "module:Class" of its LocalStore: what it keeps on disk (list, verify, rm, prune).
# These modules import no network client, so listing stays fast.
_LOCAL_STORES: dict[str, str] = {
    "huggingface": "modelpull.providers._hf_cache:HubCacheStore",  # MLX models live in the same cache
    "ollama": "modelpull.providers._ollama_store:OllamaStore",
    "url": "modelpull.providers._url_folder:UrlFolder",
}
_ALIASES: dict[str, str] = {"hf": "huggingface", "http": "url", "https": "url"}


def canonical_name(name: str) -> str:
    """The registered name for `name` (aliases resolved); ValueError if there is none."""
    key = (name or "").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(
            f"Provider '{name}' does not support model downloads (supported: {known})"
        )
    return key


def get_provider(name: str) -> Provider:
    """An instance of the provider registered as `name` (or an alias)."""
    key = canonical_name(name)
    module_name, _, class_name = _REGISTRY[key].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ValueError(f"Provider '{name}' does not support model downloads in this build") from exc
        raise
    return getattr(module, class_name)()


def local_stores() -> dict[str, type[LocalStore]]:
    """Each provider's LocalStore class (what it has on disk), by provider name."""
    stores = {}
    for name, target in _LOCAL_STORES.items():
        module_name, _, class_name = target.partition(":")
        stores[name] = getattr(importlib.import_module(module_name), class_name)
    return stores


def provider_names() -> list[str]:
    return sorted(_REGISTRY)


__all__ = ["Provider", "canonical_name", "get_provider", "local_stores", "provider_names"]

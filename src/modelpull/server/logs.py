"""Structured logs: one JSON object per line (or plain text), secrets scrubbed from every line.

Tokens the server holds in memory are registered in `SECRETS`; the formatter replaces each of
them in the final line, whatever logged it (our code, aiohttp, uvicorn), so a token that slips
into an exception message still never reaches the log.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .security import redact


class SecretSet:
    """Strings that must never be logged; counted, so two jobs may share one token."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, secret: str | None) -> None:
        if secret:
            self._counts[secret] = self._counts.get(secret, 0) + 1

    def discard(self, secret: str | None) -> None:
        if secret and secret in self._counts:
            self._counts[secret] -= 1
            if self._counts[secret] <= 0:
                del self._counts[secret]

    def __iter__(self):
        return iter(list(self._counts))


SECRETS = SecretSet()

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str), SECRETS)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return redact(line, SECRETS)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send modelpull's, uvicorn's and aiohttp's logs to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "modelpull", "aiohttp"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    silence_uvicorn_access_log()


def silence_uvicorn_access_log() -> None:
    """uvicorn's access log prints query strings as sent (tokens included); the app logs its own."""
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True

"""Configuration's one home: defaults that work on a laptop, overridden by MODELPULL_* variables.

The library reads `Settings.from_env()` for its defaults; the server adds its own flags on
top of the same object. Every field and its variable is listed in the README's table.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ENV_PREFIX = "MODELPULL_"
MiB = 1024 * 1024


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass
class Settings:
    """Every setting modelpull has, for the library, the CLI and the server."""

    # Library / transfer defaults.
    home: Path = Path("./models")  # MODELPULL_HOME: where downloads land
    connections: int = 16  # MODELPULL_CONNECTIONS: connections per large file
    multipart_threshold: int = 64 * MiB  # MODELPULL_MULTIPART_THRESHOLD: bytes before splitting
    stall_timeout: float = 30.0  # MODELPULL_STALL_TIMEOUT: seconds without a byte = stall
    max_retries: int = 5  # MODELPULL_MAX_RETRIES: per failing connection, without progress
    # Server.
    host: str = "127.0.0.1"  # MODELPULL_HOST
    port: int = 8080  # MODELPULL_PORT
    # MODELPULL_DATABASE: an SQLite file (default <home>/.modelpull/state.db), or a
    # postgresql://user:password@host:5432/db URL shared by several replicas.
    database: Path | str | None = None
    lease_seconds: float = 15.0  # MODELPULL_LEASE_SECONDS: a dead replica's jobs are taken over after this
    max_active_jobs: int = 3  # MODELPULL_MAX_ACTIVE_JOBS
    max_connections_per_host: int = 16  # MODELPULL_MAX_CONNECTIONS_PER_HOST
    api_key: str | None = None  # MODELPULL_API_KEY: every route but /health needs Bearer <key>
    retention_seconds: float = 3600.0  # MODELPULL_RETENTION_SECONDS: how long finished jobs stay
    allow_private_urls: bool = False  # MODELPULL_ALLOW_PRIVATE_URLS: loopback/private ranges allowed
    max_event_streams: int = 1000  # MODELPULL_MAX_EVENT_STREAMS: open SSE streams; 503 past it
    cors_origins: tuple[str, ...] = ()  # MODELPULL_CORS_ORIGINS (comma-separated): browser origins allowed
    max_queued_jobs: int = 1000  # MODELPULL_MAX_QUEUED_JOBS: past it, a new download is a 429
    # MODELPULL_LOCAL_MODEL_ROOTS (os.pathsep-separated): folders besides `home` whose files
    # POST /engines may register by local path.
    local_model_roots: tuple[Path, ...] = ()

    @classmethod
    def from_env(cls) -> "Settings":
        database = _env("DATABASE", "")
        return cls(
            home=Path(_env("HOME", "./models")),
            connections=int(_env("CONNECTIONS", "16")),
            multipart_threshold=int(_env("MULTIPART_THRESHOLD", str(64 * MiB))),
            stall_timeout=float(_env("STALL_TIMEOUT", "30")),
            max_retries=int(_env("MAX_RETRIES", "5")),
            host=_env("HOST", "127.0.0.1"),
            port=int(_env("PORT", "8080")),
            database=database or None,
            lease_seconds=float(_env("LEASE_SECONDS", "15")),
            max_active_jobs=int(_env("MAX_ACTIVE_JOBS", "3")),
            max_connections_per_host=int(_env("MAX_CONNECTIONS_PER_HOST", "16")),
            api_key=os.environ.get(ENV_PREFIX + "API_KEY") or None,
            retention_seconds=float(_env("RETENTION_SECONDS", "3600")),
            allow_private_urls=_env_bool("ALLOW_PRIVATE_URLS", False),
            max_event_streams=int(_env("MAX_EVENT_STREAMS", "1000")),
            cors_origins=tuple(o.strip() for o in _env("CORS_ORIGINS", "").split(",") if o.strip()),
            max_queued_jobs=int(_env("MAX_QUEUED_JOBS", "1000")),
            local_model_roots=tuple(Path(p) for p in _env("LOCAL_MODEL_ROOTS", "").split(os.pathsep) if p),
        )

    @property
    def state_dir(self) -> Path:
        """The server's own folder inside `home` (database, WAL, locks): never a download's."""
        return Path(self.home) / ".modelpull"

    @property
    def database_url(self) -> str:
        """The --database value: a postgresql:// URL or an SQLite file path (the default)."""
        return str(self.database or (self.state_dir / "state.db"))

    @property
    def shared_database(self) -> bool:
        """Several replicas may share this database (and the models dir with it)."""
        return self.database_url.startswith(("postgresql://", "postgres://"))

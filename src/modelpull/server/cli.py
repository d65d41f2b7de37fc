"""`modelpull serve`: flags over MODELPULL_* variables over defaults, then uvicorn.

    python -m modelpull.server.cli [--host H] [--port P] [--models-dir D] ...
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from .._settings import Settings

GC_YOUNG_THRESHOLD = 50_000  # new tracked objects between two young collections (Python's default: 700)

_DESCRIPTION = """\
Serve the modelpull download manager: Kolosal-compatible REST routes, Server-Sent Events,
AbstractCore's download stream. Every flag overrides its MODELPULL_* environment variable.
API reference: docs/server-api.md; OpenAPI at /docs once running."""


def build_parser(defaults: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelpull serve", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--host", default=defaults.host, help=f"address to bind (MODELPULL_HOST, default {defaults.host})")
    add("--port", type=int, default=defaults.port, help=f"port, 0 for any free one (MODELPULL_PORT, default {defaults.port})")
    add("--models-dir", type=Path, default=defaults.home, help=f"where downloads land (MODELPULL_HOME, default {defaults.home})")
    add("--database", default=defaults.database,
        help="the job store: an SQLite file, or postgresql://user:password@host:5432/db shared by several "
             "replicas (MODELPULL_DATABASE, default <models-dir>/.modelpull/state.db)")
    add("--lease-seconds", type=float, default=defaults.lease_seconds,
        help="with PostgreSQL: a replica that stops renewing its jobs for this long loses them to the others "
             f"(MODELPULL_LEASE_SECONDS, default {defaults.lease_seconds:g})")
    add("--max-active-jobs", type=int, default=defaults.max_active_jobs,
        help=f"downloads running at once; the rest wait as queued (MODELPULL_MAX_ACTIVE_JOBS, default {defaults.max_active_jobs})")
    add("--max-connections-per-host", type=int, default=defaults.max_connections_per_host,
        help=f"HTTP connections to one host, all jobs together (MODELPULL_MAX_CONNECTIONS_PER_HOST, default {defaults.max_connections_per_host})")
    add("--connections", type=int, default=defaults.connections,
        help=f"connections per large file (MODELPULL_CONNECTIONS, default {defaults.connections})")
    add("--multipart-threshold", type=int, default=defaults.multipart_threshold,
        help=f"bytes from which a file is split over several connections (MODELPULL_MULTIPART_THRESHOLD, default {defaults.multipart_threshold})")
    add("--stall-timeout", type=float, default=defaults.stall_timeout,
        help=f"seconds without a byte before reconnecting (MODELPULL_STALL_TIMEOUT, default {defaults.stall_timeout:g})")
    add("--max-retries", type=int, default=defaults.max_retries,
        help=f"failures in a row, without progress, before a download fails (MODELPULL_MAX_RETRIES, default {defaults.max_retries})")
    add("--api-key", default=defaults.api_key,
        help="require 'Authorization: Bearer <key>' on every route but /health and the API docs (MODELPULL_API_KEY)")
    add("--retention-seconds", type=float, default=defaults.retention_seconds,
        help=f"how long finished jobs stay listed (MODELPULL_RETENTION_SECONDS, default {defaults.retention_seconds:g})")
    add("--max-event-streams", type=int, default=defaults.max_event_streams,
        help="Server-Sent Event streams open at once; past it 503 with Retry-After "
             f"(MODELPULL_MAX_EVENT_STREAMS, default {defaults.max_event_streams})")
    add("--cors-origin", dest="cors_origins", action="append", default=None, metavar="ORIGIN",
        help="a browser origin allowed to call the API (e.g. http://localhost:3000); repeatable; "
             "none by default (MODELPULL_CORS_ORIGINS, comma-separated)")
    add("--max-queued-jobs", type=int, default=defaults.max_queued_jobs,
        help=f"downloads waiting at once; past it a new one is refused with 429 (MODELPULL_MAX_QUEUED_JOBS, default {defaults.max_queued_jobs})")
    add("--local-model-root", dest="local_model_roots", type=Path, action="append", default=None, metavar="FOLDER",
        help="a folder besides the models dir whose model files POST /engines may register by path; repeatable "
             "(MODELPULL_LOCAL_MODEL_ROOTS, separated by the OS path separator)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--allow-private-urls", dest="allow_private_urls", action="store_true",
                        default=defaults.allow_private_urls,
                        help="allow URLs to loopback and private networks (MODELPULL_ALLOW_PRIVATE_URLS); "
                             "link-local and cloud metadata addresses stay refused")
    policy.add_argument("--deny-private-urls", dest="allow_private_urls", action="store_false")
    add("--log-level", default=os.environ.get("MODELPULL_LOG_LEVEL", "info").lower(),
        choices=["debug", "info", "warning", "error"], help="MODELPULL_LOG_LEVEL, default info")
    add("--log-format", default=os.environ.get("MODELPULL_LOG_FORMAT", "json").lower(), choices=["json", "text"],
        help="structured JSON lines or text (MODELPULL_LOG_FORMAT, default json)")
    return parser


def settings_from_args(argv: Sequence[str]) -> tuple[Settings, argparse.Namespace]:
    defaults = Settings.from_env()
    args = build_parser(defaults).parse_args(list(argv))
    settings = dataclasses.replace(
        defaults,
        host=args.host,
        port=args.port,
        home=args.models_dir,
        database=args.database or None,
        lease_seconds=args.lease_seconds,
        max_active_jobs=args.max_active_jobs,
        max_connections_per_host=args.max_connections_per_host,
        connections=args.connections,
        multipart_threshold=args.multipart_threshold,
        stall_timeout=args.stall_timeout,
        max_retries=args.max_retries,
        api_key=args.api_key or None,
        retention_seconds=args.retention_seconds,
        allow_private_urls=args.allow_private_urls,
        max_event_streams=args.max_event_streams,
        cors_origins=tuple(args.cors_origins) if args.cors_origins is not None else defaults.cors_origins,
        max_queued_jobs=args.max_queued_jobs,
        local_model_roots=tuple(args.local_model_roots) if args.local_model_roots else defaults.local_model_roots,
    )
    return settings, args


def _check(settings: Settings) -> str | None:
    if settings.max_active_jobs < 1:
        return "--max-active-jobs must be at least 1"
    if settings.max_connections_per_host < 1:
        return "--max-connections-per-host must be at least 1"
    if settings.connections < 1:
        return "--connections must be at least 1"
    if settings.multipart_threshold < 1:
        return "--multipart-threshold must be at least 1"
    if settings.stall_timeout <= 0:
        return "--stall-timeout must be more than 0"
    if settings.max_retries < 0:
        return "--max-retries must be 0 or more"
    if settings.max_queued_jobs < 1:
        return "--max-queued-jobs must be at least 1"
    if settings.retention_seconds < 0:
        return "--retention-seconds must be 0 or more"
    if settings.max_event_streams < 1:
        return "--max-event-streams must be at least 1"
    if not 0 <= settings.port <= 65535:
        return "--port must be from 0 to 65535"
    if settings.lease_seconds < 1:
        return "--lease-seconds must be at least 1"
    return None


def _check_database(settings: Settings) -> str | None:
    """Open the store once before serving: a database that cannot be used is one clear line
    at start (within seconds, no traceback, a refused password not retried), not a crash later."""
    import asyncio

    from .store import StoreError, open_store

    async def probe() -> None:
        store = open_store(settings.database_url, settings.lease_seconds)
        try:
            await store.open()
        finally:
            await store.close()

    try:
        asyncio.run(probe())
    except StoreError as exc:
        return str(exc)
    return None


def serve_main(argv: Sequence[str]) -> int:
    """Run the server until interrupted; 0 on a clean stop, 2 on bad usage."""
    settings, args = settings_from_args(argv)
    problem = _check(settings)
    if problem:
        print(f"modelpull serve: {problem}", file=sys.stderr)
        return 2

    from .._errors import ModelPullError
    from .ownership import ModelsDirOwnership, ModelsDirTaken

    # Replicas sharing a PostgreSQL store share the models dir by design (their transfers
    # take the per-file locks); with SQLite, one server owns the folder.
    ownership = None if settings.shared_database else ModelsDirOwnership(settings.home.expanduser().absolute())
    try:
        if ownership is not None:
            ownership.claim()
    except (ModelsDirTaken, ModelPullError) as exc:
        print(f"modelpull serve: {exc}", file=sys.stderr)
        return 1

    import uvicorn

    from .app import create_app
    from .logs import configure_logging

    problem = _check_database(settings)
    if problem:
        print(f"modelpull serve: {problem}", file=sys.stderr)
        return 1

    _pin_mmap_threshold()
    configure_logging(args.log_level, args.log_format)
    app = create_app(settings)
    _tune_gc()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # configure_logging already routed uvicorn's loggers
        access_log=False,  # the app's access log redacts secrets in query strings
        timeout_graceful_shutdown=3,  # open SSE streams must not hold a shutdown forever
        lifespan="on",
    )
    server = _server_class(settings)(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if ownership is not None:
            ownership.release()
    return 0 if server.started else 1


def _pin_mmap_threshold() -> None:
    """Keep large buffers (the hasher's 16 MiB blocks) in their own mappings, returned when freed.

    glibc raises its mmap threshold after the first large free; from then on such buffers come
    from per-thread arenas that seldom shrink, and a long-running server keeps ~100 MB it no
    longer uses. Pinning the threshold (M_MMAP_THRESHOLD = 1 MiB) stops that. Best effort:
    a no-op where libc is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from stopping the event loop for a quarter second.

    With a thousand `/events` streams open the server holds ~270k objects the collector tracks
    (each stream's chain of coroutines, tasks and transports). At the default threshold (a young
    collection every 700 new objects) every burst of stream wakeups was promoted to the old
    generation, and a full collection walking all of them (150-270 ms, nothing else running) came
    every few seconds: the worst `/health` latencies. Young collections every GC_YOUNG_THRESHOLD
    objects leave the short-lived ones to reference counting, and what was loaded at startup
    (modules, the app) is frozen out of every later collection.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _server_class(settings: Settings):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus one log line with the port really bound (useful with --port 0) and, for
        the person who started it, where the page and the API docs are."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            for server in getattr(self, "servers", []):
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    logging.getLogger("modelpull.server").info(
                        "listening on http://%s:%s", host, port, extra={"host": host, "port": port})
                    print(startup_banner(host, port, settings), file=sys.stderr, flush=True)
                    return

    return Server


def startup_banner(host: str, port: int, settings: Settings) -> str:
    """The human lines `modelpull serve` prints once it listens (the logs are for machines)."""
    shown = host
    note = ""
    if host in ("0.0.0.0", "::"):
        shown, note = "127.0.0.1", f" (listening on every address, {host})"
    elif ":" in host:
        shown = f"[{host}]"
    base = f"http://{shown}:{port}"
    lines = [
        f"modelpull {__version__} is serving on {base}{note}",
        f"  web page:  {base}/",
        f"  API docs:  {base}/docs",
        f"  models in: {Path(settings.home).expanduser().absolute()}",
    ]
    if settings.api_key:
        lines.append("  API key:   required (the page asks for it once)")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def main() -> None:
    sys.exit(serve_main(sys.argv[1:]))


if __name__ == "__main__":
    main()

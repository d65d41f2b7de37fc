"""The modelpull server: a download manager behind Kolosal-compatible REST routes and SSE.

    cli.py       `modelpull serve`: settings from flags and MODELPULL_*, then uvicorn
    app.py       create_app(settings): the routes, thin, each also under /v1
    manager.py   jobs claimed from the store and run as asyncio tasks: limits, shared transfers,
                 pause/resume, events
    feed.py      the store's change feed: other replicas' changes brought into this one
    jobs.py      one job's state and its JSON
    engines.py   Kolosal engines: validation, GGUF/safetensors inspection, registry
    store.py     JobStore (claims, leases, controls, change feed), and its SQLite implementation
    security.py  ids, URL policy, paths, API key, redaction
    sse.py       the Server-Sent Events streams
    views.py     Kolosal's and AbstractCore's JSON shapes
    logs.py      structured logs with secrets scrubbed
    web.py       the web page
"""
from .app import create_app

__all__ = ["create_app"]

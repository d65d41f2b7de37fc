"""The web page at `GET /`: three static files shipped in the package (no build step).

The page needs no API key to load (it asks for the key itself, then sends it on every request),
so the server's auth lets `is_public_path()` through. Everything it shows comes from the API:
`GET /events` for state, `POST /downloads`, `POST /engines` and the pause/resume/cancel routes.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"

# The page only talks to its own origin and never evaluates inline code: a model name or an error
# message that smuggles markup in stays text.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def is_public_path(path: str) -> bool:
    """True for the page and its assets, which load without the API key."""
    return path == "/" or path.startswith("/static/")


class _StaticFiles(StaticFiles):
    """Static files revalidated on every load, so an upgraded server never runs an old app.js."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount_web(app: FastAPI) -> None:
    """Serve the page at `GET /` and its assets under `/static/`."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")

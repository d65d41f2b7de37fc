"""Run an aiohttp application on its own event loop in a background thread.

Sync tests, async tests (whose loop must stay free) and subprocesses can all talk to a
server started this way.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, TypeVar

from aiohttp import web

T = TypeVar("T")


class BackgroundServer:
    """Base class: subclasses build `self.app` in `make_app()`; this class runs it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    def make_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        return self.base_url + path

    def start(self) -> "BackgroundServer":
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        self.call(self._start_async(), timeout=10)
        return self

    async def _start_async(self) -> None:
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, thread = self._loop, self._thread
        try:
            self.call(self._stop_async(), timeout=15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert thread is not None
            thread.join(timeout=10)
            loop.close()
            self._loop = None
            self._thread = None

    async def _stop_async(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()  # lets stalled and throttled handlers return at once
        await self._runner.cleanup()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the server's loop and wait for its result (from any thread)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def sleep_unless_stopping(self, seconds: float) -> bool:
        """Sleep on the server loop; True if the server started stopping meanwhile."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=max(seconds, 0))
            return True
        except asyncio.TimeoutError:
            return False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""Fixtures for the web page's browser tests: Chromium (one per session), a modelpull server per
test (own models dir and database) and a fresh browser context per page."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest

from harness import CHROMIUM_ARGS, RunningServer, find_chromium, server_settings

CHROMIUM = find_chromium()
SKIP_REASON = (
    "no Chromium installed: the browser tests drive Debian's Chromium "
    "(apt-get install -y chromium), not a browser downloaded by Playwright"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "browser" in item.keywords and CHROMIUM is None:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless. Each `launch()` gets a fresh temporary profile (user-data dir).

    Module scope, not session: Playwright's sync API marks an event loop as running in the main
    thread while it is open, and every pytest-asyncio test collected after it would then fail
    with "Runner.run() cannot be called from a running event loop".
    """
    if CHROMIUM is None:
        pytest.skip(SKIP_REASON)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[..., RunningServer]]:
    """Start a modelpull server with these settings overrides (api_key=..., ...); stopped after the test."""
    servers: list[RunningServer] = []

    def start(**overrides) -> RunningServer:
        server = RunningServer(server_settings(tmp_path / f"models{len(servers)}", **overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(serve) -> RunningServer:
    return serve()


@pytest.fixture
def open_page(browser, serve):
    """Open the server's page in a new browser context (its own sessionStorage), closed after the
    test (before the servers stop); the test fails if the page threw a JavaScript error."""
    contexts = []
    errors: list[str] = []

    def open_(server: RunningServer, width: int = 1280, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=server.url)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(open_page, server):
    """The page of a server without an API key, connected to the live stream."""
    from playwright.sync_api import expect

    page = open_page(server)
    expect(page.locator("#connection")).to_have_text("Live")
    return page

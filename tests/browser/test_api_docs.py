"""The API docs page in Chromium with no network: Swagger UI and the OpenAPI document come from the
server itself (air-gapped machines are where model servers run), and an API key does not lock the
page out (the key is entered under Authorize)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_the_api_docs_render_with_no_network_behind_an_api_key(browser, serve):
    server = serve(api_key="docs-page-key")
    context = browser.new_context(base_url=server.url)
    requests_elsewhere: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:  # what a machine without internet would never get
            requests_elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    try:
        page = context.new_page()
        page.goto("/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)
        assert page.locator(".swagger-ui .info .title").inner_text().startswith("modelpull")
        assert page.locator(".swagger-ui .opblock").count() > 20
        assert page.get_by_role("button", name="Authorize").count() == 1
        assert requests_elsewhere == []
    finally:
        context.close()

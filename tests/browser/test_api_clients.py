"""Other people's pages against the API, in Chromium: a browser EventSource on AbstractCore's stream
(reconnects follow the same job; after `done` the reconnect is told to stop), and a page on another
origin making the Kolosal dashboard's calls the way its script/engine.js does (CORS)."""
from __future__ import annotations

import asyncio
import http.server
import threading

import pytest

from harness import make_gguf

pytestmark = pytest.mark.browser

BLANK = "<!doctype html><title>client</title><body></body>"


def _blank_page(browser, origin: str):
    """A page at `origin` (routed by Playwright, so the origin needs no server of its own)."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.route(origin + "/", lambda route: route.fulfill(status=200, content_type="text/html", body=BLANK))
    page.goto(origin + "/")
    return context, page


def _manager(server):
    return server._server.config.app.state.manager  # the test's own server, in this process


def _close_streams(server) -> None:
    """Drop every open event stream, as a proxy's idle timeout would (the downloads go on)."""
    manager = _manager(server)
    loop = manager._background[0].get_loop()
    asyncio.run_coroutine_threadsafe(_close_all(manager), loop).result(10)


async def _close_all(manager) -> None:
    manager.fanout.close()


def test_an_eventsource_reconnect_follows_the_same_job_and_stops_after_done(browser, serve, file_server):
    server = serve()
    data = make_gguf(name="Reconnect", payload_bytes=600_000)
    url = file_server.add_file("/reconnect.gguf", data, throttle_bps=300_000)
    context, page = _blank_page(browser, server.url)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url) if "/api/models/download" in request.url else None)
    # A page that never calls close(), as the seed's example does not.
    page.evaluate("""(url) => {
        window.seen = []; window.opens = 0;
        const source = new EventSource(`/api/models/download?provider=url&model=${encodeURIComponent(url)}`);
        window.source = source;
        source.onopen = () => { window.opens += 1; };
        source.onmessage = (event) => window.seen.push({id: event.lastEventId, data: JSON.parse(event.data)});
    }""", url)
    page.wait_for_function("window.seen.some(e => e.data.status === 'downloading' && e.data.downloaded_bytes > 0)")
    _close_streams(server)  # the connection drops mid-download: the browser reconnects by itself
    page.wait_for_function("window.seen.some(e => e.data.done === true)", timeout=60_000)
    # After `done`, the reconnect gets 204 and the EventSource stops (readyState CLOSED): no loop.
    page.wait_for_function("window.source.readyState === EventSource.CLOSED", timeout=20_000)
    seen = page.evaluate("window.seen")
    job_ids = {event["id"].split("/")[0] for event in seen}
    assert len(job_ids) == 1 and list(_manager(server).jobs) == list(job_ids), (job_ids, list(_manager(server).jobs))
    assert page.evaluate("window.opens") == 2  # the first connection and the reconnect mid-download
    assert [e for e in seen if "done" in e["data"]] == [{"id": f"{job_ids.pop()}/end", "data": {"done": True}}]
    assert len(requests) == 3  # first, reconnect mid-download, reconnect after done (204); then nothing
    page.wait_for_timeout(4_000)  # longer than the stream's retry: a loop would show more requests
    assert len(requests) == 3
    assert (server.settings.home / "reconnect.gguf").read_bytes() == data
    context.close()


class _OtherOrigin:
    """A dashboard-like page served by a second HTTP server on 127.0.0.1 (another port: another
    origin). It calls the API the way KolosalAI/dashboard's script/engine.js does."""

    def __init__(self) -> None:
        self.api_url = ""  # where its calls go, as the dashboard's API_BASE_URL setting
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = _DASHBOARD_PAGE.replace("API_BASE_URL", origin.api_url).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# The calls of the dashboard's script/engine.js: FetchData (GET /status), AddModel (GET /status, then
# POST /models with its form's fields as JSON), FetchDownloads (GET /downloads every 2 s while any
# is active), DeleteModel (DELETE /models/{id}).
_DASHBOARD_PAGE = """<!doctype html><title>dashboard</title><body><script>
const endpoints = {status: "API_BASE_URL/status", models: "API_BASE_URL/models", downloads: "API_BASE_URL/downloads"};
window.log = [];
window.addModel = async (modelId, modelPath) => {
  const statusResp = await fetch(endpoints.status);
  if (!statusResp.ok) throw new Error("Server is unavailable");
  await statusResp.json();
  const data = {model_id: modelId, model_type: "llm", model_path: modelPath, model_inference: "llama-cpu",
                model_gpu: parseInt("-1"), model_load: true, model_context: parseInt("4096"),
                model_batch: parseInt("512"), model_layer: parseInt("0"), model_parallel: parseInt("1"),
                model_memory: true, model_perform: true};
  const postResp = await fetch(endpoints.models, {method: "POST", headers: {"Content-Type": "application/json"},
                                                  body: JSON.stringify(data)});
  return postResp.status;
};
window.pollDownloads = async () => {
  const resp = await fetch(endpoints.downloads);
  const data = await resp.json();
  for (const dl of data.active_downloads) window.log.push(dl.progress?.percentage?.toFixed(2) || 0);
  return data.active_downloads.length;
};
window.getStatus = async () => (await fetch(endpoints.status)).json();
window.deleteModel = async (id) => (await fetch(`${endpoints.models}/${encodeURIComponent(id)}`, {method: "DELETE"})).status;
</script></body>"""


def test_a_page_on_another_origin_drives_the_api_like_the_kolosal_dashboard(browser, serve, file_server):
    data = make_gguf(name="Dashboard", payload_bytes=500_000)
    url = file_server.add_file("/dash.gguf", data, throttle_bps=250_000)
    dashboard = _OtherOrigin()
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        # Without --cors-origin the browser blocks every call.
        dashboard.api_url = serve().url
        page.goto(dashboard.url)
        assert page.evaluate("window.getStatus().then(() => 'allowed', (error) => error.name)") == "TypeError"
        # With the dashboard's origin listed, its calls go through.
        server = serve(cors_origins=(dashboard.url,))
        dashboard.api_url = server.url
        page.goto(dashboard.url)
        assert page.evaluate("window.getStatus()")["node_manager"]["total_engines"] == 0
        assert page.evaluate("([id, url]) => window.addModel(id, url)", ["dash-model", url]) == 202
        while page.evaluate("window.pollDownloads()"):
            page.wait_for_timeout(200)
        percentages = [float(p) for p in page.evaluate("window.log")]
        assert percentages and percentages == sorted(percentages)
        status = page.evaluate("window.getStatus()")
        assert status["engines"] == [{"engine_id": "dash-model", "status": "loaded"}]
        assert status["node_manager"]["loaded_engines"] == 1
        assert page.evaluate("(id) => window.deleteModel(id)", "dash-model") == 200
        assert page.evaluate("window.getStatus()")["engines"] == []
        assert (server.settings.home / "dash.gguf").read_bytes() == data  # removal keeps the file
    finally:
        dashboard.close()
        context.close()

"""The web page at `GET /`, driven in Debian's Chromium against a real modelpull server and the
fault-injecting file server. Files are small and throttled (about 1 MB/s) so that a download is
visibly in progress for a second or two."""
from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from harness import make_gguf
from polling import eventually

pytestmark = pytest.mark.browser

THROTTLE = 1_000_000  # bytes per second, per response
# JavaScript over `card` (a card element): its bar shows a percent strictly between 0 and 100.
MID_DOWNLOAD = """(value => value > 0 && value < 100)(
    parseFloat(card.querySelector('[role=progressbar]').getAttribute('aria-valuenow')))"""
SPEED_SHOWN = "card.querySelector('[data-field=speed]').textContent.endsWith('B/s')"


def card(page: Page, name: str):
    """The card whose title is `name` (a file name for URL downloads)."""
    return page.locator("li.card").filter(has=page.get_by_role("heading", name=name, exact=True))


def wait_until(job, condition: str) -> None:
    """Poll the page every 50 ms until `condition` (JavaScript over `card`, the card element) holds.

    A download here lasts a second or two: `expect()` backs off to one poll a second and could
    miss the moment, this does not."""
    expect(job).to_have_count(1)
    job.page.wait_for_function(f"card => {condition}", arg=job.element_handle(), polling=50)


def button(job, action: str):
    """The card's button for `action` ("Pause", "Resume", "Retry", "Cancel"); its accessible name is
    "<action> <model name>"."""
    return job.get_by_role("button", name=re.compile(f"^{action} "))


def start_download(page: Page, model: str, *, token: str = "", engine_id: str = "") -> None:
    page.get_by_label("Model URL or reference").fill(model)
    page.get_by_label("Access token").fill(token)
    page.get_by_label("Engine id").fill(engine_id)
    page.get_by_role("button", name="Download", exact=True).click()


def test_a_download_started_from_the_form_fills_its_bar_to_100(page, server, file_server):
    data = os.urandom(2_000_000)
    url = file_server.add_file("/first.bin", data, throttle_bps=THROTTLE)
    requests = []
    page.on("request", lambda request: requests.append(f"{request.method} {urlsplit(request.url).path}"))

    start_download(page, url)

    job = card(page, "first.bin")
    bar = job.get_by_role("progressbar")
    wait_until(job, f"{MID_DOWNLOAD} && {SPEED_SHOWN}")  # live progress, not just the end
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(job.locator(".badge")).to_have_text("Completed")
    expect(job.locator('[data-field="percent"]')).to_have_text("100%")
    expect(job.locator('[data-field="bytes"]')).to_have_text("2.0 MB of 2.0 MB")
    local_path = server.settings.home / "first.bin"
    expect(job.locator(".details .path dd")).to_have_text(str(local_path))  # absolute
    expect(job.get_by_role("button")).to_have_text(["Dismiss"])
    assert local_path.read_bytes() == data
    # Everything else came down the one event stream ("On this machine" lists the models dir itself).
    assert [r for r in requests if not r.endswith("/local-models")] == ["POST /downloads"]


def test_pause_then_resume_finishes_the_file(page, server, file_server):
    data = os.urandom(3_000_000)
    url = file_server.add_file("/paused.bin", data, throttle_bps=THROTTLE)
    start_download(page, url)
    job = card(page, "paused.bin")
    bar = job.get_by_role("progressbar")
    wait_until(job, MID_DOWNLOAD)

    button(job, "Pause").click()

    expect(job.locator(".badge")).to_have_text("Paused")
    resume = button(job, "Resume")
    expect(resume).to_be_focused()  # Pause became Resume under the keyboard focus
    expect(button(job, "Pause")).to_be_hidden()
    paused_at = float(bar.get_attribute("aria-valuenow"))
    assert 0 < paused_at < 100

    page.keyboard.press("Enter")  # the focused Resume button

    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(job.locator(".badge")).to_have_text("Completed")
    assert (server.settings.home / "paused.bin").read_bytes() == data


def running_download(page: Page, file_server, name: str):
    """Start `name` (3 MB, throttled) from the form; its card once the bar is mid-way."""
    start_download(page, file_server.add_file(f"/{name}", os.urandom(3_000_000), throttle_bps=THROTTLE))
    job = card(page, name)
    wait_until(job, MID_DOWNLOAD)
    return job


def test_cancel_stops_the_download_and_removes_its_data(page, server, file_server):
    job = running_download(page, file_server, "cancelled.bin")

    button(job, "Cancel").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel cancelled.bin?")
    expect(dialog).to_contain_text("downloaded so far")
    dialog.get_by_role("button", name="Cancel, delete partial data").click()

    expect(job.locator(".badge")).to_have_text("Cancelled")
    expect(job.get_by_role("button")).to_have_count(1)  # Dismiss only
    expect(job.locator('[data-field="speed"]')).to_have_text("—")
    assert server.api("GET", "/downloads/" + job_id(job)).json()["status"] == "cancelled"
    # The transfer stops and deletes its partial data in the background.
    assert eventually(lambda: not list(server.settings.home.glob("cancelled.bin*")))


def test_cancel_can_keep_the_partial_data_and_going_on_is_the_default(page, server, file_server):
    job = running_download(page, file_server, "kept.bin")

    button(job, "Cancel").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("button", name="Go on downloading")).to_be_focused()
    page.keyboard.press("Escape")  # closing the question cancels nothing
    expect(dialog).to_be_hidden()
    expect(job.locator(".badge")).to_have_text("Downloading")

    button(job, "Cancel").click()
    dialog.get_by_role("button", name="Cancel, keep partial data").click()

    expect(job.locator(".badge")).to_have_text("Cancelled")
    expect(job.locator(".message")).to_contain_text("partial data kept")
    assert eventually(lambda: server.api("GET", "/downloads").json()["total_active"] == 0)
    assert eventually(lambda: (server.settings.home / "kept.bin.part").is_file())
    assert (server.settings.home / "kept.bin.part").stat().st_size > 0


def test_finished_cards_can_be_dismissed_and_active_ones_come_first(page, server, file_server):
    done_url = file_server.add_file("/old-news.bin", os.urandom(100_000))
    server.api("POST", "/downloads", {"model": done_url, "id": "old-news"})
    finished = card(page, "old-news.bin")
    expect(finished.locator(".badge")).to_have_text("Completed")
    expect(finished.locator(".state")).to_contain_text("Completed at")
    running = running_download(page, file_server, "running.bin")

    # The running download is above the finished one, although the finished one came first...
    expect(page.locator("li.card .card-title")).to_have_text(["running.bin", "old-news.bin"])
    expect(button(running, "Dismiss")).to_be_hidden()

    button(finished, "Dismiss").click()

    expect(finished).to_have_count(0)
    assert server.api("GET", "/downloads/old-news").status_code == 404
    assert (server.settings.home / "old-news.bin").is_file()  # dismissing never deletes the file
    other = page.context.new_page()  # ...and it is gone for every tab, not hidden in this one
    other.goto("/")
    expect(card(other, "running.bin")).to_have_count(1)
    expect(card(other, "old-news.bin")).to_have_count(0)


def test_queued_jobs_say_their_place_in_line_and_never_started(serve, open_page, file_server):
    server = serve(max_active_jobs=1)
    page = open_page(server)
    expect(page.locator("#connection")).to_have_text("Live")
    first = file_server.add_file("/first-in.bin", os.urandom(3_000_000), throttle_bps=THROTTLE)
    second = file_server.add_file("/second-in.bin", os.urandom(100_000))
    third = file_server.add_file("/third-in.bin", os.urandom(100_000))
    start_download(page, first)
    expect(page.locator("#form-status")).to_have_text("Downloading: first-in.bin")
    start_download(page, second)
    expect(page.locator("#form-status")).to_have_text("Queued: second-in.bin, 1st in line")
    start_download(page, third)
    expect(page.locator("#form-status")).to_have_text("Queued: third-in.bin, 2nd in line")

    expect(card(page, "third-in.bin").locator(".state")).to_have_text("Queued, 2nd in line")
    expect(card(page, "first-in.bin").locator(".state")).to_contain_text("Downloading since")
    expect(page.locator("li.card .card-title")).to_have_text(["first-in.bin", "second-in.bin", "third-in.bin"])
    assert "Started" not in page.locator("main").inner_text()

    button(card(page, "first-in.bin"), "Cancel").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel, delete partial data").click()
    expect(card(page, "third-in.bin").locator(".badge")).to_have_text("Completed")
    expect(page.locator("li.card .card-title")).to_have_text(["third-in.bin", "second-in.bin", "first-in.bin"])


def test_a_hub_repo_shows_one_bar_per_file_and_the_options_pick_the_files(page, server, fake_hub, hf_env):
    files = {"config.json": b"{}", "model-1.safetensors": os.urandom(600_000),
             "model-2.safetensors": os.urandom(400_000), "pytorch_model.bin": os.urandom(300_000)}
    fake_hub.add_repo("org/sharded", files)
    page.get_by_role("group").get_by_text("Options").click()
    page.get_by_label("Exclude files").fill("*.bin, nothing-else")
    start_download(page, "hf:org/sharded")

    job = card(page, "org/sharded")
    expect(job.locator(".badge")).to_have_text("Completed")
    rows = job.locator(".file-list li")
    expect(rows).to_have_count(3)
    expect(job.locator(".files-summary")).to_have_text("Files: 3 of 3 complete")
    if job.locator("details.files").get_attribute("open") is None:
        job.locator(".files-summary").click()  # folded when the job was already finished at first sight
    expect(job.get_by_role("progressbar", name="Progress of model-1.safetensors")).to_have_attribute(
        "aria-valuenow", "100")
    saved = job.locator(".details .path dd")
    snapshot = str(server.settings.home / "huggingface" / "hub" / "models--org--sharded" / "snapshots")
    expect(saved).to_have_text(re.compile("^" + re.escape(snapshot) + "/[0-9a-f]{40}$"))
    assert "pytorch_model.bin" not in job.inner_text()


def test_a_wrong_sha256_from_the_options_fails_the_download(page, server, file_server):
    url = file_server.add_file("/checked.bin", os.urandom(50_000))
    page.get_by_text("Options").click()
    page.get_by_label("SHA-256").fill("0" * 64)
    start_download(page, url)

    job = card(page, "checked.bin")
    expect(job.locator(".badge")).to_have_text("Failed")
    expect(job.locator(".error-message")).to_contain_text("digest mismatch: expected " + "0" * 64)



def job_id(job) -> str:
    return job.get_attribute("data-key").removeprefix("job:")


def test_an_invalid_url_shows_the_servers_message_at_the_field(page, server):
    start_download(page, "ftp://example.com/model.gguf")

    error = page.get_by_role("alert").filter(has_text="not a valid model reference")
    expect(error).to_contain_text("'ftp://example.com/model.gguf' is not a valid model reference")
    model_field = page.get_by_label("Model URL or reference")
    expect(model_field).to_have_attribute("aria-invalid", "true")
    expect(model_field).to_be_focused()
    expect(model_field).to_have_value("ftp://example.com/model.gguf")  # kept, to be corrected
    expect(page.locator("li.card")).to_have_count(0)


def test_a_failed_download_shows_why_and_offers_a_retry(page, server, file_server):
    start_download(page, file_server.url("/missing.gguf"))

    job = card(page, "missing.gguf")
    expect(job.locator(".badge")).to_have_text("Failed")
    expect(job.locator(".error-message")).to_contain_text("404")
    expect(job.locator(".error-message")).not_to_contain_text("Traceback")
    expect(button(job, "Retry")).to_be_visible()  # POST /downloads/{id}/resume retries a failed job
    expect(button(job, "Cancel")).to_be_hidden()


def test_a_reload_mid_download_shows_the_same_job_continuing(page, server, file_server):
    data = os.urandom(3_000_000)
    url = file_server.add_file("/reloaded.bin", data, throttle_bps=THROTTLE)
    start_download(page, url)
    bar = card(page, "reloaded.bin").get_by_role("progressbar")
    wait_until(card(page, "reloaded.bin"), MID_DOWNLOAD)
    before = float(bar.get_attribute("aria-valuenow"))

    page.reload()

    expect(page.locator("#connection")).to_have_text("Live")
    job = card(page, "reloaded.bin")
    bar = job.get_by_role("progressbar")
    assert float(bar.get_attribute("aria-valuenow")) >= before  # state from the server, not reset
    expect(job.locator(".badge")).to_have_text("Downloading")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(job.locator(".badge")).to_have_text("Completed")
    assert (server.settings.home / "reloaded.bin").read_bytes() == data


def test_jobs_started_elsewhere_appear_and_leave_live(page, server, file_server):
    url = file_server.add_file("/from-api.bin", os.urandom(1_000_000), throttle_bps=THROTTLE)

    answer = server.api("POST", "/downloads", {"model": url, "id": "from-api"})
    assert answer.status_code == 202

    job = card(page, "from-api.bin")
    expect(job.locator(".badge")).to_have_text("Completed")
    # The page holds no state of its own: a second tab sees the same list.
    other = page.context.new_page()
    other.goto("/")
    expect(card(other, "from-api.bin").locator(".badge")).to_have_text("Completed")


def test_an_engine_shows_its_model_metadata_once_downloaded(page, server, file_server):
    gguf_bytes = make_gguf(name="Tiny Qwen", architecture="qwen2", parameter_count=494_032_768)
    url = file_server.add_file("/tiny-qwen.gguf", gguf_bytes, throttle_bps=THROTTLE // 4)

    start_download(page, url, engine_id="tiny-qwen")

    job = card(page, "tiny-qwen.gguf")
    expect(job.locator(".source")).to_contain_text("engine tiny-qwen")
    expect(job.locator(".badge")).to_have_text("Completed")
    details = job.locator(".details")
    expect(details).to_contain_text("tiny-qwen (ready)")
    expect(details).to_contain_text("Tiny Qwen")
    expect(details).to_contain_text("GGUF")
    expect(details).to_contain_text("qwen2")
    expect(details).to_contain_text("494M")
    expect(details).to_contain_text("Q4_K_M")
    expect(details).to_contain_text("32,768 tokens")
    expect(details.locator(".path dd")).to_have_text(str(server.settings.home / "tiny-qwen.gguf"))

    assert server.api("DELETE", "/engines/tiny-qwen").status_code == 200
    expect(details).not_to_contain_text("tiny-qwen (ready)")
    expect(details.locator(".path dd")).to_be_visible()  # the file stays on disk


def test_an_engine_from_a_file_already_on_the_server_has_its_own_card(page, server):
    model_file = server.settings.home / "local-model.gguf"
    model_file.parent.mkdir(parents=True, exist_ok=True)
    model_file.write_bytes(make_gguf(name="Local Llama", architecture="llama", file_type=7))

    start_download(page, str(model_file), engine_id="local-llama")

    expect(page.locator("#form-status")).to_have_text("Engine added successfully")
    engine = card(page, "Local Llama")
    expect(engine.locator(".badge")).to_have_text("Ready")
    expect(engine.locator(".source")).to_have_text(f"Engine local-llama · {model_file}")
    expect(engine.locator(".details")).to_contain_text("Q8_0")
    expect(engine.get_by_role("button")).to_have_count(0)

    assert server.api("DELETE", "/engines/local-llama").status_code == 200
    expect(engine).to_have_count(0)
    expect(page.get_by_text("Nothing downloaded yet")).to_be_visible()


def test_with_an_api_key_the_page_asks_once_and_keeps_tokens_out_of_urls(serve, open_page, file_server):
    server = serve(api_key="the-api-key-1234")
    url = file_server.add_file("/locked.bin", os.urandom(500_000), throttle_bps=THROTTLE)
    page = open_page(server)
    requests = []
    page.on("request", lambda request: requests.append(request))

    expect(page.get_by_role("heading", name="API key needed")).to_be_visible()
    expect(page.get_by_role("heading", name="Start a download")).to_be_hidden()
    key_field = page.get_by_label("API key", exact=True)
    expect(key_field).to_be_focused()
    key_field.fill("wrong-key-5678")
    key_field.press("Enter")
    expect(page.locator("#auth-error")).to_contain_text("not accepted")

    key_field.fill("the-api-key-1234")
    key_field.press("Enter")

    expect(page.locator("#connection")).to_have_text("Live")
    start_download(page, url, token="hf_secret_token_abcdef")
    job = card(page, "locked.bin")
    expect(job.locator(".badge")).to_have_text("Completed")

    page.reload()
    expect(page.locator("#connection")).to_have_text("Live")  # no second prompt in this tab
    expect(page.get_by_role("heading", name="API key needed")).to_be_hidden()
    expect(card(page, "locked.bin").locator(".badge")).to_have_text("Completed")

    posts = [r for r in requests if r.method == "POST" and r.url.endswith("/downloads")]
    assert len(posts) == 1
    assert posts[0].post_data_json["token"] == "hf_secret_token_abcdef"
    assert posts[0].headers["authorization"] == "Bearer the-api-key-1234"
    assert all("hf_secret" not in r.url for r in requests)
    assert all("api_key=" not in r.url for r in requests if "/events" not in r.url)


def test_phone_width_and_keyboard_only(open_page, server, file_server):
    long_url = file_server.add_file(
        "/" + "a-very-long-model-file-name-" * 4 + "q4_k_m.gguf", os.urandom(300_000), throttle_bps=THROTTLE,
    )
    server.api("POST", "/downloads", {"model": long_url})
    url = file_server.add_file("/typed.bin", os.urandom(500_000), throttle_bps=THROTTLE)
    page = open_page(server, width=360, height=740)
    expect(page.locator("#connection")).to_have_text("Live")

    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    model_field = page.get_by_label("Model URL or reference")
    expect(model_field).to_be_focused()
    page.keyboard.type(url)
    page.keyboard.press("Enter")

    expect(card(page, "typed.bin").locator(".badge")).to_have_text("Completed")
    expect(page.locator("li.card")).to_have_count(2)
    expect(page.locator("li.card .badge")).to_have_text(["Completed", "Completed"])
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing wider than the phone


def test_an_ollama_model_says_where_its_blob_and_the_store_are(page, server, fake_ollama_registry):
    model = fake_ollama_registry.add_model("tinyllama", model_size=60_000)
    answer = server.api("POST", "/downloads", {
        "model": "ollama:tinyllama", "options": {"direct": True, "registry": fake_ollama_registry.base_url}})
    assert answer.status_code == 202, answer.text

    job = card(page, "tinyllama")
    expect(job.locator(".badge")).to_have_text("Completed")
    store = server.settings.home / "ollama"
    paths = job.locator(".details .path dd")
    expect(paths).to_have_text([str(store / "blobs" / f"sha256-{model.model_layer.hex}"), str(store)])
    expect(job.locator(".details")).to_contain_text("Ollama store")


def test_at_phone_width_the_options_file_list_and_cancel_question_fit(open_page, server, fake_hub, hf_env):
    files = {"config.json": b"{}", "model-00001-of-00002-with-a-long-name.safetensors": os.urandom(900_000),
             "model-00002-of-00002-with-a-long-name.safetensors": os.urandom(900_000)}
    fake_hub.add_repo("org/a-repository-with-a-rather-long-name", files)
    fake_hub.cdn_rate = 300_000
    page = open_page(server, width=360, height=740)
    expect(page.locator("#connection")).to_have_text("Live")
    page.get_by_text("Options").click()
    expect(page.get_by_label("Include files")).to_be_visible()

    start_download(page, "hf:org/a-repository-with-a-rather-long-name")
    job = card(page, "org/a-repository-with-a-rather-long-name")
    wait_until(job, MID_DOWNLOAD)
    expect(job.locator(".file-list li")).to_have_count(3)  # open while it runs
    button(job, "Cancel").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()

    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    box = dialog.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360
    dialog.get_by_role("button", name="Cancel, delete partial data").click()
    expect(job.locator(".badge")).to_have_text("Cancelled")

"""The web page's "On this machine" section, in Debian's Chromium against a real server."""
from __future__ import annotations

import hashlib
import time

import pytest
from playwright.sync_api import Page, expect

from harness import make_gguf

pytestmark = pytest.mark.browser


def downloaded(server, file_server, name: str, data: bytes) -> None:
    url = file_server.add_file(f"/{name}", data)
    job = server.api("POST", "/downloads", {"model": url, "options": {"sha256": hashlib.sha256(data).hexdigest()}})
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 20
    while server.api("GET", f"/downloads/{job.json()['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline, "the download did not complete"
        time.sleep(0.05)


def row(page: Page, model_id: str):
    return page.locator("#local-models tr").filter(has_text=model_id)


def test_on_this_machine_lists_sizes_and_free_disk_verifies_and_deletes_after_confirmation(
        page, server, file_server):
    data = make_gguf(name="tiny", payload_bytes=20_000)
    downloaded(server, file_server, "tiny.gguf", data)

    section = page.get_by_role("region", name="On this machine")
    expect(section).to_be_visible()
    model = row(page, "url:tiny.gguf")
    expect(model).to_have_count(1)
    expect(model).to_contain_text(f"{len(data) / 1000:.1f} kB")
    expect(page.locator("#local-summary")).to_contain_text("free of")

    model.get_by_role("button", name="Verify tiny.gguf").click()
    expect(model).to_contain_text("1 of 1 files ok")

    path = server.settings.home / "tiny.gguf"
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF
    path.write_bytes(bytes(raw))
    model.get_by_role("button", name="Verify tiny.gguf").click()
    expect(model).to_contain_text("Verify failed: tiny.gguf corrupt")

    model.get_by_role("button", name="Delete tiny.gguf").click()
    expect(model).to_contain_text("Delete tiny.gguf")
    model.get_by_role("button", name="Keep tiny.gguf").click()
    assert path.exists()
    model.get_by_role("button", name="Delete tiny.gguf").click()
    model.get_by_role("button", name="Delete tiny.gguf").click()  # the confirmation's own button
    expect(model).to_have_count(0)
    expect(page.locator("#local-empty")).to_be_visible()
    assert not path.exists()


def test_a_model_in_use_is_not_deleted_and_the_page_says_why(page, server, file_server):
    data = make_gguf(name="chat", payload_bytes=8_000)
    url = file_server.add_file("/chat.gguf", data)
    assert server.api("POST", "/engines", {"engine_id": "chat", "model_path": url}).status_code == 202
    model = row(page, "url:chat.gguf")
    expect(model).to_have_count(1)

    model.get_by_role("button", name="Delete chat.gguf").click()
    model.get_by_role("button", name="Delete chat.gguf").click()

    expect(page.locator("#local-error")).to_contain_text("engine 'chat'")
    expect(model).to_have_count(1)
    assert (server.settings.home / "chat.gguf").exists()

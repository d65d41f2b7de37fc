"""Take docs/screenshot.png: the web page mid-download, against a real server and local files.

    .venv/bin/python tests/browser/screenshot.py [docs/screenshot.png] [--width 1280]

One engine completed (with GGUF metadata), one download running, one queued behind it, one
paused, one failed. Needs Debian's Chromium, like the browser tests.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from fakes.fileserver import FileServer  # noqa: E402
from harness import CHROMIUM_ARGS, RunningServer, find_chromium, make_gguf, server_settings  # noqa: E402

MB = 1_000_000


def wait_for(server: RunningServer, job_id: str, condition, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = server.api("GET", f"/downloads/{job_id}").json()
        if condition(job):
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"{job_id} never got there: {job}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default=str(HERE.parent.parent / "docs" / "screenshot.png"))
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory(prefix="modelpull-demo-") as home, FileServer("127.0.0.1") as files, \
            RunningServer(server_settings(Path(home) / "models", max_active_jobs=1)) as server:
        def add(path: str, data: bytes, bps: float | None) -> str:
            # "localhost" reads better than a bare address in the page's source lines.
            return files.add_file(path, data, throttle_bps=bps).replace("127.0.0.1", "localhost")

        engine_file = make_gguf(name="Qwen2.5 0.5B Instruct", architecture="qwen2",
                                parameter_count=494_032_768, context_length=32768, payload_bytes=2 * MB)
        qwen = add("/Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf", engine_file, None)
        mistral = add("/bartowski/Mistral-7B-Instruct-v0.3-GGUF/Mistral-7B-Instruct-v0.3-Q5_K_M.gguf",
                      bytes(12 * MB), 4 * MB)
        llama = add("/bartowski/Llama-3.2-3B-Instruct-GGUF/Llama-3.2-3B-Instruct-Q4_K_M.gguf",
                    bytes(40 * MB), 2.5 * MB)
        gemma = add("/bartowski/gemma-2-2b-it-GGUF/gemma-2-2b-it-Q4_K_M.gguf", bytes(16 * MB), None)
        phi = files.url("/microsoft/Phi-3-mini-4k-instruct-gguf/Phi-3-mini-4k-instruct-q4.gguf")
        phi = phi.replace("127.0.0.1", "localhost")

        server.api("POST", "/engines", {"engine_id": "qwen-0.5b", "model_path": qwen})
        wait_for(server, "qwen-0.5b", lambda job: job["status"] == "completed")
        server.api("POST", "/downloads", {"model": phi, "id": "phi-3-mini"})
        wait_for(server, "phi-3-mini", lambda job: job["status"] == "failed")
        server.api("POST", "/downloads", {"model": mistral, "id": "mistral-7b"})
        wait_for(server, "mistral-7b", lambda job: (job["percent"] or 0) > 35)
        server.api("POST", "/downloads/mistral-7b/pause")
        server.api("POST", "/downloads", {"model": llama, "id": "llama-3.2-3b"})
        server.api("POST", "/downloads", {"model": gemma, "id": "gemma-2-2b"})

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": 900}, base_url=server.url,
                                    color_scheme="light")
            page.goto("/")
            expect(page.locator("#connection")).to_have_text("Live")
            wait_for(server, "llama-3.2-3b", lambda job: (job["percent"] or 0) > 40 and job["eta_seconds"])
            page.wait_for_timeout(400)  # the next progress event has reached the page
            page.screenshot(path=args.output, full_page=True)
            browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

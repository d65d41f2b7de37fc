"""Take the web page's screenshots for the docs, against a real server, local files and a local Hub.

    .venv/bin/python tests/browser/screenshot.py [docs/screenshot.png] [--width 1280]
    .venv/bin/python tests/browser/screenshot.py docs/screenshot-phone.png --width 390 --height 844

With --height, one screen (at twice the pixels, as a phone shows it) from the Hub repo's card;
without it, the whole page with the form's options open.

Two downloads running (a Hugging Face repo of several files, each with its own bar, and a GGUF
file), two queued behind them with their place in line, one paused, one failed, and one engine
completed with its GGUF metadata. Needs Debian's Chromium, like the browser tests.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from fakes.fileserver import FileServer  # noqa: E402
from fakes.hub import FakeHub  # noqa: E402

MB = 1_000_000


def wait_for(server, job_id: str, condition, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = server.api("GET", f"/downloads/{job_id}").json()
        if condition(job):
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"{job_id} never got there: {job}")
        time.sleep(0.1)


def point_huggingface_hub_at(hub: FakeHub, home: Path) -> None:
    """Before huggingface_hub is imported: it reads its endpoint and cache once, at import."""
    os.environ.update({
        "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    })
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default=str(HERE.parent.parent / "docs" / "screenshot.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelpull-demo-") as temporary, FakeHub() as hub, \
            FileServer("127.0.0.1") as files:
        home = Path(temporary)
        point_huggingface_hub_at(hub, home)
        from harness import CHROMIUM_ARGS, RunningServer, find_chromium, make_gguf, server_settings

        chromium = find_chromium()
        if chromium is None:
            sys.exit("no Chromium installed (apt-get install -y chromium)")
        from playwright.sync_api import expect, sync_playwright

        def add(path: str, data: bytes, bps: float | None) -> str:
            # "localhost" reads better than a bare address in the page's source lines.
            return files.add_file(path, data, throttle_bps=bps).replace("127.0.0.1", "localhost")

        hub.cdn_rate = 1.5 * MB
        hub.add_repo("Qwen/Qwen2.5-1.5B-Instruct", {
            "config.json": b'{"model_type": "qwen2"}', "generation_config.json": b"{}",
            "model-00001-of-00002.safetensors": bytes(14 * MB), "model-00002-of-00002.safetensors": bytes(6 * MB),
            "tokenizer.json": bytes(300_000), "README.md": b"# Qwen2.5",
        })
        engine_file = make_gguf(name="Qwen2.5 0.5B Instruct", architecture="qwen2",
                                parameter_count=494_032_768, context_length=32768, payload_bytes=2 * MB)
        qwen = add("/Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf", engine_file, None)
        mistral = add("/bartowski/Mistral-7B-Instruct-v0.3-GGUF/Mistral-7B-Instruct-v0.3-Q5_K_M.gguf",
                      bytes(12 * MB), 4 * MB)
        llama = add("/bartowski/Llama-3.2-3B-Instruct-GGUF/Llama-3.2-3B-Instruct-Q4_K_M.gguf",
                    bytes(40 * MB), 2.5 * MB)
        gemma = add("/bartowski/gemma-2-2b-it-GGUF/gemma-2-2b-it-Q4_K_M.gguf", bytes(16 * MB), None)
        smol = add("/HuggingFaceTB/SmolLM2-360M-Instruct-GGUF/smollm2-360m-instruct-q8_0.gguf", bytes(4 * MB), None)
        phi = files.url("/microsoft/Phi-3-mini-4k-instruct-gguf/Phi-3-mini-4k-instruct-q4.gguf")
        phi = phi.replace("127.0.0.1", "localhost")

        with RunningServer(server_settings(home / "models", max_active_jobs=2)) as server:
            server.api("POST", "/engines", {"engine_id": "qwen-0.5b", "model_path": qwen})
            wait_for(server, "qwen-0.5b", lambda job: job["status"] == "completed")
            server.api("POST", "/downloads", {"model": phi, "id": "phi-3-mini"})
            wait_for(server, "phi-3-mini", lambda job: job["status"] == "failed")
            server.api("POST", "/downloads", {"model": mistral, "id": "mistral-7b"})
            wait_for(server, "mistral-7b", lambda job: (job["percent"] or 0) > 35)
            server.api("POST", "/downloads/mistral-7b/pause")
            server.api("POST", "/downloads", {"model": "hf:Qwen/Qwen2.5-1.5B-Instruct", "id": "qwen-1.5b"})
            server.api("POST", "/downloads", {"model": llama, "id": "llama-3.2-3b"})
            server.api("POST", "/downloads", {"model": gemma, "id": "gemma-2-2b"})
            server.api("POST", "/downloads", {"model": smol, "id": "smollm2"})

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": args.width, "height": args.height or 900},
                                        base_url=server.url, color_scheme="light",
                                        device_scale_factor=2 if args.height else 1)
                page.goto("/")
                expect(page.locator("#connection")).to_have_text("Live")
                if not args.height:
                    page.locator("#options").evaluate("details => { details.open = true; }")
                wait_for(server, "qwen-1.5b", lambda job: (job["percent"] or 0) > 30 and job["eta_seconds"])
                wait_for(server, "llama-3.2-3b", lambda job: (job["percent"] or 0) > 30 and job["eta_seconds"])
                page.wait_for_timeout(400)  # the next progress event has reached the page
                if args.height:  # the Hub repo's card: its file list, then the queued ones
                    page.locator('li.card[data-key="job:qwen-1.5b"]').evaluate("card => card.scrollIntoView()")
                page.screenshot(path=args.output, full_page=not args.height)
                browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Every shell example of the README and docs/*.md, run as written against the local fakes.

The hosts are the only thing changed: `https://example.com` and `https://huggingface.co` become the
fault-injecting file server, `hf:`/`mlx:` go to the fake Hub (HF_ENDPOINT), `ollama:` to the fake
Ollama server (OLLAMA_HOST), and `http://127.0.0.1:8080` to a `modelpull serve` started here.
Placeholders in angle brackets (`<hex>`, `<id>`, `<64 hex digits>`) and `hf_...` are filled in, and
`dl-3f2a9c1e7b44` (the docs' sample job id) is the id the example's own POST answered.

An example that cannot run here says why in NOT_RUN (a live internet host, a command that runs
until stopped); everything else must exit 0 (curl: `--fail-with-body`, so an HTTP error fails).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes.ollama import FakeOllamaServer, make_gguf

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SHELLS = ("sh", "bash", "shell", "console")

# (pattern over the command as written, why it is not run here)
NOT_RUN = [
    (r"^make (serve|test)\b", "builds .venv and serves or runs the whole suite: this suite is that"),
    (r"^(\S+=\S+ )*(\.venv/bin/)?modelpull serve\b", "runs until stopped; the test starts its own server"),
    (r"--direct\b", "straight from registry.ollama.ai: needs the internet"),
    (r"^open ", "opens a browser"),
    (r"^sudo -u postgres ", "makes a role and a database on the PostgreSQL host (tests/server/test_replicas.py "
                            "starts its own PostgreSQL)"),
]
SLOW = 250_000  # bytes per second: server downloads stay running while the walk-through pauses them
TOKEN = "hf_docs_example_token"
SAMPLE_JOB_ID = "dl-3f2a9c1e7b44"


def shell_blocks(document: str) -> list[str]:
    text = (ROOT / document).read_text()
    return [m.group(2) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S) if m.group(1) in SHELLS]


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, multi-line quotes kept, comments dropped."""
    found, pending, joiner = [], "", "\n"
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending = f"{pending}{joiner}{line}" if pending else line
        joiner = "\n"
        if pending.endswith("\\"):
            pending, joiner = pending[:-1], " "
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        found.append(_without_comment(pending).strip())
        pending = ""
    assert not pending, f"unfinished command in a docs example: {pending!r}"
    return found


def _without_comment(command: str) -> str:
    """The command without a trailing `# ...` outside quotes."""
    quote = None
    for index, char in enumerate(command):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or command[index - 1] in " \t"):
            return command[:index]
    return command


def not_run_reason(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if re.search(pattern, command)), None)


ALL_EXAMPLES = [(document, command) for document in DOCUMENTS for block in shell_blocks(document)
                for command in commands(block)]


def test_most_examples_run_and_the_rest_say_why():
    skipped = [(d, c) for d, c in ALL_EXAMPLES if not_run_reason(c)]
    assert len(ALL_EXAMPLES) >= 40
    assert len(skipped) <= len(ALL_EXAMPLES) // 5, skipped


# ---------------------------------------------------------------------------------------


class Sandbox:
    """The fakes, a `modelpull serve`, and a shell environment pointing at them."""

    def __init__(self, tmp: Path, file_server, hub, ollama: FakeOllamaServer) -> None:
        self.tmp = tmp
        self.files = file_server
        self.hub = hub
        self.ollama = ollama
        self.server: subprocess.Popen | None = None
        self.server_url = ""
        self.last_job_id: str | None = None
        self.digest = self._add_content()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OLLAMA_", "MODELPULL_"))},
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "HOME": str(tmp / "home"),
            "MODELPULL_HOME": str(tmp / "models"),
            "MODELPULL_MAX_RETRIES": "1",
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": str(tmp / "hf-cache"),
            "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN": TOKEN,
            "OLLAMA_HOST": ollama.base_url,
            "OLLAMA_MODELS": str(tmp / "ollama"),
        }
        (tmp / "home").mkdir()

    def _add_content(self) -> str:
        gguf = make_gguf(600_000, name="docs example")
        for path in ("/models/tinyllama.Q4_K_M.gguf", "/model.gguf"):
            self.files.add_file(path, gguf)
        self.files.add_file("/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf",
                            make_gguf(1_000_000, name="Qwen2.5 0.5B Instruct"), throttle_bps=SLOW)
        small = {"config.json": b'{"model_type": "qwen2"}', "tokenizer.json": b"{}",
                 "model.safetensors": b"\0" * 2048}
        hub = self.hub
        hub.add_token(TOKEN)
        for repo in ("Qwen/Qwen2.5-0.5B-Instruct", "mlx-community/Llama-3.2-1B-Instruct-4bit",
                     "hf-internal-testing/tiny-random-gpt2", "org/name"):
            hub.add_repo(repo, small)
        hub.add_commit("org/name", {**small, "model.Q4_K_M.gguf": gguf}, branch="v1.0")
        hub.add_repo("TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
                     {"tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf": make_gguf(1_000_000, name="TinyLlama")})
        hub.add_repo("meta-llama/Llama-3.2-1B", small, gated=True)
        hub.grant("meta-llama/Llama-3.2-1B", TOKEN)
        for name in ("llama3.2:1b", "gemma3:1b"):
            self.ollama.add_model(name, model_size=20_000)
        return hashlib.sha256(gguf).hexdigest()

    # ---- the server ------------------------------------------------------------------

    def start_server(self) -> None:
        self.hub.cdn_rate = 100_000  # the TinyLlama engine is still downloading when the docs cancel it
        models = self.tmp / "served"
        (models / "models").mkdir(parents=True)
        (models / "models" / "my-model.gguf").write_bytes(make_gguf(50_000, name="my model"))
        self.server_log = (self.tmp / "server.log").open("wb")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "modelpull.server.cli", "--host", "127.0.0.1", "--port", "0",
             "--models-dir", "./models", "--allow-private-urls", "--max-retries", "1"],
            cwd=models, env=self.env, stdout=self.server_log, stderr=self.server_log)
        deadline = time.monotonic() + 30
        while not self.server_url:
            assert self.server.poll() is None and time.monotonic() < deadline, (self.tmp / "server.log").read_text()
            for line in (self.tmp / "server.log").read_text().splitlines():
                if '"listening on' in line:
                    self.server_url = f"http://127.0.0.1:{json.loads(line)['port']}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
            self.server_log.close()

    # ---- running an example ------------------------------------------------------------

    def prepare(self, command: str) -> str:
        """The command as written, pointed at the fakes."""
        files = self.files.base_url
        command = command.replace("https://example.com", files).replace("https://huggingface.co", files)
        command = command.replace("<64 hex digits>", self.digest).replace("<hex>", self.digest)
        command = command.replace("hf_...", TOKEN)
        if self.last_job_id:
            command = command.replace("<id>", self.last_job_id).replace(SAMPLE_JOB_ID, self.last_job_id)
        if "127.0.0.1:8080" in command:
            if self.server is None:
                self.start_server()
            command = command.replace("http://127.0.0.1:8080", self.server_url)
        if command.startswith("curl "):
            stream = " -N " in command and re.search(r"/events['\s]*$", command) and "/downloads/" not in command
            limit = "3" if stream else "60"
            command = f"curl -sS --fail-with-body --max-time {limit} {command[len('curl '):]}"
        return command

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        prepared = self.prepare(command)
        for attempt in range(40):
            result = subprocess.run(["bash", "-c", prepared], cwd=self.tmp, env=self.env,
                                    capture_output=True, text=True, timeout=120)
            if result.returncode == 28 and "--max-time 3 " in prepared:  # an endless stream, as meant
                result.returncode = 0
            # A GET may ask for what a download in the background has not made yet (an engine).
            retry = result.returncode != 0 and prepared.startswith("curl ") and " -X " not in prepared
            if not retry:
                break
            time.sleep(0.5)
        if result.returncode == 0 and re.search(r"-X POST \S+/downloads'? ", prepared):
            try:
                self.last_job_id = json.loads(result.stdout)["id"]
            except (ValueError, KeyError, TypeError):
                pass
        return result


@pytest.fixture
def sandbox(tmp_path, file_server, fake_hub):
    with FakeOllamaServer(interval=0.005) as ollama:
        box = Sandbox(tmp_path, file_server, fake_hub, ollama)
        try:
            yield box
        finally:
            box.stop()


_RAN_ELSEWHERE: set[str] = set()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if shell_blocks(d)])
def test_the_shell_examples_of(document, sandbox):
    ran, failures = 0, []
    for block in shell_blocks(document):
        for command in commands(block):
            if not_run_reason(command):
                continue
            if command in _RAN_ELSEWHERE:
                continue  # the same CLI example in another document: run once
            result = sandbox.run(command)
            ran += 1
            if result.returncode == 0 and "127.0.0.1:8080" not in command:
                _RAN_ELSEWHERE.add(command)
            if result.returncode != 0:
                failures.append(f"$ {command}\n(exit {result.returncode})\n{result.stdout[-800:]}{result.stderr[-800:]}")
    assert ran, f"no example of {document} ran"
    assert not failures, "\n\n".join(failures)

"""Fixtures for the server tests: a real uvicorn on 127.0.0.1 (random port), in a thread or a
subprocess, an httpx client to it, its log lines captured, and small model files."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from modelpull._settings import Settings

REPO = Path(__file__).resolve().parents[2]


class LogCapture(logging.Handler):
    """Every log line the server writes, formatted exactly as it would reach stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        from modelpull.server.logs import JsonFormatter

        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock:
            self.lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


class RunningServer:
    """uvicorn serving create_app(settings) in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from modelpull.server.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="modelpull-server", daemon=True)
        self.url = ""
        self.client: httpx.Client | None = None

    def start(self) -> "RunningServer":
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        self.client = httpx.Client(base_url=self.url, timeout=20, headers=headers)
        return self

    @property
    def manager(self):
        return self.app.state.manager

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self._server.should_exit = True
        self._thread.join(timeout=20)

    # ---- helpers the tests share -----------------------------------------------------

    def submit(self, model: str, **body: Any) -> dict[str, Any]:
        response = self.client.post("/downloads", json={"model": model, **body})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/downloads/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """Poll the job until `predicate(job)` holds (a deadline, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached the expected state: {job}")
            time.sleep(0.02)

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait(job_id, lambda j: j["status"] in statuses, timeout)

    def wait_bytes(self, job_id: str, minimum: int = 1) -> dict[str, Any]:
        return self.wait(job_id, lambda j: (j["downloaded_bytes"] or 0) >= minimum and j["status"] == "downloading")


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    capture = LogCapture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    yield capture
    root.removeHandler(capture)
    root.setLevel(previous)


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "models",
        database=tmp_path / "state.db",
        allow_private_urls=True,
        local_model_roots=(tmp_path,),  # POST /engines may register the test's own model files
        max_active_jobs=3,
        retention_seconds=3600,
        max_retries=2,
        stall_timeout=10,
    )


@pytest.fixture
def start_server(server_settings: Settings, log_capture: LogCapture) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with `server_settings` plus overrides; all stopped after the test."""
    started: list[RunningServer] = []

    def start(**overrides: Any) -> RunningServer:
        running = RunningServer(dataclasses.replace(server_settings, **overrides)).start()
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.stop()


@pytest.fixture
def server(start_server) -> RunningServer:
    return start_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[RunningServer]:
    """One server for a module's stateless checks (validation, 404s): cheaper than one per test."""
    root = tmp_path_factory.mktemp("shared-server")
    running = RunningServer(Settings(home=root / "models", database=root / "state.db", allow_private_urls=True))
    running.start()
    yield running
    running.stop()


# ---- a server in its own process (crash tests) ---------------------------------------


class ServerProcess:
    """`python -m modelpull.server.cli` as a child process; its stderr kept in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelpull.server.cli", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=self._log, stderr=self._log, cwd=str(log_path.parent),
            env={**os.environ, **(env or {})},
        )
        self.url = self._wait_for_port()
        self.client = httpx.Client(base_url=self.url, timeout=20)

    def _wait_for_port(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            for line in self.log_path.read_text().splitlines()[::-1]:
                if '"listening on' in line:
                    entry = json.loads(line)
                    if entry.get("port"):
                        return f"http://127.0.0.1:{entry['port']}"
            time.sleep(0.05)
        raise RuntimeError("server never said where it listens")

    def kill(self) -> None:
        self.client.close()
        self.process.kill()  # SIGKILL: no shutdown handlers run
        self.process.wait(timeout=10)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    processes: list[ServerProcess] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(list(args), tmp_path / f"server-{len(processes)}.log", env)
        processes.append(proc)
        return proc

    yield spawn
    for proc in processes:
        if proc.process.poll() is None:
            proc.stop()


# ---- a real PostgreSQL (replica tests) ------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One PostgreSQL server for the session (Debian's package; `.ci/run` installs it)."""
    from pg_server import PostgresServer, PostgresUnavailable

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'modelpull[postgres]')")
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.close()


@pytest.fixture
def pg_url(postgres, request) -> str:
    """A fresh database on the session's PostgreSQL, for one test."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40] + "_" + os.urandom(3).hex()
    return postgres.create_database(name)

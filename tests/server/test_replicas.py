"""Several replicas on one PostgreSQL (a real server, started by the suite) and one models dir."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from server_helpers import file_sha256, random_bytes, sha256

SLOW = 200_000


@pytest.fixture
def replicas(start_server, server_settings, pg_url):
    """Start a replica on the test's PostgreSQL database and the shared models dir."""

    def start(**overrides):
        return start_server(database=pg_url, lease_seconds=3, **overrides)

    return start


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
    return result


def test_two_replicas_claim_share_progress_and_answer_for_each_others_jobs(replicas, file_server):
    a = replicas(max_active_jobs=1)
    b = replicas(max_active_jobs=1)
    urls = [file_server.add_file(f"/r{i}.bin", random_bytes(500_000, seed=70 + i), throttle_bps=SLOW)
            for i in range(2)]
    first = a.submit(urls[0])["id"]
    second = a.submit(urls[1])["id"]  # A is full: B claims it
    wait_for(lambda: a.manager.running_transfers == 1 and b.manager.running_transfers == 1,
             "one job running on each replica")
    assert set(a.manager.running_job_ids()) | set(b.manager.running_job_ids()) == {first, second}
    on_b = b.manager.running_job_ids()[0]
    # A answers for B's job with B's progress, and the listing shows both.
    moving = a.wait(on_b, lambda j: (j["downloaded_bytes"] or 0) > 0 and j["status"] == "downloading")
    assert moving["total_bytes"] == 500_000
    listing = a.client.get("/downloads").json()
    assert {d["model_id"] for d in listing["active_downloads"]} == {first, second}
    done = [b.wait_status(i, "completed", "failed") for i in (first, second)]
    assert [d["status"] for d in done] == ["completed", "completed"]
    for i, job in enumerate(done):
        assert file_sha256(a.settings.home / f"r{i}.bin") == sha256(random_bytes(500_000, seed=70 + i))
        assert len(file_server.requests_for(f"/r{i}.bin", "GET")) == 1


def test_sse_on_one_replica_follows_a_job_running_on_the_other(replicas, file_server):
    a = replicas()
    url = file_server.add_file("/sse.bin", random_bytes(600_000, seed=80), throttle_bps=SLOW)
    job_id = a.submit(url)["id"]
    wait_for(lambda: job_id in a.manager.running_job_ids(), "running on A")
    b = replicas()  # started after A claimed the job: it cannot take it
    events = []
    with httpx.Client(base_url=b.url, timeout=30) as client, \
            client.stream("GET", f"/downloads/{job_id}/events") as stream:
        data = None
        for line in stream.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
                events.append(data)
                if data["status"] in ("completed", "failed", "cancelled"):
                    break
    assert events[-1]["status"] == "completed"
    progress = [e["downloaded_bytes"] for e in events if e["status"] == "downloading" and e["downloaded_bytes"]]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[0] < 600_000  # live, in order
    assert job_id not in b.manager.running_job_ids()


def test_an_eventsource_that_reconnects_to_the_other_replica_resumes_after_its_last_event_id(replicas, file_server):
    """A load balancer may send a browser's reconnect to another replica: it goes on from the
    Last-Event-ID it sent, ids still increasing, and gets 204 once the job has ended."""
    import httpx_sse

    a = replicas()
    b = replicas()
    url = file_server.add_file("/resume.bin", random_bytes(600_000, seed=81), throttle_bps=SLOW)
    job_id = a.submit(url)["id"]
    with httpx.Client(base_url=a.url, timeout=30) as on_a:
        with httpx_sse.connect_sse(on_a, "GET", f"/downloads/{job_id}/events") as source:
            seen = []
            for event in source.iter_sse():
                seen.append(event)
                if json.loads(event.data)["downloaded_bytes"]:
                    break
    last_id = seen[-1].id
    with httpx.Client(base_url=b.url, timeout=30) as on_b:
        with httpx_sse.connect_sse(on_b, "GET", f"/downloads/{job_id}/events",
                                   headers={"Last-Event-ID": last_id}) as source:
            resumed = list(source.iter_sse())
        after = on_b.get(f"/downloads/{job_id}/events", headers={"Last-Event-ID": resumed[-1].id})

    assert json.loads(resumed[-1].data)["status"] == "completed"
    ids = [int(e.id) for e in seen + resumed]
    assert ids == sorted(set(ids)) and int(resumed[0].id) > int(last_id), ids
    assert after.status_code == 204


def test_cancel_and_pause_sent_to_the_other_replica_reach_the_one_running_the_job(replicas, file_server):
    a = replicas()
    url = file_server.add_file("/c.bin", random_bytes(800_000, seed=81), throttle_bps=SLOW // 2)
    paused_url = file_server.add_file("/p.bin", random_bytes(400_000, seed=82), throttle_bps=SLOW)
    job_id = a.submit(url)["id"]
    paused_id = a.submit(paused_url)["id"]
    a.wait_bytes(job_id)
    a.wait_bytes(paused_id)
    b = replicas()
    assert b.client.post(f"/downloads/{paused_id}/pause").status_code == 200
    assert a.wait_status(paused_id, "paused")["downloaded_bytes"] > 0
    cancel = b.client.delete(f"/downloads/{job_id}")
    assert cancel.status_code == 200 and cancel.json()["previous_status"] == "downloading"
    assert a.wait_status(job_id, "cancelled")["status"] == "cancelled"
    assert b.wait_status(job_id, "cancelled")["status"] == "cancelled"
    wait_for(lambda: not a.manager.running_job_ids(), "both transfers stopped on A")
    assert not (a.settings.home / "c.bin").exists()
    # Resumed on B: any replica may take it; it continues from the partial data.
    assert b.client.post(f"/downloads/{paused_id}/resume").status_code == 200
    assert b.wait_status(paused_id, "completed", "failed")["status"] == "completed"
    assert file_sha256(a.settings.home / "p.bin") == sha256(random_bytes(400_000, seed=82))
    assert (file_server.requests_for("/p.bin", "GET")[-1].range_start or 0) > 0


def test_the_same_source_sent_to_two_replicas_moves_once(replicas, file_server):
    a = replicas()
    b = replicas()
    data = random_bytes(600_000, seed=83)
    url = file_server.add_file("/dedupe.bin", data, throttle_bps=SLOW)
    first = a.submit(url)["id"]
    a.wait_bytes(first)
    second = b.submit(url)["id"]
    done = [b.wait_status(i, "completed", "failed") for i in (first, second)]
    assert [d["status"] for d in done] == ["completed", "completed"]
    assert len(file_server.requests_for("/dedupe.bin", "GET")) == 1
    assert file_server.bytes_sent <= len(data) * 1.05
    assert file_sha256(a.settings.home / "dedupe.bin") == sha256(data)


def test_engines_created_on_one_replica_are_seen_by_the_other(replicas, tmp_path):
    from server_helpers import make_gguf

    a = replicas()
    b = replicas()
    model = make_gguf(tmp_path / "shared.gguf")
    assert a.client.post("/engines", json={"engine_id": "both", "model_path": str(model)}).status_code == 201
    wait_for(lambda: b.client.get("/engines/both").status_code == 200, "the engine on B")
    assert b.client.delete("/engines/both").status_code == 200
    wait_for(lambda: a.client.get("/engines/both").status_code == 404, "the engine gone on A")


def test_a_sigkilled_replicas_job_is_taken_over_and_finished_with_the_right_digest(
        spawn_server, file_server, pg_url, tmp_path):
    data = random_bytes(1_000_000, seed=84)
    url = file_server.add_file("/takeover.gguf", data, throttle_bps=120_000)
    models = tmp_path / "shared-models"
    args = ["--models-dir", str(models), "--database", pg_url, "--lease-seconds", "2", "--allow-private-urls"]
    doomed = spawn_server(*args)
    job_id = doomed.client.post("/downloads", json={"model": url, "options": {"sha256": sha256(data)}}).json()["id"]
    wait_for(lambda: (doomed.client.get(f"/downloads/{job_id}").json()["downloaded_bytes"] or 0) > 0, "moving")
    survivor = spawn_server(*args)  # after the claim: the job is the doomed replica's
    wait_for(lambda: (survivor.client.get(f"/downloads/{job_id}").json()["downloaded_bytes"] or 0) > 200_000,
             "progress seen on the survivor")
    doomed.kill()
    job = wait_for(lambda: (j := survivor.client.get(f"/downloads/{job_id}").json())["status"]
                   in ("completed", "failed") and j, "finished after the takeover", timeout=60)
    assert job["status"] == "completed", job
    assert file_sha256(models / "takeover.gguf") == sha256(data)
    gets = file_server.requests_for("/takeover.gguf", "GET")
    assert (gets[-1].range_start or 0) > 0, [(g.range, g.bytes_sent, g.outcome) for g in gets]  # resumed, not from zero
    assert "resuming unfinished downloads" in (tmp_path / "server-1.log").read_text()


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelpull.server.cli", "--port", "0", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_an_unreachable_database_fails_the_start_with_one_line_and_no_password(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    result = serve("--models-dir", str(tmp_path), "--database", f"postgresql://app:s3cret-pw@127.0.0.1:{port}/jobs")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"modelpull serve: cannot connect to the database postgresql://app@127.0.0.1:{port}/jobs")
    assert "s3cret-pw" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def serve_here(capsys, *args: str) -> tuple[int, str]:
    """`modelpull serve` in this process (cheaper than a child): its exit code and stderr."""
    from modelpull.server.cli import serve_main

    code = serve_main(["--port", "0", *args])
    return code, capsys.readouterr().err


def test_a_wrong_password_is_one_clear_line_and_is_not_retried(postgres, pg_url, tmp_path, capsys):
    log = postgres.root / "log"
    before = log.read_text().count("password authentication failed")
    wrong = pg_url.replace(postgres.password, "not-the-password")
    code, stderr = serve_here(capsys, "--models-dir", str(tmp_path), "--database", wrong)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot log in to the database" in lines[0], stderr
    assert 'password authentication failed for user "modelpull"' in lines[0]
    assert "not-the-password" not in stderr
    assert log.read_text().count("password authentication failed") == before + 1


def test_a_newer_schema_is_refused_at_start(pg_url, tmp_path, capsys):
    import psycopg

    from modelpull.server.store import SCHEMA_VERSION

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE modelpull_schema_version (version integer NOT NULL)")
        conn.execute("INSERT INTO modelpull_schema_version VALUES (%s)", (SCHEMA_VERSION + 1,))
    code, stderr = serve_here(capsys, "--models-dir", str(tmp_path), "--database", pg_url)
    assert code == 1
    assert stderr.strip() == (
        f"modelpull serve: the database schema is version {SCHEMA_VERSION + 1}, newer than this modelpull knows "
        f"({SCHEMA_VERSION}): upgrade modelpull on this machine, or point --database at another database")


def test_losing_the_database_mid_run_is_reported_and_the_job_finishes_when_it_returns(
        replicas, postgres, file_server):
    server = replicas()
    data = random_bytes(900_000, seed=85)
    url = file_server.add_file("/outage.bin", data, throttle_bps=SLOW)
    job_id = server.submit(url)["id"]
    server.wait_bytes(job_id)
    postgres.stop()
    try:
        wait_for(lambda: server.client.get("/health").status_code == 503, "/health says 503")
        assert server.client.get("/health").json()["database"] == "unreachable"
        assert server.job(job_id)["status"] in ("downloading", "verifying", "completed")  # still answers
    finally:
        postgres.restart()
    wait_for(lambda: server.client.get("/health").status_code == 200, "/health back to 200")
    assert server.wait_status(job_id, "completed", "failed")["status"] == "completed"
    assert file_sha256(server.settings.home / "outage.bin") == sha256(data)
    wait_for(lambda: server.manager.store.healthy, "store healthy")


def _local_cli(home, database: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`modelpull <args>` on the models dir the replicas share, told where their database is."""
    import os

    env = {**os.environ, "MODELPULL_HOME": str(home), "MODELPULL_DATABASE": database,
           "OLLAMA_MODELS": str(home / "no-ollama"), "HF_HUB_CACHE": str(home / "no-hub")}
    return subprocess.run([sys.executable, "-m", "modelpull", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_rm_on_a_replicas_machine_asks_their_postgresql_and_is_refused_while_an_engine_uses_the_model(
        replicas, pg_url):
    from server_helpers import make_gguf

    a = replicas()
    model = make_gguf(a.settings.home / "chat.gguf")
    assert a.client.post("/engines", json={"engine_id": "chat", "model_path": str(model)}).status_code == 201
    wait_for(lambda: postgres_has_engine(pg_url, "chat"), "the engine in PostgreSQL")

    refused = _local_cli(a.settings.home, pg_url, "rm", "chat.gguf", "-y")

    assert refused.returncode == 1, refused.stderr
    assert "engine 'chat'" in refused.stderr and "stop it first" in refused.stderr
    assert model.is_file()


def test_rm_refuses_when_the_replicas_database_cannot_be_read_and_keeps_the_password_out(tmp_path):
    import socket

    from server_helpers import make_gguf

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    model = make_gguf(tmp_path / "chat.gguf")

    refused = _local_cli(tmp_path, f"postgresql://app:s3cret-pw@127.0.0.1:{port}/jobs", "rm", "chat.gguf", "-y")

    assert refused.returncode == 1, refused.stderr
    assert "cannot tell whether a server uses it" in refused.stderr, refused.stderr
    assert f"postgresql://app@127.0.0.1:{port}/jobs" in refused.stderr and "s3cret-pw" not in refused.stderr
    assert model.is_file()


def postgres_has_engine(url: str, engine_id: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM modelpull_engines WHERE engine_id = %s", (engine_id,)).fetchone() is not None

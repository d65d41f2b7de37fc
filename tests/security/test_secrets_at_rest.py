"""Finding 7: the job database is private (0600 in a 0700 folder, WAL and SHM too), and a signed
URL's secrets are stored once, in the field resuming needs (`model`), nowhere else."""
from __future__ import annotations

import json
import stat
from pathlib import Path

SIGNATURE = "SiGnAtUrE0123456789abcdef"
QUERY_TOKEN = "qUeRyToKeN98765"
PASSWORD = "pAsSwOrD5555"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _companions(database: Path) -> list[Path]:
    return [database, Path(f"{database}-wal"), Path(f"{database}-shm")]


def test_the_database_and_its_wal_are_private(start_server, file_server, tmp_path):
    database = tmp_path / "state" / "jobs.db"
    server = start_server(database=database)
    file_server.add_file("/m.gguf", b"m" * 1024)
    server.wait_status(server.submit(file_server.url("/m.gguf"))["id"], "completed", "failed")
    assert _mode(database.parent) == 0o700
    assert Path(f"{database}-wal").exists()  # WAL mode: the file SQLite creates itself is checked too
    for path in _companions(database):
        if path.exists():
            assert _mode(path) == 0o600, path


def test_signed_url_secrets_are_stored_only_in_the_model_field(start_server, file_server, tmp_path):
    database = tmp_path / "state.db"
    server = start_server(database=database)
    data = b"m" * 4096
    file_server.add_file("/signed.gguf", data)
    file_server.add_file("/private.gguf", data)
    signed = file_server.url(f"/signed.gguf?token={QUERY_TOKEN}&X-Amz-Signature={SIGNATURE}")
    with_password = file_server.url("/private.gguf").replace("http://", f"http://user:{PASSWORD}@")
    failing = file_server.url(f"/missing.gguf?X-Amz-Signature={SIGNATURE}")  # 404: its error names the URL
    engine = server.client.post("/engines", json={"engine_id": "e1", "model_path": signed, "load_immediately": False})
    assert engine.status_code in (201, 202), engine.text
    jobs = [server.submit(url, options={"max_retries": 0})["id"] for url in (signed, with_password, failing)]
    for job_id in jobs:
        server.wait_status(job_id, "completed", "failed")
    server.stop()  # every write flushed; the WAL may still hold the newest pages

    raw = b"".join(p.read_bytes() for p in _companions(database)[:2] if p.exists())
    for secret in (SIGNATURE, QUERY_TOKEN, PASSWORD):
        found = raw.count(secret.encode())
        in_model = sum(raw.count(json.dumps({"model": url})[1:-1].encode())
                       for url in (signed, with_password, failing) if secret in url)
        assert found, f"{secret} is not stored at all: the job could not resume"
        assert found == in_model, f"{secret} is stored outside the 'model' field ({found} vs {in_model})"


def test_a_stored_record_redacts_urls_in_messages_and_paths():
    from modelpull.server.jobs import Job

    signed = f"https://user:{PASSWORD}@cdn.example/m.gguf?X-Amz-Signature={SIGNATURE}"
    job = Job(id="j", provider="url", model=signed, options={}, source_key="k", lock_key="l")
    job.message = f"connection to {signed} failed"
    job.error_message = f"HTTP 403 from {signed}"
    job.current_file = signed
    record = job.to_record()
    assert record["model"] == signed  # what resuming needs
    stored = json.dumps({k: v for k, v in record.items() if k != "model"})
    assert SIGNATURE not in stored and PASSWORD not in stored
    assert "https://cdn.example/m.gguf" in record["error_message"]

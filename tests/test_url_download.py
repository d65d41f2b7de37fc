"""The transfer engine through the URL provider, against a fault-injecting file server.

Every test downloads over real sockets from tests/fakes/fileserver.py and checks either the
final file's sha256 against the source, or the exact error and that nothing is left at the
final path.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelpull import DownloadProgress, DownloadStatus, download_model
from modelpull.transfer import _engine

from fakes.proxy import ForwardProxy

KiB = 1024
MiB = 1024 * 1024
DOWNLOADING = DownloadStatus.DOWNLOADING
RESTART = re.compile(r"restart", re.IGNORECASE)
# Faults that test something other than "bytes received before a drop are kept" strike past
# the engine's 1 MiB write buffer, so that some progress is on disk whatever it keeps.
PAST_WRITE_BUFFER = 1_500_000


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch):
    # A developer's proxy must not sit between these tests and 127.0.0.1.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def payload(size: int) -> bytes:
    return os.urandom(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def options(tmp_path: Path, **overrides) -> dict:
    # Short delays so faults cost milliseconds, not the defaults' seconds.
    values = {"models_dir": tmp_path, "retry_backoff": 0.01, "stall_timeout": 1.0}
    values.update(overrides)
    return values


async def collect(url: str, tmp_path: Path, **overrides) -> list[DownloadProgress]:
    return [item async for item in download_model("url", url, **options(tmp_path, **overrides))]


def visible_files(directory: Path) -> list[str]:
    """Names in `directory`, ignoring the engine's hidden bookkeeping (dot-names)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def assert_progress_sane(items: list[DownloadProgress]) -> None:
    assert items, "no progress at all"
    assert items[0].status == DownloadStatus.STARTING, items[0]
    assert items[-1].status.is_terminal, items[-1]
    assert all(not item.status.is_terminal for item in items[:-1]), [i.status for i in items]
    previous = 0
    for item in items:
        if item.status != DOWNLOADING or item.downloaded_bytes is None:
            continue
        if item.downloaded_bytes < previous:
            assert RESTART.search(item.message), f"progress went back without saying so: {item}"
        previous = item.downloaded_bytes


def assert_complete(items: list[DownloadProgress], data: bytes) -> Path:
    """The stream ended COMPLETE with a file holding exactly `data`, and no partial left."""
    assert_progress_sane(items)
    final = items[-1]
    assert final.status == DownloadStatus.COMPLETE, f"{final.error_code}: {final.message}"
    assert final.percent == 100.0
    assert final.local_path is not None
    path = Path(final.local_path)
    assert sha256(path.read_bytes()) == sha256(data), "the final file differs from the source"
    assert not Path(str(path) + ".part").exists()
    assert not Path(str(path) + ".part.state").exists()
    return path


def assert_error(items: list[DownloadProgress], code: str, final_path: Path) -> DownloadProgress:
    assert_progress_sane(items)
    final = items[-1]
    assert final.status == DownloadStatus.ERROR, final
    assert final.error_code == code, f"{final.error_code}: {final.message}"
    assert final.message
    assert not final_path.exists(), "a failed download left a file at the final path"
    return final


def range_starts(server, path: str) -> list[int | None]:
    return [r.range_start for r in server.requests_for(path, "GET")]


async def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def download_until(url: str, tmp_path: Path, at_least: int, **overrides) -> list[DownloadProgress]:
    """Start a download and close the stream once `at_least` bytes are reported."""
    items = []
    stream = download_model("url", url, **options(tmp_path, **overrides))
    try:
        async for item in stream:
            items.append(item)
            if item.status == DOWNLOADING and (item.downloaded_bytes or 0) >= at_least:
                break
    finally:
        await asyncio.wait_for(stream.aclose(), timeout=10)
    assert items[-1].status == DOWNLOADING, f"finished before being interrupted: {items[-1]}"
    return items


# ---- the plain case and naming ---------------------------------------------------------

async def test_downloads_a_file_with_progress(file_server, tmp_path):
    data = payload(2 * MiB)
    url = file_server.add_file("/model.bin", data, throttle_bps=8 * MiB)
    items = await collect(url, tmp_path)
    path = assert_complete(items, data)
    assert path == tmp_path / "model.bin"
    downloading = [i for i in items if i.status == DOWNLOADING]
    assert downloading, "no DOWNLOADING item"
    assert all(i.total_bytes == len(data) for i in downloading)
    assert items[-1].downloaded_bytes == len(data)
    assert visible_files(tmp_path) == ["model.bin"]


async def test_dest_option_chooses_the_directory(file_server, tmp_path):
    data = payload(50 * KiB)
    url = file_server.add_file("/model.bin", data)
    dest = tmp_path / "elsewhere"
    path = assert_complete(await collect(url, tmp_path / "models", dest=dest), data)
    assert path == dest / "model.bin"


async def test_name_from_content_disposition(file_server, tmp_path):
    data = payload(50 * KiB)
    url = file_server.add_file(
        "/download", data, content_disposition='attachment; filename="weights-q4.gguf"'
    )
    path = assert_complete(await collect(url + "?id=42", tmp_path), data)
    assert path == tmp_path / "weights-q4.gguf"


async def test_name_from_url_path_is_percent_decoded(file_server, tmp_path):
    data = payload(50 * KiB)
    url = file_server.add_file("/repo/my%20model%C3%A9.bin", data)
    path = assert_complete(await collect(url, tmp_path), data)
    assert path == tmp_path / "my modelé.bin"


@pytest.mark.parametrize(
    "path, disposition",
    [
        ("/files/..%2F..%2Fescape.bin", None),
        ("/files/bad%07name%00.bin", None),
        ("/download", "attachment; filename=\"../../escape.bin\""),
        ("/download", "attachment; filename*=UTF-8''..%2F..%2Fesc%0Dape.bin"),
    ],
)
async def test_names_are_sanitised(file_server, tmp_path, path, disposition):
    data = payload(10 * KiB)
    models = tmp_path / "models"
    url = file_server.add_file(path, data, content_disposition=disposition)
    saved = assert_complete(await collect(url, models), data)
    assert saved.parent == models
    assert "/" not in saved.name and "\\" not in saved.name
    assert ".." not in saved.name
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in saved.name)
    assert visible_files(tmp_path) == ["models"]


async def test_unknown_provider_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not support model downloads"):
        async for _ in download_model("gopher", "gopher://x/model.bin", models_dir=tmp_path):
            pass


async def test_unknown_option_is_an_invalid_request(file_server, tmp_path):
    url = file_server.add_file("/model.bin", payload(10 * KiB))
    items = await collect(url, tmp_path, bogus_option=1)
    final = assert_error(items, "invalid_request", tmp_path / "model.bin")
    assert "bogus_option" in final.message
    assert file_server.requests == []


# ---- faults that must be survived ------------------------------------------------------

async def test_dropped_connection_resumes_with_range(file_server, tmp_path):
    data = payload(1 * MiB)
    url = file_server.add_file("/model.bin", data)
    file_server.add_fault("/model.bin", "drop_after", bytes=300_000)
    assert_complete(await collect(url, tmp_path), data)
    assert file_server.pending_faults("/model.bin") == []
    starts = range_starts(file_server, "/model.bin")
    assert len(starts) >= 2
    assert (starts[-1] or 0) > 0, f"the retry did not resume: {starts}"


async def test_stall_reconnects_without_spending_a_retry(file_server, tmp_path):
    data = payload(3 * MiB)
    url = file_server.add_file("/model.bin", data)
    # Past the engine's 1 MiB write buffer, so some progress is on disk whatever it keeps.
    file_server.add_fault("/model.bin", "stall", after=PAST_WRITE_BUFFER, seconds=60)
    items = await collect(url, tmp_path, stall_timeout=1.0, max_retries=0)
    assert_complete(items, data)
    stalled = [r for r in file_server.requests_for("/model.bin", "GET") if r.fault == "stall"]
    assert len(stalled) == 1
    assert await wait_for(lambda: stalled[0].outcome == "client_closed"), "the stalled socket stayed open"
    assert (range_starts(file_server, "/model.bin")[-1] or 0) > 0


@pytest.mark.parametrize("codes", [[500], [503, 503], [502, 504]])
async def test_server_errors_then_success(file_server, tmp_path, codes):
    data = payload(200 * KiB)
    url = file_server.add_file("/model.bin", data)
    for code in codes:
        file_server.add_fault("/model.bin", "status", code=code)
    assert_complete(await collect(url, tmp_path), data)
    statuses = [r.status for r in file_server.requests_for("/model.bin", "GET")]
    assert statuses[: len(codes)] == codes
    assert statuses[-1] in (200, 206)


async def test_429_with_retry_after_waits_then_succeeds(file_server, tmp_path):
    data = payload(200 * KiB)
    url = file_server.add_file("/model.bin", data)
    file_server.add_fault("/model.bin", "status", code=429, headers={"Retry-After": "1"})
    assert_complete(await collect(url, tmp_path), data)
    statuses = [r.status for r in file_server.requests_for("/model.bin", "GET")]
    assert statuses[0] == 429 and statuses[-1] in (200, 206)


async def test_a_200_to_a_resume_restarts_from_zero(file_server, tmp_path):
    data = payload(3 * MiB)
    url = file_server.add_file("/model.bin", data)
    file_server.add_fault("/model.bin", "drop_after", bytes=PAST_WRITE_BUFFER)
    file_server.add_fault("/model.bin", "ignore_range")
    items = await collect(url, tmp_path)
    assert_complete(items, data)  # a 200 body appended to the partial would fail this
    assert file_server.pending_faults("/model.bin") == [], "no ranged resume was made"
    assert any(RESTART.search(i.message) for i in items), [i.message for i in items]


async def test_changed_file_restarts_and_keeps_the_new_content(file_server, tmp_path):
    old, new = payload(3 * MiB), payload(2 * MiB + 5)
    url = file_server.add_file("/model.bin", old)
    file_server.add_fault("/model.bin", "drop_after", bytes=PAST_WRITE_BUFFER)
    file_server.add_fault("/model.bin", "change_content", data=new)
    items = await collect(url, tmp_path)
    assert_complete(items, new)
    assert file_server.pending_faults("/model.bin") == []


async def test_changed_etag_on_a_206_restarts(file_server, tmp_path):
    # This server ignores If-Range and answers the resume with 206 of the NEW file: only the
    # changed ETag tells the engine that appending would stitch two files together.
    old, new = payload(3 * MiB), payload(3 * MiB)
    url = file_server.add_file("/model.bin", old, if_range=False)
    file_server.add_fault("/model.bin", "drop_after", bytes=PAST_WRITE_BUFFER)
    file_server.add_fault("/model.bin", "change_content", data=new)
    items = await collect(url, tmp_path)
    assert_complete(items, new)
    assert file_server.pending_faults("/model.bin") == []


async def test_short_body_resumes(file_server, tmp_path):
    data = payload(1 * MiB)
    url = file_server.add_file("/model.bin", data)
    file_server.add_fault("/model.bin", "short_body", bytes=400_000)
    assert_complete(await collect(url, tmp_path), data)
    assert (range_starts(file_server, "/model.bin")[-1] or 0) > 0


async def test_wrong_bytes_are_a_digest_mismatch(file_server, tmp_path):
    data = payload(300 * KiB)
    corrupted = bytearray(data)
    corrupted[1000] ^= 0xFF
    url = file_server.add_file("/model.bin", data)
    file_server.add_fault("/model.bin", "wrong_bytes", offset=1000)
    items = await collect(url, tmp_path, sha256=sha256(data))
    final = assert_error(items, "digest_mismatch", tmp_path / "model.bin")
    assert f"digest mismatch: expected {sha256(data)}, got {sha256(bytes(corrupted))}" in final.message
    assert not (tmp_path / "model.bin.part").exists()
    assert visible_files(tmp_path) == []


async def test_correct_sha256_option_completes(file_server, tmp_path):
    data = payload(300 * KiB)
    url = file_server.add_file("/model.bin", data)
    assert_complete(await collect(url, tmp_path, sha256=sha256(data).upper()), data)


async def test_same_host_redirect(file_server, tmp_path):
    data = payload(300 * KiB)
    file_server.add_file("/blobs/abc", data)
    url = file_server.add_redirect("/model.bin", file_server.url("/blobs/abc"))
    assert_complete(await collect(url, tmp_path), data)


async def test_a_signed_urls_query_never_appears_in_progress(file_server, tmp_path):
    data = payload(64 * 1024)
    url = file_server.add_file("/model.bin", data) + "?X-Amz-Signature=secret-signature"
    items = await collect(url, tmp_path)
    assert_complete(items, data)
    assert items[0].message.startswith("Starting download of ") and "model.bin" in items[0].message
    assert not any("secret-signature" in item.message for item in items)


async def test_cross_host_redirect_does_not_leak_the_token(file_server, other_host_server, tmp_path):
    data = payload(1 * MiB)
    target = other_host_server.add_file("/cdn/blob", data)
    url = file_server.add_redirect("/model.bin", target)
    other_host_server.add_fault("/cdn/blob", "drop_after", bytes=300_000)  # and a resume there
    items = await collect(url, tmp_path, token="secret-token")
    assert_complete(items, data)
    assert file_server.requests, "the origin was never asked"
    assert all(r.headers.get("Authorization") == "Bearer secret-token" for r in file_server.requests)
    assert other_host_server.requests_for("/cdn/blob", "GET")
    leaked = [r for r in other_host_server.requests if "Authorization" in r.headers]
    assert leaked == [], "the token was sent to another host"
    assert not any("secret-token" in (i.message or "") for i in items)


async def test_fault_redirect_to_another_host(file_server, other_host_server, tmp_path):
    data = payload(300 * KiB)
    url = file_server.add_file("/model.bin", b"not this")
    target = other_host_server.add_file("/model.bin", data)
    file_server.add_fault("/model.bin", "redirect", to=target, times=10, methods=("GET", "HEAD"))
    assert_complete(await collect(url, tmp_path), data)


# ---- faults that must end the download, with the right error ----------------------------

@pytest.mark.parametrize("code, error_code", [(401, "auth_required"), (403, "forbidden")])
async def test_auth_errors_are_not_retried(file_server, tmp_path, code, error_code):
    url = file_server.add_file("/model.bin", payload(10 * KiB))
    file_server.add_fault("/model.bin", "status", code=code, times=100, methods=("GET", "HEAD"))
    items = await collect(url, tmp_path, max_retries=3)
    assert_error(items, error_code, tmp_path / "model.bin")
    # A HEAD refused with 403 may be a GET-only signed link, so one GET may follow it; but
    # no request is ever repeated.
    methods = [r.method for r in file_server.requests]
    assert len(methods) == len(set(methods)), [(r.method, r.status) for r in file_server.requests]


async def test_not_found_is_not_retried(file_server, tmp_path):
    items = await collect(file_server.url("/missing.bin"), tmp_path, max_retries=3)
    final = assert_error(items, "not_found", tmp_path / "missing.bin")
    assert "missing.bin" in final.message
    assert len(file_server.requests) == 1
    assert visible_files(tmp_path) == []


async def test_server_error_forever_gives_up_after_max_retries(file_server, tmp_path):
    url = file_server.add_file("/model.bin", payload(10 * KiB))
    file_server.add_fault("/model.bin", "status", code=500, times=1000)
    items = await collect(url, tmp_path, max_retries=2)
    assert_error(items, "server_error", tmp_path / "model.bin")
    assert len(file_server.requests_for("/model.bin", "GET")) == 3  # the first try and 2 retries


async def test_refused_connection(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    items = await collect(f"http://127.0.0.1:{port}/model.bin", tmp_path, max_retries=1)
    assert_error(items, "connection_failed", tmp_path / "model.bin")
    assert visible_files(tmp_path) == []


async def test_not_enough_disk_space_is_checked_before_starting(file_server, tmp_path):
    url = file_server.add_file("/model.bin", payload(100 * KiB))
    file_server.add_fault("/model.bin", "huge_size", size=1 << 50, times=100, methods=("GET", "HEAD"))
    items = await collect(url, tmp_path)
    final = assert_error(items, "insufficient_space", tmp_path / "model.bin")
    assert final.message.startswith("not enough disk space: need"), final.message
    assert visible_files(tmp_path) == []


async def leave_a_stale_partial(server, tmp_path: Path, smaller: bytes) -> str:
    """A bigger earlier version leaves a partial longer than the file the server has now,
    which keeps the same validators (as a careless re-upload does)."""
    bigger = payload(3 * MiB)
    url = server.add_file("/model.bin", bigger, etag="v1", last_modified=1_700_000_000, throttle_bps=4 * MiB)
    await download_until(url, tmp_path, at_least=1 * MiB)
    assert (tmp_path / "model.bin.part").exists()
    server.add_file("/model.bin", smaller, etag="v1", last_modified=1_700_000_000)
    server.reset_log()
    return url


async def test_stale_partial_bigger_than_the_file_is_discarded(file_server, tmp_path):
    smaller = payload(300 * KiB)
    url = await leave_a_stale_partial(file_server, tmp_path, smaller)
    assert_complete(await collect(url, tmp_path), smaller)


async def test_stale_partial_answered_416_is_handled(file_server, tmp_path):
    # HEAD refused, so only the resume's answer can tell: a range past the end, 416.
    smaller = payload(300 * KiB)
    url = await leave_a_stale_partial(file_server, tmp_path, smaller)
    file_server.add_fault("/model.bin", "status", code=405, times=100, methods=("HEAD",))
    items = await collect(url, tmp_path)
    assert_complete(items, smaller)
    assert 416 in [r.status for r in file_server.requests], "the stale resume never met a 416"
    assert any(RESTART.search(i.message) for i in items)


# ---- several connections ---------------------------------------------------------------

async def test_large_file_is_fetched_in_concurrent_parts(file_server, tmp_path):
    data = payload(40 * MiB)
    url = file_server.add_file("/big.bin", data, throttle_bps=16 * MiB)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=1 * MiB, connections=4)
    assert_complete(items, data)
    gets = file_server.requests_for("/big.bin", "GET")
    assert all(r.range is not None for r in gets)
    assert len({r.range_start for r in gets}) >= 4
    assert 2 <= file_server.max_concurrent_gets <= 4
    assert file_server.bytes_sent <= len(data) + 4 * MiB


async def test_connections_ramp_up_to_the_maximum_when_each_one_is_capped(file_server, tmp_path):
    # Each response capped at 4 MiB/s, as a CDN caps each connection: the ramp (one, then all)
    # must find that the extra connections pay, and keep all four.
    data = payload(24 * MiB)
    url = file_server.add_file("/capped.bin", data, throttle_bps=4 * MiB)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=1 * MiB, connections=4)
    assert_complete(items, data)
    assert file_server.max_concurrent_gets == 4


@pytest.mark.parametrize("refusal", [429, 503])
async def test_a_server_refusing_extra_connections_makes_the_ramp_back_off_and_stay_there(
    file_server, tmp_path, refusal
):
    # Each response capped at 4 MiB/s, so more connections would pay; but the server serves
    # two at a time and answers the others 429 (or 503). The ramp keeps to two for the rest
    # of the download (its later trials included): each extra connection is refused once,
    # none of them retries, and the download neither fails nor slows to one connection.
    data = payload(12 * MiB)
    url = file_server.add_file("/limited.bin", data, throttle_bps=4 * MiB, max_connections=2,
                               refuse_status=refusal)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=1 * MiB, connections=6)
    assert_complete(items, data)
    gets = file_server.requests_for("/limited.bin", "GET")
    refused = [r for r in gets if r.fault == "over_limit"]
    assert 1 <= len(refused) <= 6 - 2, [r.range for r in refused]
    assert max(r.started for r in refused) < min(r.started for r in gets if r.range_start == 11 * MiB)
    served = [r for r in gets if r.fault is None]
    assert len({r.peer for r in served}) >= 2, "the download fell back to one connection"


async def test_on_a_link_one_connection_fills_the_extra_connections_stop_mid_piece(
    file_server, tmp_path, monkeypatch
):
    # All responses share 8 MiB/s, as on a link one connection already fills: the trial's extra
    # connections are no faster together, so they stop at their next buffer, not at the end of
    # their pieces, and give those back; one connection resumes them and finishes the file.
    # (What follows a "no" is tested here, not the threshold: a wider one keeps a busy
    # machine's noise in the rates from turning the verdict.)
    monkeypatch.setattr(_engine, "RAMP_GAIN", 1.6)
    monkeypatch.setattr(_engine, "RAMP_PATIENCE", 1.0)  # 8 MiB/s is "slow": measure it anyway
    data = payload(24 * MiB)
    url = file_server.add_file("/shared.bin", data, link_bps=8 * MiB)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=4 * MiB, connections=4)
    assert_complete(items, data)
    gets = file_server.requests_for("/shared.bin", "GET")
    assert file_server.max_concurrent_gets > 1, "no trial of more connections"
    stopped = [r for r in gets if r.outcome == "client_closed"]
    assert stopped, "the extra connections finished their pieces"
    piece_starts = {n * 4 * MiB for n in range(6)}
    resumed = [r for r in gets if r.range_start not in piece_starts]
    assert len(resumed) >= len(stopped), "a piece given back was not resumed where it stopped"


async def test_a_slow_first_connection_brings_every_other_one_at_once_and_they_stay(file_server, tmp_path):
    # The first connection moves far less than RAMP_BURST + RAMP_SAMPLE within RAMP_PATIENCE
    # (2 MiB/s), as a capped one does: the others open without waiting for a rate, and no
    # trial sends them away (on a link this slow they cost no measurable CPU).
    data = payload(6 * MiB)
    url = file_server.add_file("/slow.bin", data, link_bps=2 * MiB)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=512 * KiB, connections=4)
    assert_complete(items, data)
    gets = file_server.requests_for("/slow.bin", "GET")
    assert file_server.max_concurrent_gets == 4
    assert [r for r in gets if r.outcome == "client_closed"] == [], "a connection was sent away"


async def test_a_lone_connection_asks_for_every_following_piece_in_one_request(file_server, tmp_path):
    # One connection: no round trip per piece. After the probe (piece 0), one request for the rest.
    data = payload(8 * MiB)
    url = file_server.add_file("/one.bin", data)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=1 * MiB, connections=1)
    assert_complete(items, data)
    assert [r.range for r in file_server.requests_for("/one.bin", "GET")] == [
        f"bytes=0-{1 * MiB - 1}", f"bytes={1 * MiB}-{8 * MiB - 1}",
    ]


async def test_when_more_connections_open_a_lone_connections_long_request_stops_after_its_piece(
    file_server, tmp_path, monkeypatch
):
    # The probe's small piece ends while the first connection is still alone (its rate is
    # measured over 2 MiB at 4 MiB/s), so it asks for every following piece in one request.
    # When the ramp opens the others, that request is cut after the piece it is writing: the
    # rest of the pieces are shared one per request, and the first stream closes its response.
    monkeypatch.setattr(_engine, "RAMP_PATIENCE", 5.0)  # measure the capped connection's rate
    data = payload(8 * MiB)
    url = file_server.add_file("/cut.bin", data, throttle_bps=4 * MiB)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=256 * KiB, connections=4)
    assert_complete(items, data)
    gets = file_server.requests_for("/cut.bin", "GET")
    long_run = [r for r in gets if r.range == f"bytes={256 * KiB}-{8 * MiB - 1}"]
    assert len(long_run) == 1, [r.range for r in gets]
    assert long_run[0].outcome == "client_closed"
    assert long_run[0].bytes_sent < 8 * MiB - 256 * KiB
    assert file_server.max_concurrent_gets >= 4  # (the server may see the cut response close late)
    singles = [r for r in gets if r.range_start and r.range_start % (256 * KiB) == 0 and r is not long_run[0]]
    assert singles and all(r.range == f"bytes={r.range_start}-{r.range_start + 256 * KiB - 1}" for r in singles)


async def test_a_drop_in_one_part_still_completes(file_server, tmp_path):
    data = payload(8 * MiB)
    url = file_server.add_file("/big.bin", data)
    file_server.add_fault("/big.bin", "drop_after", bytes=200_000)
    items = await collect(url, tmp_path, multipart_threshold=1 * MiB, piece_size=1 * MiB, connections=4)
    assert_complete(items, data)
    assert file_server.pending_faults("/big.bin") == []


# ---- interruption, resume and repeated calls ------------------------------------------

async def test_interrupted_download_resumes_counting_bytes_on_disk(file_server, tmp_path):
    data = payload(2 * MiB)
    url = file_server.add_file("/model.bin", data, throttle_bps=2 * MiB)
    await download_until(url, tmp_path, at_least=512 * KiB)
    assert (tmp_path / "model.bin.part").exists(), "the partial data was not kept"
    assert not (tmp_path / "model.bin").exists()
    first_run_gets = len(file_server.requests_for("/model.bin", "GET"))

    items = await collect(url, tmp_path)
    assert_complete(items, data)
    resumed = file_server.requests_for("/model.bin", "GET")[first_run_gets:]
    resume_offset = resumed[0].range_start or 0
    assert resume_offset > 0, "the second run started from zero"
    first = next(i for i in items if i.status == DOWNLOADING)
    assert first.downloaded_bytes is not None and first.downloaded_bytes >= resume_offset
    assert first.total_bytes == len(data)
    assert file_server.bytes_sent < len(data) + 256 * KiB


async def test_closing_the_stream_stops_the_transfer_and_keeps_the_partial(file_server, tmp_path):
    data = payload(4 * MiB)
    url = file_server.add_file("/model.bin", data, throttle_bps=1 * MiB)
    await download_until(url, tmp_path, at_least=100 * KiB)
    gets = file_server.requests_for("/model.bin", "GET")
    assert await wait_for(lambda: all(r.done for r in gets), 5), "the connection stayed open"
    assert gets[-1].outcome == "client_closed"
    assert (tmp_path / "model.bin.part").exists()
    assert not (tmp_path / "model.bin").exists()


async def test_cancelling_the_consumer_task_stops_the_transfer(file_server, tmp_path):
    data = payload(4 * MiB)
    url = file_server.add_file("/model.bin", data, throttle_bps=1 * MiB)
    progressed = asyncio.Event()

    async def consume() -> None:
        async for item in download_model("url", url, **options(tmp_path)):
            if item.status == DOWNLOADING and (item.downloaded_bytes or 0) >= 100 * KiB:
                progressed.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(progressed.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)
    gets = file_server.requests_for("/model.bin", "GET")
    assert await wait_for(lambda: all(r.done for r in gets), 5), "the connection stayed open"
    assert gets[-1].outcome == "client_closed"
    assert (tmp_path / "model.bin.part").exists()


async def test_same_url_twice_does_not_download_again(file_server, tmp_path):
    data = payload(300 * KiB)
    url = file_server.add_file("/model.bin", data)
    path = assert_complete(await collect(url, tmp_path), data)
    file_server.reset_log()
    items = await collect(url, tmp_path)
    assert assert_complete(items, data) == path
    assert file_server.bytes_sent == 0, [(r.method, r.range, r.bytes_sent) for r in file_server.requests]


async def test_two_urls_with_the_same_name_do_not_overwrite_each_other(file_server, tmp_path):
    first_data, second_data = payload(200 * KiB), payload(250 * KiB)
    first_url = file_server.add_file("/a/model.bin", first_data)
    second_url = file_server.add_file("/b/model.bin", second_data)
    first = assert_complete(await collect(first_url, tmp_path), first_data)
    second = assert_complete(await collect(second_url, tmp_path), second_data)
    assert first != second
    assert first.read_bytes() == first_data
    assert len(visible_files(tmp_path)) == 2


# ---- environment -----------------------------------------------------------------------

async def test_proxy_from_the_environment_is_used(file_server, tmp_path, monkeypatch):
    data = payload(300 * KiB)
    url = file_server.add_file("/model.bin", data)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert_complete(await collect(url, tmp_path), data)
    assert any(r.url == url and r.method == "GET" for r in proxy.requests), proxy.requests


async def test_a_host_in_no_proxy_is_fetched_directly_though_a_proxy_is_set(file_server, tmp_path, monkeypatch):
    data = payload(100 * KiB)
    url = file_server.add_file("/direct.bin", data)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        assert_complete(await collect(url, tmp_path), data)
    assert proxy.requests == []


# ---- crash and disk --------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_sigkill_mid_download_resumes_every_part(file_server, tmp_path):
    size, connections, piece = 32 * MiB, 4, 1 * MiB
    data = payload(size)
    url = file_server.add_file("/big.bin", data, throttle_bps=3 * MiB)
    script = (
        "import modelpull; modelpull.pull("
        f"{url!r}, models_dir={str(tmp_path)!r}, connections={connections}, "
        f"multipart_threshold=1<<20, piece_size={piece}, retry_backoff=0.01)"
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}

    first = subprocess.Popen([sys.executable, "-c", script], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while file_server.bytes_sent < size // 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, f"the first run ended early: {first.stderr.read().decode()[-2000:]}"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert not (tmp_path / "big.bin").exists()
    sent_before_kill = file_server.bytes_sent
    assert sent_before_kill < size

    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert sha256((tmp_path / "big.bin").read_bytes()) == sha256(data)
    # Lost to the kill: each connection's unwritten chunk (at most a piece here), and what was
    # written but not yet claimed by a state record (claims follow an fdatasync every 0.1 s).
    assert file_server.bytes_sent <= size + connections * piece + 4 * MiB, (
        f"sent {file_server.bytes_sent} for a {size}-byte file ({sent_before_kill} before the kill)"
    )


async def test_disk_full_during_download_is_an_error_item(file_server, small_disk):
    data = payload(16 * MiB)
    # Chunked and no ranges, so no Content-Length or Content-Range: no check up front.
    url = file_server.add_file("/model.bin", data, chunked=True, accept_ranges=False)
    items = await collect(url, small_disk)
    final = assert_error(items, "disk_full", small_disk / "model.bin")
    # The server cannot resume, so the partial is useless: deleted, and the message says so.
    assert "the next run starts from zero" in final.message, final.message
    assert "resume (the partial data is kept)" not in final.message
    assert visible_files(small_disk) == []

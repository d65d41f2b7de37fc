"""What is on disk versus what the state file says: damaged partials, torn state, reserved space.

Each test leaves a real partial download behind (a download stopped part way through,
against the fault-injecting file server), damages it the way a crash, a bad disk or a
careless hand would, and checks that the next run finds exactly the damage and fetches only
the bad piece again, with a message that tells the truth.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from crc32c import crc32c

from modelpull import DownloadProgress, DownloadStatus, download_model
from modelpull.transfer._state import PieceState

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
SIZE, PIECE = 8 * MiB, 1 * MiB


def options(directory: Path, **overrides) -> dict:
    values = {"models_dir": directory, "retry_backoff": 0.01, "stall_timeout": 2.0, "connections": 1,
              "piece_size": PIECE, "multipart_threshold": PIECE}
    values.update(overrides)
    return values


async def collect(url: str, directory: Path, **overrides) -> list[DownloadProgress]:
    return [item async for item in download_model("url", url, **options(directory, **overrides))]


async def stop_part_way(url: str, directory: Path, at_least: int) -> None:
    stream = download_model("url", url, **options(directory))
    try:
        async for item in stream:
            if item.status is DownloadStatus.DOWNLOADING and (item.downloaded_bytes or 0) >= at_least:
                break
    finally:
        await asyncio.wait_for(stream.aclose(), timeout=10)


def load_state(directory: Path) -> PieceState:
    state = PieceState.load(directory / "model.bin.part.state")
    assert state is not None
    return state


async def whole_pieces_on_disk(file_server, directory: Path) -> tuple[bytes, str, list[int]]:
    """A partial of an 8-piece file holding only whole pieces (a piece under way is forgotten,
    so that the only difference between runs is the damage the test does). Its complete pieces."""
    data = os.urandom(SIZE)
    url = file_server.add_file("/model.bin", data, throttle_bps=2 * MiB)
    await stop_part_way(url, directory, at_least=4 * MiB)
    state = load_state(directory)
    try:
        complete = [i for i, done in enumerate(state.done) if done == PIECE]
        for index, done in enumerate(state.done):
            if 0 < done < PIECE:
                state.reset(index)
    finally:
        state.close()
    assert len(complete) >= 2, complete
    # A request the stopped run sent just before it closed may still reach the server: let it
    # end (on the closed socket) before counting what the next run costs.
    await asyncio.sleep(0.3)
    while not all(request.done for request in file_server.requests):
        await asyncio.sleep(0.02)
    file_server.add_file("/model.bin", data)  # unthrottled, same bytes and validators
    file_server.reset_log()
    return data, url, complete


def claimed_bytes(directory: Path) -> int:
    state = load_state(directory)
    try:
        return state.bytes_done
    finally:
        state.close()


def assert_repaired(items: list[DownloadProgress], data: bytes, directory: Path) -> None:
    final = items[-1]
    assert final.status is DownloadStatus.COMPLETE, f"{final.error_code}: {final.message}"
    assert hashlib.sha256((directory / "model.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert any("restarting only those pieces" in item.message for item in items), [i.message for i in items]


def report(case: str, file_server, missing: int) -> None:
    print(f"{case}: served {file_server.bytes_sent} bytes; {missing} were missing; one piece is {PIECE}")


def gets_starting_at(file_server, offset: int) -> int:
    return sum(1 for r in file_server.requests_for("/model.bin", "GET") if r.range_start == offset)


# ---- damaged data --------------------------------------------------------------------------

async def test_a_flipped_byte_in_a_finished_piece_is_found_and_only_that_piece_fetched_again(file_server, tmp_path):
    data, url, complete = await whole_pieces_on_disk(file_server, tmp_path)
    bad = complete[1]
    with open(tmp_path / "model.bin.part", "r+b") as part:
        part.seek(bad * PIECE + 12345)
        byte = part.read(1)
        part.seek(bad * PIECE + 12345)
        part.write(bytes([byte[0] ^ 0xFF]))
    missing = SIZE - claimed_bytes(tmp_path)

    items = await collect(url, tmp_path)

    assert_repaired(items, data, tmp_path)
    report("flipped byte", file_server, missing)
    assert gets_starting_at(file_server, bad * PIECE) == 1
    assert file_server.bytes_sent == missing + PIECE  # the bad piece, nothing else already there


async def test_a_truncated_partial_is_found_and_only_the_cut_piece_fetched_again(file_server, tmp_path):
    data, url, complete = await whole_pieces_on_disk(file_server, tmp_path)
    cut = complete[-1]
    os.truncate(tmp_path / "model.bin.part", cut * PIECE + 1000)  # the last claimed piece loses its tail
    missing = SIZE - claimed_bytes(tmp_path)

    items = await collect(url, tmp_path)

    assert_repaired(items, data, tmp_path)
    report("truncated .part", file_server, missing)
    assert gets_starting_at(file_server, cut * PIECE) == 1
    assert file_server.bytes_sent == missing + PIECE


async def test_counters_that_claim_bytes_never_written_are_not_trusted(file_server, tmp_path):
    # What a power cut did before: the counters reached the disk, the data did not.
    data, url, complete = await whole_pieces_on_disk(file_server, tmp_path)
    state = load_state(tmp_path)
    try:
        claimed = next(i for i, done in enumerate(state.done) if done == 0)
        real = data[claimed * PIECE:(claimed + 1) * PIECE]
        state.claim({claimed: (PIECE, crc32c(real))})  # "done", with the right checksum even
    finally:
        state.close()
    missing = SIZE - claimed_bytes(tmp_path)

    items = await collect(url, tmp_path)

    assert_repaired(items, data, tmp_path)
    report("counters claiming done", file_server, missing)
    assert gets_starting_at(file_server, claimed * PIECE) == 1
    assert file_server.bytes_sent == missing + PIECE  # the piece it claimed, fetched once


async def test_a_wrong_source_is_a_digest_mismatch_after_the_pieces_check_out(file_server, tmp_path):
    data = os.urandom(2 * MiB)
    url = file_server.add_file("/model.bin", data)
    wrong = hashlib.sha256(b"something else").hexdigest()

    items = await collect(url, tmp_path, sha256=wrong)

    final = items[-1]
    assert final.status is DownloadStatus.ERROR and final.error_code == "digest_mismatch", final.message
    assert "the source itself is wrong" in final.message
    assert not (tmp_path / "model.bin").exists() and not (tmp_path / "model.bin.part").exists()


# ---- the state file ------------------------------------------------------------------------

async def test_a_torn_state_file_means_starting_over_and_the_message_says_so(file_server, tmp_path):
    data, url, _ = await whole_pieces_on_disk(file_server, tmp_path)
    state_path = tmp_path / "model.bin.part.state"
    raw = bytearray(state_path.read_bytes())
    raw[20] ^= 0xFF  # inside the header: its checksum no longer matches
    state_path.write_bytes(bytes(raw))

    items = await collect(url, tmp_path)

    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    assert any("the resume state of model.bin is unreadable (torn or garbled): starting over from zero"
               in item.message for item in items), [i.message for i in items]
    assert "resuming with" not in items[1].message
    assert file_server.bytes_sent == SIZE


async def test_a_torn_piece_record_costs_only_that_piece(file_server, tmp_path):
    data, url, complete = await whole_pieces_on_disk(file_server, tmp_path)
    state = load_state(tmp_path)
    try:
        at = state._records_at + 16 * complete[0]
    finally:
        state.close()
    state_path = tmp_path / "model.bin.part.state"
    raw = bytearray(state_path.read_bytes())
    raw[at + 2] ^= 0x01  # the record's counter changes, its check does not
    state_path.write_bytes(bytes(raw))
    missing = SIZE - claimed_bytes(tmp_path)  # the torn record already counts as nothing

    items = await collect(url, tmp_path)

    assert_repaired(items, data, tmp_path)
    assert file_server.bytes_sent == missing


@pytest.mark.parametrize("deleted, notice", [
    ("model.bin.part.state", "model.bin.part has no resume state beside it (model.bin.part.state is missing): "
                             "starting over from zero"),
    ("model.bin.part", "the partial data of model.bin is gone (model.bin.part is missing): starting over from zero"),
])
async def test_a_vanished_state_or_partial_means_starting_over_and_the_message_says_so(
        file_server, tmp_path, deleted, notice):
    data, url, _ = await whole_pieces_on_disk(file_server, tmp_path)
    (tmp_path / deleted).unlink()

    items = await collect(url, tmp_path)

    assert items[-1].status is DownloadStatus.COMPLETE, items[-1].message
    assert any(notice in item.message for item in items), [i.message for i in items]
    assert not any("resuming with" in item.message for item in items)
    assert file_server.bytes_sent == SIZE


# ---- space ---------------------------------------------------------------------------------

async def test_the_whole_file_is_reserved_before_the_first_byte(file_server, tmp_path):
    url = file_server.add_file("/model.bin", os.urandom(SIZE), throttle_bps=2 * MiB)
    await stop_part_way(url, tmp_path, at_least=1 * MiB)
    part = tmp_path / "model.bin.part"
    assert part.stat().st_blocks * 512 >= SIZE  # allocated, not a sparse file with holes


async def test_of_two_downloads_that_do_not_fit_together_the_second_fails_at_once(file_server, small_disk):
    first_data, second_data = os.urandom(5 * MiB), os.urandom(5 * MiB)
    first_url = file_server.add_file("/first.bin", first_data, throttle_bps=2 * MiB)
    second_url = file_server.add_file("/second.bin", second_data)

    first = asyncio.create_task(collect(first_url, small_disk))
    while not (small_disk / "first.bin.part").exists():
        await asyncio.sleep(0.01)
    second = await collect(second_url, small_disk)
    first_items = await first

    final = second[-1]
    assert final.status is DownloadStatus.ERROR and final.error_code == "insufficient_space", final.message
    assert final.message.startswith("not enough disk space: need 5.2 MB"), final.message
    assert sum(r.bytes_sent for r in file_server.requests_for("/second.bin", "GET")) == 0
    assert not (small_disk / "second.bin.part").exists()
    assert first_items[-1].status is DownloadStatus.COMPLETE, first_items[-1].message
    assert (small_disk / "first.bin").read_bytes() == first_data


# ---- durability errors ---------------------------------------------------------------------

def test_a_failed_sync_is_an_error_a_person_can_act_on(tmp_path):
    from modelpull._errors import TransferError
    from modelpull.transfer import fsync_directory, write_durably

    with pytest.raises(TransferError) as raised:
        fsync_directory(tmp_path / "gone")
    assert raised.value.code == "disk_error"
    assert str(raised.value).startswith(f"cannot make {tmp_path / 'gone'} durable: no such file or directory")

    with pytest.raises(TransferError) as raised:
        write_durably(tmp_path / "gone" / "manifest", b"{}")
    assert "run the same download again" in str(raised.value)

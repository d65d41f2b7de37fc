"""The transfer engine's lock on a destination (transfer/_lock.py): the kernel's flock, as
filelock (and so huggingface_hub) takes it, without filelock's import on the way."""
from __future__ import annotations

import os
import stat

import filelock
import pytest

from modelpull._errors import TransferError
from modelpull.transfer import _lock
from modelpull.transfer._lock import DestinationLock


def test_a_held_lock_is_refused_to_another_holder_until_released(tmp_path):
    first, second = DestinationLock(tmp_path / ".a.lock"), DestinationLock(tmp_path / ".a.lock")

    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


def test_filelock_and_the_destination_lock_wait_for_each_other(tmp_path):
    path = tmp_path / "blob.lock"  # huggingface_hub takes filelock.FileLock(path, mode=0o664)
    ours, theirs = DestinationLock(path), filelock.FileLock(str(path), mode=0o664)

    assert ours.try_acquire()
    with pytest.raises(filelock.Timeout):
        theirs.acquire(timeout=0)
    ours.release()

    theirs.acquire(timeout=0)
    try:
        assert not ours.try_acquire()
    finally:
        theirs.release()
    assert ours.try_acquire()
    ours.release()


def test_a_new_lock_file_is_group_writable_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        lock = DestinationLock(tmp_path / "sub" / ".b.lock")
        assert lock.try_acquire()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "sub" / ".b.lock").stat().st_mode) == 0o664
    lock.release()


def test_a_lock_file_that_exists_keeps_its_mode(tmp_path):
    victim = tmp_path / "private.key"
    victim.write_bytes(b"secret")
    victim.chmod(0o600)
    os.link(victim, tmp_path / ".c.lock")  # a hard link planted at the lock's name

    lock = DestinationLock(tmp_path / ".c.lock")
    assert lock.try_acquire()
    lock.release()

    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_bytes() == b"secret"


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / ".d.lock").symlink_to(target)

    with pytest.raises(TransferError, match=r"cannot lock .*\.d\.lock") as caught:
        DestinationLock(tmp_path / ".d.lock").try_acquire()

    assert caught.value.code == "disk_error"
    assert not target.exists()


def test_removed_on_release_the_next_holder_locks_the_new_file(tmp_path):
    path = tmp_path / ".e.lock"
    holder, waiter, third = DestinationLock(path), DestinationLock(path), DestinationLock(path)
    assert holder.try_acquire()
    assert not waiter.try_acquire()

    holder.release(remove=True)

    assert not path.exists()
    assert waiter.try_acquire()
    assert path.exists()
    assert not third.try_acquire()
    waiter.release()


def test_a_waiter_that_opened_the_file_its_holder_then_deleted_locks_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / ".f.lock"
    holder, waiter = DestinationLock(path), DestinationLock(path)
    assert holder.try_acquire()
    real_open = _lock._open_lock_file
    opened = []

    def open_then_holder_finishes(lock_path):
        fd = real_open(lock_path)
        if not opened:  # the old file is open: now the holder commits, deletes it and lets go
            holder.release(remove=True)
        opened.append(fd)
        return fd

    monkeypatch.setattr(_lock, "_open_lock_file", open_then_holder_finishes)
    assert waiter.try_acquire()

    assert len(opened) == 2  # the deleted file's flock was not kept
    assert not DestinationLock(path).try_acquire()  # the file at the path is the one held
    waiter.release()

"""Cross-process locks: exclusion, timeouts, release when the holder dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

import safecache
from safecache import _locks

ctx = multiprocessing.get_context("fork")


def _hold(path: str, ready, release) -> None:  # type: ignore[no-untyped-def]
    lock = _locks.FileLock(path)
    lock.acquire()
    ready.set()
    release.wait(60)
    lock.release()


def test_a_lock_held_by_another_process_times_out_as_timeout_error(tmp_path: Path) -> None:
    path = str(tmp_path / "locks" / "x.lock")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(safecache.LockTimeoutError) as info:
        _locks.FileLock(path, timeout=0.1).acquire()
    assert isinstance(info.value, TimeoutError)
    release.set()
    holder.join(30)
    with _locks.FileLock(path, timeout=5):
        pass


def test_the_os_releases_the_lock_of_a_killed_process(tmp_path: Path) -> None:
    path = str(tmp_path / "x.lock")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
    holder.join()
    with _locks.FileLock(path, timeout=5) as lock:
        assert lock.locked
    assert os.path.exists(path)  # lock files are never deleted


def test_two_lock_objects_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    path = str(tmp_path / "x.lock")
    with _locks.FileLock(path):
        with pytest.raises(safecache.LockTimeoutError):
            _locks.FileLock(path, timeout=0.05).acquire()


def test_acquiring_twice_on_one_object_is_a_programming_error(tmp_path: Path) -> None:
    lock = _locks.FileLock(str(tmp_path / "x.lock"))
    with lock:
        with pytest.raises(RuntimeError):
            lock.acquire()

"""OsOps.lock: exclusive and shared locks between real processes, on the real
OS and under the Windows emulator."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from safecache import _osops
from safecache.testing import WindowsOps, inject_errors, windows_semantics

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and the emulator are Linux's")

ctx = multiprocessing.get_context("fork")
FLAGS = os.O_RDWR | os.O_CREAT | _osops.BASE_FLAGS


@pytest.fixture(params=["posix", "windows"])
def semantics(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs on the real OS and under the Windows emulator (forked
    children inherit it)."""
    if request.param == "posix":
        yield "posix"
    else:
        with windows_semantics():
            yield "windows"


def open_lock(path: Path) -> int:
    return _osops.current.open(str(path), FLAGS, 0o666, share_delete=False)


def _hold(path: Path, shared: bool, ready: Any, release: Any) -> None:
    fd = open_lock(path)
    _osops.current.lock(fd, blocking=True, shared=shared)
    ready.set()
    release.wait(60)
    _osops.current.unlock(fd)
    _osops.current.close(fd)


class Holder:
    """A forked process holding a lock on ``path`` until released or killed."""

    def __init__(self, path: Path, *, shared: bool) -> None:
        self.ready, self.release = ctx.Event(), ctx.Event()
        self.process = ctx.Process(target=_hold, args=(path, shared, self.ready, self.release))
        self.process.start()
        assert self.ready.wait(30), "the holder never got its lock"

    def stop(self) -> None:
        self.release.set()
        self.process.join(30)
        assert self.process.exitcode == 0

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.process.join(30)
        assert self.process.exitcode == -signal.SIGKILL


def try_lock(path: Path, *, shared: bool) -> bool:
    """Whether a non-blocking lock can be had now (then released)."""
    fd = open_lock(path)
    try:
        try:
            _osops.current.lock(fd, blocking=False, shared=shared)
        except BlockingIOError:
            return False
        _osops.current.unlock(fd)
        return True
    finally:
        _osops.current.close(fd)


def test_shared_locks_coexist_across_processes(tmp_path: Path, semantics: str) -> None:
    path = tmp_path / "x.lock"
    first, second = Holder(path, shared=True), Holder(path, shared=True)  # both hold at once
    try:
        assert try_lock(path, shared=True)
    finally:
        first.stop()
        second.stop()


def test_an_exclusive_lock_is_refused_while_shared_holders_hold(tmp_path: Path, semantics: str) -> None:
    path = tmp_path / "x.lock"
    holder = Holder(path, shared=True)
    try:
        assert not try_lock(path, shared=False)
    finally:
        holder.stop()
    assert try_lock(path, shared=False)


def test_a_shared_lock_is_refused_while_an_exclusive_holder_holds(tmp_path: Path, semantics: str) -> None:
    path = tmp_path / "x.lock"
    holder = Holder(path, shared=False)
    try:
        assert not try_lock(path, shared=True)
        assert not try_lock(path, shared=False)
    finally:
        holder.stop()
    assert try_lock(path, shared=True)


def test_non_blocking_acquisition_raises_blocking_io_error(tmp_path: Path, semantics: str) -> None:
    path = tmp_path / "x.lock"
    holder = Holder(path, shared=False)
    fd = open_lock(path)
    try:
        with pytest.raises(BlockingIOError) as info:
            _osops.current.lock(fd, blocking=False, shared=True)
        assert info.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    finally:
        _osops.current.close(fd)
        holder.stop()


def test_a_blocking_lock_waits_until_the_holder_releases(tmp_path: Path, semantics: str) -> None:
    path = tmp_path / "x.lock"
    holder = Holder(path, shared=False)
    fd = open_lock(path)
    acquired = threading.Event()

    def wait_for_it() -> None:
        _osops.current.lock(fd, blocking=True, shared=True)
        acquired.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    try:
        assert not acquired.wait(0.2)  # still held by the other process
        holder.stop()
        waiter.join(30)
        assert acquired.is_set()
    finally:
        holder.release.set()
        waiter.join(30)
        _osops.current.close(fd)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "exclusive"])
def test_the_os_releases_the_lock_of_a_killed_holder(tmp_path: Path, semantics: str, shared: bool) -> None:
    path = tmp_path / "x.lock"
    holder = Holder(path, shared=shared)
    assert not try_lock(path, shared=False)
    holder.kill()
    assert try_lock(path, shared=False)


def test_two_descriptors_in_one_process_exclude_each_other(tmp_path: Path, semantics: str) -> None:
    ops = _osops.current
    a, b = open_lock(tmp_path / "x.lock"), open_lock(tmp_path / "x.lock")
    try:
        ops.lock(a, blocking=False, shared=True)
        ops.lock(b, blocking=False, shared=True)
        ops.unlock(b)
        with pytest.raises(BlockingIOError):
            ops.lock(b, blocking=False)
        ops.unlock(a)
        ops.lock(b, blocking=False)
    finally:
        ops.close(a)
        ops.close(b)


def test_lock_faults_can_be_injected_with_shared(tmp_path: Path) -> None:
    fd = open_lock(tmp_path / "x.lock")
    try:
        with inject_errors(errno.ENOLCK, ops="lock") as faults, pytest.raises(OSError) as info:
            _osops.current.lock(fd, blocking=False, shared=True)
        assert info.value.errno == errno.ENOLCK and faults.fired == 1
    finally:
        os.close(fd)


# -- the emulator's byte-range lock (LockFileEx on byte 0) ---------------------------------------


def test_windows_shared_lock_blocks_writes_of_byte_0_by_other_handles_not_reads(tmp_path: Path) -> None:
    path = str(tmp_path / "x.lock")
    with open(path, "wb") as f:
        f.write(b"\0\0")
    with windows_semantics() as win:
        assert isinstance(win, WindowsOps)
        holder = win.open(path, os.O_RDWR, share_delete=False)
        other = win.open(path, os.O_RDWR, share_delete=False)
        try:
            win.lock(holder, blocking=False, shared=True)
            assert win.pread(other, 1, 0) == b"\0"  # all may read a shared region
            with pytest.raises(PermissionError) as info:
                win.pwrite(other, b"x", 0)
            assert getattr(info.value, "emulated_winerror", None) == 33
            assert win.pwrite(other, b"x", 1) == 1  # outside the locked byte
            win.unlock(holder)
            assert win.pwrite(other, b"x", 0) == 1
        finally:
            win.close(holder)
            win.close(other)


def test_windows_exclusive_lock_blocks_reads_of_byte_0_by_other_handles(tmp_path: Path) -> None:
    path = str(tmp_path / "x.lock")
    with open(path, "wb") as f:
        f.write(b"\0")
    with windows_semantics() as win:
        holder = win.open(path, os.O_RDWR, share_delete=False)
        other = win.open(path, os.O_RDONLY)
        try:
            win.lock(holder, blocking=False)
            with pytest.raises(PermissionError):
                win.pread(other, 1, 0)
        finally:
            win.close(holder)
            win.close(other)


def test_the_windows_module_is_never_imported_here(tmp_path: Path) -> None:
    assert try_lock(tmp_path / "x.lock", shared=True)
    assert "safecache._win32" not in sys.modules

"""Tests of the Windows emulator's handle rules beyond delete access: share
modes other than delete, directory handles, delete-pending names in
listings, and byte-range locks (docs/testing.md, "The rules").

Handles held by "another program" are :func:`holding` (which counts like a
handle of another process) or a forked child; synchronisation is by pipes.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import multiprocessing.connection
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from safecache import _osops
from safecache.testing import WindowsOps, holding, windows_semantics

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the emulator needs Linux OFD locks")

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def win() -> Iterator[WindowsOps]:
    with windows_semantics() as ops:
        yield ops


def make(path: Path, data: bytes = b"data") -> str:
    path.write_bytes(data)
    return str(path)


def winerror(exc: pytest.ExceptionInfo[BaseException]) -> int | None:
    return getattr(exc.value, "winerror", None)


def underneath(exc: pytest.ExceptionInfo[BaseException]) -> int | None:
    return getattr(exc.value, "emulated_winerror", None)


def _child(action: Callable[[], object], conn: multiprocessing.connection.Connection) -> None:
    held = action()
    conn.send("held")
    conn.recv()
    del held


@contextmanager
def in_child(action: Callable[[], object]) -> Iterator[None]:
    """A forked child runs ``action`` and keeps its result alive inside the block."""
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_child, args=(action, child), daemon=True)
    proc.start()
    try:
        assert parent.recv() == "held"
        yield
    finally:
        parent.send("release")
        proc.join()
        assert proc.exitcode == 0


def held(path: str, **modes: bool) -> object:
    """``holding(path)`` entered, for a child to keep until it exits."""
    handle = holding(path, **modes)
    handle.__enter__()
    return handle


# -- share modes other than delete ------------------------------------------------------------


def test_opening_for_writing_a_file_held_with_read_sharing_only_is_a_sharing_violation(
    tmp_path: Path, win: WindowsOps
) -> None:
    path = make(tmp_path / "f")
    with holding(path, share_write=False):
        with pytest.raises(PermissionError) as exc:
            win.open(path, os.O_WRONLY)
        fd = win.open(path, os.O_RDONLY)  # reading is shared
        win.close(fd)
    assert underneath(exc) == 32 and winerror(exc) is None  # os.open is the C runtime's _wopen
    win.close(win.open(path, os.O_WRONLY))


def test_opening_for_reading_a_file_held_without_read_sharing_is_a_sharing_violation(
    tmp_path: Path, win: WindowsOps
) -> None:
    path = make(tmp_path / "f")
    with holding(path, share_read=False, share_write=False):
        with pytest.raises(PermissionError) as crt:
            win.open(path, os.O_RDONLY, share_delete=False)
        with pytest.raises(PermissionError) as shared:
            win.open(path, _osops.READ_FLAGS)  # safecache's reader: CreateFileW
    assert underneath(crt) == 32 and winerror(shared) == 32


def test_a_holder_that_does_not_share_write_waits_for_the_writers(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "f")
    fd = win.open(path, os.O_WRONLY)
    try:
        with pytest.raises(PermissionError) as exc, holding(path, share_write=False):
            pass
    finally:
        win.close(fd)
    assert winerror(exc) == 32
    with holding(path, share_write=False):
        pass


def test_a_refused_truncating_open_leaves_the_file_as_it_was(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "f", b"precious")
    with holding(path, share_write=False), pytest.raises(PermissionError):
        win.open(path, os.O_WRONLY | os.O_TRUNC)
    assert Path(path).read_bytes() == b"precious"
    win.close(win.open(path, os.O_WRONLY | os.O_TRUNC))
    assert Path(path).read_bytes() == b""


def test_share_modes_count_across_processes(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "f")

    with in_child(lambda: held(path, share_write=False)), pytest.raises(PermissionError) as exc:
        win.open(path, os.O_RDWR)
    assert underneath(exc) == 32


# -- directory handles ----------------------------------------------------------------------------


def test_removing_a_directory_that_is_held_open_is_a_sharing_violation(tmp_path: Path, win: WindowsOps) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    with holding(str(directory)):  # Explorer, or a shell whose current directory it is
        with pytest.raises(PermissionError) as exc:
            win.rmdir(str(directory))
        assert directory.is_dir()
    assert winerror(exc) == 32
    win.rmdir(str(directory))


def test_removing_a_directory_held_with_share_delete_succeeds(tmp_path: Path, win: WindowsOps) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    with holding(str(directory), share_delete=True):
        win.rmdir(str(directory))
    assert not directory.exists()


def test_renaming_a_directory_that_is_held_open_is_a_sharing_violation(tmp_path: Path, win: WindowsOps) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    with in_child(lambda: held(str(directory))), pytest.raises(PermissionError) as exc:
        win.rename(str(directory), str(tmp_path / "e"))
    assert winerror(exc) == 32


def test_renaming_a_directory_with_a_subdirectory_held_open_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    with holding(str(tmp_path / "d" / "sub")), pytest.raises(PermissionError) as exc:
        win.rename(str(tmp_path / "d"), str(tmp_path / "e"))
    assert winerror(exc) == 5


def test_opening_a_directory_through_the_c_runtime_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    with pytest.raises(PermissionError) as exc:
        win.open(str(tmp_path), os.O_RDONLY, share_delete=False)  # os.open, open(): _wopen
    assert underneath(exc) == 5 and winerror(exc) is None


def test_safecache_own_directory_opens_are_allowed(tmp_path: Path, win: WindowsOps) -> None:
    """safecache opens directories only on POSIX (fsync, descriptor walks)."""
    for fd in (win.open(str(tmp_path), os.O_RDONLY), win.open(str(tmp_path), _osops.DIR_FLAGS, share_delete=False)):
        win.close(fd)


# -- delete-pending names in listings (posix_delete=False) ------------------------------------------


def test_a_delete_pending_file_is_listed_under_its_own_name(tmp_path: Path) -> None:
    path = make(tmp_path / "f")
    with windows_semantics(posix_delete=False) as ops, holding(path, share_delete=True):
        ops.unlink(path)
        assert ops.listdir(str(tmp_path)) == ["f"]
        with ops.scandir(str(tmp_path)) as entries:
            listed = [(entry.name, entry.path, entry.is_file()) for entry in entries]
        assert listed == [("f", path, True)]


def test_stat_of_a_delete_pending_name_finds_its_directory_entry(tmp_path: Path) -> None:
    path = make(tmp_path / "f", b"four")
    with windows_semantics(posix_delete=False) as ops, holding(path, share_delete=True):
        ops.unlink(path)
        assert ops.stat(path).st_size == 4
        with pytest.raises(PermissionError) as exc:
            ops.open(path, _osops.READ_FLAGS)
    assert winerror(exc) == 5


def test_a_delete_pending_file_leaves_the_listing_when_its_last_handle_closes(tmp_path: Path) -> None:
    path = make(tmp_path / "f")
    with windows_semantics(posix_delete=False) as ops:
        with holding(path, share_delete=True):
            ops.unlink(path)
        assert ops.listdir(str(tmp_path)) == []
        assert os.listdir(tmp_path) == []  # and the hidden file is gone from the disk
        with pytest.raises(FileNotFoundError):
            ops.stat(path)


# -- byte-range locks --------------------------------------------------------------------------------


def test_an_exclusive_lock_through_a_read_only_descriptor_refuses_other_handles_reads(
    tmp_path: Path, win: WindowsOps
) -> None:
    path = make(tmp_path / "lock", b"\0")
    holder = win.open(path, os.O_RDONLY, share_delete=False)
    other = win.open(path, os.O_RDONLY)
    try:
        win.lock(holder, blocking=False)
        with pytest.raises(PermissionError) as exc:
            win.pread(other, 1, 0)
        assert win.pread(holder, 1, 0) == b"\0"
    finally:
        win.close(holder)
        win.close(other)
    assert underneath(exc) == 33


def test_the_holder_of_a_shared_lock_may_not_write_the_range_either(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "lock", b"\0")
    holder = win.open(path, os.O_RDWR, share_delete=False)
    try:
        win.lock(holder, blocking=False, shared=True)
        assert win.pread(holder, 1, 0) == b"\0"
        with pytest.raises(PermissionError) as exc:
            win.pwrite(holder, b"x", 0)
        win.unlock(holder)
        win.pwrite(holder, b"x", 0)
    finally:
        win.close(holder)
    assert underneath(exc) == 33


def _record_locked(path: str, start: int, length: int, kind: int) -> int:
    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, kind | fcntl.LOCK_NB, length, start)
    return fd


def test_a_record_lock_of_another_process_refuses_access_to_its_range(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "data", b"0123456789")
    fd = win.open(path, os.O_RDWR)
    try:
        with in_child(lambda: _record_locked(path, 2, 3, fcntl.LOCK_EX)):
            with pytest.raises(PermissionError) as read:
                win.pread(fd, 4, 0)
            with pytest.raises(PermissionError) as written:
                win.pwrite(fd, b"x", 4)
            assert win.pread(fd, 2, 0) == b"01" and win.pread(fd, 5, 5) == b"56789"
    finally:
        win.close(fd)
    assert underneath(read) == 33 and underneath(written) == 33


def test_a_record_lock_of_this_process_counts_as_the_handles_own(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "data", b"0123456789")
    locker = _record_locked(path, 0, 10, fcntl.LOCK_EX)
    fd = win.open(path, os.O_RDWR)
    try:
        assert win.pread(fd, 10, 0) == b"0123456789"
    finally:
        win.close(fd)
        os.close(locker)


def test_a_whole_file_record_lock_neither_hides_nor_fakes_open_handles(tmp_path: Path, win: WindowsOps) -> None:
    """A lock "to the end of the file" covers the emulator's records too;
    the handle checks look past it."""
    held, free = make(tmp_path / "held"), make(tmp_path / "free")

    def lock_both() -> list[int]:
        fds = [win.open(held, os.O_RDONLY, share_delete=False)]  # a handle, and a read lock on everything
        for name in (held, free):
            fd = os.open(name, os.O_RDONLY)
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fds.append(fd)
        return fds

    with in_child(lock_both):
        with pytest.raises(PermissionError) as exc:
            win.unlink(held)
        win.unlink(free)
    assert winerror(exc) == 32

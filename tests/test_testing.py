"""Tests of safecache.testing: the Windows emulator and fault injection.

The cross-process rules are tested with real processes (forked with
multiprocessing, or a fresh interpreter): a child opens a file through the
emulator and holds it until told to let go; the parent's operations must see
that handle.  Synchronisation is by pipes, never by sleeping.
"""

from __future__ import annotations

import errno
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

import safecache
import safecache.testing as testing
from safecache import _osops
from safecache.testing import (
    FaultOps,
    WinError,
    WindowsOps,
    disable_windows_semantics,
    enable_windows_semantics,
    holding,
    inject_errors,
    make_oserror,
    windows_semantics,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the emulator needs Linux OFD locks")

FORK = multiprocessing.get_context("fork")
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


@pytest.fixture(autouse=True)
def _restore_ops() -> Iterator[None]:
    """A failing test must not leave its ops installed for the next one."""
    before = _osops.current
    yield
    assert _osops.current is before, "a test left its ops installed"
    _osops.current = before


@pytest.fixture
def win() -> Iterator[WindowsOps]:
    with windows_semantics() as ops:
        yield ops


def make(path: Path | str, data: bytes = b"data") -> str:
    """Create a file through the ops in force; return its name."""
    ops = _osops.current
    fd = ops.open(str(path), CREATE, 0o666)
    try:
        ops.write(fd, data)
    finally:
        ops.close(fd)
    return str(path)


def winerror(exc: pytest.ExceptionInfo[BaseException]) -> int | None:
    """The ``winerror`` CPython on Windows would set (None where it drops it)."""
    return getattr(exc.value, "winerror", None)


def underneath(exc: pytest.ExceptionInfo[BaseException]) -> int | None:
    """The Windows error code behind an emulated error, even without ``winerror``."""
    return getattr(exc.value, "emulated_winerror", None)


# -- a child process that holds a file open ---------------------------------


def _hold(path: str, flags: int, share_delete: bool, conn: multiprocessing.connection.Connection) -> None:
    ops = _osops.current  # inherited from the parent by fork: the WindowsOps
    fd = ops.open(path, flags, 0o666, share_delete=share_delete)
    conn.send("held")
    conn.recv()  # until the parent says "release" (or kills us)
    ops.close(fd)
    conn.send("closed")


@contextmanager
def held_by_child(
    path: str, *, share_delete: bool = False, flags: int = os.O_RDONLY
) -> Iterator[multiprocessing.process.BaseProcess]:
    """A forked child holds ``path`` open inside the block."""
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_hold, args=(path, flags, share_delete, child), daemon=True)
    proc.start()
    try:
        assert parent.recv() == "held"
        yield proc
    finally:
        if proc.is_alive():
            try:
                parent.send("release")
                parent.recv()
            except (OSError, EOFError):  # killed by the test
                pass
        proc.join()
        parent.close()
        child.close()


# -- the lock mechanism -------------------------------------------------------


def test_flock_struct_matches_the_kernel(tmp_path: Path) -> None:
    """The struct layout is right if a lock set through one descriptor is
    reported, with its offset, through another."""
    import fcntl

    path = tmp_path / "f"
    path.write_bytes(b"")
    a = os.open(path, os.O_RDONLY)
    b = os.open(path, os.O_RDONLY)
    try:
        assert testing._FLOCK.size == 32
        assert testing._ofd_setlk(a, fcntl.F_RDLCK, testing._HANDLES + 12345, 1)
        assert testing._ofd_conflict(b, testing._HANDLES, testing._SPAN)
        assert not testing._ofd_conflict(a, testing._HANDLES, testing._SPAN)  # own lock
        answer = fcntl.fcntl(
            b, fcntl.F_OFD_GETLK, testing._FLOCK.pack(fcntl.F_WRLCK, 0, testing._HANDLES, testing._SPAN, 0)
        )
        assert testing._FLOCK.unpack(answer)[2] == testing._HANDLES + 12345
    finally:
        os.close(a)
        os.close(b)


# -- across processes -----------------------------------------------------------


def test_replace_onto_a_file_another_process_has_open_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target"), make(tmp_path / "new")
    with held_by_child(target):
        with pytest.raises(PermissionError) as exc:
            _osops.current.replace(new, target)
    assert winerror(exc) == 5
    assert Path(target).read_bytes() == b"data" and Path(new).exists()


def test_replace_onto_a_file_open_with_share_delete_is_still_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target"), make(tmp_path / "new")
    with held_by_child(target, share_delete=True):
        with pytest.raises(PermissionError) as exc:
            _osops.current.replace(new, target)
    assert winerror(exc) == 5


def test_unlink_of_a_file_another_process_has_open_is_a_sharing_violation(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    with held_by_child(target):
        with pytest.raises(PermissionError) as exc:
            _osops.current.unlink(target)
    assert winerror(exc) == 32
    assert Path(target).exists()


def test_unlink_of_a_file_open_with_share_delete_succeeds(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    with held_by_child(target, share_delete=True):
        _osops.current.unlink(target)
        assert not Path(target).exists()  # posix_delete: the name goes at once


def test_a_write_handle_in_another_process_counts(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target"), make(tmp_path / "new")
    with held_by_child(target, flags=os.O_WRONLY):
        with pytest.raises(PermissionError) as exc:
            _osops.current.replace(new, target)
    assert winerror(exc) == 5


def test_rename_of_a_file_another_process_has_open_is_a_sharing_violation(tmp_path: Path, win: WindowsOps) -> None:
    src = make(tmp_path / "src")
    with held_by_child(src):
        with pytest.raises(PermissionError) as exc:
            _osops.current.rename(src, str(tmp_path / "dst"))
    assert winerror(exc) == 32


def test_replace_succeeds_once_the_other_process_closes_the_file(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target", b"old"), make(tmp_path / "new", b"new")
    with held_by_child(target) as proc:
        with pytest.raises(PermissionError):
            _osops.current.replace(new, target)
    assert proc.exitcode == 0
    _osops.current.replace(new, target)
    assert Path(target).read_bytes() == b"new"


def test_replace_succeeds_once_the_other_process_is_killed(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target", b"old"), make(tmp_path / "new", b"new")
    with held_by_child(target) as proc:
        with pytest.raises(PermissionError):
            _osops.current.replace(new, target)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()  # the kernel closed its descriptors before it became waitable
        assert proc.exitcode == -signal.SIGKILL
        _osops.current.replace(new, target)
    assert Path(target).read_bytes() == b"new"


def test_posix_rename_replaces_a_target_whose_holder_shares_delete(tmp_path: Path) -> None:
    with windows_semantics(posix_rename=True):
        target, new = make(tmp_path / "target", b"old"), make(tmp_path / "new", b"new")
        with held_by_child(target, share_delete=True):
            _osops.current.replace(new, target)
    assert Path(target).read_bytes() == b"new"


def test_posix_rename_still_refuses_a_holder_without_share_delete(tmp_path: Path) -> None:
    with windows_semantics(posix_rename=True):
        target, new = make(tmp_path / "target"), make(tmp_path / "new")
        with held_by_child(target):
            with pytest.raises(PermissionError) as exc:
                _osops.current.replace(new, target)
    assert winerror(exc) == 32


def test_a_spawned_interpreter_enables_the_emulator_itself(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target"), make(tmp_path / "new")
    script = textwrap.dedent(
        """
        import os, sys
        from safecache import _osops
        from safecache.testing import enable_windows_semantics
        ops = enable_windows_semantics()
        fd = ops.open(sys.argv[1], os.O_RDONLY, share_delete=False)
        print("held", flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        ops.close(fd)
        """
    )
    src_dir = os.path.dirname(os.path.dirname(os.path.abspath(safecache.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src_dir, os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(
        [sys.executable, "-c", script, target], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with pytest.raises(PermissionError) as exc:
            _osops.current.replace(new, target)
        assert winerror(exc) == 5
    finally:
        child.communicate()
    assert child.returncode == 0
    _osops.current.replace(new, target)


# -- handles in one process -------------------------------------------------------


def test_a_second_handle_in_the_same_process_counts(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    fd = win.open(target, os.O_RDONLY, share_delete=False)
    try:
        with pytest.raises(PermissionError) as exc:
            win.unlink(target)
        assert winerror(exc) == 32
    finally:
        win.close(fd)
    win.unlink(target)
    assert not Path(target).exists()


def test_a_file_nobody_holds_can_be_replaced_and_deleted(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target", b"old"), make(tmp_path / "new", b"new")
    win.replace(new, target)
    assert Path(target).read_bytes() == b"new"
    win.unlink(target)
    assert not Path(target).exists()


def test_a_reader_that_shares_delete_does_not_block_deletion(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    fd = win.open(target, _osops.READ_FLAGS, share_delete=True)
    try:
        win.unlink(target)
        assert win.read(fd, 10) == b"data"  # the open handle still reads
    finally:
        win.close(fd)


def test_share_delete_is_ignored_for_a_write_open(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    fd = win.open(target, os.O_RDWR, share_delete=True)
    try:
        with pytest.raises(PermissionError) as exc:
            win.unlink(target)
        assert winerror(exc) == 32
    finally:
        win.close(fd)


def test_the_source_of_a_replace_must_not_be_held_without_share_delete(tmp_path: Path, win: WindowsOps) -> None:
    src, dst = make(tmp_path / "src"), str(tmp_path / "dst")
    fd = win.open(src, os.O_RDONLY, share_delete=False)
    try:
        with pytest.raises(PermissionError) as exc:
            win.replace(src, dst)
        assert winerror(exc) == 32
        assert exc.value.filename == src and exc.value.filename2 == dst
    finally:
        win.close(fd)


def test_a_handle_on_one_hard_link_blocks_deleting_the_other(tmp_path: Path, win: WindowsOps) -> None:
    a = make(tmp_path / "a")
    b = str(tmp_path / "b")
    win.link(a, b)
    with holding(a):
        with pytest.raises(PermissionError) as exc:
            win.unlink(b)
    assert winerror(exc) == 32


def test_holding_models_another_program_holding_the_file(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target"), make(tmp_path / "new")
    with holding(target, share_delete=True):
        with pytest.raises(PermissionError) as exc:
            win.replace(new, target)
        assert winerror(exc) == 5
        win.unlink(new)  # another file is unaffected


# -- attributes and names -----------------------------------------------------------


def test_deleting_a_read_only_file_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    win.chmod(target, 0o444)
    with pytest.raises(PermissionError) as exc:
        win.unlink(target)
    assert winerror(exc) == 5
    assert Path(target).exists()


def test_replacing_a_read_only_file_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    target, new = make(tmp_path / "target"), make(tmp_path / "new")
    win.chmod(target, 0o444)
    with pytest.raises(PermissionError) as exc:
        win.replace(new, target)
    assert winerror(exc) == 5


def test_opening_a_read_only_file_for_writing_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    win.chmod(target, 0o444)
    with pytest.raises(PermissionError) as exc:
        win.open(target, os.O_WRONLY | os.O_TRUNC)
    assert underneath(exc) == 5
    assert winerror(exc) is None  # os.open is _wopen: the C runtime keeps only the errno
    assert Path(target).read_bytes() == b"data"  # not truncated


def test_renaming_a_read_only_file_is_allowed(tmp_path: Path, win: WindowsOps) -> None:
    src = make(tmp_path / "src")
    win.chmod(src, 0o444)
    win.rename(src, str(tmp_path / "dst"))
    assert (tmp_path / "dst").exists()


def test_chmod_changes_only_the_write_bit(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    os.chmod(target, 0o640)
    win.chmod(target, 0o000)  # Windows: read-only; reading is still allowed
    assert os.stat(target).st_mode & 0o777 == 0o440
    win.chmod(target, 0o200)
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_exclusive_create_of_an_existing_name_raises_error_80(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    with pytest.raises(FileExistsError) as exc:
        win.open(target, CREATE)
    assert underneath(exc) == 80
    assert winerror(exc) is None and exc.value.strerror == os.strerror(errno.EEXIST)


def test_a_share_delete_open_reports_errors_like_createfilew(tmp_path: Path, win: WindowsOps) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        win.open(str(tmp_path / "missing"), os.O_RDONLY, share_delete=True)
    with pytest.raises(FileNotFoundError) as missing_dir:
        win.open(str(tmp_path / "no-dir" / "missing"), os.O_RDONLY, share_delete=True)
    with pytest.raises(FileNotFoundError) as via_crt:
        win.open(str(tmp_path / "missing"), os.O_RDONLY, share_delete=False)
    assert winerror(missing) == 2 and winerror(missing_dir) == 3
    assert winerror(via_crt) is None


def test_rename_onto_an_existing_file_raises_error_183(tmp_path: Path, win: WindowsOps) -> None:
    src, dst = make(tmp_path / "src", b"src"), make(tmp_path / "dst", b"dst")
    with pytest.raises(FileExistsError) as exc:
        win.rename(src, dst)
    assert winerror(exc) == 183
    assert Path(dst).read_bytes() == b"dst"


def test_rename_onto_an_empty_directory_raises_error_183(tmp_path: Path, win: WindowsOps) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError) as exc:
        win.rename(str(tmp_path / "a"), str(tmp_path / "b"))
    assert winerror(exc) == 183


def test_renaming_a_directory_with_an_open_file_inside_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    inner = make(tmp_path / "d" / "sub" / "f")
    with held_by_child(inner):
        with pytest.raises(PermissionError) as exc:
            win.rename(str(tmp_path / "d"), str(tmp_path / "e"))
    assert winerror(exc) == 5
    win.rename(str(tmp_path / "d"), str(tmp_path / "e"))


def test_replace_onto_a_directory_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    src = make(tmp_path / "src")
    (tmp_path / "d").mkdir()
    with pytest.raises(PermissionError) as exc:
        win.replace(src, str(tmp_path / "d"))
    assert winerror(exc) == 5


def test_link_onto_an_existing_name_raises_error_183(tmp_path: Path, win: WindowsOps) -> None:
    src, dst = make(tmp_path / "src"), make(tmp_path / "dst")
    with pytest.raises(FileExistsError) as exc:
        win.link(src, dst)
    assert winerror(exc) == 183


def test_without_hardlinks_link_fails_with_error_1(tmp_path: Path) -> None:
    with windows_semantics(hardlinks=False) as ops:
        src = make(tmp_path / "src")
        with pytest.raises(OSError) as exc:
            ops.link(src, str(tmp_path / "dst"))
    assert winerror(exc) == 1 and exc.value.errno == errno.EINVAL  # as PC/errmap.h maps it
    assert not (tmp_path / "dst").exists()


def test_mkdir_of_an_existing_name_raises_error_183(tmp_path: Path, win: WindowsOps) -> None:
    with pytest.raises(FileExistsError) as exc:
        win.mkdir(str(tmp_path))
    assert winerror(exc) == 183


def test_rmdir_of_a_non_empty_directory_raises_error_145(tmp_path: Path, win: WindowsOps) -> None:
    make(tmp_path / "f")
    with pytest.raises(OSError) as exc:
        win.rmdir(str(tmp_path))
    assert winerror(exc) == 145 and exc.value.errno == errno.ENOTEMPTY
    assert not isinstance(exc.value, PermissionError)


def test_unlink_of_a_directory_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(PermissionError) as exc:
        win.unlink(str(tmp_path / "d"))
    assert winerror(exc) == 5


def test_symlink_needs_a_privilege_by_default(tmp_path: Path, win: WindowsOps) -> None:
    with pytest.raises(OSError) as exc:
        win.symlink("target", str(tmp_path / "link"))
    assert winerror(exc) == 1314
    assert not os.path.lexists(tmp_path / "link")


def test_symlink_works_when_enabled(tmp_path: Path) -> None:
    with windows_semantics(symlinks=True) as ops:
        ops.symlink("target", str(tmp_path / "link"))
    assert os.readlink(tmp_path / "link") == "target"


@pytest.mark.parametrize("name", ["a:b", "a?b", "a\\b", "CON", "nul.txt", "Com1", "trailing.", "trailing "])
def test_names_windows_cannot_hold_are_refused(tmp_path: Path, win: WindowsOps, name: str) -> None:
    with pytest.raises(OSError) as exc:
        win.mkdir(str(tmp_path / name))
    assert winerror(exc) == 123 and exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as open_exc:
        win.open(str(tmp_path / name), CREATE)
    assert underneath(open_exc) == 123 and open_exc.value.errno == errno.EINVAL
    assert not os.path.lexists(tmp_path / name)


def test_strict_names_can_be_turned_off(tmp_path: Path) -> None:
    with windows_semantics(strict_names=False):
        make(tmp_path / "a:b")
    assert (tmp_path / "a:b").exists()


# -- byte-range locks ------------------------------------------------------------------


def test_a_held_lock_makes_reads_through_other_handles_fail_with_33(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "lock", b"\0")
    holder = win.open(path, os.O_RDWR, share_delete=False)
    other = win.open(path, os.O_RDONLY)
    try:
        win.lock(holder, blocking=False)
        with pytest.raises(PermissionError) as exc:
            win.pread(other, 1, 0)
        assert underneath(exc) == 33 and winerror(exc) is None  # os.read is the C runtime's _read
        assert win.pread(holder, 1, 0) == b"\0"  # the holder's own handle reads
        win.unlock(holder)
        assert win.pread(other, 1, 0) == b"\0"
    finally:
        win.close(holder)
        win.close(other)


def test_lock_is_still_exclusive(tmp_path: Path, win: WindowsOps) -> None:
    path = make(tmp_path / "lock")
    a = win.open(path, os.O_RDWR, share_delete=False)
    b = win.open(path, os.O_RDWR, share_delete=False)
    try:
        win.lock(a, blocking=False)
        with pytest.raises(BlockingIOError):
            win.lock(b, blocking=False)
    finally:
        win.close(a)
        win.close(b)


# -- classic delete (posix_delete=False) ----------------------------------------------


def test_classic_delete_leaves_the_name_pending_while_a_handle_is_open(tmp_path: Path) -> None:
    with windows_semantics(posix_delete=False) as ops:
        target = make(tmp_path / "target")
        fd = ops.open(target, os.O_RDONLY, share_delete=True)
        try:
            ops.unlink(target)
            attempts: list[Callable[[], int]] = [
                lambda: ops.open(target, CREATE),
                lambda: ops.open(target, os.O_RDONLY),
            ]
            for attempt in attempts:
                with pytest.raises(PermissionError) as exc:
                    attempt()
                assert underneath(exc) == 5
            with pytest.raises(PermissionError) as mkdir_exc:
                ops.mkdir(target)
            assert winerror(mkdir_exc) == 5
            with pytest.raises(OSError) as rmdir_exc:
                ops.rmdir(str(tmp_path))
            assert winerror(rmdir_exc) == 145
        finally:
            ops.close(fd)
        make(target)  # the last handle closed: the name is free again
        ops.unlink(target)
        ops.rmdir(str(tmp_path))
    assert not tmp_path.exists()


def test_classic_delete_removes_an_unopened_file_at_once(tmp_path: Path) -> None:
    with windows_semantics(posix_delete=False) as ops:
        target = make(tmp_path / "target")
        ops.unlink(target)
    assert os.listdir(tmp_path) == []


# -- pending deletes and ACL denials: the NT status of an open's error 5 ---------------


def test_opening_a_delete_pending_name_is_5_with_status_delete_pending(tmp_path: Path) -> None:
    """As safecache's Windows open reports it (CreateFileW, then
    RtlGetLastNtStatus); the C runtime's open keeps neither code."""
    with windows_semantics(posix_delete=False) as ops:
        target = make(tmp_path / "target")
        with holding(target, share_delete=True):
            ops.unlink(target)
            with pytest.raises(PermissionError) as shared:
                ops.open(target, os.O_RDONLY, share_delete=True)
            with pytest.raises(PermissionError) as crt:
                ops.open(target, os.O_RDONLY, share_delete=False)
        assert winerror(shared) == 5 and shared.value.ntstatus == testing.STATUS_DELETE_PENDING  # type: ignore[attr-defined]
        assert winerror(crt) is None and not hasattr(crt.value, "ntstatus") and underneath(crt) == 5
        with pytest.raises(FileNotFoundError):  # the last handle closed: the name is gone
            ops.open(target, os.O_RDONLY)


def test_with_posix_delete_a_deleted_name_is_gone_at_once(tmp_path: Path, win: WindowsOps) -> None:
    """Windows 10 1903+ on NTFS: no pending delete, even while a handle is open."""
    target = make(tmp_path / "target")
    with holding(target, share_delete=True):
        win.unlink(target)
        with pytest.raises(FileNotFoundError) as gone:
            win.open(target, os.O_RDONLY)
    assert winerror(gone) == 2


def test_an_acl_denied_file_refuses_every_open_with_status_access_denied(tmp_path: Path) -> None:
    target, other = make(tmp_path / "target"), make(tmp_path / "other")
    with windows_semantics(acl_denied=[target]) as ops:
        with pytest.raises(PermissionError) as shared:
            ops.open(target, os.O_RDONLY)
        with pytest.raises(PermissionError) as writing:
            ops.open(target, os.O_RDWR)
        ops.close(ops.open(other, os.O_RDONLY))  # only the path named
    assert winerror(shared) == 5 and shared.value.ntstatus == testing.STATUS_ACCESS_DENIED  # type: ignore[attr-defined]
    assert winerror(writing) is None and underneath(writing) == 5  # through the C runtime
    assert ops.stats["acl"] == 2 and ops.stats["rule.5"] == 2


def test_an_acl_denied_directory_refuses_opens_beneath_it_only(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d2").mkdir()
    beneath, deeper = make(tmp_path / "d" / "f"), make(tmp_path / "d" / "sub" / "f")
    sibling = make(tmp_path / "d2" / "f")  # a name that merely starts the same
    with windows_semantics(acl_denied=[str(tmp_path / "d")]) as ops:
        for path in (beneath, deeper, str(tmp_path / "d" / "new")):
            with pytest.raises(PermissionError) as exc:
                ops.open(path, os.O_RDONLY)
            assert exc.value.ntstatus == testing.STATUS_ACCESS_DENIED  # type: ignore[attr-defined]
        with pytest.raises(PermissionError):
            ops.open(str(tmp_path / "d" / "created"), CREATE)
        ops.close(ops.open(sibling, os.O_RDONLY))
        ops.replace(beneath, str(tmp_path / "d" / "moved"))  # other operations: not modelled


def test_a_real_denial_of_a_share_delete_open_carries_status_access_denied(
    tmp_path: Path, win: WindowsOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = make(tmp_path / "target")

    def denied(self: testing.OsOps, path: str, flags: int, mode: int = 0o666, *, share_delete: bool = True) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)  # what Linux says to a non-root user

    monkeypatch.setattr(testing.OsOps, "open", denied)
    with pytest.raises(PermissionError) as exc:
        win.open(target, os.O_RDONLY)
    assert winerror(exc) == 5 and exc.value.ntstatus == testing.STATUS_ACCESS_DENIED  # type: ignore[attr-defined]


def test_a_win_error_can_carry_an_nt_status(tmp_path: Path) -> None:
    pending = make_oserror(WinError(5, ntstatus=testing.STATUS_DELETE_PENDING), "p")
    assert pending.winerror == 5 and pending.ntstatus == testing.STATUS_DELETE_PENDING  # type: ignore[attr-defined]
    assert not hasattr(make_oserror(WinError(5), "p"), "ntstatus")
    target = make(tmp_path / "target")
    with inject_errors(WinError(5, ntstatus=testing.STATUS_ACCESS_DENIED), ops="open"):
        with pytest.raises(PermissionError) as exc:
            _osops.current.open(target, os.O_RDONLY)
    assert exc.value.ntstatus == testing.STATUS_ACCESS_DENIED  # type: ignore[attr-defined]


# -- transient denials ------------------------------------------------------------------


def _attempts(ops: WindowsOps, tmp_path: Path) -> dict[str, Callable[[], object]]:
    a, b = make(tmp_path / "a"), make(tmp_path / "b")
    (tmp_path / "d").mkdir()
    return {
        "open": functools.partial(ops.open, a, os.O_RDONLY),
        "replace": functools.partial(ops.replace, a, b),
        "rename": functools.partial(ops.rename, a, str(tmp_path / "c")),
        "unlink": functools.partial(ops.unlink, a),
        "rmdir": functools.partial(ops.rmdir, str(tmp_path / "d")),
    }


@pytest.mark.parametrize("op", ["open", "replace", "rename", "unlink", "rmdir"])
def test_transient_denials_at_probability_one_always_fire(tmp_path: Path, op: str) -> None:
    ops = WindowsOps(transient_denials=1.0, transient_lock_violations=0.0)
    attempt = _attempts(ops, tmp_path)[op]
    before = sorted(os.listdir(tmp_path))
    for _ in range(20):
        with pytest.raises(PermissionError) as exc:
            attempt()
        assert winerror(exc) in (5, 32)
    assert sorted(os.listdir(tmp_path)) == before  # nothing was done
    assert ops.stats["transient"] == ops.stats[f"transient.{op}"] == 20


def test_transient_lock_violations_make_reads_and_writes_fail_with_33(tmp_path: Path) -> None:
    ops = WindowsOps(transient_denials=0.0, transient_lock_violations=1.0)
    fd = ops.open(make(tmp_path / "a"), os.O_RDWR)
    try:
        for attempt in (lambda: ops.read(fd, 1), lambda: ops.write(fd, b"x"), lambda: ops.pread(fd, 1, 0)):
            with pytest.raises(PermissionError) as exc:
                attempt()
            assert underneath(exc) == 33
    finally:
        ops.close(fd)


def test_transient_denials_at_probability_zero_never_fire(tmp_path: Path) -> None:
    ops = WindowsOps(transient_denials=0.0)
    for i in range(200):
        src = tmp_path / f"s{i}"
        src.write_bytes(b"x")
        ops.replace(str(src), str(tmp_path / "dst"))
    assert ops.stats.get("transient", 0) == 0


def _outcomes(ops: WindowsOps, tmp_path: Path, n: int = 64) -> list[int | None]:
    """The winerror of each of ``n`` replace attempts (None: it worked)."""
    result: list[int | None] = []
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    for _ in range(n):
        Path(src).write_bytes(b"x")
        try:
            ops.replace(src, dst)
            result.append(None)
        except PermissionError as exc:
            result.append(getattr(exc, "winerror", None))
    return result


def test_seeded_transient_denials_are_reproducible(tmp_path: Path) -> None:
    first = _outcomes(WindowsOps(transient_denials=0.5, seed=7), tmp_path)
    again = _outcomes(WindowsOps(transient_denials=0.5, seed=7), tmp_path)
    other = _outcomes(WindowsOps(transient_denials=0.5, seed=8), tmp_path)
    assert first == again
    assert first != other
    assert None in first and (5 in first or 32 in first)


def _child_outcomes(ops: WindowsOps, directory: str, conn: multiprocessing.connection.Connection) -> None:
    conn.send((_outcomes(ops, Path(directory)), ops.stats))


def test_forked_children_draw_their_own_random_streams(tmp_path: Path) -> None:
    ops = WindowsOps(transient_denials=0.5, seed=7)
    _outcomes(ops, tmp_path, 3)  # the parent's stream and counters exist before the fork
    results = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        parent, child = FORK.Pipe()
        proc = FORK.Process(target=_child_outcomes, args=(ops, str(tmp_path / str(i)), child))
        proc.start()
        results.append(parent.recv())
        proc.join()
    (a, a_stats), (b, b_stats) = results
    assert a != b
    assert a_stats["transient"] == sum(x is not None for x in a)  # counters start at zero
    assert b_stats["transient"] == sum(x is not None for x in b)


def test_probabilities_outside_zero_to_one_are_rejected() -> None:
    with pytest.raises(ValueError):
        WindowsOps(transient_denials=1.5)
    with pytest.raises(ValueError):
        WindowsOps(transient_lock_violations=-0.1)
    with pytest.raises(ValueError):
        WindowsOps(transient_read_denials=2.0)


def test_transient_read_denials_refuse_opens_for_reading_with_32_or_a_pending_delete(tmp_path: Path) -> None:
    ops = WindowsOps(transient_denials=0.0, transient_read_denials=1.0, transient_lock_violations=0.0)
    target = make(tmp_path / "target")
    codes = []
    for _ in range(40):
        with pytest.raises(PermissionError) as exc:
            ops.open(target, os.O_RDONLY)
        codes.append(winerror(exc))
        status = getattr(exc.value, "ntstatus", None)
        assert status == (testing.STATUS_DELETE_PENDING if winerror(exc) == 5 else None)
    assert set(codes) == {5, 32}
    assert ops.stats["transient.open.5"] + ops.stats["transient.open.32"] == ops.stats["transient.open"] == 40
    # Opens for writing, creates and mutations are transient_denials' (0 here).
    ops.close(ops.open(target, os.O_RDWR))
    ops.close(ops.open(str(tmp_path / "new"), CREATE))
    ops.replace(str(tmp_path / "new"), target)
    assert ops.stats["transient"] == 40


def test_transient_read_denials_spare_names_that_do_not_exist(tmp_path: Path) -> None:
    ops = WindowsOps(transient_read_denials=1.0)
    with pytest.raises(FileNotFoundError):
        ops.open(str(tmp_path / "missing"), os.O_RDONLY)
    assert ops.stats.get("transient", 0) == 0


def test_transient_read_denials_default_to_transient_denials(tmp_path: Path) -> None:
    assert WindowsOps(transient_denials=0.3).transient_read_denials == 0.3
    ops = WindowsOps(transient_denials=1.0, transient_read_denials=0.0, transient_lock_violations=0.0)
    target = make(tmp_path / "target")
    ops.close(ops.open(target, os.O_RDONLY))  # reads spared...
    with pytest.raises(PermissionError):
        ops.replace(target, str(tmp_path / "other"))  # ...the rest still denied


def test_errors_of_the_real_call_get_the_windows_code(tmp_path: Path, win: WindowsOps) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        win.unlink(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError) as missing_dir:
        win.stat(str(tmp_path / "no-dir" / "x"))
    with pytest.raises(FileNotFoundError) as missing_src:
        win.rename(str(tmp_path / "missing"), make(tmp_path / "exists"))  # the source is checked first
    assert (winerror(missing), winerror(missing_dir), winerror(missing_src)) == (2, 3, 2)


def test_rule_denials_are_counted(tmp_path: Path, win: WindowsOps) -> None:
    target = make(tmp_path / "target")
    win.chmod(target, 0o444)
    with pytest.raises(PermissionError):
        win.unlink(target)
    assert win.stats == {"rule.5": 1}


# -- fault injection ------------------------------------------------------------------------

ERRNOS = [
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.ENOLCK,
    errno.EBUSY,
]


@pytest.mark.parametrize("code", ERRNOS, ids=[errno.errorcode[c] for c in ERRNOS])
def test_an_injected_errno_raises_the_builtin_python_would(tmp_path: Path, code: int) -> None:
    src, dst = make(tmp_path / "src"), str(tmp_path / "dst")
    with inject_errors(code, ops=("replace",)):
        with pytest.raises(OSError) as exc:
            _osops.current.replace(src, dst)
    assert type(exc.value) is type(OSError(code, "x"))
    assert exc.value.errno == code and exc.value.strerror == os.strerror(code)
    assert exc.value.filename == src and exc.value.filename2 == dst
    assert not hasattr(exc.value, "winerror")
    assert Path(src).exists() and not Path(dst).exists()  # the replace was not done


@pytest.mark.parametrize("code", [5, 32, 33])
def test_an_injected_windows_error_is_a_permission_error_with_winerror(tmp_path: Path, code: int) -> None:
    src = make(tmp_path / "src")
    with inject_errors(WinError(code), ops=("unlink",)):
        with pytest.raises(PermissionError) as exc:
            _osops.current.unlink(src)
    assert winerror(exc) == code and exc.value.errno == errno.EACCES


@pytest.mark.parametrize(
    ("code", "kind", "number"),
    [(80, FileExistsError, errno.EEXIST), (183, FileExistsError, errno.EEXIST), (145, OSError, errno.ENOTEMPTY),
     (1314, OSError, errno.EINVAL), (9999, OSError, errno.EINVAL)],
)
def test_make_oserror_maps_windows_codes_like_cpython(code: int, kind: type[OSError], number: int) -> None:
    exc = make_oserror(WinError(code), "p")
    assert type(exc) is kind and exc.errno == number
    assert exc.winerror == code and exc.filename == "p"  # type: ignore[attr-defined]


def test_an_injected_exception_instance_is_raised(tmp_path: Path) -> None:
    boom = RuntimeError("boom")
    with inject_errors(boom, ops="mkdir"):
        for _ in range(2):
            with pytest.raises(RuntimeError, match="boom"):
                _osops.current.mkdir(str(tmp_path / "d"))


def test_times_limits_how_many_errors_are_raised(tmp_path: Path) -> None:
    with inject_errors(errno.EIO, ops=("mkdir",), times=2) as faults:
        for i in range(2):
            with pytest.raises(OSError):
                _osops.current.mkdir(str(tmp_path / f"d{i}"))
        _osops.current.mkdir(str(tmp_path / "d2"))
    assert faults.fired == 2
    assert sorted(os.listdir(tmp_path)) == ["d2"]


def test_path_contains_selects_paths_and_the_descriptors_opened_on_them(tmp_path: Path) -> None:
    make(tmp_path / "a.entry")
    make(tmp_path / "b.other")
    with inject_errors(errno.EIO, ops=("read",), path_contains=".entry") as faults:
        ops = _osops.current
        other = ops.open(str(tmp_path / "b.other"), os.O_RDONLY)
        entry = ops.open(str(tmp_path / "a.entry"), os.O_RDONLY)
        try:
            assert ops.read(other, 10) == b"data"
            with pytest.raises(OSError) as exc:
                ops.read(entry, 10)
        finally:
            ops.close(other)
            ops.close(entry)
    assert exc.value.errno == errno.EIO and exc.value.filename == str(tmp_path / "a.entry")
    assert faults.fired == 1


def test_calls_record_what_was_attempted(tmp_path: Path) -> None:
    src = make(tmp_path / "src")
    with inject_errors(errno.ENOSPC, ops=("write",)) as faults:
        _osops.current.rename(src, str(tmp_path / "dst"))
    assert faults.calls == [("rename", src, str(tmp_path / "dst"))]
    assert not any(call.op == "replace" for call in faults.calls)


def test_star_matches_every_operation(tmp_path: Path) -> None:
    with inject_errors(errno.EIO, ops="*") as faults:
        for attempt in (lambda: _osops.current.stat(str(tmp_path)), lambda: _osops.current.listdir(str(tmp_path))):
            with pytest.raises(OSError):
                attempt()
    assert faults.ops == frozenset(testing.OPERATIONS)


def test_unknown_operation_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="replce"):
        FaultOps(_osops.current, errno.EIO, ops=("replce",))


def test_after_performs_the_operation_then_raises(tmp_path: Path) -> None:
    src, dst = make(tmp_path / "src"), str(tmp_path / "dst")
    with inject_errors(errno.EIO, ops=("replace",), after=True):
        with pytest.raises(OSError):
            _osops.current.replace(src, dst)
    assert not Path(src).exists() and Path(dst).exists()


def test_an_open_failed_after_the_fact_leaves_the_file_but_no_descriptor(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    before = len(os.listdir("/proc/self/fd"))
    with inject_errors(errno.EIO, ops="open", after=True):
        with pytest.raises(OSError):
            _osops.current.open(path, CREATE, 0o666)
    assert os.path.exists(path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_close_releases_the_descriptor_even_when_it_raises(tmp_path: Path) -> None:
    fd = os.open(make(tmp_path / "f"), os.O_RDONLY)
    with inject_errors(errno.EIO, ops=("close",)):
        with pytest.raises(OSError):
            _osops.current.close(fd)
    with pytest.raises(OSError) as exc:
        os.fstat(fd)
    assert exc.value.errno == errno.EBADF


def test_seeded_fault_probability_is_reproducible(tmp_path: Path) -> None:
    def run(seed: int) -> list[bool]:
        outcomes = []
        with inject_errors(errno.EIO, ops=("stat",), probability=0.5, seed=seed):
            for _ in range(64):
                try:
                    _osops.current.stat(str(tmp_path))
                    outcomes.append(True)
                except OSError:
                    outcomes.append(False)
        return outcomes

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert True in run(3) and False in run(3)


def test_faults_stack_on_top_of_windows_semantics(tmp_path: Path) -> None:
    with windows_semantics() as win, inject_errors(WinError(32), ops=("unlink",), times=1) as faults:
        assert faults.inner is win
        a, b = make(tmp_path / "a"), make(tmp_path / "b")
        with pytest.raises(FileExistsError) as exc:  # a Windows rule, through the FaultOps
            _osops.current.rename(a, b)
        assert winerror(exc) == 183
        with pytest.raises(PermissionError) as injected:
            _osops.current.unlink(a)
        assert winerror(injected) == 32
        _osops.current.unlink(a)
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_nested_injections_each_apply(tmp_path: Path) -> None:
    with inject_errors(errno.ENOSPC, ops=("mkdir",)), inject_errors(errno.EIO, ops=("rmdir",)):
        with pytest.raises(OSError) as mkdir_exc:
            _osops.current.mkdir(str(tmp_path / "d"))
        with pytest.raises(OSError) as rmdir_exc:
            _osops.current.rmdir(str(tmp_path))
    assert mkdir_exc.value.errno == errno.ENOSPC and rmdir_exc.value.errno == errno.EIO


# -- installing and restoring ----------------------------------------------------------------


def test_windows_semantics_restores_the_previous_ops_on_an_exception() -> None:
    before = _osops.current
    with pytest.raises(KeyError):
        with windows_semantics() as ops:
            assert _osops.current is ops
            raise KeyError
    assert _osops.current is before


def test_inject_errors_restores_the_previous_ops_on_an_exception() -> None:
    before = _osops.current
    with pytest.raises(KeyError):
        with inject_errors(errno.EIO) as faults:
            assert _osops.current is faults
            raise KeyError
    assert _osops.current is before


def test_enable_and_disable_nest() -> None:
    before = _osops.current
    outer = enable_windows_semantics()
    inner = enable_windows_semantics(posix_rename=True)
    try:
        assert _osops.current is inner
        disable_windows_semantics()
        assert _osops.current is outer
    finally:
        disable_windows_semantics()
    assert _osops.current is before
    disable_windows_semantics()  # nothing enabled: no-op
    assert _osops.current is before


def test_options_recreate_an_equivalent_emulator() -> None:
    ops = WindowsOps(posix_delete=False, posix_rename=True, transient_denials=0.25, seed=3)
    again = WindowsOps(**ops.options)
    assert again.options == ops.options
    assert again.transient_lock_violations == 0.025  # a tenth of transient_denials by default
    assert again.transient_read_denials == 0.25  # as transient_denials by default
    denying = WindowsOps(transient_read_denials=0.05, acl_denied=["/restored/cache"])
    assert WindowsOps(**denying.options).options == denying.options
    assert denying.options["acl_denied"] == ("/restored/cache",)


def test_the_public_names_exist() -> None:
    assert sorted(testing.__all__) == sorted(set(testing.__all__))
    # Sorted as isort sorts: constants, then classes, then functions.
    assert testing.__all__ == sorted(testing.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    for name in testing.__all__:
        assert hasattr(testing, name), name


def test_osops_is_the_public_base_of_the_emulators() -> None:
    """Users subclass ``safecache.testing.OsOps``, never a private class."""
    assert "OsOps" in testing.__all__
    assert testing.OsOps is _osops.OsOps  # the very class safecache calls through
    assert issubclass(WindowsOps, testing.OsOps) and issubclass(FaultOps, testing.OsOps)


def test_a_fault_model_of_your_own(tmp_path: Path) -> None:
    """docs/testing.md: subclass OsOps to write a fault model, install it, and
    inject_errors stacks on it like on the emulator."""

    class ReadOnlyFileSystem(testing.OsOps):
        def mkdir(self, path: str, mode: int = 0o777) -> None:
            raise make_oserror(errno.EROFS, path)

    before = _osops.current
    _osops.current = ReadOnlyFileSystem()
    try:
        with pytest.raises(OSError) as exc:
            _osops.current.mkdir(str(tmp_path / "d"))
        assert exc.value.errno == errno.EROFS and exc.value.filename == str(tmp_path / "d")
        with inject_errors(errno.EIO, ops="stat") as faults:
            with pytest.raises(OSError) as stat_exc:
                _osops.current.stat(str(tmp_path))
            with pytest.raises(OSError) as mkdir_exc:  # not injected: the model underneath answers
                _osops.current.mkdir(str(tmp_path / "d"))
        assert stat_exc.value.errno == errno.EIO and mkdir_exc.value.errno == errno.EROFS
        assert [call.op for call in faults.calls] == ["stat", "mkdir"]
    finally:
        _osops.current = before

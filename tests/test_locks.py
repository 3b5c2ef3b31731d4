"""Cross-process locks: exclusion, timeouts, release when the holder dies."""

from __future__ import annotations

import time
import stat
import errno
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

import safecache
from safecache import _locks
from safecache._locks import FileLock

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


# -- compute once ---------------------------------------------------------------------------------
def _no_failure(exc: OSError, path: str) -> None:
    raise AssertionError(f"the lock should have been taken: {exc}")


def test_compute_once_creates_under_the_lock_when_the_value_is_still_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "locks" / "k.lock")
    seen = []

    def create() -> bytes:
        with pytest.raises(safecache.LockTimeoutError):  # held while creating
            _locks.FileLock(path, timeout=0.01).acquire()
        seen.append("create")
        return b"made"

    got = _locks.compute_once(path, timeout=5, lookup=lambda: seen.append("lookup"), create=create, lock_failed=_no_failure)
    assert got == b"made" and seen == ["lookup", "create"]
    with _locks.FileLock(path, timeout=0.01):  # released afterwards
        pass


def test_compute_once_returns_what_the_process_it_waited_for_stored(tmp_path: Path) -> None:
    def create() -> bytes:
        raise AssertionError("the value was there once the lock was taken")

    got = _locks.compute_once(
        str(tmp_path / "k.lock"), timeout=5, lookup=lambda: b"stored", create=create, lock_failed=_no_failure
    )
    assert got == b"stored"


def test_compute_once_goes_on_without_a_lock_it_cannot_take_and_reports_why(tmp_path: Path) -> None:
    path = str(tmp_path / "k.lock")
    failures: list[tuple[type[BaseException], str]] = []
    with _locks.FileLock(path):
        got = _locks.compute_once(
            path,
            timeout=0.05,
            lookup=lambda: pytest.fail("no second look without the lock"),
            create=lambda: b"made anyway",
            lock_failed=lambda exc, where: failures.append((type(exc), where)),
        )
    assert got == b"made anyway" and failures == [(safecache.LockTimeoutError, path)]


def test_compute_once_on_a_file_system_without_locks_reports_and_creates(tmp_path: Path) -> None:
    from safecache.testing import inject_errors

    codes: list[int | None] = []
    with inject_errors(errno.ENOLCK, ops=("lock",)):
        got = _locks.compute_once(
            str(tmp_path / "k.lock"), timeout=5, lookup=lambda: None, create=lambda: 1,
            lock_failed=lambda exc, where: codes.append(exc.errno),
        )
    assert got == 1 and codes == [errno.ENOLCK]


def test_compute_once_propagates_a_policy_that_raises(tmp_path: Path) -> None:
    path = str(tmp_path / "k.lock")

    def strict(exc: OSError, where: str) -> None:
        raise exc

    with _locks.FileLock(path):
        with pytest.raises(safecache.LockTimeoutError):
            _locks.compute_once(path, timeout=0.01, lookup=lambda: None, create=lambda: pytest.fail("ran"), lock_failed=strict)


def test_compute_once_releases_the_lock_when_create_raises(tmp_path: Path) -> None:
    path = str(tmp_path / "k.lock")

    def create() -> bytes:
        raise RuntimeError("factory failed")

    with pytest.raises(RuntimeError):
        _locks.compute_once(path, timeout=5, lookup=lambda: None, create=create, lock_failed=_no_failure)
    with _locks.FileLock(path, timeout=0.01):
        pass


def test_compute_once_without_a_lock_path_creates_at_once(tmp_path: Path) -> None:
    got = _locks.compute_once(
        None, timeout=5, lookup=lambda: pytest.fail("no lock, no second look"), create=lambda: b"made",
        lock_failed=_no_failure,
    )
    assert got == b"made" and list(tmp_path.iterdir()) == []


# -- who may open a lock, what a lock path may be, how long a wait may be -------------------
def test_lock_files_are_private_to_their_owner_even_under_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with FileLock(str(tmp_path / "locks" / "a.lock")):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "locks" / "a.lock").stat().st_mode) == 0o600


def test_a_lock_file_others_could_open_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    path.touch()
    path.chmod(0o644)
    with FileLock(str(path)):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_lock_files_in_a_group_writable_directory_are_group_writable(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    old = os.umask(0)
    try:
        with FileLock(str(shared / "a.lock")):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((shared / "a.lock").stat().st_mode) == 0o660


def test_a_fifo_at_a_lock_path_fails_at_once_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    os.mkfifo(path)
    with pytest.raises(OSError):
        FileLock(str(path), timeout=1).acquire()


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1])
def test_a_timeout_that_would_never_end_or_is_negative_is_refused(tmp_path: Path, timeout: float) -> None:
    with pytest.raises(ValueError):
        FileLock(str(tmp_path / "a.lock"), timeout=timeout)
    with pytest.raises(ValueError):
        FileLock(str(tmp_path / "a.lock")).acquire(timeout=timeout)


def test_get_or_create_refuses_a_nan_timeout_at_the_call(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c").bucket("b")
    with pytest.raises(ValueError):
        bucket.get_or_create("k", lambda: b"v", timeout=float("nan"))
    with pytest.raises(ValueError):
        bucket.trees.get_or_create("k", lambda path: None, timeout=float("nan"))


def test_a_lock_is_released_when_its_holder_dies_even_if_a_forked_child_lives_on(tmp_path: Path) -> None:
    """The holder forks a child that outlives it (a factory's subprocess),
    then is SIGKILLed with the lock held: a waiter must take over."""
    path = str(tmp_path / "a.lock")
    child_pid_file = tmp_path / "child.pid"
    holder = os.fork()
    if holder == 0:  # pragma: no cover - runs in the forked holder
        try:
            lock = FileLock(path)
            lock.acquire()
            if os.fork() == 0:
                child_pid_file.write_text(str(os.getpid()))
                time.sleep(30)
                os._exit(0)
            while not child_pid_file.exists():
                time.sleep(0.01)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(holder, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    child = int(child_pid_file.read_text())
    try:
        FileLock(path, timeout=5).acquire()  # the child let go of its copy at fork
    finally:
        os.kill(child, signal.SIGKILL)

"""Cross-process locks on dedicated lock files.

A lock is an OS lock (``flock`` on POSIX, ``LockFileEx`` through
``msvcrt.locking`` on Windows) on a file of its own, never on a data file
(byte-range locks on Windows make reads of a locked region fail with error
33).  The OS releases it when the holder dies, so a crashed process never
leaves a lock behind, and lock files are never deleted while they may be in
use (deleting one lets two processes lock two different files of one name).

Every wait has a timeout.  When the file system cannot lock at all (ENOLCK,
ENOSYS, EOPNOTSUPP: NFS without a lock daemon, some FUSE and SMB mounts,
uv #9050), ``acquire`` raises ``OSError`` with that errno and the caller
decides to go on without the lock.

:func:`compute_once` is the one compute-once protocol over these locks
(``Bucket.get_or_create`` and ``Trees.get_or_create``).
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import time

from . import _errcodes, _errors, _fs, _osops, _trust

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from typing import Callable, TypeVar

    T = TypeVar("T")


class FileLock:
    """A lock on the file at ``path``: exclusive, or ``shared`` (any number of
    shared holders, excluding an exclusive one); not re-entrant.

    Use as a context manager or with ``acquire``/``release``.  ``acquire``
    raises :class:`safecache.LockTimeoutError` (also a ``TimeoutError``) when
    ``timeout`` seconds pass first, ``ValueError`` for a timeout that is not
    a finite number >= 0, and ``OSError`` when locking fails (including a
    lock path that is not a regular file: a FIFO planted there).

    The lock file is created readable and writable by its owner only
    (``flock`` needs only read access, so a lock file other users can open
    is a lock other users can hold, stalling every waiter until its
    timeout), or by the group too where the directory holding it is
    group-writable (a shared cache).  A held lock does not outlive its
    process in a forked child: the child closes its copy at fork, so when
    the parent dies the OS releases the lock and a waiter takes over, even
    if the child (a factory's subprocess) lives on.
    """

    def __init__(self, path: str, *, timeout: float = 60.0, shared: bool = False) -> None:
        self.path = path
        self.timeout = check_timeout(timeout)
        self.shared = shared
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> None:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path!r} is already held by this object")
        timeout = self.timeout if timeout is None else check_timeout(timeout)
        ops = _osops.current
        fd = self._open()
        try:
            from random import random

            deadline = time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    if self.shared:
                        ops.lock(fd, blocking=False, shared=True)
                    else:
                        ops.lock(fd, blocking=False)
                    break
                except BlockingIOError:
                    pass
                except OSError as exc:
                    # Windows reports a held lock as error 33 (lock violation);
                    # EACCES/EAGAIN are what fcntl-based systems use.
                    if _errcodes.winerror(exc) != _errcodes.ERROR_LOCK_VIOLATION and exc.errno not in _errcodes.LOCK_HELD_ERRNOS:
                        raise
                now = time.monotonic()
                if now >= deadline:
                    raise _errors.LockTimeoutError(
                        f"timed out after {timeout:g} s waiting for a cache lock held by another process",
                        filename=self.path,
                        errno=errno.ETIMEDOUT,
                    )
                time.sleep(min(delay, deadline - now))
                # Poll quickly at first (most holders finish in milliseconds),
                # then settle at 50 ms; jitter keeps waiters from moving in step.
                delay = min(delay * (1.5 + random()), 0.05)
        except BaseException:
            ops.close(fd)
            raise
        self._fd = fd
        _held.add(self)

    def _open(self) -> int:
        ops = _osops.current
        flags = os.O_RDWR | os.O_CREAT | _osops.BASE_FLAGS | _NONBLOCK
        directory = os.path.dirname(self.path)
        try:
            fd = ops.open(self.path, flags, _lock_mode(directory), share_delete=False)
        except FileNotFoundError:
            _fs.makedirs(directory)
            fd = ops.open(self.path, flags, _lock_mode(directory), share_delete=False)
        try:
            st = ops.fstat(fd)
            if not _stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "a cache lock path is not a regular file", self.path)
            loose = _stat.S_IMODE(st.st_mode) & 0o077 & ~_lock_mode(directory)
            if loose and st.st_uid == _trust.euid():
                # A lock file from before lock files were private (0644):
                # take back what others could open.
                ops.chmod(self.path, _stat.S_IMODE(st.st_mode) & ~loose)
        except BaseException:
            ops.close(fd)
            raise
        return fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _held.discard(self)
        ops = _osops.current
        try:
            ops.unlock(fd)
        except OSError:
            pass  # closing releases it anyway
        finally:
            ops.close(fd)

    def _forget_in_child(self) -> None:
        """In a forked child: close this process's copy of the descriptor
        without unlocking (an unlock would release the parent's lock too:
        flock locks belong to the open file description both share)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted at a lock path must not block the open
#: Locks this process holds, so a forked child can let go of them (a plain
#: set: a held lock keeps its descriptor open anyway, and ``weakref`` costs
#: a millisecond of import time that every tool would pay).
_held: set[FileLock] = set()


def _after_fork_in_child() -> None:
    for lock in list(_held):
        lock._forget_in_child()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _lock_mode(directory: str) -> int:
    """0600, or 0660 in a group-writable directory (a shared cache)."""
    try:
        group_writable = _osops.current.stat(directory).st_mode & _stat.S_IWGRP
    except OSError:
        group_writable = 0
    return _trust.SHARED_LOCK_MODE if group_writable else _trust.LOCK_MODE


def check_timeout(timeout: float) -> float:
    """``timeout`` as a float; TypeError or ValueError unless it is a finite number >= 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"a lock timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 <= timeout < float("inf"):  # also false for nan
        raise ValueError(f"a lock timeout must be a finite number of seconds >= 0, not {timeout!r}")
    return float(timeout)


class MaybeLock:
    """A lock that a cache may fail to take, for ``with`` blocks that run
    either way: ``__enter__`` returns True when the lock at ``path`` is held,
    False when it could not be taken (``path`` None: the cache cannot store;
    or ``failed(exc, path)`` was told why and did not raise: lenient mode).
    ``Bucket.lock`` is one."""

    def __init__(self, path: str | None, *, timeout: float, failed: Callable[[OSError, str], object]) -> None:
        self._path = path
        self._timeout = check_timeout(timeout)
        self._failed = failed
        self._lock: FileLock | None = None

    def __enter__(self) -> bool:
        if self._path is None:
            return False
        lock = FileLock(self._path, timeout=self._timeout)
        try:
            lock.acquire()
        except OSError as exc:
            self._failed(exc, self._path)
            return False
        self._lock = lock
        return True

    def __exit__(self, *exc: object) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


def compute_once(
    lock_path: str | None,
    *,
    timeout: float,
    lookup: Callable[[], T | None],
    create: Callable[[], T],
    lock_failed: Callable[[OSError, str], object],
) -> T:
    """Run ``create`` for a value that the caller's ``lookup`` just missed,
    so that among threads and processes missing it at once only one creates it.

    The protocol: take the exclusive lock at ``lock_path``, waiting at most
    ``timeout`` seconds; with it held, ``lookup()`` again (the process we
    waited for may have stored the value) and return what it finds;
    otherwise ``create()`` (which makes the value and stores it) and return
    its result.  The lock is released however ``create`` ends, and the OS
    releases it if this process dies, so a waiter takes over.

    If the lock cannot be taken (``LockTimeoutError``, a file system without
    locks, any ``OSError``), ``lock_failed(exc, lock_path)`` applies the
    cache's error policy (strict mode raises there) and ``create`` runs
    without the lock: the value may then be made twice, which is slower but
    never wrong.  ``lock_path=None`` (the cache cannot store) runs
    ``create`` at once.  Exceptions from ``lookup`` and ``create`` propagate.
    """
    if lock_path is None:
        return create()
    lock = FileLock(lock_path, timeout=timeout)
    try:
        lock.acquire()
    except OSError as exc:
        lock_failed(exc, lock_path)
    try:
        if lock.locked:
            found = lookup()
            if found is not None:
                return found
        return create()
    finally:
        lock.release()

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
"""

from __future__ import annotations

import errno
import os
import time

from . import _errcodes, _errors, _fs, _osops


class FileLock:
    """A lock on the file at ``path``: exclusive, or ``shared`` (any number of
    shared holders, excluding an exclusive one); not re-entrant.

    Use as a context manager or with ``acquire``/``release``.  ``acquire``
    raises :class:`safecache.LockTimeoutError` (also a ``TimeoutError``) when
    ``timeout`` seconds pass first, and ``OSError`` when locking fails.
    """

    def __init__(self, path: str, *, timeout: float = 60.0, shared: bool = False) -> None:
        self.path = path
        self.timeout = timeout
        self.shared = shared
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> None:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path!r} is already held by this object")
        timeout = self.timeout if timeout is None else timeout
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

    def _open(self) -> int:
        ops = _osops.current
        flags = os.O_RDWR | os.O_CREAT | _osops.BASE_FLAGS
        try:
            return ops.open(self.path, flags, 0o666, share_delete=False)
        except FileNotFoundError:
            _fs.makedirs(os.path.dirname(self.path))
            return ops.open(self.path, flags, 0o666, share_delete=False)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        ops = _osops.current
        try:
            ops.unlock(fd)
        except OSError:
            pass  # closing releases it anyway
        finally:
            ops.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

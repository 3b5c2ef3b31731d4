"""Byte-range locks as Windows enforces them (``LockFileEx``), and the
checks reads and writes make against them (Windows error 33).

On Windows a byte-range lock is mandatory: an exclusive lock "denies all
other processes both read and write access to the specified region", a
shared lock "denies all processes write access to the specified region of
the file, including the process that first locks the region", and a second
handle of the locking process is refused like any other (``LockFileEx``
documentation).  On Linux locks are advisory, so the emulator asks the
kernel, before each read or write, whether another descriptor holds a lock
over the bytes touched:

* the locks :meth:`WindowsOps.lock` takes (safecache's ``LockFileEx`` on
  byte 0), through :func:`lock_range`;
* the record locks the code under test takes itself (``fcntl.lockf``,
  ``F_SETLK``, ``F_OFD_SETLK``): on Windows the same code would take
  ``LockFileEx`` locks (``msvcrt.locking``).  A classic POSIX record lock
  belongs to a process, not a handle: one held by the reading process
  itself counts as the reading handle's own.

A descriptor's access limits the kinds of lock Linux lets it take (a
read-only one takes only read locks), so an exclusive lock also takes a
mirror lock at ``_EXCLUSIVE + offset`` (any kind will do): reads look there
for exclusive locks whatever their descriptor.
"""

from __future__ import annotations

import os
import threading

from ._handles import _EXCLUSIVE, _ofd_getlk, _ofd_setlk

try:
    import fcntl
except ImportError:  # Windows: the emulator is not used there
    fcntl = None  # type: ignore[assignment]

#: Real byte-range locks stay below this offset; the emulator's records lie
#: above it.  A record lock "to the end of the file" (length 0) taken by the
#: code under test is cut here (see ``_patch``), or it would cover them.
_LIMIT = 1 << 58

# The ranges each descriptor of this process holds through lock_range:
# fd -> [(offset, length, shared)], to refuse the holder of a shared lock
# its own writes.  Cleared by forget() when the descriptor closes.
_held: dict[int, list[tuple[int, int, bool]]] = {}
_held_pid = os.getpid()
_lock = threading.Lock()


def _table() -> dict[int, list[tuple[int, int, bool]]]:
    global _held, _held_pid
    if os.getpid() != _held_pid:  # a forked child holds none of its parent's locks
        _held, _held_pid = {}, os.getpid()
    return _held


def _kinds(fd: int, *, shared: bool) -> tuple[int, int]:
    """The lock kind a range lock takes through ``fd``, and the kind its
    exclusive mirror takes."""
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    mirror = fcntl.F_WRLCK if access == os.O_WRONLY else fcntl.F_RDLCK
    if shared:  # shared holders coexist: read locks where the descriptor allows
        return mirror, mirror
    # An exclusive holder is alone (its caller's flock says so): a write lock
    # where the descriptor allows, which read probes see; else a read lock,
    # which only write probes see -- hence the mirror.
    return (fcntl.F_RDLCK if access == os.O_RDONLY else fcntl.F_WRLCK), mirror


def lock_range(fd: int, offset: int, length: int, *, shared: bool) -> None:
    """Take a Windows byte-range lock on ``length`` bytes at ``offset`` of
    ``fd``'s file, exclusive or ``shared`` (the caller has made sure no
    conflicting lock is held, as ``LockFileEx`` would)."""
    kind, mirror = _kinds(fd, shared=shared)
    _ofd_setlk(fd, kind, offset, length)
    if not shared:
        _ofd_setlk(fd, mirror, _EXCLUSIVE + offset, length)
    with _lock:
        _table().setdefault(fd, []).append((offset, length, shared))


def unlock_range(fd: int, offset: int, length: int) -> None:
    """Drop the lock :func:`lock_range` took."""
    _ofd_setlk(fd, fcntl.F_UNLCK, offset, length)
    _ofd_setlk(fd, fcntl.F_UNLCK, _EXCLUSIVE + offset, length)
    with _lock:
        ranges = _table().get(fd, [])
        ranges[:] = [r for r in ranges if (r[0], r[1]) != (offset, length)]
        if not ranges:
            _table().pop(fd, None)


def forget(fd: int) -> None:
    """``fd`` is being closed: the kernel drops its locks, and so do we."""
    if _held:
        with _lock:
            _table().pop(fd, None)


def _foreign(fd: int, start: int, length: int, probe: int) -> bool:
    """Whether a lock that a lock of kind ``probe`` would conflict with is
    held over the range by another handle (a classic POSIX lock of this
    process counts as this handle's own)."""
    ltype, _start, _len, pid = _ofd_getlk(fd, start, length, probe)
    return ltype != fcntl.F_UNLCK and pid != os.getpid()


def locked(fd: int, offset: int | None, length: int, *, write: bool) -> bool:
    """Whether a read (or with ``write``, a write) of ``length`` bytes at
    ``offset`` of ``fd`` (None: the current position) touches bytes that
    another handle has locked, so that Windows refuses it with 33.  False for
    a descriptor that cannot be locked (a pipe)."""
    try:
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        length = max(1, min(length, _LIMIT - offset))
        if offset >= _LIMIT:
            return False
        if write:
            if _foreign(fd, offset, length, fcntl.F_WRLCK):  # any lock refuses a write
                return True
            ranges = _held.get(fd) if os.getpid() == _held_pid else None
            return bool(ranges) and any(
                shared and start < offset + length and offset < start + size for start, size, shared in ranges or ()
            )
        # A read conflicts only with an exclusive lock: a write lock here, or
        # any lock in the mirror.
        return _foreign(fd, offset, length, fcntl.F_RDLCK) or _foreign(fd, _EXCLUSIVE + offset, length, fcntl.F_WRLCK)
    except OSError:  # a pipe or other descriptor that cannot be locked
        return False

"""Open handles, visible to every process: the emulator's handle table.

Which files are open and whether each handle shares delete, recorded as
Linux open file description locks on the handles' own descriptors, so that
every process sees them and the kernel forgets them exactly when the handle
goes away; the byte-range lock that :meth:`WindowsOps.lock` adds; and
:func:`holding`, which holds a file open from a test.  Every ``fcntl`` call
of the emulator is here.  Linux only (64-bit, 3.15+, a local file system).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
import struct
from typing import Iterator, NamedTuple

from safecache import _osops

try:
    import fcntl
except ImportError:  # Windows: FaultOps still works, WindowsOps does not
    fcntl = None  # type: ignore[assignment]

# Windows tracks every open handle and its share mode in the kernel; Linux
# does not, and the emulation must work across real processes.  Each handle
# opened through WindowsOps therefore takes Linux open file description (OFD)
# locks on its own descriptor, at byte offsets no real file reaches:
#
#   HANDLES range          one lock per handle: "a handle is open"
#   NO_SHARE_DELETE range  one more if the handle does not share delete
#
# An OFD lock belongs to the open file description, so the kernel drops it
# when the descriptor is closed or its process dies (SIGKILL included), and
# two descriptors conflict even inside one process -- exactly like two
# Windows handles.  Each handle locks one byte at a random offset of its
# range: a write-only descriptor can only take write locks, which would
# conflict at a shared offset, so offsets are kept apart instead.  A probe
# asks F_OFD_GETLK whether a write lock over the whole range would conflict:
# any lock held through another descriptor does, the probe's own (none) does
# not.  The real lock() (flock) is a different lock kind and never interacts.

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86_64 and aarch64
_SPAN = 1 << 40
_HANDLES = 1 << 62
_NO_SHARE_DELETE = _HANDLES + (1 << 61)
# The byte _win32.lock locks with LockFileEx: an exclusive Windows byte-range
# lock on it makes reads and writes of that byte through other handles fail
# with 33; a shared one, writes only.
_LOCKED_BYTE = 0
_offsets = random.SystemRandom()  # not the seeded stream: opens must not shift it


def _require_ofd_locks() -> None:
    if fcntl is None or not hasattr(fcntl, "F_OFD_GETLK") or struct.calcsize("l") != 8:
        raise RuntimeError(
            "safecache.testing's Windows emulation needs 64-bit Linux (open file description locks)"
        )


def _ofd_setlk(fd: int, ltype: int, start: int, length: int) -> bool:
    """Take (or with F_UNLCK drop) an OFD lock; False if another holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(ltype, os.SEEK_SET, start, length, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _ofd_conflict(fd: int, start: int, length: int, probe: int | None = None) -> bool:
    """Whether any other open file description holds a lock in the range
    (with ``probe=F_RDLCK``: a write lock, the only kind a read lock
    conflicts with)."""
    request = _FLOCK.pack(fcntl.F_WRLCK if probe is None else probe, os.SEEK_SET, start, length, 0)
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, request)
    ltype: int = _FLOCK.unpack(answer)[0]
    return ltype != fcntl.F_UNLCK


def _register(fd: int, *, share_delete: bool) -> None:
    """Mark ``fd`` as an open Windows handle (regular files only).

    Raises ``RuntimeError`` (not an ``OSError``, which the code under test
    would swallow as a cache failure) where the locks are not supported.
    """
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return  # directory handles are not modelled
    # Linux lets a descriptor take only the lock kinds its access allows.
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    ltype = fcntl.F_WRLCK if access == os.O_WRONLY else fcntl.F_RDLCK
    for base in (_HANDLES,) if share_delete else (_HANDLES, _NO_SHARE_DELETE):
        for _ in range(64):
            try:
                taken = _ofd_setlk(fd, ltype, base + _offsets.randrange(_SPAN), 1)
            except OSError as exc:
                raise RuntimeError(
                    "safecache.testing: this file system does not support open file description "
                    f"locks ({exc}); use a local file system such as ext4, xfs, btrfs or tmpfs"
                ) from exc
            if taken:
                break
        else:  # 64 collisions in 2**40 offsets: the range is not ours
            raise RuntimeError("safecache.testing: could not register an open handle")


class _Handles(NamedTuple):
    open: bool  # some handle is open on the file
    no_share_delete: bool  # some handle is open without FILE_SHARE_DELETE


_NONE = _Handles(False, False)
_PROBE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _osops.O_CLOEXEC


def _handles(path: str) -> _Handles:
    """The handles open on the file at ``path`` (not following a symlink).

    A name that does not exist or is not a regular file has none; the real
    operation that follows reports the missing name.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _PROBE_FLAGS)
    except OSError:
        try:  # a file without read permission (not root): a write probe
            fd = os.open(path, os.O_WRONLY | _PROBE_FLAGS)
        except OSError:
            return _NONE
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return _NONE
        if not _ofd_conflict(fd, _HANDLES, _SPAN):
            return _NONE
        return _Handles(True, _ofd_conflict(fd, _NO_SHARE_DELETE, _SPAN))
    finally:
        os.close(fd)


def _tree_has_no_share_delete(root: str) -> bool:
    """Whether any file under directory ``root`` is open without share-delete."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if _handles(os.path.join(dirpath, name)).no_share_delete:
                return True
    return False


def _byte_range_locked(fd: int, offset: int | None, length: int, *, write: bool) -> bool:
    """Whether another handle's byte-range lock (:meth:`WindowsOps.lock`)
    covers ``length`` bytes at ``offset`` of ``fd`` (None: the current
    position), so that a read (or with ``write``, a write) there fails
    with 33 on Windows.  False for a descriptor that cannot be locked."""
    try:
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        # A read conflicts only with an exclusive lock (a write lock).
        return _ofd_conflict(fd, offset, max(length, 1), None if write else fcntl.F_RDLCK)
    except OSError:  # a pipe or other descriptor that cannot be locked
        return False


def _lock_byte(fd: int, *, shared: bool) -> None:
    """Take the Windows byte-range lock on :data:`_LOCKED_BYTE` through
    ``fd``, exclusive or ``shared``, over the flock its caller holds."""
    # An exclusive holder is alone (flock), so it takes a write lock
    # when the descriptor allows it, else a read lock (which only write
    # probes see).  Shared holders take read locks, which coexist.
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if shared:
        ltype = fcntl.F_WRLCK if access == os.O_WRONLY else fcntl.F_RDLCK
    else:
        ltype = fcntl.F_RDLCK if access == os.O_RDONLY else fcntl.F_WRLCK
    _ofd_setlk(fd, ltype, _LOCKED_BYTE, 1)


def _unlock_byte(fd: int) -> None:
    """Drop the lock :func:`_lock_byte` took."""
    _ofd_setlk(fd, fcntl.F_UNLCK, _LOCKED_BYTE, 1)


@contextlib.contextmanager
def holding(path: str, *, share_delete: bool = False, write: bool = False) -> Iterator[int]:
    """Hold ``path`` open, as another program would, inside the block.

    The handle counts under :class:`WindowsOps` in every process, exactly as
    one opened by a second process would: by default it does not share
    delete, like Python's ``open()`` (replace onto the file fails with 5,
    unlink and rename of it with 32).  ``share_delete=True`` models a reader
    that shares delete; ``write=True`` opens for writing (which never shares
    delete).  Yields the descriptor.  Linux only.
    """
    _require_ofd_locks()
    flags = (os.O_RDWR if write else os.O_RDONLY) | _osops.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        _register(fd, share_delete=share_delete and not write)
        yield fd
    finally:
        os.close(fd)

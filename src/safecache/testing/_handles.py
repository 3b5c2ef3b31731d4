"""Open handles, visible to every process: the emulator's handle table.

Which files and directories are open, with which access and which share
modes, recorded as Linux open file description locks on the handles' own
descriptors, so that every process sees them and the kernel forgets them
exactly when the handle goes away; the checks an open, a rename or a delete
makes against them; and :func:`holding`, which holds a file or directory
open from a test, as another program would.  The ``fcntl`` primitives here
are also those of :mod:`._ranges` (byte-range locks) and :mod:`._mapped`
(mapped views).  Linux only (64-bit, 3.15+, a local file system).
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

# Windows tracks every open handle, its access and its share mode in the
# kernel; Linux does not, and the emulation must work across real processes.
# Each handle opened through WindowsOps therefore takes Linux open file
# description (OFD) locks on its own descriptor, at byte offsets no real file
# reaches (2**62 and up; real byte-range locks stay below 2**58):
#
#   HANDLES: READ_ONLY | READ_WRITE | WRITE_ONLY
#                          one lock per handle, in the range of its access:
#                          "readers" and "writers" are each one contiguous range
#   NO_SHARE_DELETE        one more if the handle does not share delete
#   NOT_SHARING: READ | BOTH | WRITE
#                          one more if it does not share read, or write, or
#                          either (only other programs' handles: holding())
#   MAPPED                 a mapped view of the file (:mod:`._mapped`)
#   EXCLUSIVE + offset     the mirror of an exclusive byte-range lock (:mod:`._ranges`)
#
# An OFD lock belongs to the open file description, so the kernel drops it
# when the descriptor is closed or its process dies (SIGKILL included), and
# two descriptors conflict even inside one process -- exactly like two
# Windows handles.  Each handle locks one byte at a random offset of its
# range: a write-only descriptor can only take write locks, which would
# conflict at a shared offset, so offsets are kept apart instead.  A probe
# asks F_OFD_GETLK whether a lock over a whole range would conflict: any lock
# held there through another descriptor does, the probe's own (none) does
# not.  The real lock() (flock) is a different lock kind and never interacts.

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86_64 and aarch64
_SPAN = 1 << 40
_HANDLES = 1 << 62
_READ_ONLY = _HANDLES
_READ_WRITE = _HANDLES + _SPAN
_WRITE_ONLY = _HANDLES + 2 * _SPAN
_ANY_HANDLE = (_HANDLES, 3 * _SPAN)
_READERS = (_READ_ONLY, 2 * _SPAN)
_WRITERS = (_READ_WRITE, 2 * _SPAN)
_EXCLUSIVE = _HANDLES + (1 << 59)
_NOT_SHARING_READ_ONLY = _HANDLES + (1 << 60)  # shares write, not read
_NOT_SHARING_EITHER = _NOT_SHARING_READ_ONLY + _SPAN
_NOT_SHARING_WRITE_ONLY = _NOT_SHARING_READ_ONLY + 2 * _SPAN  # shares read, not write
_NOT_SHARING_READ = (_NOT_SHARING_READ_ONLY, 2 * _SPAN)
_NOT_SHARING_WRITE = (_NOT_SHARING_EITHER, 2 * _SPAN)
_NOT_SHARING = (_NOT_SHARING_READ_ONLY, 3 * _SPAN)
_MAPPED = _HANDLES + (1 << 60) + (1 << 59)
_NO_SHARE_DELETE = _HANDLES + (1 << 61)
_offsets = random.SystemRandom()  # not the seeded stream: opens must not shift it


def _require_ofd_locks() -> None:
    if fcntl is None or not hasattr(fcntl, "F_OFD_GETLK") or struct.calcsize("l") != 8:
        raise RuntimeError("safecache.testing's Windows emulation needs 64-bit Linux (open file description locks)")


def _ofd_setlk(fd: int, ltype: int, start: int, length: int) -> bool:
    """Take (or with F_UNLCK drop) an OFD lock; False if another holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(ltype, os.SEEK_SET, start, length, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _ofd_getlk(fd: int, start: int, length: int, probe: int | None = None) -> tuple[int, int, int, int]:
    """The first lock held through another descriptor that a lock of kind
    ``probe`` (default: a write lock, which every lock conflicts with) over
    the range would conflict with, as (type, start, length, pid); type
    F_UNLCK if none.  pid is -1 for an OFD lock, the holder's for a classic
    POSIX record lock (``fcntl.lockf``)."""
    request = _FLOCK.pack(fcntl.F_WRLCK if probe is None else probe, os.SEEK_SET, start, length, 0)
    ltype, _whence, lstart, llen, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, request))
    return ltype, lstart, llen, pid


def _ofd_conflict(fd: int, start: int, length: int, probe: int | None = None) -> bool:
    """Whether any other open file description holds a lock in the range
    (with ``probe=F_RDLCK``: a write lock, the only kind a read lock
    conflicts with)."""
    return _ofd_getlk(fd, start, length, probe)[0] != fcntl.F_UNLCK


def _recorded(fd: int, start: int, length: int, probe: int | None = None) -> bool:
    """Whether another descriptor holds one of the emulator's records in the
    range ``start``, ``length`` of its private ranges.

    A record lock the code under test takes over the whole file
    (``fcntl.lockf(fd, LOCK_EX)`` locks to infinity) covers the private
    ranges too, and F_OFD_GETLK reports only one conflicting lock: when the
    one reported is not a record, the kernel's list of locks
    (``/proc/locks``) says whether a record hides behind it.
    """
    ltype, lstart, llen, _pid = _ofd_getlk(fd, start, length, probe)
    if ltype == fcntl.F_UNLCK:
        return False
    if llen != 0 and start <= lstart and lstart + llen <= start + length:
        return True
    return _listed_record(fd, start, length, write_only=probe == fcntl.F_RDLCK)


def _listed_record(fd: int, start: int, length: int, *, write_only: bool) -> bool:
    """Whether ``/proc/locks`` lists an OFD lock on ``fd``'s file inside the
    range (the caller's descriptor holds none there)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as listing:
            lines = listing.read().splitlines()
    except OSError:
        return True  # cannot tell: err towards the handle being there
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) < 8 or fields[1] != "OFDLCK" or fields[5] != inode or fields[7] == "EOF":
            continue
        if write_only and fields[3] != "WRITE":
            continue
        if start <= int(fields[6]) and int(fields[7]) < start + length:
            return True
    return False


def _take(fd: int, ltype: int, base: int) -> None:
    """Lock one byte at a random offset of the range that starts at ``base``."""
    for _ in range(64):
        try:
            taken = _ofd_setlk(fd, ltype, base + _offsets.randrange(_SPAN), 1)
        except OSError as exc:
            raise RuntimeError(
                "safecache.testing: this file system does not support open file description "
                f"locks ({exc}); use a local file system such as ext4, xfs, btrfs or tmpfs"
            ) from exc
        if taken:
            return
    raise RuntimeError("safecache.testing: could not register an open handle")  # the range is not ours


def _register(
    fd: int, *, share_delete: bool, share_read: bool = True, share_write: bool = True, st: os.stat_result | None = None
) -> None:
    """Mark ``fd`` as an open Windows handle (files and directories) with
    the access its descriptor has and the given share modes.

    Raises ``RuntimeError`` (not an ``OSError``, which the code under test
    would swallow as a cache failure) where the locks are not supported.
    """
    mode = (st if st is not None else os.fstat(fd)).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return  # pipes, devices, sockets: no Windows file handle to model
    # Linux lets a descriptor take only the lock kinds its access allows.
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    ltype = fcntl.F_WRLCK if access == os.O_WRONLY else fcntl.F_RDLCK
    _take(fd, ltype, {os.O_RDONLY: _READ_ONLY, os.O_WRONLY: _WRITE_ONLY}.get(access, _READ_WRITE))
    if not share_delete:
        _take(fd, ltype, _NO_SHARE_DELETE)
    if not (share_read and share_write):
        narrow = (
            _NOT_SHARING_WRITE_ONLY if share_read else _NOT_SHARING_READ_ONLY if share_write else _NOT_SHARING_EITHER
        )
        _take(fd, ltype, narrow)


def _sharing_violation(
    fd: int, *, read: bool, write: bool, share_read: bool = True, share_write: bool = True
) -> str | None:
    """Why an open of ``fd``'s file with this access and these share modes
    conflicts with the handles already open (Windows error 32), or None.

    The rule of ``CreateFileW``: the access asked for must be shared by every
    open handle, and the share mode given must allow every open handle's
    access.  Delete access is asked for only inside rename and delete (the
    callers of :func:`_handles`), so it is not checked here.
    """
    if read and write:
        if _recorded(fd, *_NOT_SHARING):
            return "another handle does not share read or write access"
    elif read and _recorded(fd, *_NOT_SHARING_READ):
        return "another handle does not share read access"
    elif write and _recorded(fd, *_NOT_SHARING_WRITE):
        return "another handle does not share write access"
    if not share_read and _recorded(fd, *_READERS):
        return "another handle reads the file, and this open does not share read access"
    if not share_write and _recorded(fd, *_WRITERS):
        return "another handle writes the file, and this open does not share write access"
    return None


class _Handles(NamedTuple):
    open: bool  # some handle is open on the file
    no_share_delete: bool  # some handle is open without FILE_SHARE_DELETE


_NONE = _Handles(False, False)
_PROBE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _osops.O_CLOEXEC


def _probe(path: str) -> int | None:
    """A descriptor to ask about the file or directory at ``path`` (not
    following a symlink), or None for a name that is missing or cannot be
    opened."""
    try:
        return os.open(path, os.O_RDONLY | _PROBE_FLAGS)
    except OSError:
        try:  # a file without read permission (not root): a write probe
            return os.open(path, os.O_WRONLY | _PROBE_FLAGS)
        except OSError:
            return None


def _handles(path: str) -> _Handles:
    """The handles open on the file or directory at ``path`` (not following
    a symlink).

    A name that does not exist or is neither a file nor a directory has
    none; the real operation that follows reports the missing name.
    """
    fd = _probe(path)
    if fd is None:
        return _NONE
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or not _recorded(fd, *_ANY_HANDLE):
            return _NONE
        return _Handles(True, _recorded(fd, _NO_SHARE_DELETE, _SPAN))
    finally:
        os.close(fd)


def _tree_has_no_share_delete(root: str) -> bool:
    """Whether any file or directory beneath directory ``root`` is open
    without share-delete."""
    for dirpath, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            if _handles(os.path.join(dirpath, name)).no_share_delete:
                return True
    return False


@contextlib.contextmanager
def holding(
    path: str,
    *,
    share_delete: bool = False,
    write: bool = False,
    share_read: bool = True,
    share_write: bool = True,
) -> Iterator[int]:
    """Hold ``path`` open, as another program would, inside the block.

    The handle counts under :class:`WindowsOps` in every process, exactly as
    one opened by a second process would: by default it does not share
    delete, like Python's ``open()`` (replace onto the file fails with 5,
    unlink and rename of it with 32).  ``share_delete=True`` models a reader
    that shares delete; ``write=True`` opens for writing (which never shares
    delete).  ``share_read=False`` or ``share_write=False`` model a program
    that opens with a narrower share mode than Python does (a scanner, a
    backup tool, an editor): opens that ask for that access then fail with
    32.  ``path`` may be a directory (Explorer, or a shell whose current
    directory it is): removing or renaming it then fails with 32.

    Raises ``PermissionError`` (32) if the handles already open conflict
    with this one's access or share modes.  Yields the descriptor.  Linux
    only.
    """
    _require_ofd_locks()
    is_dir = os.path.isdir(path)
    flags = (os.O_RDWR if write and not is_dir else os.O_RDONLY) | _osops.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        violation = _sharing_violation(
            fd, read=True, write=write and not is_dir, share_read=share_read, share_write=share_write
        )
        if violation is not None:
            from ._winerror import ERROR_SHARING_VIOLATION, _windows_error

            raise _windows_error(ERROR_SHARING_VIOLATION, path, reason=violation)
        _register(fd, share_delete=share_delete and not write, share_read=share_read, share_write=share_write)
        yield fd
    finally:
        os.close(fd)

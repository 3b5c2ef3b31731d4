"""The system calls safecache makes, behind one replaceable object.

Every file-system call that touches a cache goes through the object in
``_osops.current``.  Production code uses :class:`OsOps`, a thin layer over
:mod:`os`.  ``safecache.testing`` swaps in subclasses that emulate Windows
file semantics or inject faults, so the code under test is the real code.

Only ``_fs`` and ``_locks`` call this module; everything else calls them.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator

_WINDOWS = sys.platform == "win32"

# Flags every open uses: O_BINARY on Windows (no newline translation),
# O_NOFOLLOW and O_CLOEXEC where they exist (never follow a planted symlink,
# never leak a descriptor into a child process).
O_BINARY = getattr(os, "O_BINARY", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOINHERIT = getattr(os, "O_NOINHERIT", 0)
BASE_FLAGS = O_BINARY | O_NOFOLLOW | O_CLOEXEC | O_NOINHERIT
READ_FLAGS = os.O_RDONLY | BASE_FLAGS
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | BASE_FLAGS


class OsOps:
    """The real operating system.

    Subclasses override methods to change behaviour for tests.  Each method
    has the semantics of the :mod:`os` function of the same name and raises
    the same exceptions; the extra ones are documented where they appear.
    """

    name = "os"

    # -- descriptors -----------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666, *, share_delete: bool = True) -> int:
        """Open ``path``.

        ``share_delete`` asks, on Windows, that the handle not stop other
        processes from renaming, replacing or deleting the file (a reader
        opened this way does not cause "Access is denied" in a writer).  It is
        honoured for read-only opens; elsewhere it changes nothing.
        """
        if sys.platform == "win32" and share_delete and (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) == 0:
            from . import _win32

            return _win32.open_shared(path, flags)
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, fd: int, n: int) -> bytes:
        return os.read(fd, n)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        if _WINDOWS:  # no os.pread on Windows
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, n)
        return os.pread(fd, n, offset)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if sys.platform == "win32":
            os.lseek(fd, offset, os.SEEK_SET)
            return os.write(fd, data)
        return os.pwrite(fd, data, offset)

    def lseek(self, fd: int, pos: int, how: int) -> int:
        return os.lseek(fd, pos, how)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    # -- locks -------------------------------------------------------------
    def lock(self, fd: int, *, blocking: bool) -> None:
        """Take an exclusive lock on the whole of ``fd``'s file.

        Raises ``BlockingIOError`` when ``blocking`` is false and another
        holder has it.  The OS releases it when the holder's process dies.
        """
        if sys.platform == "win32":
            from . import _win32

            _win32.lock(fd, blocking=blocking)
            return
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)

    def unlock(self, fd: int) -> None:
        if sys.platform == "win32":
            from . import _win32

            _win32.unlock(fd)
            return
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)

    # -- names -------------------------------------------------------------
    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(path)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def rename(self, src: str, dst: str) -> None:
        """``os.rename``: on Windows fails if ``dst`` exists; on POSIX it
        replaces a file, or an empty directory with a directory."""
        os.rename(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst, follow_symlinks=False) if not _WINDOWS else os.link(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        os.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def scandir(self, path: str) -> Iterator[os.DirEntry[str]]:
        return os.scandir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def utime(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(path, times)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def symlink(self, src: str, dst: str) -> None:
        os.symlink(src, dst)


#: The real operating system.
real: OsOps = OsOps()
#: The operations in force.  Replaced only by ``safecache.testing``.
current: OsOps = real
#: Hot paths may call :mod:`os` directly when ``current is fast_path``: that
#: is the real OS on POSIX, where ``OsOps`` adds nothing but a Python frame.
#: (On Windows reads must go through ``open`` for share-delete, so never.)
fast_path: OsOps | None = None if _WINDOWS else real

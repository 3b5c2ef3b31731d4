"""The system calls safecache makes, behind one replaceable object.

Every file-system call that touches a cache goes through the object in
``_osops.current``.  Production code uses :class:`OsOps`, a thin layer over
:mod:`os`.  ``safecache.testing`` swaps in subclasses that emulate Windows
file semantics or inject faults, so the code under test is the real code.

Only ``_fs``, ``_locks``, ``_link`` and ``_trees`` call this module;
everything else calls them.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

_WINDOWS = sys.platform == "win32"

# Flags every open uses: O_BINARY on Windows (no newline translation),
# O_NOFOLLOW and O_CLOEXEC where they exist (never follow a planted symlink,
# never leak a descriptor into a child process).
O_BINARY = getattr(os, "O_BINARY", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOINHERIT = getattr(os, "O_NOINHERIT", 0)
BASE_FLAGS = O_BINARY | O_NOFOLLOW | O_CLOEXEC | O_NOINHERIT
# Every open for reading is non-blocking and never takes a controlling
# terminal: a FIFO or device planted at an entry, a pointer, a counter file
# or a source to copy must not hang the caller (regular files ignore both
# flags).  Readers then refuse anything but a regular file.
READ_FLAGS = os.O_RDONLY | BASE_FLAGS | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | BASE_FLAGS
SOURCE_FLAGS = READ_FLAGS


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
    def lock(self, fd: int, *, blocking: bool, shared: bool = False) -> None:
        """Lock the whole of ``fd``'s file: exclusively, or ``shared`` with
        other shared holders (readers-writer lock).

        Raises ``BlockingIOError`` when ``blocking`` is false and another
        holder has a conflicting lock.  The OS releases it when the holder's
        process dies.  POSIX: ``flock``; Windows: ``LockFileEx`` on byte 0.
        """
        if sys.platform == "win32":
            from . import _win32

            _win32.lock(fd, blocking=blocking, shared=shared)
            return
        import fcntl

        operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        fcntl.flock(fd, operation if blocking else operation | fcntl.LOCK_NB)

    def unlock(self, fd: int) -> None:
        if sys.platform == "win32":
            from . import _win32

            _win32.unlock(fd)
            return
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)

    # -- whole files -------------------------------------------------------
    def clone(self, src: str, dst: str) -> None:
        """Create ``dst`` (which must not exist) as a copy-on-write clone of
        the regular file ``src``, with ``src``'s permission bits.

        Linux: ``FICLONE`` (btrfs, XFS with reflink, bcachefs, ...); macOS:
        ``clonefile`` (APFS).  Raises ``OSError`` with the kernel's errno
        where the file system cannot (``EOPNOTSUPP``, ``EXDEV``, ``EINVAL``,
        ``ENOTTY``, ``EBADF``, ...) and leaves no ``dst`` behind.
        """
        if sys.platform == "linux":
            _clone_linux(src, dst)
        elif sys.platform == "darwin":
            _clone_darwin(src, dst)
        else:
            # Windows: block cloning (FSCTL_DUPLICATE_EXTENTS_TO_FILE on ReFS
            # and Dev Drives) is not implemented: it cannot be tested here.
            # Other platforms have no primitive we know of.
            raise OSError(errno.EOPNOTSUPP, "copy-on-write cloning is not implemented on this platform", src, None, dst)

    def copyfile(self, src: str, dst: str) -> None:
        """Copy the regular file ``src`` to a new file ``dst`` (which must
        not exist) with ``src``'s permission bits, never following a
        symlink, in bounded memory.  ``dst`` is removed if the copy fails.

        Linux uses ``copy_file_range`` (which the file system may turn into
        a server-side copy or a reflink), else ``sendfile``; elsewhere, and
        where those are refused, a read/write loop of 1 MiB blocks.
        """
        _copy_file(self, src, dst, windows=_WINDOWS)

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

    def scandir(self, path: str) -> os._ScandirIterator[str]:
        return os.scandir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def utime(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(path, times)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def symlink(self, src: str, dst: str) -> None:
        os.symlink(src, dst)

    def readlink(self, path: str) -> str:
        """The target a symlink holds (trees record and copy symlinks as such)."""
        return os.readlink(path)

    # -- names relative to a directory descriptor (POSIX): each as the os call
    # with dir_fd; trees are placed and verified through them (openat-style).
    def has_dir_fd(self) -> bool:
        """Whether the ``*_at`` operations may stand in for the path ones: the
        OS has ``dir_fd`` (not Windows) and this class keeps OsOps's path
        operations (an emulator overriding them models paths, which the
        ``*_at`` calls would bypass: callers then take their path-based way)."""
        if not _DIR_FD:
            return False
        cls = type(self)
        return all(getattr(cls, name) is getattr(OsOps, name) for name in _PATH_OPS)

    def open_at(self, path: str, flags: int, mode: int = 0o666, *, dir_fd: int) -> int:
        return os.open(path, flags, mode, dir_fd=dir_fd)

    def lstat_at(self, path: str, *, dir_fd: int) -> os.stat_result:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)

    def mkdir_at(self, path: str, mode: int = 0o777, *, dir_fd: int) -> None:
        os.mkdir(path, mode, dir_fd=dir_fd)

    def unlink_at(self, path: str, *, dir_fd: int) -> None:
        os.unlink(path, dir_fd=dir_fd)

    def link_at(self, src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        """A hard link to the entry ``src`` itself (a symlink is linked, not followed)."""
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)

    def replace_at(self, src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        os.replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def symlink_at(self, src: str, dst: str, *, dir_fd: int) -> None:
        os.symlink(src, dst, dir_fd=dir_fd)

    def readlink_at(self, path: str, *, dir_fd: int) -> str:
        return os.readlink(path, dir_fd=dir_fd)

    def listdir_fd(self, fd: int) -> list[str]:
        """The names in the directory open at ``fd``."""
        return os.listdir(fd)

    def clone_at(self, src_fd: int, dst: str, *, dir_fd: int) -> None:
        """:meth:`clone` from the regular file open at ``src_fd`` to the new name ``dst`` in ``dir_fd``."""
        _file_at(self, src_fd, dst, dir_fd, clone=True)

    def copyfile_at(self, src_fd: int, dst: str, *, dir_fd: int) -> None:
        """:meth:`copyfile` likewise, reading ``src_fd`` from its start."""
        _file_at(self, src_fd, dst, dir_fd, clone=False)

    def rmdir_at(self, path: str, *, dir_fd: int) -> None:
        os.rmdir(path, dir_fd=dir_fd)

    def scandir_fd(self, fd: int) -> os._ScandirIterator[str]:
        """The entries of the directory open at ``fd`` (``stat`` relative to it)."""
        return os.scandir(fd)


# -- whole-file helpers (called by OsOps.clone and OsOps.copyfile) ------------

_MIB = 1 << 20
# Errors with which copy_file_range or sendfile refuse a pair of files at
# their first call, meaning "use the next primitive" rather than "the copy
# failed": no such system call, cross-device (kernels before 5.3), a file
# system without support, or a seccomp filter (containers) refusing it.
_NO_KERNEL_COPY = frozenset(
    code
    for code in (
        errno.ENOSYS,
        errno.EXDEV,
        errno.EINVAL,
        errno.EPERM,
        getattr(errno, "EOPNOTSUPP", None),
        getattr(errno, "ENOTSUP", None),
        getattr(errno, "ENOTSOCK", None),
    )
    if code is not None
)


def _require_regular(st: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
        raise OSError(code, f"{os.strerror(code)} (not a regular file)", path)


def _discard(ops: OsOps, path: str, *, windows: bool) -> None:
    """Remove the partial ``path`` a failed copy or clone created (best
    effort: the caller re-raises the error that made it fail)."""
    try:
        ops.unlink(path)
    except OSError:
        if not windows:
            return
        try:  # Windows cannot delete a read-only file
            ops.chmod(path, stat.S_IREAD | stat.S_IWRITE)
            ops.unlink(path)
        except OSError:
            pass


def _match_mode(fd: int, mode: int) -> None:
    """Give ``fd``'s file the permission bits ``mode``, which the umask may
    have narrowed at creation (POSIX only)."""
    if sys.platform == "win32":
        return
    if stat.S_IMODE(os.fstat(fd).st_mode) == mode:
        return
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        # A file system that cannot hold permission bits (vfat, some network
        # shares) refuses chmod: the copy itself is good.
        if exc.errno not in (errno.EPERM, getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)):
            raise


# FICLONE is _IOW(0x94, 9, int): 0x40049409 where the ioctl direction "write"
# is 1 (x86, arm, riscv, s390, ...), 0x80049409 where it is 4 (powerpc, mips,
# sparc, alpha).
_FICLONE = 0x40049409
if sys.platform == "linux" and os.uname().machine.startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
    _FICLONE = 0x80049409


def _clone_linux(src: str, dst: str) -> None:
    if sys.platform == "win32":  # never called there (this tells type checkers)
        raise OSError(errno.EOPNOTSUPP, "FICLONE is Linux's", src, None, dst)
    import fcntl

    src_fd = os.open(src, SOURCE_FLAGS)
    try:
        st = os.fstat(src_fd)
        _require_regular(st, src)
        mode = stat.S_IMODE(st.st_mode) & 0o777
        dst_fd = os.open(dst, CREATE_FLAGS, mode)
        try:
            try:
                try:
                    fcntl.ioctl(dst_fd, _FICLONE, src_fd)
                except OSError as exc:  # ioctl's error names no file
                    raise OSError(exc.errno, exc.strerror, src, None, dst) from None
                _match_mode(dst_fd, mode)  # FICLONE copies data only
            finally:
                os.close(dst_fd)
        except BaseException:
            _discard(real, dst, windows=False)
            raise
    finally:
        os.close(src_fd)


_clonefile: Callable[[bytes, bytes, int], int] | None = None


def _clone_darwin(src: str, dst: str) -> None:
    import ctypes

    global _clonefile
    _require_regular(os.lstat(src), src)  # clonefile would clone a whole directory
    if _clonefile is None:
        libsystem = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
        function = libsystem.clonefile
        function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32]
        function.restype = ctypes.c_int
        _clonefile = function
    clone_nofollow = 0x0001  # CLONE_NOFOLLOW from <sys/clonefile.h>
    # clonefile creates dst (EEXIST if it exists) with src's mode, or nothing.
    if _clonefile(os.fsencode(src), os.fsencode(dst), clone_nofollow) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src, None, dst)


def _copy_file(ops: OsOps, src: str, dst: str, *, windows: bool) -> None:
    """``OsOps.copyfile`` through ``ops``'s own open/read/write/close, so an
    emulator's rules apply to it.  ``windows``: create ``dst`` writable and
    set the read-only attribute after closing it (Windows cannot delete a
    read-only file if the copy fails; a handle can write it all the same)."""
    src_fd = ops.open(src, SOURCE_FLAGS)
    try:
        st = ops.fstat(src_fd)
        _require_regular(st, src)
        mode = stat.S_IMODE(st.st_mode) & 0o777
        dst_fd = ops.open(dst, CREATE_FLAGS, 0o666 if windows else mode, share_delete=False)
        try:
            try:
                _copy_data(ops, src_fd, dst_fd, st.st_size, kernel=not windows and sys.platform == "linux")
                if not windows:
                    _match_mode(dst_fd, mode)
            finally:
                ops.close(dst_fd)
            if windows and not mode & stat.S_IWRITE:
                ops.chmod(dst, mode)
        except BaseException:
            _discard(ops, dst, windows=windows)
            raise
    finally:
        ops.close(src_fd)


def _copy_data(ops: OsOps, src_fd: int, dst_fd: int, size: int, *, kernel: bool) -> None:
    """Copy all of ``src_fd`` (at offset 0) into the new file ``dst_fd``."""
    if kernel:
        # In-kernel copies at explicit source offsets: if the first call is
        # refused, nothing was written and both positions are still 0.
        count = min(max(size, 8 * _MIB), 1 << 30)
        copy_file_range = getattr(os, "copy_file_range", None)
        if copy_file_range is not None and _kernel_copy(
            lambda offset: copy_file_range(src_fd, dst_fd, count, offset, offset)
        ):
            return
        sendfile = getattr(os, "sendfile", None)
        if sendfile is not None and _kernel_copy(lambda offset: sendfile(dst_fd, src_fd, offset, count)):
            return
    while True:
        block = ops.read(src_fd, _MIB)
        if not block:
            return
        view = memoryview(block)
        while view:
            view = view[ops.write(dst_fd, view) :]


def _kernel_copy(call: Callable[[int], int]) -> bool:
    """Run ``call(offset)`` (which copies from ``offset`` on and returns
    the count) to the end of the source; False if it was refused before
    copying anything."""
    offset = 0
    while True:
        try:
            done = call(offset)
        except OSError as exc:
            if offset == 0 and exc.errno in _NO_KERNEL_COPY:
                return False
            raise
        if done == 0:
            # Some file systems (procfs, some FUSE) report 0 bytes at once
            # for a file that has data: let the read loop have it.
            # (an empty file costs one read more).
            return offset > 0
        offset += done


#: The real operating system.
real: OsOps = OsOps()
#: The operations in force.  Replaced only by ``safecache.testing``.
current: OsOps = real
#: Hot paths may call :mod:`os` directly when ``current is fast_path``: that
#: is the real OS on POSIX, where ``OsOps`` adds nothing but a Python frame.
#: (On Windows reads must go through ``open`` for share-delete, so never.)
fast_path: OsOps | None = None if _WINDOWS else real


# -- the *_at operations ------------------------------------------------------------
_DIR_FD = not _WINDOWS and {os.open, os.stat, os.mkdir, os.unlink, os.link, os.rename, os.symlink, os.readlink} <= os.supports_dir_fd
#: The path operations the *_at ones stand in for (OsOps.has_dir_fd).
_PATH_OPS = ("open", "lstat", "mkdir", "rmdir", "unlink", "link", "replace", "symlink", "readlink", "listdir", "clone", "copyfile")


def _file_at(ops: OsOps, src_fd: int, dst: str, dir_fd: int, *, clone: bool) -> None:
    """OsOps.clone_at and copyfile_at: ``dst`` made whole in ``dir_fd``, or nothing."""
    st = ops.fstat(src_fd)
    _require_regular(st, dst)
    mode = stat.S_IMODE(st.st_mode) & 0o777
    if clone and sys.platform == "darwin":  # fclonefileat(2): dst with src's mode, or nothing
        import ctypes

        if ctypes.CDLL(None, use_errno=True).fclonefileat(src_fd, dir_fd, os.fsencode(dst), 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), dst)
        return
    if clone and sys.platform != "linux":
        raise OSError(errno.EOPNOTSUPP, "copy-on-write cloning is not implemented on this platform", dst)
    dst_fd = ops.open_at(dst, CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        try:
            if clone:
                import fcntl

                fcntl.ioctl(dst_fd, _FICLONE, src_fd)  # data only: the mode is set below
            else:
                ops.lseek(src_fd, 0, os.SEEK_SET)
                _copy_data(ops, src_fd, dst_fd, st.st_size, kernel=sys.platform == "linux")
            _match_mode(dst_fd, mode)
        finally:
            ops.close(dst_fd)
    except BaseException:
        try:
            ops.unlink_at(dst, dir_fd=dir_fd)
        except OSError:
            pass
        raise


# -- removing a tree relative to directory descriptors (_fs.rmtree) ----------------
#: A real directory: a symlink at the name fails (ELOOP; EMLINK on FreeBSD), a file too (ENOTDIR).
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NONBLOCK", 0) | O_CLOEXEC | O_NOFOLLOW
_NOT_A_DIR = (errno.ELOOP, errno.EMLINK, errno.ENOTDIR)


def rmtree_at(path: str, dir_fd: int | None = None) -> None:
    """Remove the tree at ``path`` (a name in ``dir_fd`` if given) as ``shutil.rmtree`` does where
    it can: each directory opened with :data:`DIR_FLAGS` and emptied relative to its descriptor, so
    one swapped for a symlink after it was listed is removed as that link, never entered.  What
    vanishes counts as removed."""
    ops = current
    try:
        try:
            fd = ops.open(path, DIR_FLAGS) if dir_fd is None else ops.open_at(path, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in _NOT_A_DIR:
                raise
            return ops.unlink(path) if dir_fd is None else ops.unlink_at(path, dir_fd=dir_fd)  # not entered
        try:
            _empty_at(ops, fd)
        finally:
            ops.close(fd)
        if dir_fd is None:
            ops.rmdir(path)
        else:
            ops.rmdir_at(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _empty_at(ops: OsOps, top: int) -> None:
    """Depth first, without recursion (a deep tree must not raise RecursionError): each level
    holds its directory's descriptor, the names left in it, and its own name in its parent."""
    stack: list[tuple[int, list[str], str]] = [(top, ops.listdir_fd(top), "")]
    try:
        while stack:
            fd, names, own = stack[-1]
            if not names:
                stack.pop()
                if stack:  # an emptied subdirectory
                    ops.close(fd)
                    _remove_at(ops, ops.rmdir_at, stack[-1][0], own)
                continue
            name = names.pop()
            try:
                child = _child_at(ops, fd, name)
            except FileNotFoundError:  # gone meanwhile: another process cleaning too
                continue
            if child is None:
                _remove_at(ops, ops.unlink_at, fd, name)
            else:
                stack.append((child, [], name))
                stack[-1][1].extend(ops.listdir_fd(child))
    finally:
        for fd, _names, _own in stack[1:]:
            ops.close(fd)


def _remove_at(ops: OsOps, remove: Callable[..., None], fd: int, name: str) -> None:
    try:
        try:
            remove(name, dir_fd=fd)
        except PermissionError:  # deleting needs write permission on the directory
            _grant(ops, fd)
            remove(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def _child_at(ops: OsOps, fd: int, name: str) -> int | None:
    try:
        st = ops.lstat_at(name, dir_fd=fd)
    except PermissionError:  # no search permission on ``fd`` for its owner
        _grant(ops, fd)
        st = ops.lstat_at(name, dir_fd=fd)
    try:
        return ops.open_at(name, DIR_FLAGS, dir_fd=fd) if stat.S_ISDIR(st.st_mode) else None
    except PermissionError as denied:
        try:  # never through a symlink: glibc refuses that (EOPNOTSUPP, raised as ValueError)
            os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_IRWXU, dir_fd=fd, follow_symlinks=False)
        except (NotImplementedError, ValueError):
            raise denied from None
        return ops.open_at(name, DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno not in _NOT_A_DIR:
            raise
        return None  # swapped for a symlink or a file since its lstat: unlinked, never entered


def _grant(ops: OsOps, fd: int) -> None:
    os.fchmod(fd, stat.S_IMODE(ops.fstat(fd).st_mode) | stat.S_IRWXU)

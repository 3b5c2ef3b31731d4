"""Maintenance: reaching what a walk visits and examining it as a reader
would: directories as :class:`Folder` objects (never through a symlink, and
relative to their descriptors where the OS allows: see ``_walk``), an
entry fully validated (as ``get`` does), an entry's kind, a tree pointer and
its manifest.

Every file is opened through the :class:`Folder` the walk holds (relative
to its descriptor on POSIX), non-blocking and without following a symlink,
and only a regular file is read: a FIFO, a device or a link where
an entry or a pointer should be reads as absent, never hangs the walk.

Each read retries "in use" errors only briefly (:data:`READ_BUDGET`): a
bulk operation must not spend 2 s on every busy file; the next run sees it.
``opened_as`` hands back the ``fstat`` of the file judged, so a caller can
later remove that very file and not a good one put in its place since.
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from . import _errcodes, _format, _fs, _osops
from ._format import Invalid

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: Cache.close() imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._manifest import Manifest

#: Removing one file retries "in use" errors this long, then leaves it for
#: the next run (a bulk operation must not spend 2 s on every busy file).
REMOVE_BUDGET = 0.1
#: How long one read retries "in use" errors: as long as a removal does.
READ_BUDGET = REMOVE_BUDGET
_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT: a symlink or junction on Windows


# -- directories reached without following a symlink ---------------------------------
class Entry:
    """A name a :class:`Folder` listed; valid while the folder is open.
    Nothing here follows a symlink."""

    __slots__ = ("_entry", "name", "path")

    def __init__(self, entry: os.DirEntry[str], path: str) -> None:
        self._entry = entry
        self.name = entry.name
        self.path = path

    def __repr__(self) -> str:
        return f"Entry({self.path!r})"

    def is_dir(self) -> bool:
        try:
            return self._entry.is_dir(follow_symlinks=False)
        except OSError:
            return False

    def is_file(self) -> bool:
        try:
            return self._entry.is_file(follow_symlinks=False)
        except OSError:
            return False

    def is_symlink(self) -> bool:
        try:
            return self._entry.is_symlink()
        except OSError:
            return False

    def stat(self) -> os.stat_result:
        return self._entry.stat(follow_symlinks=False)


class Folder:
    """A directory of the cache, reached without following a symlink.

    With descriptors (``OsOps.has_dir_fd``: POSIX), ``fd`` is the directory
    opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's, and
    every method works relative to it (``fstatat``, ``openat``,
    ``unlinkat``, ``renameat``): what it names stays in the directory that
    was opened, whatever is renamed or swapped meanwhile.  Without (Windows,
    and emulators that model paths), ``fd`` is None and each method uses
    ``path`` after checking that it is still the directory opened (device
    and inode): that narrows the window of a swap, it cannot close it.
    Methods raise ``OSError``; ``NotADirectoryError`` means "not a directory
    (a symlink, a file) or no longer the one opened".
    """

    __slots__ = ("fd", "ident", "path")

    def __init__(self, path: str, fd: int | None, st: os.stat_result) -> None:
        self.path = path
        self.fd = fd
        self.ident = (st.st_dev, st.st_ino)

    def __repr__(self) -> str:
        return f"Folder({self.path!r}, fd={self.fd})"

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(cls, path: str) -> Folder:
        """The directory ``path``, whose last component must not be a
        symlink (the root: its ancestors are the user's)."""
        ops = _osops.current
        if not ops.has_dir_fd():
            return cls(path, None, _real_dir(ops.lstat(path), path))
        return cls._opened(path, lambda: ops.open(path, _osops.DIR_FLAGS))

    def child(self, name: str) -> Folder:
        """The subdirectory ``name``; ``NotADirectoryError`` for anything
        else there (a symlink is never entered), ``FileNotFoundError``."""
        ops = _osops.current
        path = self.join(name)
        fd = self.fd
        if fd is None or fd < 0:
            self.check()
            return Folder(path, None, _real_dir(ops.lstat(path), path))
        return self._opened(path, lambda: ops.open_at(name, _osops.DIR_FLAGS, dir_fd=fd))

    @classmethod
    def _opened(cls, path: str, opener: Callable[[], int]) -> Folder:
        ops = _osops.current
        try:
            fd = opener()
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
                raise _not_a_dir(path) from None
            raise
        try:
            return cls(path, fd, ops.fstat(fd))
        except BaseException:
            ops.close(fd)
            raise

    def close(self) -> None:
        """Close the descriptor; the folder then fails with EBADF (its
        number never names whatever is opened next)."""
        if self.fd is not None and self.fd >= 0:
            fd, self.fd = self.fd, -1
            _osops.current.close(fd)

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def check(self) -> None:
        """Without a descriptor: raise unless ``path`` is still the directory opened."""
        if self.fd is None and not self.same():
            raise _not_a_dir(self.path, "no longer the directory that was listed")

    def same(self) -> bool:
        """Whether ``path`` still leads to this directory (for code that
        takes paths: the check narrows, it does not close, a window)."""
        try:
            st = _osops.current.lstat(self.path)
        except OSError:
            return False
        return _stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == self.ident

    def scan(self) -> list[Entry]:
        ops = _osops.current
        if self.fd is None:
            with ops.scandir(self.path) as it:
                found = [Entry(e, e.path) for e in it]
            self.check()  # listed the directory that was opened, not one swapped in
            return found
        with ops.scandir_fd(self.fd) as it:
            return [Entry(e, self.join(e.name)) for e in it]

    def lstat(self, name: str) -> os.stat_result:
        if self.fd is None:
            self.check()
            return _osops.current.lstat(self.join(name))
        return _osops.current.lstat_at(name, dir_fd=self.fd)

    def open_file(self, name: str, flags: int) -> int:
        """A descriptor of ``name`` (``flags`` include ``O_NOFOLLOW``)."""
        if self.fd is None:
            self.check()
            return _osops.current.open(self.join(name), flags)
        return _osops.current.open_at(name, flags, dir_fd=self.fd)

    def unlink(self, name: str, *, budget: float, same_as: os.stat_result | None = None) -> bool:
        """Delete the file (or symlink) ``name``; False if it was not there,
        or (``same_as``) is no longer that file.  Retries "in use" errors."""
        if self.fd is None:
            self.check()
            path = self.join(name)
            if same_as is not None:
                return _fs.remove_if_same(path, same_as, budget=budget)
            return _fs.remove(path, budget=budget)
        fd = self.fd
        ops = _osops.current
        try:
            if same_as is not None:
                now = ops.lstat_at(name, dir_fd=fd)
                if (now.st_dev, now.st_ino) != (same_as.st_dev, same_as.st_ino):
                    return False
            _fs.retry("unlink", lambda: ops.unlink_at(name, dir_fd=fd), budget=budget)
            return True
        except FileNotFoundError:
            return False

    def rmdir(self, name: str) -> None:
        """Remove the directory ``name`` if it is empty."""
        if self.fd is None:
            self.check()
            _osops.current.rmdir(self.join(name))
        else:
            _osops.current.rmdir_at(name, dir_fd=self.fd)

    def rmtree(self, name: str, *, budget: float) -> None:
        """Remove the tree ``name`` (a symlink there is removed, not entered)."""
        if self.fd is None:
            self.check()
            _fs.rmtree(self.join(name), budget=budget)
        else:
            _osops.rmtree_at(name, self.fd)

    def mkdir(self, name: str, mode: int) -> None:
        if self.fd is None:
            self.check()
            _osops.current.mkdir(self.join(name), mode)
        else:
            _osops.current.mkdir_at(name, mode, dir_fd=self.fd)

    def move(self, name: str, dest: Folder, new_name: str, *, budget: float) -> None:
        """Rename ``name`` to ``new_name`` in ``dest`` (which has no such name)."""
        ops = _osops.current
        src_fd, dst_fd = self.fd, dest.fd
        if src_fd is None or dst_fd is None:
            self.check()
            dest.check()
            _fs.retry("rename", ops.rename, self.join(name), dest.join(new_name), budget=budget)
        else:
            _fs.retry("rename", lambda: ops.replace_at(name, new_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd), budget=budget)


def listing(folder: Folder) -> list[Entry]:
    """The entries of ``folder``; [] if it cannot be listed (for surveys, which skip what they cannot read)."""
    try:
        return folder.scan()
    except OSError:
        return []


def _real_dir(st: os.stat_result, path: str) -> os.stat_result:
    if not _stat.S_ISDIR(st.st_mode) or getattr(st, "st_file_attributes", 0) & _REPARSE_POINT:
        raise _not_a_dir(path)
    return st


def _not_a_dir(path: str, why: str = "not a directory (a symbolic link is never followed)") -> NotADirectoryError:
    return NotADirectoryError(errno.ENOTDIR, why, path)


# -- reading what a walk finds ------------------------------------------------------------------


def open_regular(folder: Folder, name: str) -> tuple[int, bytes, os.stat_result] | None:
    """``(fd, first block, fstat)`` of the regular file ``name`` in
    ``folder``; None if it is gone or is anything but a regular file.  The
    caller owns the fd.  Raises ``OSError``."""
    ops = _osops.current
    if folder.fd is None:  # by path (Windows): _fs.read_file, with its retries for Windows' 5, 32, 33
        folder.check()
        opened = _fs.read_file(folder.join(name), budget=READ_BUDGET)
        if opened is None:
            return None
        fd, block = opened
        try:
            return fd, block, ops.fstat(fd)
        except BaseException:
            ops.close(fd)
            raise
    dir_fd = folder.fd
    try:
        fd = _fs.retry(
            _errcodes.OPEN_FOR_READ, lambda: ops.open_at(name, _osops.READ_FLAGS, dir_fd=dir_fd), budget=READ_BUDGET
        )
    except FileNotFoundError:
        return None
    try:
        st = ops.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            ops.close(fd)
            return None
        return fd, ops.read(fd, _format.BLOCK), st
    except BaseException:
        ops.close(fd)
        raise


def load(
    folder: Folder,
    name: str,
    *,
    payload: bool,
    exact_version: bool = False,
    opened_as: list[os.stat_result] | None = None,
) -> tuple[_format.Header, bytes | None, os.stat_result] | None:
    """Read and fully validate the entry ``name`` (its key digest) in
    ``folder`` (as ``get`` does: length, both CRCs, key); return
    ``(header, payload or None, fstat)``, None if it is gone or not a
    regular file.  Raises :class:`Invalid` or ``OSError``.

    ``exact_version``: a version other than 1 whose header CRC does not
    match is reported as ``bad-header`` (a bit flip in the version field),
    not as an entry from a newer safecache.  ``opened_as`` receives the
    file's ``fstat``, so a caller can later remove the very file it judged.
    """
    opened = open_regular(folder, name)
    if opened is None:
        return None
    fd, block, st = opened
    try:
        if opened_as is not None:
            opened_as.append(st)
        raw = bytes.fromhex(name)
        try:
            header, data = _format.read_entry(fd, block, raw, keep=payload, size=st.st_size)
        except Invalid as invalid:
            if exact_version and invalid.reason == "unsupported-version" and not _format.header_checksum_ok(block):
                raise Invalid("bad-header", "header checksum mismatch (damaged version field)") from None
            raise
        return header, data, st
    finally:
        _osops.current.close(fd)


def header_of(folder: Folder, name: str) -> _format.Header | None:
    """The header of the entry ``name`` (kind, expiry...); None if it is
    unreadable or invalid."""
    try:
        opened = open_regular(folder, name)  # retries "in use" errors
    except OSError:
        return None
    if opened is None:
        return None
    fd, block, _st = opened
    try:
        return _format.parse_header(block, bytes.fromhex(name))
    except Invalid:
        return None
    finally:
        _osops.current.close(fd)


def read_pointer(
    folder: Folder, name: str, opened_as: list[os.stat_result] | None = None
) -> tuple[_format.Header, Manifest, os.stat_result] | None:
    """A tree pointer's header and manifest; None if gone (or not a regular
    file).  Raises ``Invalid`` or ``ValueError`` (a pointer no reader would
    use), ``OSError``."""
    from ._manifest import Manifest  # here: Cache.close() imports this module, and most tools never use trees

    loaded = load(folder, name, payload=True, opened_as=opened_as)
    if loaded is None:
        return None
    header, payload, st = loaded
    assert payload is not None
    try:
        manifest = Manifest.from_bytes(payload)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        if getattr(exc, "newer", False):  # a newer safecache's tree: left alone, as its entries are
            raise Invalid("unsupported-version", str(exc)) from None
        raise ValueError(f"bad manifest: {exc}") from None
    return header, manifest, st

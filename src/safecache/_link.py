"""Placing cached files into a destination: clone, hard link, symlink or copy.

The modes and their fallbacks follow uv's (``crates/uv-fs/src/link.rs``):

* ``"clone"`` (alias ``"reflink"``) falls back to ``"hardlink"``, which falls
  back to ``"copy"``; ``"symlink"`` falls back to ``"copy"``; ``"copy"`` is
  terminal.  ``"auto"`` is ``"clone"`` without the warning for its first step
  (a file system that cannot clone is the common case, not a surprise).
* The decision is made on the first file: if a mode is not supported here
  (cross-device, no privilege, a file system without reflinks or hard links),
  the placer moves down the chain and stays there.  Once a hard link or
  symlink has worked, a later failure is an error like any other, with two
  exceptions: too many links (``EMLINK``) copies that one file, and a clone
  may fail for one file (ZFS's ``EAGAIN``, a special inode) and that file
  goes down the chain alone.

Each fallback is recorded in :attr:`Placer.fallbacks`, logged to the
``safecache`` logger, and the first of each kind in a process is reported as
a :class:`safecache.CacheWarning`.  Every system call goes through
``_osops.current``.

Trees are placed file by file with :meth:`Placer.place_at`, through the
directory handles at the end of this module (:class:`Dir`, :class:`Dirs`,
:class:`Source`): names relative to open directories where the OS has
them, so no symlink is ever followed in the cache's tree or in the
destination, and every placed file is checked to be the one its manifest
lists.
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from . import _errcodes, _fs, _osops, _policy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable

MODES = ("auto", "clone", "hardlink", "symlink", "copy")
ENV_VAR = "SAFECACHE_LINK_MODE"
_ALIASES = {"reflink": "clone"}
_NEXT = {"clone": "hardlink", "hardlink": "copy", "symlink": "copy"}


def _codes(*names: str) -> frozenset[int]:
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# Errors meaning "this mode does not work here" (not "this file failed").
_UNSUPPORTED = _codes("EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EXDEV")
_UNSUPPORTED_BY_MODE = {
    # FICLONE: ENOTTY or EINVAL from file systems without the ioctl, EBADF
    # from some (ioctl_ficlone(2)).
    "clone": _UNSUPPORTED | _codes("ENOTTY", "EINVAL", "EBADF"),
    # Linux protected_hardlinks, FAT, a cache owned by another user.
    "hardlink": _UNSUPPORTED | _codes("EPERM", "EACCES"),
    "symlink": _UNSUPPORTED | _codes("EPERM", "EACCES"),
}
# Windows: no hard links on FAT, across volumes, no symlink privilege.
_UNSUPPORTED_WINERRORS = frozenset({
    _errcodes.ERROR_INVALID_FUNCTION,
    _errcodes.ERROR_NOT_SAME_DEVICE,
    _errcodes.ERROR_NOT_SUPPORTED,
    _errcodes.ERROR_PRIVILEGE_NOT_HELD,
})
# A sharing or lock violation is another process holding the file, not a
# missing capability (its errno is EACCES all the same).
_BUSY_WINERRORS = _errcodes.TRANSIENT_WINERRORS
# A clone that worked before may still fail for one file: ZFS reports EAGAIN
# (uv #19674), a file being written or executed EBUSY or ETXTBSY.
_CLONE_ONE_FILE = _codes("EAGAIN", "EWOULDBLOCK", "EBUSY", "ETXTBSY")


def resolve_mode(mode: str | None) -> str:
    """The link mode to use: ``mode``, else ``$SAFECACHE_LINK_MODE``, else
    ``"auto"``.  Raises ``ValueError`` for a name that is not a mode."""
    origin = "link mode"
    if mode is None:
        mode = os.environ.get(ENV_VAR, "").strip()
        origin = ENV_VAR
        if not mode:
            return "auto"
    name = mode.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in MODES:
        raise ValueError(f"invalid {origin} {mode!r}: use one of {', '.join(MODES)}")
    return name


def unsupported(mode: str, exc: OSError) -> bool:
    """Whether ``exc`` means that ``mode`` (``"clone"``, ``"hardlink"`` or
    ``"symlink"``) does not work here at all, rather than that one file
    failed: the placer falls back on it, and so does a tree's symlink."""
    winerror = _errcodes.winerror(exc)
    if winerror is not None:
        if winerror in _UNSUPPORTED_WINERRORS:
            return True
        if winerror in _BUSY_WINERRORS:
            return False
    return exc.errno in _UNSUPPORTED_BY_MODE.get(mode, frozenset())


class Placer:
    """Places regular files by one link mode, falling back as uv does.

    ``mode``: one of :data:`MODES` or ``None`` (see :func:`resolve_mode`).
    ``used`` counts the files placed per mode actually used; ``fallbacks``
    lists ``(from_mode, to_mode, reason)`` for every fallback, in order.
    Not thread-safe: use one per thread.
    """

    def __init__(self, mode: str | None = None) -> None:
        self.mode = resolve_mode(mode)
        self.used: dict[str, int] = {}
        self.fallbacks: list[tuple[str, str, str]] = []
        self._current = "clone" if self.mode == "auto" else self.mode
        self._decided = False  # whether _current has worked for a file

    def __repr__(self) -> str:
        return f"Placer(mode={self.mode!r}, current={self._current!r}, used={self.used!r})"

    def place(self, src: str, dst: str) -> str:
        """Place the regular file ``src`` at ``dst``, which must not exist.

        Returns the mode used for this file.  Raises the ``OSError`` of the
        last mode tried when no fallback applies (a missing ``src``, an
        existing ``dst``, a full disk, a later failure of a decided mode).
        """
        return self._run(lambda mode: self._attempt(mode, src, dst), src)

    def place_at(self, source: Source, dst: Dir, name: str) -> str:
        """Place the tree file ``source`` as the new entry ``name`` of the
        directory ``dst``, as :meth:`place` does, checking that what is
        placed is a regular file of the size the manifest lists: the
        descriptor copied or cloned from (opened with ``O_NOFOLLOW``), or
        the new hard link itself, which is the very inode linked.  Never
        follows a symlink, in the cache or in ``dst``.

        Raises :class:`SourceChanged` (nothing left at ``name``) when the
        cache's file is not that; otherwise as :meth:`place`.
        """
        return self._run(lambda mode: self._attempt_at(mode, source, dst, name), source)

    def _run(self, attempt: Callable[[str], None], src: object) -> str:
        """``attempt(mode)`` down the fallback chain; the mode that worked."""
        mode = self._current
        while True:
            try:
                attempt(mode)
            except SourceChanged:
                raise
            except OSError as exc:
                next_mode = self._next_mode(mode, exc, src)
                if next_mode is None:
                    raise
                mode = next_mode
                continue
            if mode == self._current:
                self._decided = True
            self.used[mode] = self.used.get(mode, 0) + 1
            return mode

    def _next_mode(self, mode: str, exc: OSError, src: object) -> str | None:
        """The mode to try next after ``mode`` failed with ``exc``, or None
        to raise it."""
        if mode == "hardlink" and exc.errno == errno.EMLINK:
            return self._fall_back(mode, exc, src, decide=False, to="copy")
        if mode == "copy":
            return None
        refused = unsupported(mode, exc)
        if mode != self._current:  # already going down the chain for this file
            return self._fall_back(mode, exc, src, decide=False) if refused else None
        if refused and not self._decided:  # the first file decides
            return self._fall_back(mode, exc, src, decide=True)
        if mode == "clone" and (refused or exc.errno in _CLONE_ONE_FILE):
            return self._fall_back(mode, exc, src, decide=False)
        return None

    def _attempt(self, mode: str, src: str, dst: str) -> None:
        ops = _osops.current
        if mode == "clone":
            ops.clone(src, dst)
        elif mode == "hardlink":
            ops.link(src, dst)
        elif mode == "symlink":
            ops.symlink(os.path.abspath(src), dst)
        else:
            ops.copyfile(src, dst)

    def _attempt_at(self, mode: str, source: Source, dst: Dir, name: str) -> None:
        ops = _osops.current
        if dst.fd is None or source.dir.fd is None:
            # The path-based way (Windows): check the entry, place by path,
            # check what was placed (a swap in between is not prevented).
            source.check()
            self._attempt(mode, source.path, dst.entry(name))
            if mode != "symlink":
                source.check_placed(dst, name)
        elif mode == "clone":
            ops.clone_at(source.open(), name, dir_fd=dst.fd)
        elif mode == "hardlink":
            try:
                ops.link_at(source.name, name, src_dir_fd=source.dir.fd, dst_dir_fd=dst.fd)
            except PermissionError:
                source.check()  # a directory cannot be linked (EPERM): that is no reason to fall back
                raise
            source.check_placed(dst, name)  # what was linked: a symlink, a FIFO, another size?
        elif mode == "symlink":
            source.check()
            ops.symlink_at(os.path.abspath(source.path), name, dir_fd=dst.fd)
        else:
            ops.copyfile_at(source.open(), name, dir_fd=dst.fd)

    def _fall_back(self, mode: str, exc: OSError, src: object, *, decide: bool, to: str | None = None) -> str:
        """Record and report the fallback from ``mode``; return the next
        mode.  ``decide``: the placer stays on the next mode for later files."""
        new = to or _NEXT[mode]
        reason = _policy.describe_exception(exc)
        self.fallbacks.append((mode, new, reason))
        if decide:
            self._current = new
            self._decided = False
        scope = "" if decide else " for this file"
        _policy.logger().info("link mode %s failed for %s (%s); using %s%s", mode, src, reason, new, scope)
        if not (self.mode == "auto" and mode == "clone"):
            kind = f"link-fallback:{mode}->{new}" + (":too-many-links" if exc.errno == errno.EMLINK else "")
            _policy.warn_once(kind, "", _warning(mode, new, exc, reason))
        return new


#: The name doctor knows it by, until it calls :func:`unsupported`.
_unsupported = unsupported


def _warning(mode: str, new: str, exc: OSError, reason: str) -> str:
    if mode == "hardlink" and exc.errno == errno.EMLINK:
        return f"safecache: a cached file has too many hard links ({reason}); copying such files instead."
    verb = {"clone": "clone", "hardlink": "hard-link", "symlink": "symlink"}[mode]
    hint = {
        "clone": "This file system cannot clone files (btrfs, XFS with reflink and APFS can; on Windows, not yet).",
        "hardlink": "If the cache and the destination are on different file systems, this is expected.",
        "symlink": "On Windows, creating symlinks needs Developer Mode or administrator rights.",
    }[mode]
    advice = "auto" if mode == "clone" else "copy"
    return (
        f"safecache: failed to {verb} files ({reason}); falling back to {new}. {hint}"
        f" Set {ENV_VAR}={advice} to silence this warning."
    )


# -- directories reached without following a symlink ------------------------------------------
# Trees are placed and verified through these.  Where the OS resolves names
# relative to a directory descriptor (OsOps.has_dir_fd: POSIX), every step
# is one name in an open directory, opened with O_NOFOLLOW | O_DIRECTORY,
# as shutil.rmtree does where it can: a directory of the tree or of the
# destination swapped for a symlink is refused, not followed, however late
# the swap.  Elsewhere (Windows has no dir_fd; the emulator models paths)
# each directory is reached by path after an lstat of every component that
# refuses symlinks and junctions; a swap between that check and the use is
# not closed there (it needs write access to the cache or the destination).

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NONBLOCK", 0) | _osops.O_CLOEXEC | _osops.O_NOFOLLOW
# What opening a symlink with O_NOFOLLOW reports: ELOOP (Linux, macOS),
# EMLINK (FreeBSD); and a non-directory with O_DIRECTORY: ENOTDIR.
_NOT_A_DIR = _codes("ELOOP", "EMLINK", "ENOTDIR")
_REPARSE_POINT = 0x400  # FILE_ATTRIBUTE_REPARSE_POINT: a symlink or junction on Windows


def is_real_dir(st: os.stat_result) -> bool:
    """An lstat result of a directory: not a symlink, not a junction."""
    return _stat.S_ISDIR(st.st_mode) and not getattr(st, "st_file_attributes", 0) & _REPARSE_POINT


def _not_a_directory(path: str) -> NotADirectoryError:
    return NotADirectoryError(errno.ENOTDIR, "not a directory (or a symbolic link, which is never followed)", path)


class SourceChanged(OSError):
    """The cache's file is not the one the manifest describes (a symlink, a
    directory, another size or inode), or could not be opened: it is
    reported missing, never placed."""


class Dir:
    """A directory reached without following a symlink: by descriptor
    ``fd``, or (``fd`` None) by a checked ``path``.  Each method names one
    entry in it.  Never follows a symlink at that entry either (``lstat``,
    ``O_NOFOLLOW``), except that :meth:`child` refuses one outright."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    def __repr__(self) -> str:
        return f"Dir({self.path!r}, fd={self.fd})"

    def close(self) -> None:
        """Close the descriptor; a closed Dir fails with EBADF (its number is
        never left to name whatever is opened next)."""
        if self.fd is not None and self.fd >= 0:
            fd, self.fd = self.fd, -1
            _osops.current.close(fd)

    def entry(self, name: str) -> str:
        return os.path.join(self.path, name)

    def lstat(self, name: str) -> os.stat_result:
        if self.fd is None:
            return _osops.current.lstat(self.entry(name))
        return _osops.current.lstat_at(name, dir_fd=self.fd)

    def child(self, name: str) -> Dir:
        """The subdirectory ``name``.  ``FileNotFoundError`` if absent,
        ``NotADirectoryError`` if anything but a real directory is there."""
        ops = _osops.current
        path = self.entry(name)
        if self.fd is None:
            if not is_real_dir(ops.lstat(path)):
                raise _not_a_directory(path)
            return Dir(path, None)
        try:
            return Dir(path, ops.open_at(name, _DIR_FLAGS, dir_fd=self.fd))
        except OSError as exc:
            if exc.errno in _NOT_A_DIR:
                raise _not_a_directory(path) from None
            raise

    def open_file(self, name: str) -> int:
        """A descriptor for reading the entry ``name`` (``O_NOFOLLOW``,
        non-blocking: the caller checks that it is a regular file)."""
        if self.fd is None:
            return _osops.current.open(self.entry(name), _osops.READ_FLAGS)
        return _osops.current.open_at(name, _osops.READ_FLAGS, dir_fd=self.fd)

    def names(self) -> list[str]:
        if self.fd is None:
            return _osops.current.listdir(self.path)
        return _osops.current.listdir_fd(self.fd)

    def readlink(self, name: str) -> str:
        if self.fd is None:
            return _osops.current.readlink(self.entry(name))
        return _osops.current.readlink_at(name, dir_fd=self.fd)

    def mkdir(self, name: str, mode: int = _fs.DIR_MODE) -> None:
        if self.fd is None:
            _osops.current.mkdir(self.entry(name), mode)
        else:
            _osops.current.mkdir_at(name, mode, dir_fd=self.fd)

    def symlink(self, target: str, name: str) -> None:
        if self.fd is None:
            _osops.current.symlink(target, self.entry(name))
        else:
            _osops.current.symlink_at(target, name, dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove the non-directory ``name`` (a symlink itself, not its target)."""
        if self.fd is None:
            _fs.remove(self.entry(name))
        else:
            fd = self.fd
            _fs.retry("unlink", lambda: _osops.current.unlink_at(name, dir_fd=fd))

    def discard(self, name: str) -> None:
        """:meth:`unlink` if possible; never raises (failure paths)."""
        try:
            self.unlink(name)
        except OSError:
            pass

    def replace(self, src: str, dst: str) -> None:
        """Rename the entry ``src`` over ``dst``, both in this directory."""
        if self.fd is None:
            _fs.replace_file(self.entry(src), self.entry(dst))
        else:
            fd = self.fd
            _fs.retry("replace", lambda: _osops.current.replace_at(src, dst, src_dir_fd=fd, dst_dir_fd=fd))


def open_root(path: str, *, follow: bool = False) -> Dir:
    """The directory ``path`` as a :class:`Dir`.  Its last component must be
    a real directory, not a symlink to one, unless ``follow`` (a destination
    the caller named: the caller's path is the caller's).  Raises
    ``FileNotFoundError``, ``NotADirectoryError`` or another ``OSError``."""
    ops = _osops.current
    if not ops.has_dir_fd():
        st = ops.stat(path) if follow else ops.lstat(path)
        if not (_stat.S_ISDIR(st.st_mode) if follow else is_real_dir(st)):
            raise _not_a_directory(path)
        return Dir(path, None)
    try:
        return Dir(path, ops.open(path, _DIR_FLAGS & ~_osops.O_NOFOLLOW if follow else _DIR_FLAGS))
    except OSError as exc:
        if exc.errno in _NOT_A_DIR:
            raise _not_a_directory(path) from None
        raise


class Dirs:
    """The directories under one root, reached from it one component at a
    time by :meth:`Dir.child`; the ``keep`` most recently used stay open.
    A Dir from :meth:`get` is valid until the next :meth:`get` may close it
    (after ``keep`` others); :meth:`close` closes all but the root."""

    def __init__(self, root: Dir, keep: int = 32) -> None:
        self.root = root
        self._open: dict[str, Dir] = {}
        self._keep = max(keep, 4)
        self._last_rel = ""
        self._last = root

    def get(self, rel: str) -> Dir:
        """The directory at the ``/``-separated ``rel`` ("" is the root);
        raises as :meth:`Dir.child`."""
        if not rel:
            return self.root
        if rel == self._last_rel:  # files come directory by directory
            return self._last
        found = self._open.pop(rel, None)
        if found is None:
            parent, _, name = rel.rpartition("/")
            found = self.get(parent).child(name)
        self._open[rel] = found  # the most recently used last
        while len(self._open) > self._keep:
            self._open.pop(next(iter(self._open))).close()
        self._last_rel, self._last = rel, found
        return found

    def close(self) -> None:
        for d in self._open.values():
            d.close()
        self._open.clear()
        self._last_rel, self._last = "", self.root


class Source:
    """A regular file of a tree about to be placed: the entry ``name`` of
    ``dir``, which the manifest lists with ``size`` bytes.  Whatever is
    placed from it is checked to be a regular file of that size."""

    __slots__ = ("dir", "name", "size", "_fd", "_st")

    def __init__(self, directory: Dir, name: str, size: int) -> None:
        self.dir = directory
        self.name = name
        self.size = size
        self._fd: int | None = None
        self._st: os.stat_result | None = None

    def __str__(self) -> str:
        return self.path

    @property
    def path(self) -> str:
        return self.dir.entry(self.name)

    def _changed(self, what: str) -> SourceChanged:
        return SourceChanged(errno.ESTALE, f"the cache's file is {what}, not the file its manifest lists", self.path)

    def _expected(self, st: os.stat_result) -> bool:
        return _stat.S_ISREG(st.st_mode) and st.st_size == self.size

    def lstat(self) -> os.stat_result:
        """The entry's lstat (once); :class:`SourceChanged` if it cannot be
        had (absent, unreadable)."""
        if self._st is None:
            try:
                self._st = self.dir.lstat(self.name)
            except OSError as exc:
                raise SourceChanged(exc.errno, f"the cache's file: {exc.strerror}", self.path) from None
        return self._st

    def check(self) -> None:
        """Before placing by name: the entry is a regular file of the size."""
        if not self._expected(self.lstat()):
            raise self._changed("a symlink, a directory, a device or another size")

    def check_placed(self, dst: Dir, name: str) -> None:
        """After placing ``name`` in ``dst`` by name: it is a regular file of
        the size (a hard link is the inode linked); else it is removed."""
        if not self._expected(dst.lstat(name)):
            dst.discard(name)
            raise self._changed("a symlink, a directory, a device or another size")

    def open(self) -> int:
        """A descriptor of the file (opened once, never through a symlink),
        a regular file of the size; else :class:`SourceChanged`."""
        if self._fd is not None:
            return self._fd
        ops = _osops.current
        try:
            fd = self.dir.open_file(self.name)
        except OSError as exc:  # absent, a symlink (ELOOP), unreadable: not placed
            raise SourceChanged(exc.errno, f"cannot open the cache's file: {exc.strerror}", self.path) from None
        if not self._expected(ops.fstat(fd)):
            ops.close(fd)
            raise self._changed("a directory, a device or another size")
        self._fd = fd
        return fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            _osops.current.close(fd)

"""Helpers for testing code that uses safecache: Windows file semantics on
Linux, and fault injection.

Every system call safecache makes goes through ``safecache._osops.current``.
This module swaps that object for one that behaves differently, so the code
under test is the real code:

* :class:`WindowsOps` (installed with :func:`windows_semantics` or
  :func:`enable_windows_semantics`) makes Linux refuse what Windows refuses
  -- replacing a file another process has open, deleting a file that is open
  without ``FILE_SHARE_DELETE``, renaming onto an existing name -- with the
  exceptions CPython raises on Windows (``PermissionError`` with
  ``winerror`` 5 or 32, ``FileExistsError`` with ``winerror`` 183, ...).
  Open handles are visible across processes, so many real processes can
  share one cache root under the emulation.  It can also inject the
  transient denials an antivirus scanner causes.
* :class:`FaultOps` (installed with :func:`inject_errors`) raises a chosen
  error from chosen operations, on top of whatever is in force.

docs/testing.md describes every rule, option and limit.  The Windows
behaviour modelled here is the one documented by Microsoft and implemented
by Wine's ``server/fd.c``; the error numbers are those of CPython's
``PC/errmap.h``.

:class:`WindowsOps` needs Linux (open file description locks, Linux 3.15+)
and a local file system that supports them (not NFS).  :class:`FaultOps`
works everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import os
import random
import stat
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, NamedTuple, TypedDict, TypeVar, Union

from safecache import _osops
from safecache._osops import OsOps

try:
    import fcntl
except ImportError:  # Windows: FaultOps still works, WindowsOps does not
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "OPERATIONS",
    "Call",
    "ErrorSpec",
    "FaultOps",
    "WinError",
    "WindowsOps",
    "WindowsOptions",
    "disable_windows_semantics",
    "enable_windows_semantics",
    "holding",
    "inject_errors",
    "make_oserror",
    "windows_semantics",
]

# ---------------------------------------------------------------------------
# Windows error codes
# ---------------------------------------------------------------------------

ERROR_INVALID_FUNCTION = 1
ERROR_ACCESS_DENIED = 5
ERROR_SHARING_VIOLATION = 32
ERROR_LOCK_VIOLATION = 33
ERROR_NOT_SUPPORTED = 50
ERROR_FILE_EXISTS = 80
ERROR_INVALID_NAME = 123
ERROR_DIR_NOT_EMPTY = 145
ERROR_ALREADY_EXISTS = 183
ERROR_DIRECTORY = 267
ERROR_PRIVILEGE_NOT_HELD = 1314

# winerror -> (errno CPython derives from it in PC/errmap.h, the text of
# FormatMessage without its final period, as CPython strips it).  Codes not
# listed map to EINVAL, like errmap.h's default branch.
_WINERRORS: dict[int, tuple[int, str]] = {
    1: (errno.EINVAL, "Incorrect function"),
    2: (errno.ENOENT, "The system cannot find the file specified"),
    3: (errno.ENOENT, "The system cannot find the path specified"),
    5: (errno.EACCES, "Access is denied"),
    17: (errno.EXDEV, "The system cannot move the file to a different disk drive"),
    32: (
        errno.EACCES,
        "The process cannot access the file because it is being used by another process",
    ),
    33: (
        errno.EACCES,
        "The process cannot access the file because another process has locked a portion of the file",
    ),
    50: (errno.EINVAL, "The request is not supported"),
    80: (errno.EEXIST, "The file exists"),
    112: (errno.ENOSPC, "There is not enough space on the disk"),
    123: (errno.EINVAL, "The filename, directory name, or volume label syntax is incorrect"),
    145: (errno.ENOTEMPTY, "The directory is not empty"),
    183: (errno.EEXIST, "Cannot create a file when that file already exists"),
    267: (errno.ENOTDIR, "The directory name is invalid"),
    1224: (
        errno.EINVAL,
        "The requested operation cannot be performed on a file with a user-mapped section open",
    ),
    1314: (errno.EINVAL, "A required privilege is not held by the client"),
}


@dataclass(frozen=True)
class WinError:
    """A Windows error code, as an argument to :func:`make_oserror` and
    :func:`inject_errors` (a bare ``int`` there is an errno).

    ``WinError(32)`` becomes ``PermissionError(EACCES, "The process cannot
    access the file ...", path)`` with ``winerror == 32``: the errno is the
    one CPython derives from the code on Windows (``PC/errmap.h``).
    """

    code: int


def make_oserror(
    error: int | WinError, path: str | None = None, path2: str | None = None
) -> OSError:
    """Build the exception the OS would raise for ``error`` on ``path``.

    ``error`` is an errno (``errno.ENOSPC``) or a :class:`WinError`.  The
    result is an instance of the builtin subclass Python picks for that errno
    (``PermissionError`` for ``EACCES``, ``FileExistsError`` for ``EEXIST``,
    plain ``OSError`` for ``EIO``, ...), with ``filename``/``filename2`` set
    to ``path``/``path2``.  For a :class:`WinError`, ``winerror`` is set too
    (Python sets it only on Windows; code that checks
    ``getattr(exc, "winerror", None)`` sees it here as it would there).
    """
    if isinstance(error, WinError):
        code, message = _WINERRORS.get(error.code, (errno.EINVAL, f"Windows error {error.code}"))
        exc = OSError(code, message, path, None, path2)
        exc.winerror = error.code  # type: ignore[attr-defined]
        return exc
    return OSError(error, os.strerror(error), path, None, path2)


def _windows_error(
    code: int, path: str | None, path2: str | None = None, *, reason: str, crt: bool = False
) -> OSError:
    """A Windows error raised by the emulator, saying which rule fired.

    ``crt``: the call goes through the C runtime on Windows (``os.open`` is
    ``_wopen``; ``os.read``/``os.write`` are ``_read``/``_write``), which
    turns the Windows code into an errno and drops it: CPython then raises
    the errno's exception with the C library's message and no ``winerror``
    ("PermissionError: [Errno 13] Permission denied" for a sharing
    violation).
    """
    if crt:
        number = _WINERRORS.get(code, (errno.EINVAL, ""))[0]
        exc = OSError(number, os.strerror(number), path, None, path2)
    else:
        exc = make_oserror(WinError(code), path, path2)
    # Windows says only "Access is denied"; the emulator can say why, which
    # saves a debugging session when a test fails on it.
    exc.emulated_winerror = code  # type: ignore[attr-defined]
    exc.emulated_reason = f"{reason} (Windows error {code})"  # type: ignore[attr-defined]
    if sys.version_info >= (3, 11):
        exc.add_note(f"safecache.testing (emulated Windows): {reason} (Windows error {code})")
    return exc


# ---------------------------------------------------------------------------
# Per-process randomness and counters
# ---------------------------------------------------------------------------


def _stream_seed(seed: int, owner_pid: int) -> str:
    """The seed of this process's random stream.

    Each process needs its own stream (children that repeat their parent's
    choices would all be denied at the same step), and a stream that is the
    same on every run.  Process ids differ between runs, so a process started
    by ``multiprocessing`` is told apart by its name ("Process-3",
    "ForkPoolWorker-2"), which follows the order processes were started in.
    The process that made the object uses the seed alone; other forked
    processes fall back to their pid.
    """
    mp = sys.modules.get("multiprocessing")
    name = mp.current_process().name if mp is not None else "MainProcess"
    if name != "MainProcess":
        return f"{seed}/{name}"
    pid = os.getpid()
    return f"{seed}" if pid == owner_pid else f"{seed}/pid-{pid}"


class _PerProcess:
    """A seeded random stream and counters that each process has its own of.

    A forked child inherits the parent's object; the pid check makes it start
    a fresh stream and fresh counters instead of replaying the parent's.
    """

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._owner = os.getpid()
        self._pid = -1
        self._rng = random.Random()
        self._stats: dict[str, int] = {}
        self._records: list[Any] = []
        self._lock = threading.Lock()

    def _current(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            self._lock = threading.Lock()  # the parent's may be held by a thread that did not fork
            self._stats = {}
            self._records = []
            self._rng = random.Random(None if self._seed is None else _stream_seed(self._seed, self._owner))

    def chance(self, probability: float) -> bool:
        if probability <= 0.0:
            return False  # draw nothing: a zero probability must not shift the stream
        self._current()
        with self._lock:
            return self._rng.random() < probability

    def choice(self, options: tuple[int, ...]) -> int:
        self._current()
        with self._lock:
            return self._rng.choice(options)

    def count(self, key: str) -> None:
        self._current()
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + 1

    def take(self, key: str, limit: int | None) -> bool:
        """Count one more ``key`` unless ``limit`` are already counted."""
        self._current()
        with self._lock:
            done = self._stats.get(key, 0)
            if limit is not None and done >= limit:
                return False
            self._stats[key] = done + 1
            return True

    def stats(self) -> dict[str, int]:
        self._current()
        with self._lock:
            return dict(self._stats)

    def records(self) -> list[Any]:
        """A list this process appends to (a forked child starts empty)."""
        self._current()
        return self._records


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
    return float(value)


# ---------------------------------------------------------------------------
# Open handles, visible to every process
# ---------------------------------------------------------------------------
#
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


def _read_only(st: os.stat_result) -> bool:
    # Python's os.chmod on Windows maps the owner write bit to the read-only
    # attribute, and os.stat maps it back: the write bit *is* the attribute.
    return stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWRITE


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------

_INVALID_CHARS = frozenset('<>:"|?*\\') | frozenset(chr(c) for c in range(32))
_RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)]
)
_PENDING = ".~delete-pending-"


def _name_problem(path: str) -> str | None:
    """Why the last component of ``path`` would not name the same file on
    Windows, or None."""
    name = os.path.basename(path.rstrip("/")) or path
    if name in (".", ".."):
        return None
    bad = sorted(set(name) & _INVALID_CHARS)
    if bad:
        return f"name {name!r} contains {''.join(bad)!r}, which Windows does not allow"
    if name.endswith((".", " ")):
        return f"Windows strips the trailing dot or space of {name!r}"
    if name.split(".")[0].rstrip(" ").upper() in _RESERVED_NAMES:
        return f"{name!r} names a device on Windows"
    return None


def _is_zombie(path: str) -> bool:
    return _PENDING in os.path.basename(path)


@functools.lru_cache(maxsize=None)
def _renameat2() -> Callable[..., int] | None:
    """glibc's renameat2, or None (musl before 1.2.5, very old glibc)."""
    import ctypes

    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
    return func


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename without ever replacing ``dst`` (Windows' MoveFileExW without
    MOVEFILE_REPLACE_EXISTING), atomically where renameat2 exists.

    A check-then-rename would let a racing creator's file be replaced
    silently, which Windows never does; code that relies on "rename fails if
    the name exists" must see that failure under the emulation too.
    """
    renameat2 = _renameat2()
    if renameat2 is not None:
        import ctypes

        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # not supported by this file system
            raise OSError(code, os.strerror(code), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), src, None, dst)
    os.rename(src, dst)


# ---------------------------------------------------------------------------
# WindowsOps
# ---------------------------------------------------------------------------


class WindowsOptions(TypedDict):
    """The options of a :class:`WindowsOps`, as :attr:`WindowsOps.options`
    returns them (to re-create it in a spawned child process)."""

    posix_delete: bool
    posix_rename: bool
    hardlinks: bool
    symlinks: bool
    strict_names: bool
    transient_denials: float
    transient_lock_violations: float | None
    seed: int | None
    block_cloning: bool


# Operations an antivirus scanner or indexer can make fail for a moment, and
# the Windows errors each one sees (sharing violation, or access denied:
# MoveFileExW reports a target held open as 5; a delete-pending name is 5).
_TRANSIENT_CODES: dict[str, tuple[int, ...]] = {
    "open": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "replace": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "rename": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "unlink": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "rmdir": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
}

# Linux errors of the real call, as the Win32 call on Windows reports them.
# Others (EROFS, EIO, ...) pass through unchanged.
_WIN32_CODE_FOR_ERRNO: dict[int, int] = {
    errno.ENOENT: 2,  # or 3 when a directory on the way is missing
    errno.EACCES: ERROR_ACCESS_DENIED,
    errno.EPERM: ERROR_ACCESS_DENIED,
    errno.EEXIST: ERROR_ALREADY_EXISTS,
    errno.ENOTEMPTY: ERROR_DIR_NOT_EMPTY,
    errno.ENOSPC: 112,
}

T = TypeVar("T")

# What FICLONE says on a file system that cannot clone (see OsOps.clone).
_CLONE_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTTY, errno.EINVAL, errno.EBADF, errno.ENOSYS}
)


def _as_win32_error(exc: OSError) -> OSError:
    """``exc`` from a real Linux call, as the Win32 call would report it
    (with ``winerror``)."""
    code = _WIN32_CODE_FOR_ERRNO.get(exc.errno or 0)
    if code is None or getattr(exc, "winerror", None) is not None:
        return exc
    if code == 2:
        for name in (exc.filename, exc.filename2):
            if isinstance(name, str) and not os.path.isdir(os.path.dirname(os.path.abspath(name))):
                code = 3  # ERROR_PATH_NOT_FOUND
    new = make_oserror(WinError(code), exc.filename, exc.filename2)
    new.emulated_winerror = code  # type: ignore[attr-defined]
    linux = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    new.emulated_reason = f"the Linux error {linux}"  # type: ignore[attr-defined]
    return new


def _win32(func: Callable[..., T], *args: Any) -> T:
    """Call a real ``os`` function, raising its errors as Windows would."""
    try:
        return func(*args)
    except OSError as exc:
        raise _as_win32_error(exc) from None


class WindowsOps(OsOps):
    """The operating system, refusing what Windows would refuse.

    Models classic Windows semantics as CPython meets them: ``os.replace``
    is ``MoveFileExW(MOVEFILE_REPLACE_EXISTING)``, ``os.rename`` is
    ``MoveFileExW`` without it, Python's ``open``/``os.open`` share read and
    write but not delete, and :meth:`open` with ``share_delete=True`` (a
    read-only open) shares delete as well.  Handles are visible across
    processes.

    Errors have the shape CPython gives them on Windows: the builtin
    exception for the errno CPython derives from the Windows code, with
    ``winerror`` set for calls that go to Win32 (``replace``, ``rename``,
    ``unlink``, ``rmdir``, ``mkdir``, ``link``, ``stat``, ... and the
    share-delete open).  ``os.open``, ``os.read`` and ``os.write`` go
    through the C runtime on Windows, which keeps only the errno: their
    errors have no ``winerror`` here either.  Every error the emulator
    raises carries ``emulated_winerror`` (the Windows code underneath, even
    where CPython drops it) and ``emulated_reason`` (the rule, in words).

    Options:

    ``posix_delete`` (default True, like Windows 10 1903+ on NTFS)
        A delete succeeds when every other handle shares delete, and the name
        disappears at once.  False models classic delete: the name stays,
        delete-pending, until the last handle closes.
    ``posix_rename`` (default False, like ``MoveFileExW``)
        True lets :meth:`replace` replace a file whose handles all share
        delete (``FILE_RENAME_POSIX_SEMANTICS``); other handles still give 32.
    ``hardlinks`` (default True)
        False models FAT/exFAT: :meth:`link` fails with winerror 1.
    ``symlinks`` (default False)
        False models a user without the symlink privilege (winerror 1314);
        True models Developer Mode or an administrator.
    ``strict_names`` (default True)
        Refuse to create names that would not name the same file on Windows
        (reserved characters, trailing dot or space, device names) with
        winerror 123.
    ``transient_denials`` (default 0.0)
        Probability that an open of an existing file, a replace, rename,
        unlink or rmdir fails with Windows error 32 or 5 before doing
        anything, as when an antivirus scanner holds the file for a moment.
    ``transient_lock_violations`` (default: ``transient_denials / 10``)
        Probability that a read or write fails with Windows error 33 (as
        ``PermissionError(EACCES)``: the C runtime drops the code).
    ``seed``
        Makes the transient denials reproducible; each process draws from
        its own stream (see docs/testing.md).
    ``block_cloning`` (default False)
        False models a volume without block cloning (NTFS, FAT):
        :meth:`clone` fails with winerror 50.  True models ReFS or a Dev
        Drive: :meth:`clone` clones for real where the Linux file system
        can (``FICLONE``: btrfs, XFS with reflink), else fails with 50.

    Raises ``RuntimeError`` where open file description locks are missing
    (not Linux).
    """

    name = "windows-emulated"

    def __init__(
        self,
        *,
        posix_delete: bool = True,
        posix_rename: bool = False,
        hardlinks: bool = True,
        symlinks: bool = False,
        strict_names: bool = True,
        transient_denials: float = 0.0,
        transient_lock_violations: float | None = None,
        seed: int | None = None,
        block_cloning: bool = False,
    ) -> None:
        _require_ofd_locks()
        self.posix_delete = posix_delete
        self.posix_rename = posix_rename
        self.hardlinks = hardlinks
        self.symlinks = symlinks
        self.strict_names = strict_names
        self.transient_denials = _check_probability("transient_denials", transient_denials)
        # Byte-range locks on cache files by third parties are much rarer
        # than scanners holding them: "occasionally", by default.
        self.transient_lock_violations = (
            self.transient_denials / 10
            if transient_lock_violations is None
            else _check_probability("transient_lock_violations", transient_lock_violations)
        )
        self._lock_violations_option = transient_lock_violations
        self.seed = seed
        self.block_cloning = block_cloning
        self._process = _PerProcess(seed)

    @property
    def options(self) -> WindowsOptions:
        """The options this object was made with: pass them as
        ``enable_windows_semantics(**ops.options)`` in a spawned child."""
        return WindowsOptions(
            posix_delete=self.posix_delete,
            posix_rename=self.posix_rename,
            hardlinks=self.hardlinks,
            symlinks=self.symlinks,
            strict_names=self.strict_names,
            transient_denials=self.transient_denials,
            transient_lock_violations=self._lock_violations_option,
            seed=self.seed,
            block_cloning=self.block_cloning,
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters of this process (a forked child starts from zero).

        ``"transient"``: transient denials injected; ``"transient.<op>"``:
        per operation (``"transient.lock_violation"`` for reads and writes);
        ``"rule.<code>"``: errors raised by a Windows rule, by Windows error
        code (``"rule.5"``, ``"rule.32"``, ...).  Missing keys are zero.
        """
        return self._process.stats()

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"WindowsOps({options})"

    # -- helpers -----------------------------------------------------------
    def _deny(
        self, code: int, path: str | None, path2: str | None = None, *, reason: str, crt: bool = False
    ) -> OSError:
        self._process.count(f"rule.{code}")
        return _windows_error(code, path, path2, reason=reason, crt=crt)

    def _transient(self, op: str, path: str | None, path2: str | None = None, *, crt: bool = False) -> None:
        if self._process.chance(self.transient_denials):
            self._process.count("transient")
            self._process.count(f"transient.{op}")
            code = self._process.choice(_TRANSIENT_CODES[op])
            reason = f"transient denial of {op} (simulated antivirus)"
            raise _windows_error(code, path, path2, reason=reason, crt=crt)

    def _lock_violation(self, fd: int, offset: int | None, length: int, *, write: bool) -> None:
        # os.read and os.write go through the C runtime: errno only (crt).
        if self._process.chance(self.transient_lock_violations):
            self._process.count("transient")
            self._process.count("transient.lock_violation")
            reason = "transient lock violation (simulated third party)"
            raise _windows_error(ERROR_LOCK_VIOLATION, None, reason=reason, crt=True)
        try:
            if offset is None:
                offset = os.lseek(fd, 0, os.SEEK_CUR)
            # A read conflicts only with an exclusive lock (a write lock).
            locked = _ofd_conflict(fd, offset, max(length, 1), None if write else fcntl.F_RDLCK)
        except OSError:  # a pipe or other descriptor that cannot be locked
            return
        if locked:
            reason = "another handle holds a byte-range lock (lock()) on this region"
            raise self._deny(ERROR_LOCK_VIOLATION, None, reason=reason, crt=True)

    def _check_new_name(self, path: str, src: str | None = None, *, crt: bool = False) -> None:
        """Checks for an operation that creates the name ``path`` (from
        ``src`` for a rename or link: the error then names both)."""
        report = (path, None) if src is None else (src, path)
        if self.strict_names:
            problem = _name_problem(path)
            if problem is not None:
                raise self._deny(ERROR_INVALID_NAME, *report, reason=problem, crt=crt)
        if self._delete_pending(path):
            reason = "the name is delete-pending (classic delete)"
            raise self._deny(ERROR_ACCESS_DENIED, *report, reason=reason, crt=crt)

    def _check_zombie(self, path: str, src: str | None = None, *, crt: bool = False) -> None:
        """Refuse to touch a delete-pending file by its pending name."""
        if not _is_zombie(path):
            return
        if _handles(path).open:
            report = (path, None) if src is None or src == path else (src, path)
            raise self._deny(ERROR_ACCESS_DENIED, *report, reason="the file is delete-pending", crt=crt)
        with contextlib.suppress(FileNotFoundError):  # last handle closed: it is gone
            os.unlink(path)

    def _check_source(self, src: str, dst: str) -> os.stat_result:
        """The source of a rename, replace or link must exist: Windows opens
        it first, so a missing source is reported before anything about the
        target."""
        try:
            return os.lstat(src)
        except FileNotFoundError:
            if self._delete_pending(src):
                raise self._deny(ERROR_ACCESS_DENIED, src, dst, reason="the file is delete-pending") from None
            raise _as_win32_error(
                FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src, None, dst)
            ) from None

    def _delete_pending(self, path: str) -> bool:
        """Whether ``path`` names a file that was deleted while open and is
        still open somewhere (posix_delete=False only).

        Such a file lives on as ``<name>.~delete-pending-<hex>``; one whose
        handles have all closed is removed here, as Windows removes it when
        the last handle closes.
        """
        if self.posix_delete:
            return False
        directory, name = os.path.split(path.rstrip("/"))
        prefix = name + _PENDING
        try:
            entries = os.listdir(directory or ".")
        except OSError:
            return False
        pending = False
        for entry in entries:
            if entry.startswith(prefix) and _PENDING not in entry[len(prefix) :]:
                zombie = os.path.join(directory, entry)
                if _handles(zombie).open:
                    pending = True
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(zombie)
        return pending

    def _reap(self, directory: str) -> None:
        """Remove the delete-pending files in ``directory`` whose handles closed."""
        with contextlib.suppress(OSError):
            for entry in os.listdir(directory):
                zombie = os.path.join(directory, entry)
                if _is_zombie(entry) and not _handles(zombie).open:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(zombie)

    # -- descriptors -------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666, *, share_delete: bool = True) -> int:
        """Open ``path`` as Windows would, registering the handle.

        ``O_CREAT | O_EXCL`` on an existing name raises ``FileExistsError``
        (Windows error 80); opening a read-only file for writing, a
        directory for writing, or a delete-pending name raises
        ``PermissionError`` (5).  Opens never conflict with each other:
        Python's opens share read and write, and only delete access (rename,
        replace, unlink) conflicts with them.  Errors carry ``winerror`` only
        for a share-delete open, which is a ``CreateFileW`` call on Windows;
        other opens are ``_wopen`` calls, which report only the errno.
        """
        # The same condition as OsOps.open, which on Windows sends these
        # opens to _win32.open_shared (CreateFileW) and the rest to _wopen.
        shares_delete = share_delete and (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) == 0
        crt = not shares_delete
        creating = bool(flags & os.O_CREAT)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        self._check_zombie(path, crt=crt)
        if creating:
            self._check_new_name(path, crt=crt)
        else:
            self._transient("open", path, crt=crt)
        if writing and not (creating and flags & os.O_EXCL):
            try:
                st = os.stat(path, follow_symlinks=not flags & os.O_NOFOLLOW)
            except OSError:
                pass
            else:
                if _read_only(st):
                    raise self._deny(ERROR_ACCESS_DENIED, path, reason="the file is read-only", crt=crt)
        try:
            fd = super().open(path, flags, mode, share_delete=share_delete)
        except FileExistsError:
            reason = "O_EXCL on an existing name"
            raise self._deny(ERROR_FILE_EXISTS, path, reason=reason, crt=crt) from None
        except IsADirectoryError:
            reason = "a directory opened for writing"
            raise self._deny(ERROR_ACCESS_DENIED, path, reason=reason, crt=crt) from None
        except FileNotFoundError as exc:
            if self._delete_pending(path):
                reason = "the name is delete-pending"
                raise self._deny(ERROR_ACCESS_DENIED, path, reason=reason, crt=crt) from None
            if crt:
                raise
            raise _as_win32_error(exc) from None
        except OSError as exc:
            if crt:
                raise
            raise _as_win32_error(exc) from None
        try:
            _register(fd, share_delete=shares_delete)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, fd: int, n: int) -> bytes:
        self._lock_violation(fd, None, n, write=False)
        return super().read(fd, n)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        self._lock_violation(fd, offset, n, write=False)
        return super().pread(fd, n, offset)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._lock_violation(fd, None, len(data), write=True)
        return super().write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self._lock_violation(fd, offset, len(data), write=True)
        return super().pwrite(fd, data, offset)

    # -- locks -------------------------------------------------------------
    def lock(self, fd: int, *, blocking: bool, shared: bool = False) -> None:
        """flock (``LOCK_SH`` when ``shared``), plus a Windows byte-range
        lock on byte 0 (what ``LockFileEx`` takes in the real Windows code):
        while an exclusive one is held, reads and writes of byte 0 through
        other handles fail with 33; while a shared one is held, writes."""
        super().lock(fd, blocking=blocking, shared=shared)
        # An exclusive holder is alone (flock), so it takes a write lock
        # when the descriptor allows it, else a read lock (which only write
        # probes see).  Shared holders take read locks, which coexist.
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        if shared:
            ltype = fcntl.F_WRLCK if access == os.O_WRONLY else fcntl.F_RDLCK
        else:
            ltype = fcntl.F_RDLCK if access == os.O_RDONLY else fcntl.F_WRLCK
        _ofd_setlk(fd, ltype, _LOCKED_BYTE, 1)

    def unlock(self, fd: int) -> None:
        _ofd_setlk(fd, fcntl.F_UNLCK, _LOCKED_BYTE, 1)
        super().unlock(fd)

    # -- names -------------------------------------------------------------
    def stat(self, path: str) -> os.stat_result:
        return _win32(super().stat, path)

    def lstat(self, path: str) -> os.stat_result:
        return _win32(super().lstat, path)

    def replace(self, src: str, dst: str) -> None:
        """``MoveFileExW(src, dst, MOVEFILE_REPLACE_EXISTING)``.

        32 if ``src`` is open without share-delete; 5 if ``src`` is a
        directory with a file open beneath it without share-delete; 5 if
        ``dst`` is a directory, read-only, delete-pending, or open at all
        (with ``posix_rename``: 32 if open without share-delete, else
        allowed).
        """
        self._transient("replace", src, dst)
        self._check_zombie(src, src)
        self._check_zombie(dst, src)
        st_src = self._check_source(src, dst)
        # MoveFileExW first opens src with DELETE access: every handle on it
        # must share delete (Raymond Chen, "Renaming a file is a multi-step
        # process").
        if _handles(src).no_share_delete:
            reason = "the source is open without FILE_SHARE_DELETE"
            raise self._deny(ERROR_SHARING_VIOLATION, src, dst, reason=reason)
        if stat.S_ISDIR(st_src.st_mode) and _tree_has_no_share_delete(src):
            reason = "a file in the directory is open without FILE_SHARE_DELETE"
            raise self._deny(ERROR_ACCESS_DENIED, src, dst, reason=reason)
        self._check_new_name(dst, src)
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise self._deny(ERROR_ACCESS_DENIED, src, dst, reason="the target is a directory")
            if _read_only(st):
                raise self._deny(ERROR_ACCESS_DENIED, src, dst, reason="the target is read-only")
            held = _handles(dst)
            if held.open and not self.posix_rename:
                # Classic rename refuses a target with any open handle, even
                # one that shares delete (rust-lang/rust #123985; Wine
                # set_fd_name: "can't replace an opened file").
                reason = "the target is open (classic MoveFileExW)"
                raise self._deny(ERROR_ACCESS_DENIED, src, dst, reason=reason)
            if held.no_share_delete:
                reason = "the target is open without FILE_SHARE_DELETE"
                raise self._deny(ERROR_SHARING_VIOLATION, src, dst, reason=reason)
        _win32(super().replace, src, dst)

    def rename(self, src: str, dst: str) -> None:
        """``MoveFileExW(src, dst, 0)``: never replaces, atomically.

        32 if ``src`` is open without share-delete; ``FileExistsError``
        (183) if ``dst`` exists, file or directory; 5 if ``dst`` is
        delete-pending or ``src`` is a directory with a file open beneath it
        without share-delete.
        """
        self._transient("rename", src, dst)
        self._check_zombie(src, src)
        self._check_zombie(dst, src)
        st_src = self._check_source(src, dst)
        if _handles(src).no_share_delete:
            reason = "the source is open without FILE_SHARE_DELETE"
            raise self._deny(ERROR_SHARING_VIOLATION, src, dst, reason=reason)
        if os.path.lexists(dst):
            raise self._deny(ERROR_ALREADY_EXISTS, src, dst, reason="rename never replaces on Windows")
        self._check_new_name(dst, src)
        if stat.S_ISDIR(st_src.st_mode) and _tree_has_no_share_delete(src):
            reason = "a file in the directory is open without FILE_SHARE_DELETE"
            raise self._deny(ERROR_ACCESS_DENIED, src, dst, reason=reason)
        try:
            _rename_noreplace(src, dst)
        except FileExistsError:  # created since the check above
            reason = "rename never replaces on Windows"
            raise self._deny(ERROR_ALREADY_EXISTS, src, dst, reason=reason) from None
        except OSError as exc:
            raise _as_win32_error(exc) from None

    def link(self, src: str, dst: str) -> None:
        """``CreateHardLinkW``: ``FileExistsError`` (183) if ``dst`` exists;
        5 for a directory; ``OSError`` winerror 1 if ``hardlinks`` is off."""
        if not self.hardlinks:
            reason = "the file system has no hard links (FAT/exFAT)"
            raise self._deny(ERROR_INVALID_FUNCTION, src, dst, reason=reason)
        self._check_zombie(src, src)
        st_src = self._check_source(src, dst)
        if stat.S_ISDIR(st_src.st_mode):
            raise self._deny(ERROR_ACCESS_DENIED, src, dst, reason="cannot hard-link a directory")
        self._check_new_name(dst, src)
        try:
            super().link(src, dst)
        except FileExistsError:
            raise self._deny(ERROR_ALREADY_EXISTS, src, dst, reason="the link name exists") from None
        except OSError as exc:
            raise _as_win32_error(exc) from None

    def unlink(self, path: str) -> None:
        """``DeleteFileW``.

        5 for a directory; 32 if the file is open without share-delete; 5 if
        it is read-only or delete-pending.  With ``posix_delete`` the name
        goes at once; without it, a file still open elsewhere stays
        delete-pending until its last handle closes.
        """
        self._transient("unlink", path)
        self._check_zombie(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError as exc:
            if self._delete_pending(path):
                raise self._deny(ERROR_ACCESS_DENIED, path, reason="the file is delete-pending") from None
            raise _as_win32_error(exc) from None
        if stat.S_ISDIR(st.st_mode):
            raise self._deny(ERROR_ACCESS_DENIED, path, reason="DeleteFileW on a directory")
        held = _handles(path)
        # DeleteFileW opens with DELETE access (32 if a handle does not share
        # it), then sets the delete disposition (5 if read-only): eryk sun,
        # bpo-40143.
        if held.no_share_delete:
            reason = "the file is open without FILE_SHARE_DELETE"
            raise self._deny(ERROR_SHARING_VIOLATION, path, reason=reason)
        if _read_only(st):
            raise self._deny(ERROR_ACCESS_DENIED, path, reason="the file is read-only")
        if held.open and not self.posix_delete:
            # Classic delete: the name stays until the last handle closes.
            directory, name = os.path.split(path)
            zombie = os.path.join(directory, f"{name}{_PENDING}{_offsets.getrandbits(32):08x}")
            _win32(_rename_noreplace, path, zombie)
            return
        _win32(super().unlink, path)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """``CreateDirectoryW``: ``FileExistsError`` (183) if the name exists."""
        self._check_new_name(path)
        _win32(super().mkdir, path, mode)

    def rmdir(self, path: str) -> None:
        """``RemoveDirectoryW``: ``OSError(ENOTEMPTY)`` (145) if not empty,
        including delete-pending files still open elsewhere;
        ``NotADirectoryError`` (267) for a file."""
        self._transient("rmdir", path)
        try:
            super().rmdir(path)
            return
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise self._deny(ERROR_DIRECTORY, path, reason="not a directory") from None
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise _as_win32_error(exc) from None
        if not self.posix_delete:
            self._reap(path)
            with contextlib.suppress(OSError):
                super().rmdir(path)
                return
        raise self._deny(ERROR_DIR_NOT_EMPTY, path, reason="the directory is not empty")

    def scandir(self, path: str):  # type: ignore[no-untyped-def]  # as OsOps.scandir
        return _win32(super().scandir, path)

    def listdir(self, path: str) -> list[str]:
        return _win32(super().listdir, path)

    def utime(self, path: str, times: tuple[float, float] | None = None) -> None:
        _win32(super().utime, path, times)

    def chmod(self, path: str, mode: int) -> None:
        """Only the owner write bit counts, as the read-only attribute:
        set, the file becomes writable; clear, read-only.  Other bits in
        ``mode`` are ignored, as Python's ``os.chmod`` ignores them on
        Windows."""
        current = stat.S_IMODE(_win32(os.stat, path).st_mode)
        if mode & stat.S_IWRITE:
            new = current | stat.S_IWRITE
        else:
            new = current & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        _win32(super().chmod, path, new)

    def symlink(self, src: str, dst: str) -> None:
        """``CreateSymbolicLinkW``: ``OSError`` winerror 1314 unless the
        ``symlinks`` option is on; ``FileExistsError`` (183) if ``dst`` exists."""
        if not self.symlinks:
            reason = "creating symlinks needs a privilege or Developer Mode"
            raise self._deny(ERROR_PRIVILEGE_NOT_HELD, src, dst, reason=reason)
        self._check_new_name(dst, src)
        _win32(super().symlink, src, dst)

    # -- whole files ---------------------------------------------------------
    def clone(self, src: str, dst: str) -> None:
        """Block cloning (``FSCTL_DUPLICATE_EXTENTS_TO_FILE``).

        A missing ``src`` is 2.  Without the ``block_cloning`` option (NTFS,
        FAT) ``OSError(EINVAL)`` with winerror 50 (``ERROR_NOT_SUPPORTED``).
        With it, the real clone where the Linux file system supports it, else
        50; ``FileExistsError`` (80) if ``dst`` exists; 17 across volumes.
        """
        self._check_zombie(src, src)
        self._check_source(src, dst)
        if not self.block_cloning:
            reason = "the volume does not support block cloning (ReFS and Dev Drives do)"
            raise self._deny(ERROR_NOT_SUPPORTED, src, dst, reason=reason)
        self._check_new_name(dst, src)
        try:
            super().clone(src, dst)
        except FileExistsError:
            raise self._deny(ERROR_FILE_EXISTS, src, dst, reason="the clone's name exists") from None
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise self._deny(17, src, dst, reason="block cloning within one volume only") from None
            if exc.errno in _CLONE_UNSUPPORTED:
                reason = f"the Linux file system cannot clone ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
                raise self._deny(ERROR_NOT_SUPPORTED, src, dst, reason=reason) from None
            raise _as_win32_error(exc) from None

    def copyfile(self, src: str, dst: str) -> None:
        """The copy safecache's Windows code makes: a read/write loop through
        :meth:`open`, :meth:`read`, :meth:`write` and :meth:`close` (so their
        rules apply: ``FileExistsError`` (80, no ``winerror``) if ``dst``
        exists, 33 on a locked byte, ...), ``dst`` created writable and made
        read-only after closing if ``src`` is; ``dst`` removed on failure."""
        _osops._copy_file(self, src, dst, windows=True)


# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------

_enabled: list[OsOps] = []  # what enable_windows_semantics replaced, innermost last


@contextlib.contextmanager
def _installed(ops: OsOps) -> Iterator[None]:
    previous = _osops.current
    _osops.current = ops
    try:
        yield
    finally:
        _osops.current = previous


@contextlib.contextmanager
def windows_semantics(
    *,
    posix_delete: bool = True,
    posix_rename: bool = False,
    hardlinks: bool = True,
    symlinks: bool = False,
    strict_names: bool = True,
    transient_denials: float = 0.0,
    transient_lock_violations: float | None = None,
    seed: int | None = None,
    block_cloning: bool = False,
) -> Iterator[WindowsOps]:
    """Emulate Windows file semantics inside the ``with`` block.

    Installs a :class:`WindowsOps` made with these options (documented
    there) as ``safecache._osops.current`` and yields it; on exit, however
    the block ends, restores what was in force before.  Processes forked
    inside the block inherit it; spawned ones call
    :func:`enable_windows_semantics` themselves.
    """
    ops = WindowsOps(
        posix_delete=posix_delete,
        posix_rename=posix_rename,
        hardlinks=hardlinks,
        symlinks=symlinks,
        strict_names=strict_names,
        transient_denials=transient_denials,
        transient_lock_violations=transient_lock_violations,
        seed=seed,
        block_cloning=block_cloning,
    )
    with _installed(ops):
        yield ops


def enable_windows_semantics(
    *,
    posix_delete: bool = True,
    posix_rename: bool = False,
    hardlinks: bool = True,
    symlinks: bool = False,
    strict_names: bool = True,
    transient_denials: float = 0.0,
    transient_lock_violations: float | None = None,
    seed: int | None = None,
    block_cloning: bool = False,
) -> WindowsOps:
    """Install a :class:`WindowsOps` until :func:`disable_windows_semantics`.

    For code that cannot use a ``with`` block: a child process started by
    ``multiprocessing`` with the "spawn" method (or any fresh interpreter)
    calls it first thing, e.g. ``enable_windows_semantics(**parent.options)``.
    Returns the installed object.
    """
    ops = WindowsOps(
        posix_delete=posix_delete,
        posix_rename=posix_rename,
        hardlinks=hardlinks,
        symlinks=symlinks,
        strict_names=strict_names,
        transient_denials=transient_denials,
        transient_lock_violations=transient_lock_violations,
        seed=seed,
        block_cloning=block_cloning,
    )
    _enabled.append(_osops.current)
    _osops.current = ops
    return ops


def disable_windows_semantics() -> None:
    """Undo the latest :func:`enable_windows_semantics`: restore the
    operations that were in force before it.  Does nothing if none is in
    force."""
    if _enabled:
        _osops.current = _enabled.pop()


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


# ---------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------

#: Every operation of OsOps, by name ("open", "replace", ...).
OPERATIONS: tuple[str, ...] = tuple(
    name for name, value in vars(OsOps).items() if callable(value) and not name.startswith("_")
)
_TWO_PATH_OPS = frozenset({"replace", "rename", "link", "symlink", "clone", "copyfile"})

ErrorSpec = Union[int, WinError, BaseException, type[BaseException]]


class Call(NamedTuple):
    """One operation seen by :class:`FaultOps`: its name, its path (for a
    descriptor operation, the path the descriptor was opened with, if it was
    opened through the same FaultOps), and the second path of a
    rename/replace/link/symlink/clone/copyfile."""

    op: str
    path: str | None
    dst: str | None = None


class FaultOps(OsOps):
    """Operations that delegate to ``inner`` but raise ``error`` from some.

    ``error``: an errno (``errno.ENOSPC``; the matching builtin subclass of
    ``OSError`` is raised, with the path), a :class:`WinError`, an
    exception instance (a copy is raised each time) or class.
    ``ops``: names of :class:`~safecache._osops.OsOps` methods, or ``"*"``
    for all.  ``path_contains``: only operations whose path (or second path)
    contains this string.  ``times``: at most this many errors in this
    process, then none.  ``probability`` and ``seed``: raise only on a random
    share of the matching calls (each process draws from its own stream;
    a forked child also counts ``times`` afresh).
    ``after``: perform the operation, then raise (the operation happened but
    its caller is told it failed; an ``open`` is closed again, as its caller
    never gets the descriptor).  ``close`` always raises after closing: a
    descriptor is released even when ``close`` reports an error.

    ``calls`` records every operation (matching or not) in this process;
    ``fired`` counts the errors raised in this process.
    """

    name = "faults"

    def __init__(
        self,
        inner: OsOps,
        error: ErrorSpec,
        ops: Collection[str] | str = ("replace",),
        *,
        path_contains: str | None = None,
        times: int | None = None,
        probability: float = 1.0,
        seed: int | None = None,
        after: bool = False,
    ) -> None:
        selected = frozenset(OPERATIONS if ops == "*" else ([ops] if isinstance(ops, str) else ops))
        unknown = selected - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {', '.join(OPERATIONS)}")
        if times is not None and times < 0:
            raise ValueError("times must be None or >= 0")
        self.inner = inner
        self.error = error
        self.ops = selected
        self.path_contains = path_contains
        self.times = times
        self.probability = _check_probability("probability", probability)
        self.after = after
        self._process = _PerProcess(seed)
        self._paths: dict[int, str] = {}

    @property
    def calls(self) -> list[Call]:
        """Every operation seen in this process, in order."""
        return self._process.records()

    @property
    def fired(self) -> int:
        """How many errors this process raised."""
        return self._process.stats().get("fired", 0)

    def __repr__(self) -> str:
        return f"FaultOps({self.error!r}, ops={sorted(self.ops)!r}, inner={self.inner!r})"

    def _make_error(self, path: str | None, dst: str | None) -> BaseException:
        error = self.error
        if isinstance(error, (int, WinError)):
            return make_oserror(error, path, dst)
        if isinstance(error, type):
            return error()
        try:
            return copy.copy(error)
        except Exception:  # an exception that cannot be copied: raise it as is
            return error

    def _should_fail(self, call: Call) -> bool:
        if call.op not in self.ops:
            return False
        if self.path_contains is not None and not any(
            p is not None and self.path_contains in p for p in (call.path, call.dst)
        ):
            return False
        return self._process.chance(self.probability) and self._process.take("fired", self.times)

    def _call(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        first = args[0] if args else None
        if isinstance(first, int):
            path = self._paths.get(first)
        elif first is None:
            path = None
        else:
            path = os.fsdecode(first)
        dst = os.fsdecode(args[1]) if op in _TWO_PATH_OPS and len(args) > 1 else None
        call = Call(op, path, dst)
        self._process.records().append(call)
        fail = self._should_fail(call)
        if fail and not (self.after or op == "close"):
            raise self._make_error(path, dst)
        result = getattr(self.inner, op)(*args, **kwargs)
        if fail:
            if op == "open":  # nobody could ever close a descriptor it was not given
                self.inner.close(result)
            raise self._make_error(path, dst)
        if op == "open" and path is not None:
            self._paths[result] = path
        elif op == "close" and isinstance(first, int):
            self._paths.pop(first, None)
        return result


def _delegate(op: str) -> Callable[..., Any]:
    def method(self: FaultOps, *args: Any, **kwargs: Any) -> Any:
        return self._call(op, args, kwargs)

    method.__name__ = method.__qualname__ = op
    method.__doc__ = getattr(OsOps, op).__doc__
    return method


# Generated rather than written out so that an operation added to OsOps is
# wrapped too, instead of silently bypassing the wrapped ops.
for _op in OPERATIONS:
    setattr(FaultOps, _op, _delegate(_op))
del _op


@contextlib.contextmanager
def inject_errors(
    error: ErrorSpec,
    ops: Collection[str] | str = ("replace",),
    *,
    path_contains: str | None = None,
    times: int | None = None,
    probability: float = 1.0,
    seed: int | None = None,
    after: bool = False,
) -> Iterator[FaultOps]:
    """Make ``ops`` raise ``error`` inside the ``with`` block.

    Wraps the operations in force (so it stacks on :func:`windows_semantics`
    and on other ``inject_errors`` blocks) in a :class:`FaultOps` with these
    arguments (documented there), installs it, yields it, and restores the
    previous operations on exit, however the block ends.

    Example::

        with inject_errors(errno.ENOSPC, ops=("write",), times=1) as faults:
            bucket.put(b"k", b"v")
        assert faults.fired == 1
    """
    faults = FaultOps(
        _osops.current,
        error,
        ops,
        path_contains=path_contains,
        times=times,
        probability=probability,
        seed=seed,
        after=after,
    )
    with _installed(faults):
        yield faults

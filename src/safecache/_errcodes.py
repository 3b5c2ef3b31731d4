"""Error codes, written once: which system errors mean what, and how to name one.

The bottom layer beside :mod:`._errors`: everything that asks "is this error
transient?", "does this file system lock at all?" or "how do I say this
error in one line?" asks here, so no module spells a Windows error number.

Windows numbers are the ``winerror`` CPython puts on the ``OSError`` it
raises (``GetLastError()`` codes, learn.microsoft.com "System Error Codes
(0-499)"); CPython maps them to ``errno`` in ``PC/errmap.h``.
"""

from __future__ import annotations

import errno as _errno
import sys

# -- Windows system error codes ----------------------------------------------------
ERROR_INVALID_FUNCTION = 1  # a link kind the file system does not implement
ERROR_ACCESS_DENIED = 5  # a real ACL/mode denial, or a file pending delete / mapped
ERROR_NOT_SAME_DEVICE = 17  # a hard link across volumes
ERROR_SHARING_VIOLATION = 32  # another process holds the file without sharing this access
ERROR_LOCK_VIOLATION = 33  # a byte range is locked by another process
ERROR_NOT_SUPPORTED = 50
ERROR_FILE_EXISTS = 80
ERROR_DIR_NOT_EMPTY = 145
ERROR_ALREADY_EXISTS = 183
ERROR_USER_MAPPED_FILE = 1224  # truncating a file with a mapped view
ERROR_PRIVILEGE_NOT_HELD = 1314  # symlinks without developer mode

#: "Another process has this file open or locked right now": worth a bounded retry.
TRANSIENT_WINERRORS = frozenset({ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION})
#: The POSIX counterparts (a busy mount point, an executing binary).
TRANSIENT_ERRNOS = frozenset({_errno.EBUSY, _errno.ETXTBSY})
#: Operations where Windows reports a file held open by someone else as error
#: 5 rather than 32: replacing over an open target, deleting a delete-pending
#: or mapped file.  Elsewhere (open, mkdir) a 5 is a real ACL denial unless
#: its NT status says the name is delete-pending (:func:`access_denied_cause`),
#: and a real denial never clears, so retrying it would only add two seconds
#: to every operation of a cache like uv #11409's.
RETRY_ACCESS_DENIED_OPS = frozenset({"replace", "rename", "unlink", "rmdir", "link"})
#: The name of an open for reading (:func:`._fs.read_file`) where
#: :func:`is_transient` is asked.  It differs from "open" in one case only: a
#: Windows error 5 whose NT status cannot tell a pending delete from a
#: permission denial is worth retrying on a read, where a present entry that
#: reads as a miss hands callers wrong answers one layer up (a CacheControl
#: 304 with an empty body), and where the caller remembers a denial that
#: outlasts the budget (per directory) so it is paid for once.
OPEN_FOR_READ = "open-for-read"

# -- NT status codes ---------------------------------------------------------------
# The NTSTATUS a failed Win32 call leaves in the thread's TEB beside the Win32
# code (learn.microsoft.com, [MS-ERREF] 2.3.1 "NTSTATUS Values").  Win32
# collapses both of these into ERROR_ACCESS_DENIED (5), so an open refused with
# 5 is judged by its status: safecache's Windows open (``_win32.open_shared``)
# puts it on the exception as ``ntstatus``, as LLVM's ``mapLastWindowsError``
# reads it (llvm/llvm-project #89137).
STATUS_ACCESS_DENIED = 0xC0000022  # an ACL or the read-only attribute: permanent
STATUS_DELETE_PENDING = 0xC0000056  # deleted while another handle is open: transient

#: The file system cannot lock at all (NFS without lockd, some FUSE and SMB mounts).
LOCK_UNSUPPORTED_ERRNOS = frozenset(
    e
    for e in (
        _errno.ENOLCK,
        _errno.ENOSYS,
        getattr(_errno, "EOPNOTSUPP", None),
        getattr(_errno, "ENOTSUP", None),
    )
    if e is not None
)
#: A lock held by someone else, as a non-blocking attempt reports it.
LOCK_HELD_ERRNOS = frozenset({_errno.EAGAIN, _errno.EACCES})
#: A hard link is impossible here (not "the name exists").
LINK_UNSUPPORTED_ERRNOS = frozenset({_errno.EPERM, _errno.EOPNOTSUPP, _errno.EXDEV, _errno.EMLINK, _errno.ENOSYS})
#: The disk or the user's quota is full.
FULL_ERRNOS = frozenset(e for e in (_errno.ENOSPC, getattr(_errno, "EDQUOT", None)) if e is not None)


def winerror(exc: BaseException) -> int | None:
    """The Windows error code on ``exc``, or None (always None off Windows,
    except under :mod:`safecache.testing`'s emulation)."""
    return getattr(exc, "winerror", None)


#: Operations on an open descriptor (no permission check happens there).
DESCRIPTOR_IO_OPS = frozenset({"read", "write", "pread", "pwrite"})
#: Whether bare EACCES from descriptor I/O means a lock violation: on Windows,
#: and while safecache.testing emulates Windows (:func:`windows_io`).
_WINDOWS_IO = sys.platform == "win32"


def windows_io(on: bool) -> bool:
    """Declare whether descriptor I/O follows Windows' rules (the Windows
    emulator does, while installed); returns the previous setting."""
    global _WINDOWS_IO
    previous, _WINDOWS_IO = _WINDOWS_IO, on or sys.platform == "win32"
    return previous


def is_transient(exc: OSError, op: str) -> bool:
    """Whether ``exc`` from ``op`` is worth retrying (the file is in use).

    Windows error 5 is transient where Windows means "in use" by it
    (:data:`RETRY_ACCESS_DENIED_OPS`), on any operation whose NT status says
    the name is delete-pending, and on :data:`OPEN_FOR_READ` unless the
    status says it is a permission denial (see :func:`access_denied_cause`).
    """
    code = getattr(exc, "winerror", None)
    if code is not None:
        if code in TRANSIENT_WINERRORS:
            return True
        if code == ERROR_ACCESS_DENIED:
            if op in RETRY_ACCESS_DENIED_OPS:
                return True
            cause = access_denied_cause(exc)
            return cause == "delete-pending" or (op == OPEN_FOR_READ and cause == "unknown")
        return False
    if exc.errno == _errno.EACCES and op in DESCRIPTOR_IO_OPS and _WINDOWS_IO:
        # Windows: os.read/os.write go through the C runtime, which reports a
        # byte-range lock held by another process (ERROR_LOCK_VIOLATION, 33)
        # as a bare EACCES without winerror.  A descriptor already open for
        # that access cannot be denied it for permissions: it is a lock.
        return True
    return exc.errno in TRANSIENT_ERRNOS


def is_busy(exc: OSError) -> bool:
    """The file is held by another process (whatever the operation): a
    sharing or lock violation, ``EBUSY``/``ETXTBSY``, or a name that stays
    delete-pending until another process closes its handle."""
    return (
        getattr(exc, "winerror", None) in TRANSIENT_WINERRORS
        or exc.errno in TRANSIENT_ERRNOS
        or access_denied_cause(exc) == "delete-pending"
    )


def access_denied_cause(exc: BaseException) -> str | None:
    """What a Windows error 5 means, as far as its NT status (``ntstatus``,
    set by safecache's Windows open) tells; None for any other error.

    ``"delete-pending"``: the file was deleted while another handle was open
    and the name stays until that handle closes (``DeleteFileW`` docs:
    "Subsequent calls to CreateFile to open the file fail with
    ERROR_ACCESS_DENIED"); it clears by itself.  ``"permission"``: an ACL or
    the read-only attribute; it never clears (uv #11409).  ``"unknown"``: no
    status, or one that is neither (the status is read from the thread after
    the call returns, and a wait for the GIL in between may overwrite it):
    only time tells the two apart.
    """
    if getattr(exc, "winerror", None) != ERROR_ACCESS_DENIED:
        return None
    status = getattr(exc, "ntstatus", None)
    if status == STATUS_DELETE_PENDING:
        return "delete-pending"
    if status == STATUS_ACCESS_DENIED:
        return "permission"
    return "unknown"


def locks_unsupported(exc: OSError) -> bool:
    """The file system cannot take OS locks."""
    return exc.errno in LOCK_UNSUPPORTED_ERRNOS


def describe(exc: BaseException, *, with_type: bool = True, errno_name: bool = False) -> str:
    """One line naming ``exc``.

    ``PermissionError: [Errno 13] Permission denied: 'path'`` by default;
    ``[WinError 32] The process cannot access...`` for a Windows error (with
    the type first when ``with_type``); ``EACCES: Permission denied`` with
    ``errno_name`` (doctor's findings, where the path is said elsewhere)."""
    code = getattr(exc, "winerror", None)
    if code:
        text = f"[WinError {code}] {getattr(exc, 'strerror', '') or exc}"
    elif errno_name and isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"{_errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    else:
        text = str(exc)
    return f"{type(exc).__name__}: {text}" if with_type else text

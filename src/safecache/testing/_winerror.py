"""Windows error codes, and the exceptions CPython raises for them.

:class:`WinError` and :func:`make_oserror` are public (re-exported by
:mod:`safecache.testing`); the rest builds the errors :class:`WindowsOps`
raises: an error of a Windows rule, saying which rule fired
(:func:`_windows_error`), and a real Linux error as the Win32 call would
report it (:func:`_as_win32_error`).  The errno of each exception is the one
CPython derives from the Windows code (``PC/errmap.h``).
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

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
ERROR_USER_MAPPED_FILE = 1224
ERROR_PRIVILEGE_NOT_HELD = 1314

# NT status codes behind a Windows error 5 (learn.microsoft.com, [MS-ERREF]
# 2.3.1 "NTSTATUS Values"), which safecache's Windows open puts on the
# exception as ``ntstatus`` (``safecache._win32.open_shared``).
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_DELETE_PENDING = 0xC0000056

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

    ``ntstatus``, if given, is set on the exception as ``ntstatus``: the NT
    status safecache's Windows open reads after an error 5
    (``WinError(5, ntstatus=STATUS_DELETE_PENDING)`` is a name pending
    delete, ``STATUS_ACCESS_DENIED`` an ACL denial; without one, the cause is
    unknown).
    """

    code: int
    ntstatus: int | None = None


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
        if error.ntstatus is not None:
            exc.ntstatus = error.ntstatus  # type: ignore[attr-defined]
        return exc
    return OSError(error, os.strerror(error), path, None, path2)


def _windows_error(
    code: int,
    path: str | None,
    path2: str | None = None,
    *,
    reason: str,
    crt: bool = False,
    ntstatus: int | None = None,
    crt_errno: int | None = None,
) -> OSError:
    """A Windows error raised by the emulator, saying which rule fired.

    ``crt``: the call goes through the C runtime on Windows (``os.open`` is
    ``_wopen``; ``os.read``/``os.write`` are ``_read``/``_write``), which
    turns the Windows code into an errno and drops it: CPython then raises
    the errno's exception with the C library's message and no ``winerror``
    ("PermissionError: [Errno 13] Permission denied" for a sharing
    violation).

    ``crt_errno``: the errno a C runtime function sets itself rather than
    derive from the code (``_chsize_s`` sets EACCES whatever SetEndOfFile
    said).

    ``ntstatus``: the NT status behind the code, set as ``ntstatus`` where
    safecache's Windows code reads it (a share-delete open, never ``crt``).
    """
    if crt:
        number = crt_errno if crt_errno is not None else _WINERRORS.get(code, (errno.EINVAL, ""))[0]
        exc = OSError(number, os.strerror(number), path, None, path2)
    else:
        exc = make_oserror(WinError(code, ntstatus), path, path2)
    # Windows says only "Access is denied"; the emulator can say why, which
    # saves a debugging session when a test fails on it.
    exc.emulated_winerror = code  # type: ignore[attr-defined]
    exc.emulated_reason = f"{reason} (Windows error {code})"  # type: ignore[attr-defined]
    if sys.version_info >= (3, 11):
        exc.add_note(f"safecache.testing (emulated Windows): {reason} (Windows error {code})")
    return exc


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

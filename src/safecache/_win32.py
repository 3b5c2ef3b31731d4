"""Windows-only primitives (imported lazily, only on Windows).

``open_shared`` opens a file for reading with ``FILE_SHARE_DELETE`` so a
reader never stops another process from replacing or deleting the file:
CPython's own ``open``/``os.open`` never pass it (it calls ``_wopen``, which
shares only read and write), so every Python reader of a cache file would
otherwise cause "Access is denied" in writers (ruff #12284).
"""

from __future__ import annotations

import sys

# Only ever imported on Windows; this also tells type checkers so.
assert sys.platform == "win32"

import ctypes  # noqa: E402
import errno
import msvcrt  # noqa: E402
import os
from ctypes import wintypes

from . import _errcodes  # noqa: E402

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
_CreateFileW = _kernel32.CreateFileW
_CreateFileW.argtypes = [
    wintypes.LPCWSTR,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.LPVOID,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.HANDLE,
]
_CreateFileW.restype = wintypes.HANDLE
_CloseHandle = _kernel32.CloseHandle
_CloseHandle.argtypes = [wintypes.HANDLE]

GENERIC_READ = 0x80000000
FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
FILE_SHARE_DELETE = 0x4
OPEN_EXISTING = 3
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000  # do not follow symlinks/junctions
INVALID_HANDLE_VALUE = wintypes.HANDLE(-1).value

# The NT status of the thread's last failed call (TEB LastStatusValue).  Not
# in the SDK headers but exported by ntdll since Windows XP; LLVM reads it the
# same way to tell a delete-pending file from an access denial, which Win32
# both reports as ERROR_ACCESS_DENIED (llvm/lib/Support/ErrorHandling.cpp,
# mapLastWindowsError; llvm/llvm-project #89137).  A PyDLL function keeps
# the GIL: reading it must not wait for the GIL a second time, since a
# wait's own failure (a timed-out condition variable) can overwrite the
# status.  The wait after CreateFileW returns cannot be avoided, so the
# status is only trusted when it is one of the two that decide
# (_errcodes.access_denied_cause); anything else counts as unknown.
_RtlGetLastNtStatus = getattr(ctypes.PyDLL("ntdll"), "RtlGetLastNtStatus", None)
if _RtlGetLastNtStatus is not None:
    _RtlGetLastNtStatus.argtypes = []
    _RtlGetLastNtStatus.restype = ctypes.c_ulong  # NTSTATUS is a LONG; read it unsigned (0xC0000056)


def open_shared(path: str, flags: int) -> int:
    """Open ``path`` read-only, sharing read, write and delete; return a CRT fd.

    A failure raises the ``OSError`` CPython raises for its Windows code
    (``winerror`` set).  For error 5 it also carries ``ntstatus``, the NT
    status of the failed open (an ``int``, or None if it could not be read):
    ``STATUS_DELETE_PENDING`` for a name deleted while another handle is open,
    ``STATUS_ACCESS_DENIED`` for an ACL or attribute denial.
    """
    handle = _CreateFileW(
        path,
        GENERIC_READ,
        FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
        None,
        OPEN_EXISTING,
        FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT,
        None,
    )
    if handle == INVALID_HANDLE_VALUE:
        # First, before anything else this thread does can overwrite it
        # (inline: even a Python call can let this thread wait for the GIL).
        status: int | None = None if _RtlGetLastNtStatus is None else int(_RtlGetLastNtStatus())
        winerror = ctypes.get_last_error()  # saved by ctypes right after the call
        exc = ctypes.WinError(winerror)  # an OSError subclass with .winerror and errno mapped
        if winerror == _errcodes.ERROR_ACCESS_DENIED:
            exc.ntstatus = status  # type: ignore[attr-defined]
        raise exc
    try:
        return msvcrt.open_osfhandle(handle, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except BaseException:
        _CloseHandle(handle)
        raise


# -- locks: LockFileEx on byte 0 --------------------------------------------------
# The OS releases these when the handle closes or the process dies.  Byte 0
# is the byte older safecache versions locked with msvcrt.locking (LockFile,
# which is LockFileEx's exclusive lock), so the two still exclude each other.


class _OVERLAPPED(ctypes.Structure):
    _fields_ = [
        ("Internal", ctypes.c_size_t),  # ULONG_PTR
        ("InternalHigh", ctypes.c_size_t),
        ("Offset", wintypes.DWORD),  # in a union with a PVOID: same size and
        ("OffsetHigh", wintypes.DWORD),  # alignment as these two on 64-bit
        ("hEvent", wintypes.HANDLE),
    ]


_LockFileEx = _kernel32.LockFileEx
_LockFileEx.argtypes = [
    wintypes.HANDLE,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.DWORD,
    ctypes.POINTER(_OVERLAPPED),
]
_LockFileEx.restype = wintypes.BOOL
_UnlockFileEx = _kernel32.UnlockFileEx
_UnlockFileEx.argtypes = [
    wintypes.HANDLE,
    wintypes.DWORD,
    wintypes.DWORD,
    wintypes.DWORD,
    ctypes.POINTER(_OVERLAPPED),
]
_UnlockFileEx.restype = wintypes.BOOL

LOCKFILE_FAIL_IMMEDIATELY = 0x1
LOCKFILE_EXCLUSIVE_LOCK = 0x2
ERROR_LOCK_VIOLATION = 33
ERROR_IO_PENDING = 997


def lock(fd: int, *, blocking: bool, shared: bool = False) -> None:
    """Lock byte 0 of ``fd``'s file with ``LockFileEx``: exclusively, or
    shared with other shared holders.  A lock held by another handle raises
    ``BlockingIOError`` when not ``blocking``."""
    flags = 0 if shared else LOCKFILE_EXCLUSIVE_LOCK
    if not blocking:
        flags |= LOCKFILE_FAIL_IMMEDIATELY
    handle = msvcrt.get_osfhandle(fd)
    overlapped = _OVERLAPPED()  # Offset 0, OffsetHigh 0: byte 0
    if _LockFileEx(handle, flags, 0, 1, 0, ctypes.byref(overlapped)):
        return
    code = ctypes.get_last_error()
    # ERROR_IO_PENDING comes only from a handle opened for overlapped I/O,
    # which safecache never opens; it means the same as 33 there.
    if code in (ERROR_LOCK_VIOLATION, ERROR_IO_PENDING):
        raise BlockingIOError(errno.EAGAIN, "lock is held by another process") from ctypes.WinError(code)
    raise ctypes.WinError(code)


def unlock(fd: int) -> None:
    handle = msvcrt.get_osfhandle(fd)
    overlapped = _OVERLAPPED()
    if not _UnlockFileEx(handle, 0, 1, 0, ctypes.byref(overlapped)):
        raise ctypes.WinError(ctypes.get_last_error())

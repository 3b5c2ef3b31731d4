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


def open_shared(path: str, flags: int) -> int:
    """Open ``path`` read-only, sharing read, write and delete; return a CRT fd."""
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
        winerror = ctypes.get_last_error()
        raise ctypes.WinError(winerror)  # an OSError subclass with .winerror and errno mapped
    try:
        return msvcrt.open_osfhandle(handle, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except BaseException:
        _CloseHandle(handle)
        raise


def lock(fd: int, *, blocking: bool) -> None:
    """Lock the first byte of the lock file (filelock does the same)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        # LK_NBLCK reports a held lock as EACCES (error 33 underneath).
        if exc.errno in (errno.EACCES, errno.EDEADLK):
            raise BlockingIOError(errno.EAGAIN, "lock is held by another process") from exc
        raise


def unlock(fd: int) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

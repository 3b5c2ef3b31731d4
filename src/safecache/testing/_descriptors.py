"""Opening, reading, writing and locking files as Windows does: the
descriptor rules of :class:`WindowsOps` (:class:`_Descriptors`).

An open is checked against the handles already open (share modes, a
directory, a mapped view, a delete-pending name, an ACL) and registered in
the cross-process handle table (:mod:`._handles`); reads and writes are
checked against byte-range locks (:mod:`._ranges`); ``lock`` adds the
``LockFileEx`` lock of safecache's Windows code.  docs/testing.md gives each
rule with its source.
"""

from __future__ import annotations

import os
import stat

from . import _actors, _ranges
from ._emulator import _Emulator, _read_only
from ._handles import _register, _sharing_violation
from ._mapped import _is_mapped
from ._winerror import (
    ERROR_ACCESS_DENIED,
    ERROR_FILE_EXISTS,
    ERROR_SHARING_VIOLATION,
    ERROR_USER_MAPPED_FILE,
    STATUS_ACCESS_DENIED,
    STATUS_DELETE_PENDING,
    _as_win32_error,
)

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# The byte _win32.lock locks with LockFileEx.
_LOCKED_BYTE = 0


class _Descriptors(_Emulator):
    """The rules of opening, reading, writing and locking (see :class:`WindowsOps`)."""

    def open(self, path: str, flags: int, mode: int = 0o666, *, share_delete: bool = True) -> int:
        """Open ``path`` as Windows would, registering the handle.

        ``O_CREAT | O_EXCL`` on an existing name raises ``FileExistsError``
        (Windows error 80); opening a read-only file for writing, a
        directory for writing, a delete-pending name, or a path under
        ``acl_denied`` raises ``PermissionError`` (5), and so does opening a
        directory with ``share_delete=False`` (``os.open``/``open()``, which
        cannot open directories on Windows) unless ``O_DIRECTORY`` says the
        code is POSIX-only.  An open whose access another handle does not
        share (:func:`holding` with ``share_read=False`` ...) raises
        ``PermissionError`` (32); Python's own opens share read and write,
        so they never conflict with each other.  Truncating a file that has a
        mapped view (``O_TRUNC``) raises ``OSError(EINVAL)`` (1224).  Errors carry
        ``winerror`` only for a share-delete open, which is a ``CreateFileW``
        call on Windows; other opens are ``_wopen`` calls, which report only
        the errno.  A share-delete open's error 5 also carries ``ntstatus``,
        as ``_win32.open_shared`` reads it: STATUS_DELETE_PENDING for a
        delete-pending name, STATUS_ACCESS_DENIED for a denial of access.
        """
        # The same condition as OsOps.open, which on Windows sends these
        # opens to _win32.open_shared (CreateFileW) and the rest to _wopen.
        shares_delete = share_delete and (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) == 0
        crt = not shares_delete
        creating = bool(flags & os.O_CREAT)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if _actors.acl_denies(self.acl_denied, path):
            raise _actors.acl_denial(self._process, path, crt=crt)
        self._check_zombie(path, crt=crt, ntstatus=STATUS_DELETE_PENDING)
        if creating:
            self._check_new_name(path, crt=crt)
        elif writing:
            self._transient("open", path, crt=crt)
        else:
            _actors.deny_read_open(self._process, self.transient_read_denials, path, crt=crt)
        if writing and not (creating and flags & os.O_EXCL):
            try:
                st = os.stat(path, follow_symlinks=not flags & os.O_NOFOLLOW)
            except OSError:
                pass
            else:
                if _read_only(st):
                    raise self._deny(ERROR_ACCESS_DENIED, path, reason="the file is read-only", crt=crt)
        # Truncate only once the sharing and mapping checks have passed: a
        # refused open must leave the file as it was, as on Windows.
        truncate = bool(flags & os.O_TRUNC) and (flags & os.O_ACCMODE) != os.O_RDONLY
        try:
            fd = super().open(path, flags & ~os.O_TRUNC if truncate else flags, mode, share_delete=share_delete)
        except FileExistsError:
            reason = "O_EXCL on an existing name"
            raise self._deny(ERROR_FILE_EXISTS, path, reason=reason, crt=crt) from None
        except IsADirectoryError:
            reason = "a directory opened for writing"
            raise self._deny(ERROR_ACCESS_DENIED, path, reason=reason, crt=crt) from None
        except FileNotFoundError as exc:
            if self._delete_pending(path):
                reason, status = "the name is delete-pending", STATUS_DELETE_PENDING
                raise self._deny(ERROR_ACCESS_DENIED, path, reason=reason, crt=crt, ntstatus=status) from None
            if crt:
                raise
            raise _as_win32_error(exc) from None
        except OSError as exc:
            if crt:
                raise
            converted = _as_win32_error(exc)
            if getattr(converted, "winerror", None) == ERROR_ACCESS_DENIED:
                converted.ntstatus = STATUS_ACCESS_DENIED  # type: ignore[attr-defined]  # EACCES, EPERM: a denial
            raise converted from None
        try:
            st = os.fstat(fd)
            self._check_opened(fd, st, path, flags, share_delete=share_delete, crt=crt, truncate=truncate)
            _register(fd, share_delete=shares_delete, st=st)
            if truncate and st.st_size:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_opened(
        self, fd: int, st: os.stat_result, path: str, flags: int, *, share_delete: bool, crt: bool, truncate: bool
    ) -> None:
        """The rules an open checks once it has a descriptor: a directory
        opened through the C runtime, share modes, a mapped view."""
        if stat.S_ISDIR(st.st_mode) and not share_delete and not flags & _O_DIRECTORY:
            # _wopen calls CreateFileW without FILE_FLAG_BACKUP_SEMANTICS,
            # which opening a directory needs (CreateFileW documentation).
            reason = "a directory opened with os.open or open() (no FILE_FLAG_BACKUP_SEMANTICS)"
            raise self._deny(ERROR_ACCESS_DENIED, path, reason=reason, crt=True)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return  # a FIFO or device planted at the name: no Windows file handle to model
        access = flags & os.O_ACCMODE
        violation = _sharing_violation(fd, read=access != os.O_WRONLY, write=access != os.O_RDONLY)
        if violation is not None:
            raise self._deny(ERROR_SHARING_VIOLATION, path, reason=violation, crt=crt)
        if truncate and st.st_size and _is_mapped(fd):
            reason = "truncating a file that has a mapped view (CreateFileW, TRUNCATE_EXISTING)"
            raise self._deny(ERROR_USER_MAPPED_FILE, path, reason=reason, crt=crt)

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

    def ftruncate(self, fd: int, length: int) -> None:
        """Shrinking a file that has a mapped view fails with 1224, which the
        C runtime's ``_chsize_s`` reports as ``PermissionError(EACCES)``."""
        self._check_truncate(fd, length)
        super().ftruncate(fd, length)

    def close(self, fd: int) -> None:
        _ranges.forget(fd)
        super().close(fd)

    # -- locks -------------------------------------------------------------
    def lock(self, fd: int, *, blocking: bool, shared: bool = False) -> None:
        """flock (``LOCK_SH`` when ``shared``), plus a Windows byte-range
        lock on byte 0 (what ``LockFileEx`` takes in the real Windows code):
        while an exclusive one is held, reads and writes of byte 0 through
        other handles fail with 33; while a shared one is held, writes, the
        holder's own included."""
        super().lock(fd, blocking=blocking, shared=shared)
        _ranges.lock_range(fd, _LOCKED_BYTE, 1, shared=shared)

    def unlock(self, fd: int) -> None:
        _ranges.unlock_range(fd, _LOCKED_BYTE, 1)
        super().unlock(fd)

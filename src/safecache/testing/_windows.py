"""Windows file semantics on Linux: :class:`WindowsOps`, and its rules for
names (rename, replace, delete, links, directories).

An :class:`~safecache.testing.OsOps` that refuses what Windows refuses, with
the exceptions CPython raises on Windows.  The model is the one documented
by Microsoft and implemented by Wine's ``server/fd.c``; the rules, options
and limits are in docs/testing.md.  The options and shared checks are in
:mod:`._emulator`, the rules of opening, reading, writing and locking in
:mod:`._descriptors`; the handles it sees are those of every process
(:mod:`._handles`); installing it is :mod:`._install`'s job.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from safecache import _osops

from ._descriptors import _Descriptors
from ._emulator import _read_only
from ._handles import _handles, _tree_has_no_share_delete
from ._names import _listdir, _pending_file, _reap, _rename_noreplace, _Scandir, _zombie_name
from ._winerror import (
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_DIR_NOT_EMPTY,
    ERROR_DIRECTORY,
    ERROR_FILE_EXISTS,
    ERROR_INVALID_FUNCTION,
    ERROR_NOT_SUPPORTED,
    ERROR_PRIVILEGE_NOT_HELD,
    ERROR_SHARING_VIOLATION,
    _as_win32_error,
    _win32,
)

# What FICLONE says on a file system that cannot clone (see OsOps.clone).
_CLONE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTTY, errno.EINVAL, errno.EBADF, errno.ENOSYS})


class WindowsOps(_Descriptors):
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
        Probability that an open for writing of an existing name, a
        replace, rename, unlink or rmdir fails with Windows error 32 or 5
        before doing anything, as when an antivirus scanner holds the file
        for a moment.
    ``transient_read_denials`` (default: ``transient_denials``)
        Probability that an open for reading of an existing file fails with
        32 (a scanner holds it) or 5 with ``ntstatus`` STATUS_DELETE_PENDING
        (another process deleted it while a handle was open).
    ``transient_lock_violations`` (default: ``transient_denials / 10``)
        Probability that a read or write fails with Windows error 33 (as
        ``PermissionError(EACCES)``: the C runtime drops the code).
    ``acl_denied`` (default none)
        Paths (files, or directories and everything beneath them) whose ACL
        denies this user: every open of one fails with 5 and ``ntstatus``
        STATUS_ACCESS_DENIED, as a restored CI cache can (uv #11409).
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

    # -- names -------------------------------------------------------------
    def stat(self, path: str) -> os.stat_result:
        """``os.stat``; a delete-pending name still has its directory entry,
        which CPython's ``os.stat`` reads when ``CreateFileW`` is denied."""
        try:
            return super().stat(path)
        except FileNotFoundError as exc:
            return self._pending_stat(path, exc)
        except OSError as exc:
            raise _as_win32_error(exc) from None

    def lstat(self, path: str) -> os.stat_result:
        try:
            return super().lstat(path)
        except FileNotFoundError as exc:
            return self._pending_stat(path, exc)
        except OSError as exc:
            raise _as_win32_error(exc) from None

    def _pending_stat(self, path: str, exc: OSError) -> os.stat_result:
        pending = None if self.posix_delete else _pending_file(path)
        if pending is None:
            raise _as_win32_error(exc) from None
        return os.lstat(pending)

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

        5 for a directory; 32 if the file is open without share-delete (a
        mapped view counts: it keeps its file's handle); 5 if it is
        read-only or delete-pending.  With ``posix_delete`` the name
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
            _win32(_rename_noreplace, path, _zombie_name(path))
            return
        _win32(super().unlink, path)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """``CreateDirectoryW``: ``FileExistsError`` (183) if the name exists."""
        self._check_new_name(path)
        _win32(super().mkdir, path, mode)

    def rmdir(self, path: str) -> None:
        """``RemoveDirectoryW``: 32 if the directory is open without
        share-delete (a shell's current directory, Explorer);
        ``OSError(ENOTEMPTY)`` (145) if not empty, including delete-pending
        files still open elsewhere; ``NotADirectoryError`` (267) for a file."""
        self._transient("rmdir", path)
        if _handles(path).no_share_delete:
            # RemoveDirectoryW opens the directory with DELETE access, which
            # a handle that does not share delete refuses.
            reason = "the directory is open without FILE_SHARE_DELETE"
            raise self._deny(ERROR_SHARING_VIOLATION, path, reason=reason)
        try:
            super().rmdir(path)
            return
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise self._deny(ERROR_DIRECTORY, path, reason="not a directory") from None
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise _as_win32_error(exc) from None
        if not self.posix_delete:
            _reap(path)
            with contextlib.suppress(OSError):
                super().rmdir(path)
                return
        raise self._deny(ERROR_DIR_NOT_EMPTY, path, reason="the directory is not empty")

    def scandir(self, path: str) -> os._ScandirIterator[str]:
        """``os.scandir``; with ``posix_delete=False`` a delete-pending file
        is listed under its own name, as its directory entry stays."""
        entries = _win32(super().scandir, path)
        if self.posix_delete:
            return entries
        return _Scandir(path, entries)  # type: ignore[return-value]  # duck-typed like os.DirEntry

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``; delete-pending files as :meth:`scandir` lists them."""
        names = _win32(super().listdir, path)
        return names if self.posix_delete else _listdir(path, names)

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

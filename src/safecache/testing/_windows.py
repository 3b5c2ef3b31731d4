"""Windows file semantics on Linux: :class:`WindowsOps` and its options.

An :class:`~safecache.testing.OsOps` that refuses what Windows refuses, with
the exceptions CPython raises on Windows.  The model is the one documented
by Microsoft and implemented by Wine's ``server/fd.c``; the rules, options
and limits are in docs/testing.md.  The handles it sees are those of every
process (:mod:`._handles`); installing it is :mod:`._install`'s job.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TypedDict

from safecache import _osops
from safecache._osops import OsOps  # published as safecache.testing.OsOps

from . import _actors
from ._handles import (
    _byte_range_locked,
    _handles,
    _lock_byte,
    _register,
    _require_ofd_locks,
    _tree_has_no_share_delete,
    _unlock_byte,
)
from ._names import _is_zombie, _name_problem, _pending, _reap, _rename_noreplace, _zombie_name
from ._perprocess import _PerProcess
from ._winerror import (
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_DIR_NOT_EMPTY,
    ERROR_DIRECTORY,
    ERROR_FILE_EXISTS,
    ERROR_INVALID_FUNCTION,
    ERROR_INVALID_NAME,
    ERROR_LOCK_VIOLATION,
    ERROR_NOT_SUPPORTED,
    ERROR_PRIVILEGE_NOT_HELD,
    ERROR_SHARING_VIOLATION,
    STATUS_ACCESS_DENIED,
    STATUS_DELETE_PENDING,
    _as_win32_error,
    _win32,
    _windows_error,
)


class WindowsOptions(TypedDict):
    """The options of a :class:`WindowsOps`, as :attr:`WindowsOps.options`
    returns them (to re-create it in a spawned child process)."""

    posix_delete: bool
    posix_rename: bool
    hardlinks: bool
    symlinks: bool
    strict_names: bool
    transient_denials: float
    transient_read_denials: float | None
    transient_lock_violations: float | None
    acl_denied: tuple[str, ...]
    seed: int | None
    block_cloning: bool


# What FICLONE says on a file system that cannot clone (see OsOps.clone).
_CLONE_UNSUPPORTED = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTTY, errno.EINVAL, errno.EBADF, errno.ENOSYS}
)


def _read_only(st: os.stat_result) -> bool:
    # Python's os.chmod on Windows maps the owner write bit to the read-only
    # attribute, and os.stat maps it back: the write bit *is* the attribute.
    return stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWRITE


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

    def __init__(
        self,
        *,
        posix_delete: bool = True,
        posix_rename: bool = False,
        hardlinks: bool = True,
        symlinks: bool = False,
        strict_names: bool = True,
        transient_denials: float = 0.0,
        transient_read_denials: float | None = None,
        transient_lock_violations: float | None = None,
        acl_denied: tuple[str, ...] | list[str] = (),
        seed: int | None = None,
        block_cloning: bool = False,
    ) -> None:
        _require_ofd_locks()
        self.posix_delete = posix_delete
        self.posix_rename = posix_rename
        self.hardlinks = hardlinks
        self.symlinks = symlinks
        self.strict_names = strict_names
        self.transient_denials, self.transient_read_denials, self.transient_lock_violations = (
            _actors.probabilities(transient_denials, transient_read_denials, transient_lock_violations)
        )
        self._read_denials_option = transient_read_denials
        self._lock_violations_option = transient_lock_violations
        self.acl_denied = _actors.normalized(acl_denied)
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
            transient_read_denials=self._read_denials_option,
            transient_lock_violations=self._lock_violations_option,
            acl_denied=self.acl_denied,
            seed=self.seed,
            block_cloning=self.block_cloning,
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters of this process (a forked child starts from zero).

        ``"transient"``: transient denials injected; ``"transient.<op>"``:
        per operation (``"transient.lock_violation"`` for reads and writes);
        ``"transient.open.<code>"``: denials of opens for reading by code;
        ``"rule.<code>"``: errors raised by a Windows rule, by Windows error
        code (``"rule.5"``, ``"rule.32"``, ...); ``"acl"``: opens refused by
        ``acl_denied`` (also in ``"rule.5"``).  Missing keys are zero.
        """
        return self._process.stats()

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"WindowsOps({options})"

    # -- helpers -----------------------------------------------------------
    def _deny(
        self, code: int, path: str | None, path2: str | None = None, *, reason: str, crt: bool = False,
        ntstatus: int | None = None,
    ) -> OSError:
        self._process.count(f"rule.{code}")
        return _windows_error(code, path, path2, reason=reason, crt=crt, ntstatus=ntstatus)

    def _transient(self, op: str, path: str | None, path2: str | None = None, *, crt: bool = False) -> None:
        _actors.deny_transiently(self._process, self.transient_denials, op, path, path2, crt=crt)

    def _lock_violation(self, fd: int, offset: int | None, length: int, *, write: bool) -> None:
        _actors.lock_violation(self._process, self.transient_lock_violations)
        if _byte_range_locked(fd, offset, length, write=write):
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

    def _check_zombie(
        self, path: str, src: str | None = None, *, crt: bool = False, ntstatus: int | None = None
    ) -> None:
        """Refuse to touch a delete-pending file by its pending name."""
        if not _is_zombie(path):
            return
        if _handles(path).open:
            report = (path, None) if src is None or src == path else (src, path)
            reason = "the file is delete-pending"
            raise self._deny(ERROR_ACCESS_DENIED, *report, reason=reason, crt=crt, ntstatus=ntstatus)
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
        still open somewhere (posix_delete=False only; see ``_names._pending``)."""
        if self.posix_delete:
            return False
        return _pending(path)

    # -- descriptors -------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o666, *, share_delete: bool = True) -> int:
        """Open ``path`` as Windows would, registering the handle.

        ``O_CREAT | O_EXCL`` on an existing name raises ``FileExistsError``
        (Windows error 80); opening a read-only file for writing, a
        directory for writing, a delete-pending name, or a path under
        ``acl_denied`` raises ``PermissionError`` (5).  Opens never conflict
        with each other: Python's opens share read and write, and only delete
        access (rename, replace, unlink) conflicts with them.  Errors carry
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
        _lock_byte(fd, shared=shared)

    def unlock(self, fd: int) -> None:
        _unlock_byte(fd)
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
            _win32(_rename_noreplace, path, _zombie_name(path))
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
            _reap(path)
            with contextlib.suppress(OSError):
                super().rmdir(path)
                return
        raise self._deny(ERROR_DIR_NOT_EMPTY, path, reason="the directory is not empty")

    def scandir(self, path: str) -> os._ScandirIterator[str]:
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

"""The state and the helpers every Windows rule shares: :class:`_Emulator`,
the base of :class:`WindowsOps`, and :class:`WindowsOptions`.

Options, counters, how a rule's error is raised and counted, and the checks
that several operations make (a new name, a delete-pending name, the source
of a rename).  The rules themselves are in :mod:`._descriptors` (opening,
reading, writing, locking) and :mod:`._windows` (names).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TypedDict

from safecache._osops import OsOps  # published as safecache.testing.OsOps

from . import _actors, _ranges
from ._handles import _handles, _require_ofd_locks
from ._mapped import _is_mapped
from ._names import _is_zombie, _name_problem, _pending
from ._perprocess import _PerProcess
from ._winerror import (
    ERROR_ACCESS_DENIED,
    ERROR_INVALID_NAME,
    ERROR_LOCK_VIOLATION,
    ERROR_USER_MAPPED_FILE,
    _as_win32_error,
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


def _read_only(st: os.stat_result) -> bool:
    # Python's os.chmod on Windows maps the owner write bit to the read-only
    # attribute, and os.stat maps it back: the write bit *is* the attribute.
    return stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWRITE


class _Emulator(OsOps):
    """What every rule of :class:`WindowsOps` shares (documented there)."""

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
        self.transient_denials, self.transient_read_denials, self.transient_lock_violations = _actors.probabilities(
            transient_denials, transient_read_denials, transient_lock_violations
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
        self,
        code: int,
        path: str | None,
        path2: str | None = None,
        *,
        reason: str,
        crt: bool = False,
        ntstatus: int | None = None,
        crt_errno: int | None = None,
    ) -> OSError:
        self._process.count(f"rule.{code}")
        return _windows_error(code, path, path2, reason=reason, crt=crt, ntstatus=ntstatus, crt_errno=crt_errno)

    def _transient(self, op: str, path: str | None, path2: str | None = None, *, crt: bool = False) -> None:
        _actors.deny_transiently(self._process, self.transient_denials, op, path, path2, crt=crt)

    def _lock_violation(self, fd: int, offset: int | None, length: int, *, write: bool) -> None:
        _actors.lock_violation(self._process, self.transient_lock_violations)
        if _ranges.locked(fd, offset, length, write=write):
            reason = "another handle holds a byte-range lock on this region (LockFileEx)"
            raise self._deny(ERROR_LOCK_VIOLATION, None, reason=reason, crt=True)

    def _check_truncate(self, fd: int, length: int) -> None:
        # _chsize_s extends a file by writing zeros and shrinks it with
        # SetEndOfFile, which fails while a view is mapped (1224); it then
        # sets errno to EACCES, whatever the Windows code.
        if length < os.fstat(fd).st_size and _is_mapped(fd):
            reason = "shrinking a file that has a mapped view (SetEndOfFile)"
            raise self._deny(ERROR_USER_MAPPED_FILE, None, reason=reason, crt=True, crt_errno=errno.EACCES)

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
            raise _as_win32_error(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src, None, dst)) from None

    def _delete_pending(self, path: str) -> bool:
        """Whether ``path`` names a file that was deleted while open and is
        still open somewhere (posix_delete=False only; see ``_names._pending``)."""
        if self.posix_delete:
            return False
        return _pending(path)

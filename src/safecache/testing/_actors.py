"""The other programs on the machine, as :class:`WindowsOps` injects them.

Not rules of the file system but things other programs do to it: an
antivirus scanner or indexer that holds a file for a moment (transient
denials of mutations and opens, lock violations on reads and writes), a
name pending delete because another process deleted it while a third still
had it open (transient denials of opens for reading), and an ACL that denies
this user some paths.  Each draws from the per-process stream of
:mod:`._perprocess` and raises the error CPython raises on Windows
(:mod:`._winerror`).  docs/testing.md gives the rules and their sources.
"""

from __future__ import annotations

import os

from ._perprocess import _check_probability, _PerProcess
from ._winerror import (
    ERROR_ACCESS_DENIED,
    ERROR_LOCK_VIOLATION,
    ERROR_SHARING_VIOLATION,
    STATUS_ACCESS_DENIED,
    STATUS_DELETE_PENDING,
    _windows_error,
)

# Operations a scanner or indexer can make fail for a moment, and the Windows
# errors each one sees (sharing violation, or access denied: MoveFileExW
# reports a target held open as 5; a delete-pending name is 5).  "open" is an
# open for writing of an existing file; opens for reading are
# :func:`deny_read_open`'s.
_TRANSIENT_CODES: dict[str, tuple[int, ...]] = {
    "open": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "replace": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "rename": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "unlink": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
    "rmdir": (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED),
}
# An open for reading of a file that is there fails with 32 while a scanner
# holds it without sharing read (CreateFileW docs: a share mode that
# conflicts with an open handle fails with ERROR_SHARING_VIOLATION), or with
# 5 and STATUS_DELETE_PENDING while the name is pending delete (DeleteFileW
# docs: "Subsequent calls to CreateFile to open the file fail with
# ERROR_ACCESS_DENIED").
_READ_OPEN_CODES = (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED)


def probabilities(
    denials: float, read_denials: float | None, lock_violations: float | None
) -> tuple[float, float, float]:
    """The probabilities of transient denials of mutations and opens for
    writing, of opens for reading, and of reads and writes (33), from the
    options (``ValueError`` outside 0-1).  Reads are denied as often as the
    rest unless said otherwise; byte-range locks on cache files by third
    parties are much rarer than scanners holding them: a tenth, by default.
    """
    denials = _check_probability("transient_denials", denials)
    reads = denials if read_denials is None else _check_probability("transient_read_denials", read_denials)
    locks = (
        denials / 10 if lock_violations is None else _check_probability("transient_lock_violations", lock_violations)
    )
    return denials, reads, locks


def deny_transiently(
    process: _PerProcess, probability: float, op: str, path: str | None, path2: str | None = None, *, crt: bool
) -> None:
    """With ``probability``, raise a transient denial of ``op`` (32 or 5)."""
    if process.chance(probability):
        process.count("transient")
        process.count(f"transient.{op}")
        code = process.choice(_TRANSIENT_CODES[op])
        reason = f"transient denial of {op} (simulated antivirus)"
        raise _windows_error(code, path, path2, reason=reason, crt=crt)


def deny_read_open(process: _PerProcess, probability: float, path: str, *, crt: bool) -> None:
    """With ``probability``, refuse an open for reading of the existing file
    ``path``: 32 (a scanner holds it) or 5 with ``STATUS_DELETE_PENDING``
    (another process deleted it while a handle was open).  Counted as
    ``transient``, ``transient.open`` and ``transient.open.<code>``."""
    if not process.chance(probability) or not os.path.lexists(path):
        return
    code = process.choice(_READ_OPEN_CODES)
    process.count("transient")
    process.count("transient.open")
    process.count(f"transient.open.{code}")
    if code == ERROR_ACCESS_DENIED:
        reason = "transient denial of a read: the name is pending delete (simulated)"
        raise _windows_error(code, path, reason=reason, crt=crt, ntstatus=STATUS_DELETE_PENDING)
    reason = "transient denial of a read (simulated antivirus)"
    raise _windows_error(code, path, reason=reason, crt=crt)


def lock_violation(process: _PerProcess, probability: float) -> None:
    """With ``probability``, raise a transient lock violation (33) of a read
    or write.  ``os.read`` and ``os.write`` go through the C runtime: errno
    only."""
    if process.chance(probability):
        process.count("transient")
        process.count("transient.lock_violation")
        reason = "transient lock violation (simulated third party)"
        raise _windows_error(ERROR_LOCK_VIOLATION, None, reason=reason, crt=True)


def normalized(paths: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``paths`` as :func:`acl_denies` compares them (absolute, normalised)."""
    return tuple(os.path.abspath(os.fspath(p)) for p in paths)


def acl_denies(denied: tuple[str, ...], path: str) -> bool:
    """Whether ``path`` is one of the ``denied`` paths (from
    :func:`normalized`) or lies beneath one."""
    if not denied:
        return False
    full = os.path.abspath(path)
    return any(full == d or full.startswith(d.rstrip(os.sep) + os.sep) for d in denied)


def acl_denial(process: _PerProcess, path: str, *, crt: bool) -> OSError:
    """The error of an open that an ACL refuses: 5 with
    ``STATUS_ACCESS_DENIED``.  Counted as ``acl`` and ``rule.5``."""
    process.count("acl")
    process.count(f"rule.{ERROR_ACCESS_DENIED}")
    reason = "an ACL denies this user the file (acl_denied)"
    return _windows_error(ERROR_ACCESS_DENIED, path, reason=reason, crt=crt, ntstatus=STATUS_ACCESS_DENIED)

"""Error codes: what is transient, what means "no locks here", how an error is named."""

from __future__ import annotations

import errno

import pytest

from safecache import _errcodes


def win(code: int) -> OSError:
    exc = PermissionError(errno.EACCES, "denied")
    exc.winerror = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize("op", ["open", "read", "replace", "unlink", "mkdir"])
def test_sharing_and_lock_violations_are_transient_everywhere(op: str) -> None:
    assert _errcodes.is_transient(win(_errcodes.ERROR_SHARING_VIOLATION), op)
    assert _errcodes.is_transient(win(_errcodes.ERROR_LOCK_VIOLATION), op)


@pytest.mark.parametrize("op, transient", [("replace", True), ("unlink", True), ("rename", True), ("mkdir", False)])
def test_access_denied_is_transient_only_where_windows_means_in_use(op: str, transient: bool) -> None:
    assert _errcodes.is_transient(win(_errcodes.ERROR_ACCESS_DENIED), op) is transient


def test_posix_busy_errors_are_transient_and_denials_are_not() -> None:
    assert _errcodes.is_transient(OSError(errno.EBUSY, "busy"), "unlink")
    assert _errcodes.is_transient(OSError(errno.ETXTBSY, "busy"), "open")
    assert not _errcodes.is_transient(OSError(errno.EACCES, "denied"), "open")


def test_locks_unsupported() -> None:
    assert _errcodes.locks_unsupported(OSError(errno.ENOLCK, "no locks"))
    assert not _errcodes.locks_unsupported(OSError(errno.EACCES, "denied"))


def test_describe_names_the_error_one_way() -> None:
    exc = PermissionError(errno.EACCES, "Permission denied", "/x")
    assert _errcodes.describe(exc) == "PermissionError: [Errno 13] Permission denied: '/x'"
    assert _errcodes.describe(exc, with_type=False, errno_name=True) == "EACCES: Permission denied"
    assert _errcodes.describe(win(32)).startswith("PermissionError: [WinError 32]")
    assert _errcodes.describe(ValueError()) == "ValueError: "

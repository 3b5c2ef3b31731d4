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


# -- Windows error 5 on an open, judged by its NT status ----------------------------


def denied(ntstatus: int | None) -> OSError:
    """A Windows error 5 as safecache's Windows open raises it."""
    exc = win(_errcodes.ERROR_ACCESS_DENIED)
    if ntstatus is not None:
        exc.ntstatus = ntstatus  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    "ntstatus, cause",
    [
        (_errcodes.STATUS_DELETE_PENDING, "delete-pending"),
        (_errcodes.STATUS_ACCESS_DENIED, "permission"),
        (None, "unknown"),
        (0x102, "unknown"),  # STATUS_TIMEOUT: a status a wait for the GIL left behind, not the open's
    ],
)
def test_access_denied_cause_reads_the_nt_status(ntstatus: int | None, cause: str) -> None:
    assert _errcodes.access_denied_cause(denied(ntstatus)) == cause


def test_access_denied_cause_is_none_for_other_errors() -> None:
    assert _errcodes.access_denied_cause(win(_errcodes.ERROR_SHARING_VIOLATION)) is None
    assert _errcodes.access_denied_cause(PermissionError(errno.EACCES, "denied")) is None


@pytest.mark.parametrize("op", ["open", _errcodes.OPEN_FOR_READ, "mkdir"])
def test_a_delete_pending_status_makes_access_denied_transient_on_any_operation(op: str) -> None:
    assert _errcodes.is_transient(denied(_errcodes.STATUS_DELETE_PENDING), op)


@pytest.mark.parametrize("op", ["open", _errcodes.OPEN_FOR_READ])
def test_an_access_denied_status_is_never_transient_on_an_open(op: str) -> None:
    assert not _errcodes.is_transient(denied(_errcodes.STATUS_ACCESS_DENIED), op)


def test_access_denied_without_a_status_is_retried_on_reads_only() -> None:
    """Without a status a 5 may be a pending delete: worth a retry where a
    present entry would otherwise read as a miss, not on other opens."""
    assert _errcodes.is_transient(denied(None), _errcodes.OPEN_FOR_READ)
    assert _errcodes.is_transient(denied(0x102), _errcodes.OPEN_FOR_READ)
    assert not _errcodes.is_transient(denied(None), "open")
    assert not _errcodes.is_transient(denied(None), "mkdir")


@pytest.mark.parametrize("op", sorted(_errcodes.RETRY_ACCESS_DENIED_OPS))
def test_access_denied_stays_transient_on_mutations_whatever_the_status(op: str) -> None:
    for ntstatus in (None, _errcodes.STATUS_ACCESS_DENIED, _errcodes.STATUS_DELETE_PENDING):
        assert _errcodes.is_transient(denied(ntstatus), op)


def test_posix_errors_on_a_read_open_keep_their_meaning() -> None:
    assert _errcodes.is_transient(OSError(errno.EBUSY, "busy"), _errcodes.OPEN_FOR_READ)
    assert not _errcodes.is_transient(PermissionError(errno.EACCES, "denied"), _errcodes.OPEN_FOR_READ)
    assert not _errcodes.is_transient(FileNotFoundError(errno.ENOENT, "gone"), _errcodes.OPEN_FOR_READ)


def test_a_name_pending_delete_is_busy_and_a_denial_is_not() -> None:
    assert _errcodes.is_busy(denied(_errcodes.STATUS_DELETE_PENDING))
    assert not _errcodes.is_busy(denied(_errcodes.STATUS_ACCESS_DENIED))
    assert not _errcodes.is_busy(denied(None))

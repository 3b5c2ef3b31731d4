"""Fault-injection matrix: every cache operation against every OS error.

Lenient mode never raises and returns a correct answer (a miss, a no-op, the
factory's value, or the stored value); strict mode raises the typed error,
carrying the original.
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path
from typing import Callable

import pytest

import safecache
from safecache.testing import STATUS_ACCESS_DENIED, WinError, inject_errors

ERRORS: dict[str, object] = {
    "EACCES": errno.EACCES,
    "EPERM": errno.EPERM,
    "EROFS": errno.EROFS,
    "ENOSPC": errno.ENOSPC,
    "EDQUOT": errno.EDQUOT,
    "EIO": errno.EIO,
    "ENAMETOOLONG": errno.ENAMETOOLONG,
    "EMFILE": errno.EMFILE,
    "ENOLCK": errno.ENOLCK,
    "EBUSY": errno.EBUSY,
    "WinError5": WinError(5),
    "WinError32": WinError(32),
    "WinError33": WinError(33),
}

# The strict-mode class each error must surface as (every one is a CacheError).
STRICT: dict[str, type[safecache.CacheError]] = {
    "EACCES": safecache.CachePermissionError,
    "EPERM": safecache.CachePermissionError,
    "EROFS": safecache.CacheReadOnlyError,
    "ENOSPC": safecache.CacheFullError,
    "EDQUOT": safecache.CacheFullError,
    "EIO": safecache.CacheError,
    "ENAMETOOLONG": safecache.CacheError,
    "EMFILE": safecache.CacheError,
    "ENOLCK": safecache.CacheError,
    "EBUSY": safecache.CacheBusyError,
    "WinError5": safecache.CachePermissionError,
    "WinError32": safecache.CacheBusyError,
    "WinError33": safecache.CacheBusyError,
}

OLD, NEW = b"old value", b"new value"


def _open(root: Path, strict: bool) -> safecache.Cache:
    # A tiny retry budget: the matrix checks policy, not patience.
    return safecache.Cache(root, strict=strict, retry_budget=0.01, lock_timeout=1.0)


def _prepared(root: Path, strict: bool) -> safecache.Bucket:
    bucket = _open(root, strict).bucket("m")
    assert bucket.put("present", OLD)
    return bucket


def _after(root: Path) -> safecache.Bucket:
    """The bucket as a fresh process, without faults, sees it."""
    return _open(root, strict=True).bucket("m")


# -- lenient: never raises, answers correctly --------------------------------------
def check_get(root: Path) -> None:
    bucket = _prepared(root, strict=False)
    with inject_errors(ERROR, ops="*"):
        assert bucket.get("present") in (None, OLD)
        assert bucket.get("absent") is None
        assert ("present" in bucket) in (True, False)
    assert _after(root).get("present") == OLD  # a failed read destroys nothing


def check_put(root: Path) -> None:
    bucket = _prepared(root, strict=False)
    with inject_errors(ERROR, ops="*"):
        stored = bucket.put("present", NEW)
        stored_new = bucket.put("absent", NEW)
    assert _after(root).get("present") == (NEW if stored else OLD)
    assert _after(root).get("absent") == (NEW if stored_new else None)
    assert not list(root.rglob("*.tmp"))  # temp files are removed on failure


def check_delete(root: Path) -> None:
    bucket = _prepared(root, strict=False)
    with inject_errors(ERROR, ops="*"):
        deleted = bucket.delete("present")
    assert _after(root).get("present") == (None if deleted else OLD)


def check_get_or_create(root: Path) -> None:
    bucket = _prepared(root, strict=False)
    with inject_errors(ERROR, ops="*"):
        assert bucket.get_or_create("absent", lambda: NEW) == NEW
        assert bucket.get_or_create("present", lambda: NEW) in (OLD, NEW)
    assert _after(root).get("absent") in (None, NEW)


def check_open(root: Path) -> None:
    _prepared(root, strict=False)
    with inject_errors(ERROR, ops="*"):
        cache = _open(root, strict=False)
        assert cache.bucket("m").get("present") in (None, OLD)
        assert cache.bucket("m").put("x", NEW) in (True, False)
    assert _after(root).get("present") == OLD


LENIENT: dict[str, Callable[[Path], None]] = {
    "get": check_get,
    "put": check_put,
    "delete": check_delete,
    "get_or_create": check_get_or_create,
    "open": check_open,
}

ERROR: object = None


@pytest.mark.parametrize("operation", list(LENIENT))
@pytest.mark.parametrize("name", list(ERRORS))
def test_lenient_mode_never_raises_and_answers_correctly(tmp_path: Path, operation: str, name: str) -> None:
    global ERROR
    ERROR = ERRORS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LENIENT[operation](tmp_path / "cache")
    assert all(issubclass(w.category, safecache.CacheWarning) for w in caught)


# -- strict: raises the typed error ----------------------------------------------------
def _strict_operation(root: Path, operation: str) -> Callable[[], object]:
    """The operation, bound to a bucket opened before any fault starts."""
    if operation == "open":
        return lambda: _open(root, strict=True)
    bucket = _prepared(root, strict=True)
    return {
        "get": lambda: bucket.get("present"),
        "put": lambda: bucket.put("present", NEW),
        "delete": lambda: bucket.delete("present"),
        "get_or_create": lambda: bucket.get_or_create("absent", lambda: NEW),
    }[operation]


@pytest.mark.parametrize("operation", list(LENIENT))
@pytest.mark.parametrize("name", list(ERRORS))
def test_strict_mode_raises_the_typed_error(tmp_path: Path, operation: str, name: str) -> None:
    root = tmp_path / "cache"
    _prepared(root, strict=True)
    call = _strict_operation(root, operation)
    expected = STRICT[name]
    if name == "WinError5" and operation == "delete":
        # On a delete, Windows' 5 means "in use or delete pending": it is
        # retried, and a budget that runs out reports the file busy.
        expected = safecache.CacheBusyError
    with inject_errors(ERRORS[name], ops="*"):
        with pytest.raises(expected) as info:
            call()
    err = info.value
    assert isinstance(err.original, OSError)
    assert err.__cause__ is err.original
    spec = ERRORS[name]
    if isinstance(spec, WinError):
        assert err.original.winerror == spec.code  # type: ignore[attr-defined]
    else:
        assert err.original.errno == spec


def test_strict_lock_unsupported_is_typed(tmp_path: Path) -> None:
    """uv #9050's file system: locking is not supported."""
    bucket = _prepared(tmp_path / "cache", strict=True)
    with inject_errors(errno.ENOLCK, ops=("lock",)):
        with pytest.raises(safecache.LockUnsupportedError):
            bucket.get_or_create("absent", lambda: NEW)


# -- targeted faults: one system call fails, the rest work ---------------------------
@pytest.mark.parametrize(
    "op, error",
    [
        ("replace", WinError(5)),
        ("replace", WinError(32)),
        ("write", errno.ENOSPC),
        ("write", errno.EDQUOT),
        ("mkdir", errno.EACCES),
        ("open", errno.EMFILE),
        ("pwrite", errno.EIO),
        ("fsync", errno.EIO),
    ],
)
def test_a_failing_write_step_leaves_the_old_entry_and_no_temp_file(tmp_path: Path, op: str, error: object) -> None:
    root = tmp_path / "cache"
    bucket = safecache.Cache(root, retry_budget=0.01, durable=True).bucket("m")
    bucket.put("k", OLD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with inject_errors(error, ops=(op,)) as faults:
            bucket.put("k", NEW)
            bucket.put_stream("k2", iter([NEW]))
    assert faults.fired >= 1
    assert bucket.get("k") in (OLD, NEW)
    assert bucket.get("k2") in (None, NEW)
    assert not list(root.rglob("*.tmp"))


def test_a_transient_replace_failure_is_retried_and_succeeds(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c", strict=True).bucket("m")
    bucket.put("k", OLD)
    with inject_errors(WinError(32), ops=("replace",), times=3) as faults:
        assert bucket.put("k", NEW) is True
    assert faults.fired == 3
    assert bucket.get("k") == NEW


def test_a_permanent_error_is_not_retried(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c", retry_budget=5.0).bucket("m")
    bucket.put("k", OLD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with inject_errors(errno.EACCES, ops=("replace",)) as faults:
            assert bucket.put("k", NEW) is False
    assert faults.fired == 1


def test_access_denied_on_open_is_not_retried(tmp_path: Path) -> None:
    """A WinError 5 from opening a file whose NT status says "access denied"
    is a real ACL denial (uv #11409's root): retrying it would add the whole
    budget to every operation.  (A 5 whose status says "delete pending", or
    says nothing, is retried on reads: tests/test_windows_reads.py.)"""
    bucket = safecache.Cache(tmp_path / "c", retry_budget=5.0).bucket("m")
    bucket.put("k", OLD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with inject_errors(WinError(5, ntstatus=STATUS_ACCESS_DENIED), ops=("open",)) as faults:
            assert bucket.get("k") is None
    assert faults.fired == 1


def test_lenient_mode_warns_once_per_cause(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c", retry_budget=0.01).bucket("m")
    bucket.put("k", OLD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with inject_errors(errno.EIO, ops=("read",)):
            for _ in range(5):
                assert bucket.get("k") is None
        with inject_errors(errno.ENOSPC, ops=("write",)):
            for i in range(5):
                assert bucket.put(f"n{i}", NEW) is False
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "(io)" in messages[0] and "(full)" in messages[1]
    assert bucket.counters.errors == {"io": 5, "full": 5}

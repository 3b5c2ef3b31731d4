"""The error policy, written once: classify a failure, then warn or raise.

Lenient (the default): a failure becomes a miss or a no-op, the caller gets one
``CacheWarning`` per cause per cache root per process, and every occurrence is
logged to the ``safecache`` logger.  Strict: the failure is raised as a typed
``CacheError`` that carries the original exception.
"""

from __future__ import annotations

import _thread
import errno as _errno
import os
import sys
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

from . import _errors

if TYPE_CHECKING:
    import logging

_logger: logging.Logger | None = None


def logger() -> logging.Logger:
    """The ``safecache`` logger (``logging`` is imported on first use: it
    costs milliseconds that tools pay on every run)."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger("safecache")
        # A library must not print through logging's last-resort handler when
        # the application configured none: the CacheWarning is the one message
        # users see by default; the log holds the details for those who ask.
        if not _logger.handlers:
            _logger.addHandler(logging.NullHandler())
    return _logger

# Windows error codes (winerror) that mean "another process has this file
# open or locked right now": worth a bounded retry.
WIN_ACCESS_DENIED = 5
WIN_SHARING_VIOLATION = 32
WIN_LOCK_VIOLATION = 33
_TRANSIENT_WINERRORS = frozenset({WIN_SHARING_VIOLATION, WIN_LOCK_VIOLATION})
_TRANSIENT_ERRNOS = frozenset({_errno.EBUSY, _errno.ETXTBSY})
# Operations where Windows reports a file held open by someone else as error
# 5 rather than 32: replacing over an open target, deleting a delete-pending
# or mapped file.  Elsewhere (open, mkdir) a 5 is a real ACL denial, and a
# real denial never clears, so retrying it would only add two seconds to
# every operation of a cache like uv #11409's.
RETRY_ACCESS_DENIED_OPS = frozenset({"replace", "rename", "unlink", "rmdir", "link"})

_LOCK_UNSUPPORTED = frozenset(
    e
    for e in (
        _errno.ENOLCK,
        _errno.ENOSYS,
        getattr(_errno, "EOPNOTSUPP", None),
        getattr(_errno, "ENOTSUP", None),
    )
    if e is not None
)


def is_transient(exc: OSError, op: str) -> bool:
    """Whether ``exc`` from ``op`` is worth retrying (the file is in use)."""
    winerror = getattr(exc, "winerror", None)
    if winerror is not None:
        if winerror in _TRANSIENT_WINERRORS:
            return True
        if winerror == WIN_ACCESS_DENIED:
            return op in RETRY_ACCESS_DENIED_OPS
        return False
    return exc.errno in _TRANSIENT_ERRNOS


def classify(exc: BaseException, *, lock: bool = False) -> tuple[str, type[_errors.CacheError]]:
    """Map an exception to (cause name, strict-mode error class)."""
    if isinstance(exc, _errors.CacheError):
        return exc.cause, type(exc)
    if not isinstance(exc, OSError):
        return "internal", _errors.CacheError
    if getattr(exc, "_safecache_exhausted", False):
        return "busy", _errors.CacheBusyError
    code = exc.errno
    winerror = getattr(exc, "winerror", None)
    if winerror in _TRANSIENT_WINERRORS or code in _TRANSIENT_ERRNOS:
        return "busy", _errors.CacheBusyError
    if lock and code in _LOCK_UNSUPPORTED:
        return "lock-unsupported", _errors.LockUnsupportedError
    if code == _errno.EROFS:
        return "read-only", _errors.CacheReadOnlyError
    if code in (_errno.EACCES, _errno.EPERM):
        return "permission", _errors.CachePermissionError
    if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
        return "full", _errors.CacheFullError
    if code == _errno.ENAMETOOLONG:
        return "name-too-long", _errors.CacheError
    if code in (_errno.EMFILE, _errno.ENFILE):
        return "too-many-files", _errors.CacheError
    if isinstance(exc, TimeoutError):
        return "lock-timeout", _errors.LockTimeoutError
    return "io", _errors.CacheError


_warned: set[tuple[str, str]] = set()
_warned_lock = _thread.allocate_lock()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _stacklevel() -> int:
    """The stack level of the first frame outside safecache, so the warning
    points at the caller's line."""
    level = 1
    frame = sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def warn_once(cause: str, root: str, message: str) -> None:
    """Issue ``message`` as a CacheWarning unless this (cause, root) already warned."""
    with _warned_lock:
        if (cause, root) in _warned:
            return
        _warned.add((cause, root))
    import warnings

    warnings.warn(message, _errors.CacheWarning, stacklevel=_stacklevel())


def reset_warnings() -> None:
    """Forget which causes have warned (for tests)."""
    with _warned_lock:
        _warned.clear()


def describe_exception(exc: BaseException) -> str:
    return _errors._describe(exc)


def make_error(
    exc: BaseException,
    *,
    operation: str,
    path: str | None,
    lock: bool = False,
    message: str | None = None,
) -> _errors.CacheError:
    """Build the strict-mode error for ``exc``."""
    if isinstance(exc, _errors.CacheError):
        return exc
    cause, cls = classify(exc, lock=lock)
    if message is None:
        message = f"cache {operation} failed"
        tries = getattr(exc, "_safecache_exhausted", None)
        if tries:
            attempts, seconds = tries
            message = (
                f"cache {operation} failed: the file stayed in use by another process "
                f"through {attempts} attempts over {seconds:.2f} s"
            )
    filename = path if path is not None else getattr(exc, "filename", None)
    return cls(message, filename=filename, original=exc, operation=operation, cause=cause)

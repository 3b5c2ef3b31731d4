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

from . import _errcodes, _errors
from ._errcodes import is_transient

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

def classify(exc: BaseException, *, lock: bool = False) -> tuple[str, type[_errors.CacheError]]:
    """Map an exception to (cause name, strict-mode error class)."""
    if isinstance(exc, _errors.CacheError):
        return exc.cause, type(exc)
    if not isinstance(exc, OSError):
        return "internal", _errors.CacheError
    if getattr(exc, "_safecache_exhausted", False):
        return "busy", _errors.CacheBusyError
    code = exc.errno
    if _errcodes.is_busy(exc):
        return "busy", _errors.CacheBusyError
    if lock and _errcodes.locks_unsupported(exc):
        return "lock-unsupported", _errors.LockUnsupportedError
    if code == _errno.EROFS:
        return "read-only", _errors.CacheReadOnlyError
    if code in (_errno.EACCES, _errno.EPERM):
        return "permission", _errors.CachePermissionError
    if code in _errcodes.FULL_ERRNOS:
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


#: One way to name an exception in a message (see :func:`._errcodes.describe`).
describe_exception = _errcodes.describe


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


def stderr(message: str) -> None:
    """Print a line for ``SAFECACHE_DEBUG_KEYS``; never raises."""
    try:
        sys.stderr.write(message + "\n")
    except Exception:  # noqa: BLE001 - a debug print must never break the caller
        pass

"""Exceptions and the warning category.

The tree, all importable from ``safecache``::

    CacheWarning(UserWarning)            lenient mode: one per cause per process
    CacheError(OSError)                  strict mode: every cache failure
     +-- CachePermissionError(PermissionError)   the OS refused (ACL, owner, read-only root)
     +-- CacheReadOnlyError(PermissionError)     a write to a cache that is read-only (file system
     |                                           or root not writable); hits are still served
     +-- CacheFullError                          ENOSPC, EDQUOT
     +-- CacheBusyError                          still in use by another process after the retry
     |                                           budget (Windows errors 5/32/33, EBUSY, ETXTBSY)
     +-- LockTimeoutError(TimeoutError)          a lock was not acquired within its timeout
     +-- LockUnsupportedError                    the file system cannot lock (ENOLCK, ENOSYS, ...)
     +-- CacheUnavailableError                   the root cannot be read or created; the cache is
                                                 disabled

Every ``CacheError`` subclasses ``OSError`` (and the builtin it resembles), keeps
the errno, message and path of the failure that caused it, and carries that
original exception as ``original`` and as ``__cause__``: never a misleading
replacement (joblib's bare ``raise`` after exhausted retries raised
``RuntimeError: No active exception to reraise`` instead of the real error).
They survive pickling, so they cross process boundaries intact.
"""

from __future__ import annotations

from ._errcodes import describe


class CacheWarning(UserWarning):
    """A cache operation degraded to a miss or a no-op.

    Issued at most once per cause per process; the details of every
    occurrence go to the ``safecache`` logger.
    """


class CacheError(OSError):
    """Base class of the errors raised in strict mode.

    ``cause`` is a short stable name for the kind of failure (``"permission"``,
    ``"read-only"``, ``"full"``, ``"busy"``, ``"lock-timeout"``,
    ``"lock-unsupported"``, ``"unavailable"``, ``"io"``, ...), the same name used
    by lenient warnings and counters.  ``operation`` names the cache operation
    (``"put"``, ``"get"``, ...).  ``original`` is the underlying exception, if any.
    """

    cause = "io"

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        filename: str | None = None,
        original: BaseException | None = None,
        operation: str | None = None,
        cause: str | None = None,
    ) -> None:
        if errno is None and isinstance(original, OSError):
            errno = original.errno
        super().__init__(errno, message, filename) if errno is not None else super().__init__(message)
        if errno is None and filename is not None:
            self.filename = filename
        self.message = message
        self.original = original
        self.operation = operation
        if cause is not None:
            self.cause = cause
        if original is not None:
            self.__cause__ = original

    def __str__(self) -> str:
        text = self.message
        if self.filename is not None and str(self.filename) not in text:
            text = f"{text}: {self.filename!r}"
        if self.original is not None:
            text = f"{text} ({describe(self.original)})"
        return text

    def __reduce__(self) -> tuple[object, ...]:
        kwargs = {
            "errno": self.errno,
            "filename": self.filename,
            "original": self.original,
            "operation": self.operation,
            "cause": self.cause,
        }
        return (_rebuild, (type(self), self.message, kwargs))


def _rebuild(cls: type[CacheError], message: str, kwargs: dict[str, object]) -> CacheError:
    return cls(message, **kwargs)  # type: ignore[arg-type]




class CachePermissionError(CacheError, PermissionError):
    """The operating system refused an operation (permissions, ownership)."""

    cause = "permission"


class CacheReadOnlyError(CacheError, PermissionError):
    """A write was asked of a cache that can only be read."""

    cause = "read-only"


class CacheFullError(CacheError):
    """The file system is full or the user's quota is exhausted."""

    cause = "full"


class CacheBusyError(CacheError):
    """A file stayed in use by another process for the whole retry budget."""

    cause = "busy"


class LockTimeoutError(CacheError, TimeoutError):
    """A cache lock was not acquired within its timeout."""

    cause = "lock-timeout"


class LockUnsupportedError(CacheError):
    """The file system under the cache does not support file locks."""

    cause = "lock-unsupported"


class CacheUnavailableError(CacheError):
    """The cache root can neither be read nor created: the cache is disabled."""

    cause = "unavailable"

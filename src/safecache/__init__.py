"""safecache: an on-disk cache that many processes and machines can share,
and that never breaks the tool using it.

    >>> import safecache
    >>> cache = safecache.Cache("/tmp/example-cache")
    >>> lint = cache.bucket("lint", version=3)
    >>> lint.put(("src/a.py", 88), b"no findings")
    True
    >>> lint.get(("src/a.py", 88))
    b'no findings'

See ``Cache`` for the concurrency contract and the error policy.
"""

from __future__ import annotations

from ._bucket import Bucket
from ._cache import Cache
from ._errors import (
    CacheBusyError,
    CacheError,
    CacheFullError,
    CachePermissionError,
    CacheReadOnlyError,
    CacheUnavailableError,
    CacheWarning,
    LockTimeoutError,
    LockUnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "Bucket",
    "Cache",
    "CacheBusyError",
    "CacheError",
    "CacheFullError",
    "CachePermissionError",
    "CacheReadOnlyError",
    "CacheUnavailableError",
    "CacheWarning",
    "LockTimeoutError",
    "LockUnsupportedError",
    "__version__",
]

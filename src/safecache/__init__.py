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

import os as _os

_TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

from . import _bucket, _cache
from ._bucket import Bucket
from ._cache import Cache
from ._format import MAX_META
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

if _TYPE_CHECKING:
    from ._place import PlaceReport
    from ._tree import Tree
    from ._listing import EntryInfo
    from ._trees import Trees

    __version__: str

# Names resolved on first use, so that ``import safecache`` does not pay for
# trees (most tools never use them) or for reading package metadata.
_LAZY = {"EntryInfo": "_listing", "PlaceReport": "_place", "Tree": "_tree", "Trees": "_trees"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    elif name == "__version__":
        from ._version import version

        value = version()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


# The two places where a lower layer calls up.  Buckets and the cache do not
# import trees or maintenance (layers point down: docs/architecture.md); the
# package wires them here, importing each on first use so that
# ``import safecache`` stays cheap.
def _make_trees(bucket: Bucket) -> Trees:
    from ._trees import Trees

    return Trees(bucket)


def _auto_trim(cache: Cache) -> object:
    from ._trim import maybe_trim

    return maybe_trim(cache)


_bucket._make_trees = _make_trees
_cache._auto_trim = _auto_trim

# Tests turn the Windows emulator on in every process they start (xdist
# workers, subprocesses) with this variable (docs/testing.md).  Unset, it
# costs one lookup; only then is the testing package imported.
if _os.environ.get("SAFECACHE_EMULATE_WINDOWS"):
    from .testing import _environ as _emulation

    _emulation.enable_from_environment()

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
    "EntryInfo",
    "LockTimeoutError",
    "LockUnsupportedError",
    "MAX_META",
    "PlaceReport",
    "Tree",
    "Trees",
    "__version__",
]

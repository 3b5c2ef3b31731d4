"""Looking after a cache: trim, prune, clean, verify, info.

The public face of maintenance; the CLI (``safecache prune`` and the rest)
calls exactly these.  Every function takes a :class:`safecache.Cache` and
follows its error policy: in lenient mode nothing raises because of the
cache; a step that cannot be done is reported in the returned
:class:`Report` (``skipped_reason``, ``problems``).  docs/maintenance.md
describes each operation, its guarantees and its cost.

    >>> import safecache, safecache.maintenance as maintenance
    >>> cache = safecache.Cache("/tmp/example-cache")
    >>> report = maintenance.prune(cache, max_age=7 * 86400)
    >>> report.freed_bytes >= 0
    True
"""

from __future__ import annotations

from ._maintenance import Report, clean, info, list_buckets, maybe_trim, prune, trim, verify

__all__ = ["Report", "clean", "info", "list_buckets", "maybe_trim", "prune", "trim", "verify"]

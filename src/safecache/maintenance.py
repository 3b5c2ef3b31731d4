"""Looking after a cache: trim, prune, clean, verify, info.

The public face of maintenance; the CLI (``safecache prune`` and the rest)
calls exactly these.  Every function takes a :class:`safecache.Cache` and
follows its error policy: in lenient mode nothing raises because of the
cache; a step that cannot be done is reported in the returned
:class:`Report` (``skipped_reason``, ``problems``).  docs/maintenance.md
describes each operation, its guarantees and its cost.

    >>> import safecache, safecache.maintenance as maintenance
    >>> cache = safecache.Cache("/tmp/example-cache")
    >>> report = maintenance.prune(cache, older_than=7 * 86400)
    >>> report.freed_bytes >= 0
    True
"""

from __future__ import annotations

from ._info import info, list_buckets
from ._prune import clean, prune
from ._trim import maybe_trim, trim
from ._verify import verify
from ._walk import Report

__all__ = ["Report", "clean", "info", "list_buckets", "maybe_trim", "prune", "trim", "verify"]

"""``safecache doctor`` as a library: diagnose a cache location.

:func:`diagnose` runs every check the cache needs at its location (the
root's owner and mode, the markers, each file operation in a scratch
directory, locks, link modes, free space, leftovers, counters) and returns a
:class:`Report` of :class:`Finding` objects, each ``ok``, ``warn`` or
``fail`` with what was seen and, unless ok, what to do.  :func:`render`
formats a report as the CLI prints it; ``Report.as_dict()`` is its JSON
(schema :data:`SCHEMA`).  docs/doctor.md lists every check.
"""

from __future__ import annotations

from ._doctor import FAIL, OK, SCHEMA, WARN, Finding, Report, diagnose, render

__all__ = ["FAIL", "OK", "SCHEMA", "WARN", "Finding", "Report", "diagnose", "render"]

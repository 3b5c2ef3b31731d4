"""``safecache doctor`` as a library: diagnose a cache location.

:func:`diagnose` runs every check the cache needs at its location (the
root's owner and mode, the markers, each file operation in a scratch
directory, locks, link modes, free space, leftovers, counters) and returns a
:class:`Report` of :class:`Finding` objects, each ``ok``, ``warn`` or
``fail`` with what was seen and, unless ok, what to do.  :func:`render`
formats a report as the CLI prints it; ``Report.as_dict()`` is its JSON
(schema :data:`SCHEMA`).  :data:`ERROR_CAUSES` explains each error cause
the counters record (the ``errors`` check).  docs/doctor.md lists every check.

Doctor follows the cache's trust rules (docs/security.md): it writes into
the root only when the cache opens ``ready``, and reads nothing from a cache
that is not used because another user owns it.
"""

from __future__ import annotations

from ._doctor import diagnose
from ._doctor_remedies import ERROR_CAUSES
from ._doctor_report import FAIL, OK, SCHEMA, WARN, Finding, Report, render

__all__ = ["ERROR_CAUSES", "FAIL", "OK", "SCHEMA", "WARN", "Finding", "Report", "diagnose", "render"]

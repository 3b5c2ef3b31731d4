"""Maintenance: what the cache holds and did (``info``, from the counters,
in constant time) and which bucket versions are on disk (``list_buckets``)."""

from __future__ import annotations

from . import _stats
from ._location import DISABLED
from ._trim import read_stamp
from ._walk import Report, Run, bucket_dirs

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from ._cache import Cache


def list_buckets(cache: Cache) -> list[tuple[str, int]]:
    """``(name, version)`` of every bucket version directory on disk, sorted."""
    if cache.path is None or cache.state == DISABLED:
        return []
    run = Run(cache, "list_buckets", Report(), None)
    return [(b.name, b.version) for b in bucket_dirs(run)]


def info(cache: Cache) -> dict[str, object]:
    """What the cache holds and did, per bucket, in constant time: from the
    shared counters (``stats/``: 17 small files) plus this process's
    counters not yet flushed, never walking the entries.

    ``{"path", "state", "size", "entries", "max_size", "max_age",
    "trim_interval", "last_trim" (Unix time or None), "buckets": {"name/vN":
    {"size", "entries", "hits", "misses", "hit_rate" (None before any
    lookup), "writes", "bytes_read", "bytes_written", "corrupt_removed",
    "errors": {cause: n}}}}``.  Sizes are exact after each trim and move
    with every flushed write in between (see docs/maintenance.md).
    """
    totals: dict[str, dict[str, object]] = {}
    last_trim: float | None = None
    if cache.path is not None and cache.state != DISABLED:
        try:
            totals = _stats.read_totals(cache.path)
            last_trim = read_stamp(cache.path)
        except OSError as exc:
            cache._failed("info", exc, cache.path)
    for label, data in cache.stats().items():
        _stats.add_into(totals, label, data)
    buckets: dict[str, dict[str, object]] = {}
    size = entries = 0
    for label in sorted(totals):
        row = _row(totals[label])
        if row is None:
            continue
        size += int(row["size"])  # type: ignore[call-overload]
        entries += int(row["entries"])  # type: ignore[call-overload]
        buckets[label] = row
    return {
        "path": cache.path,
        "state": cache.state,
        "size": size,
        "entries": entries,
        "max_size": cache.max_size,
        "max_age": cache.max_age,
        "trim_interval": cache.trim_interval,
        "last_trim": last_trim,
        "buckets": buckets,
    }


def _row(data: dict[str, object]) -> dict[str, object] | None:
    """One bucket's row of :func:`info`; None for a bucket with nothing to show."""
    row: dict[str, object] = {name: int(data.get(name, 0)) for name in _stats.FIELDS}  # type: ignore[call-overload]
    row["size"] = max(0, int(row["size"]))  # type: ignore[call-overload]
    row["entries"] = max(0, int(row["entries"]))  # type: ignore[call-overload]
    hits, misses = int(row["hits"]), int(row["misses"])  # type: ignore[call-overload]
    row["hit_rate"] = hits / (hits + misses) if hits + misses else None
    row["errors"] = dict(data.get("errors", {}))  # type: ignore[call-overload]
    if not any(row[name] for name in _stats.FIELDS) and not row["errors"]:
        return None
    return row

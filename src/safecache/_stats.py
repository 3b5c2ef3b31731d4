"""Per-bucket counters kept in memory by each process.

(Persisting them without contention, ccache-style, is a later step; the
names here are the ones that will be persisted.)
"""

from __future__ import annotations


class Counters:
    """What one bucket did in this process."""

    __slots__ = ("hits", "misses", "writes", "bytes_read", "bytes_written", "corrupt_removed", "errors")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.corrupt_removed = 0
        self.errors: dict[str, int] = {}

    def error(self, cause: str) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "corrupt_removed": self.corrupt_removed,
            "errors": dict(self.errors),
        }

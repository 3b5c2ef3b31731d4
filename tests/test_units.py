"""Durations and sizes for people (``safecache._units``), as options read them and output prints them."""

from __future__ import annotations

import safecache.cli
from safecache import _units


def test_duration_and_size_parsing() -> None:
    assert [_units.parse_duration(t) for t in ("7d", "12h", "30m", "90s", "1h30m", "1.5h", "2w", " 10 S ")] == [
        7 * 86400, 12 * 3600, 1800, 90, 5400, 5400, 14 * 86400, 10]
    assert [_units.parse_size(t) for t in ("500M", "2G", "1.5GiB", "100MB", "1048576", "1k", "2 KiB", "3b")] == [
        500 * 2**20, 2 * 2**30, int(1.5 * 2**30), 100 * 10**6, 2**20, 1024, 2048, 3]
    assert _units.format_size(1536) == "1.5 KiB" and _units.format_size(10) == "10 B"


def test_the_tool_authors_module_offers_the_same_parsers() -> None:
    assert safecache.cli.parse_duration is _units.parse_duration
    assert safecache.cli.parse_size is _units.parse_size

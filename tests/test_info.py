"""Info (``_info``): what the cache holds and did, from the counters, in
constant time; ``list_buckets``.  Helpers: _maintenance_helpers."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from _maintenance_helpers import cache, populate, root, walk_size  # noqa: F401 - cache, root: fixtures

import safecache
from safecache import maintenance
from safecache.testing import inject_errors


def test_info_reads_the_counters_and_never_walks_entries(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 30)
    bucket = cache.bucket("data", 1)
    for k in keys[:10]:
        bucket.get(k)
    bucket.get("missing")
    cache.flush()
    bucket.get("missing-too")  # not flushed: info adds this process's counters
    with inject_errors(errno.EIO, ops=("scandir",), path_contains=os.sep + "nowhere" + os.sep) as faults:
        info = maintenance.info(cache)
    assert not [c for c in faults.calls if c.op in ("scandir", "listdir")]
    assert not [c for c in faults.calls if c.path and os.sep + "buckets" + os.sep in c.path]
    row = info["buckets"]["data/v1"]  # type: ignore[index]
    assert row["entries"] == 30 and row["hits"] == 10 and row["misses"] == 2
    assert row["hit_rate"] == pytest.approx(10 / 12)
    assert row["size"] == walk_size(root)
    assert info["size"] == row["size"] and info["path"] == str(root) and info["state"] == "ready"
    json.dumps(info)


def test_a_disabled_cache_has_nothing_to_maintain(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c", enabled=False)
    assert maintenance.list_buckets(cache) == []
    assert maintenance.trim(cache).skipped_reason.startswith("the cache is disabled")
    assert maintenance.maybe_trim(cache) is None
    assert maintenance.verify(cache).problems == []
    info = maintenance.info(cache)
    assert info["size"] == 0 and info["buckets"] == {}

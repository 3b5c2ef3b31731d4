"""Counters kept without scanning: sharded files, flushed on close and at exit."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import safecache
from safecache import _stats
from safecache.testing import inject_errors

ctx = multiprocessing.get_context("fork")


def totals(root: Path) -> dict[str, dict[str, object]]:
    return _stats.read_totals(str(root))


def test_opening_and_reading_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    safecache.Cache(root).bucket("lint").put("k", b"v")
    before = sorted(str(p) for p in root.rglob("*"))
    with safecache.Cache(root) as c:
        c.bucket("lint").get("absent")
    # A miss is counted, so closing flushes it: into the stats shard only.
    after = sorted(str(p) for p in root.rglob("*"))
    assert [p for p in after if p not in before and not p.endswith("/stats") and "/stats/" not in p] == []
    with safecache.Cache(root):
        pass  # nothing happened: nothing is flushed, nothing is written
    assert sorted(str(p) for p in root.rglob("*")) == after


def test_close_flushes_counters_into_the_shared_totals(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        b = c.bucket("lint", version=2)
        b.put("a", b"12345")
        b.get("a")
        b.get("missing")
    t = totals(root)["lint/v2"]
    assert (t["hits"], t["misses"], t["writes"], t["bytes_read"], t["entries"]) == (1, 1, 1, 5, 1)
    assert t["size"] == 48 + 5


def test_counters_survive_process_exit_without_close(tmp_path: Path) -> None:
    root = tmp_path / "c"
    code = "import sys, safecache; b = safecache.Cache(sys.argv[1]).bucket('lint'); b.put('k', b'v'); b.get('k')"
    subprocess.run([sys.executable, "-c", code, str(root)], check=True)
    assert totals(root)["lint/v0"]["hits"] == 1


def _worker(root: str, n: int) -> None:
    # No automatic trim: a trim rebases the size on a walk it makes while the
    # others still write, which is approximate by design (docs/maintenance.md).
    with safecache.Cache(root, auto_trim=False) as c:
        b = c.bucket("shared")
        for i in range(n):
            b.put(f"{os.getpid()}-{i}", b"x" * 10)
            b.get(f"{os.getpid()}-{i}")


def test_many_processes_flushing_lose_no_counts(tmp_path: Path) -> None:
    root = str(tmp_path / "c")
    procs = [ctx.Process(target=_worker, args=(root, 25)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    t = totals(Path(root))["shared/v0"]
    assert (t["writes"], t["hits"], t["entries"]) == (200, 200, 200)
    assert t["size"] == 200 * (48 + 10)


def test_size_follows_replace_and_delete(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        b = c.bucket("lint")
        b.put("k", b"x" * 100)
        b.put("k", b"y" * 10)  # replaces: the size shrinks, the count stays
        b.put("k", b"y" * 10)  # identical: nothing changes
        b.put("gone", b"z")
        b.delete("gone")
    t = totals(root)["lint/v0"]
    assert (t["size"], t["entries"]) == (48 + 10, 1)


def test_errors_are_counted_by_cause(tmp_path: Path) -> None:
    import errno
    import warnings

    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        b = c.bucket("lint")
        b.put("k", b"v")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with inject_errors(errno.EIO, ops=("read",), path_contains="buckets"):
                b.get("k")
                b.get("k")
    assert totals(root)["lint/v0"]["errors"] == {"io": 2}


def test_a_read_only_cache_never_flushes(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("lint").put("k", b"v")
    stats_before = {p.name: p.read_bytes() for p in (root / "stats").iterdir()}
    c2 = safecache.Cache(root)
    c2.state = "read-only"  # as if the root were not writable
    c2.bucket("lint").get("k")
    c2.close()
    assert {p.name: p.read_bytes() for p in (root / "stats").iterdir()} == stats_before


def test_a_torn_shard_file_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("lint").put("k", b"v")
    for shard in (root / "stats").iterdir():
        if not shard.name.endswith(".lock"):
            shard.write_bytes(b'{"format": 1, "buck')
    assert totals(root) == {}
    with safecache.Cache(root) as c:
        c.bucket("lint").get("k")
    assert totals(root)["lint/v0"]["hits"] == 1


def test_rebase_makes_sizes_exact(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("lint").put("k", b"v")
    _stats.rebase(str(root), {"lint/v0": (1234, 7)})
    t = totals(root)["lint/v0"]
    assert (t["size"], t["entries"], t["writes"]) == (1234, 7, 1)


def test_a_failed_flush_keeps_the_counts_for_later(tmp_path: Path) -> None:
    import errno

    root = tmp_path / "c"
    c = safecache.Cache(root)
    b = c.bucket("lint")
    b.put("k", b"v")
    with inject_errors(errno.ENOSPC, ops=("write",), path_contains="stats"):
        c.flush()
    assert b.counters.writes == 1
    c.close()
    assert totals(root)["lint/v0"]["writes"] == 1

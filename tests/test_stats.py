"""Counters kept without scanning: sharded files, flushed on close and at exit."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import safecache
from safecache import _stats, maintenance
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
        path = b.path_for("a")
    t = totals(root)["lint/v2"]
    assert (t["hits"], t["misses"], t["writes"], t["bytes_read"], t["entries"]) == (1, 1, 1, 5, 1)
    assert path is not None and t["size"] == os.path.getsize(path)  # the bytes on disk


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
    assert t["size"] == sum(p.stat().st_size for p in Path(root, "buckets", "shared", "v0").glob("??/*"))


def test_size_follows_replace_and_delete(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        b = c.bucket("lint")
        b.put("k", b"x" * 100)
        b.put("k", b"y" * 10)  # replaces: the size shrinks, the count stays
        b.put("k", b"y" * 10)  # identical: nothing changes
        b.put("gone", b"z")
        b.delete("gone")
        path = b.path_for("k")
    t = totals(root)["lint/v0"]
    assert path is not None and (t["size"], t["entries"]) == (os.path.getsize(path), 1)


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


# -- malformed counter files: corrupt, never an exception ------------------------------------------
def _record(**changes: object) -> dict[str, object]:
    record: dict[str, object] = {name: 1 for name in _stats.FIELDS}
    record["errors"] = {"busy": 1}
    record.update(changes)
    return record


MALFORMED: dict[str, str] = {
    "not json": '{"format": 1, "buck',
    "a list": "[1, 2]",
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "no format": json.dumps({"buckets": {"lint/v0": _record()}}),
    "format true": json.dumps({"format": True, "buckets": {"lint/v0": _record()}}),
    "buckets a list": json.dumps({"format": 1, "buckets": []}),
    "a record a number": json.dumps({"format": 1, "buckets": {"lint/v0": 3}}),
    "missing field": json.dumps({"format": 1, "buckets": {"lint/v0": {"hits": 1}}}),
    "a string count": json.dumps({"format": 1, "buckets": {"lint/v0": _record(hits="many")}}),
    "a bool count": json.dumps({"format": 1, "buckets": {"lint/v0": _record(hits=True)}}),
    "1e400": '{"format": 1, "buckets": {"lint/v0": ' + json.dumps(_record()).replace('"hits": 1', '"hits": 1e400') + "}}",
    "a float count": json.dumps({"format": 1, "buckets": {"lint/v0": _record(hits=1.5)}}),
    "NaN": json.dumps({"format": 1, "buckets": {"lint/v0": _record()}}).replace('"hits": 1', '"hits": NaN'),
    "a negative count": json.dumps({"format": 1, "buckets": {"lint/v0": _record(misses=-1)}}),
    "a huge count": json.dumps({"format": 1, "buckets": {"lint/v0": _record(hits=10**30)}}),
    "5000 digits": '{"format": 1, "buckets": {"lint/v0": {"hits": ' + "9" * 5000 + "}}}",
    "errors a list": json.dumps({"format": 1, "buckets": {"lint/v0": _record(errors=["busy"])}}),
    "an error count a string": json.dumps({"format": 1, "buckets": {"lint/v0": _record(errors={"busy": "x"})}}),
    "not a label": json.dumps({"format": 1, "buckets": {"../../etc": _record()}}),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_counter_files_read_as_corrupt(tmp_path: Path, name: str) -> None:
    assert _stats.parse_doc(MALFORMED[name].encode()) is None
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("lint").put("k", b"v")
    for path in [*(root / "stats").glob("?"), root / "stats" / "baseline"]:
        path.write_text(MALFORMED[name])
    assert totals(root) == {}


def test_a_valid_counter_document_keeps_negative_size_deltas(tmp_path: Path) -> None:
    doc = {"format": 1, "buckets": {"lint/v0": _record(size=-5, entries=-1)}}
    assert _stats.parse_doc(json.dumps(doc).encode()) == doc["buckets"]


@pytest.mark.parametrize("name", ["deep nesting", "1e400", "missing field", "a string count", "errors a list"])
def test_malformed_counter_files_raise_out_of_nothing(tmp_path: Path, name: str) -> None:
    """Cache.close(), info(), trim(), prune(), clean() on malformed counters
    (and a nan trim stamp): no ValueError, TypeError, KeyError,
    OverflowError or RecursionError reaches the caller."""
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("lint").put("k", b"v")
    for path in [*(root / "stats").glob("?"), root / "stats" / "baseline"]:
        path.write_text(MALFORMED[name])
    (root / "stats" / "trim").write_text("nan\n")
    cache = safecache.Cache(root, max_size=10)  # over its limit: close() trims
    cache.bucket("lint").put("k2", b"v2")
    assert maintenance.info(cache)["buckets"]["lint/v0"]["writes"] == 1  # type: ignore[index]
    cache.close()
    cache = safecache.Cache(root)
    assert maintenance.trim(cache).skipped_reason == ""
    assert maintenance.prune(cache).skipped_reason == ""
    assert maintenance.clean(cache).skipped_reason == ""
    cache.close()


def test_a_fifo_at_a_counter_file_never_hangs_info_close_or_verify(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("lint").put("k", b"v")
    for path in [*(root / "stats").glob("?"), root / "stats" / "baseline", root / "stats" / "trim"]:
        path.unlink(missing_ok=True)
        os.mkfifo(path)
    done: list[object] = []

    def work() -> None:
        cache = safecache.Cache(root)
        cache.bucket("lint").get("k")
        done.append(maintenance.info(cache))
        cache.close()
        done.append(maintenance.verify(safecache.Cache(root)))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and len(done) == 2, "a FIFO at a counter file hung the caller"

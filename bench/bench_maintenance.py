#!/usr/bin/env python3
"""Benchmark safecache's maintenance: ``info`` in constant time, and trimming throughput.

Measures, in one run:

1. ``info`` on caches of 100,000 and 1,000,000 entries (``--quick``: 10,000
   and 100,000), against a full walk of the same cache measured in the same
   run (``os.walk`` + ``lstat`` of every file, the way a tool without
   counters must size a cache; and ``du -s``, as a user would).  ``info``
   reads the sharded counters (17 small files) and never the entries, so its
   time should not move with the cache's size: the target is "constant, and
   under 50 ms".
2. trimming throughput: a trim of the 100,000-entry cache (10,000 with
   ``--quick``) that must remove 10 % of it, least recently used first, in
   entries removed per second and entries examined per second;
3. ``clean`` of the largest cache, which the script uses to delete it
   (entries removed per second).

The caches are built fast by writing entry files directly in the
documented format (docs/format.md: a 48-byte header, then the payload),
not through ``put``; use times are spread over 30 days with ``os.utime`` so
the trim has an order to follow, and the counters are set as a trim leaves
them (a baseline) plus a flush into each of the 16 shards, so ``info``
reads 17 real files.  The script checks free space and inodes first and
builds smaller caches, saying so, when the disk cannot hold them.

Every figure goes to ``bench/results/maintenance-<UTC date>.json``;
``--section PATH`` also writes a Markdown section for docs/performance.md.
Nothing here asserts on times.  Run from the repository root::

    .venv/bin/python bench/bench_maintenance.py            # 100k and 1M entries: a few minutes
    .venv/bin/python bench/bench_maintenance.py --quick    # 10k and 100k: under a minute
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import safecache
from safecache import _format, _maintenance, _stats

#: Payload bytes per entry: with the header, files of 100 bytes.
PAYLOAD = 52
INFO_TARGET_MS = 50.0
#: ``info`` counts as constant time if the largest cache's median is within
#: this factor of the smallest's (timer noise at tens of microseconds).
CONSTANT_FACTOR = 2.0
BLOCK = 4096  # what a small file costs on ext4 and most file systems


# -- machine -------------------------------------------------------------------------------
def machine(bench_dir: str) -> dict[str, object]:
    try:
        from bench_store import machine as store_machine  # the same description as the store's bench

        return store_machine(bench_dir)
    except Exception:  # noqa: BLE001 - a description, best effort
        import platform

        return {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def source_commit() -> str | None:
    try:
        from bench_store import source_commit as commit

        return commit()
    except Exception:  # noqa: BLE001
        return None


# -- building --------------------------------------------------------------------------------
def build(root: str, n: int, *, label: str = "bench/v1") -> dict[str, float]:
    """A cache of ``n`` valid 100-byte entries, written directly, with use
    times spread over 30 days and counters as a trim leaves them."""
    name, version = label.split("/v")
    started = time.perf_counter()
    with safecache.Cache(root, auto_trim=False) as cache:
        cache.bucket(name, int(version)).put(b"marker", b"creates the root and its markers")
    bucket_dir = os.path.join(root, "buckets", name, f"v{version}")
    for i in range(256):
        os.makedirs(os.path.join(bucket_dir, f"{i:02x}"), exist_ok=True)
    now = time.time()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    payload_base = os.urandom(PAYLOAD)
    written_ns = time.time_ns()
    size = 0
    for i in range(n):
        raw = os.urandom(16)
        digest = raw.hex()
        payload = i.to_bytes(8, "little") + payload_base[8:]
        data = _format.pack_header(PAYLOAD, written_ns, raw, zlib.crc32(payload), _format.KIND_BUILT) + payload
        path = os.path.join(bucket_dir, digest[:2], digest)
        fd = os.open(path, flags, 0o666)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        t = now - 30 * 86400 * ((i * 7919) % n) / n  # a spread of use times, in no particular file order
        os.utime(path, (t, t))
        size += len(data)
    marker = safecache.Cache(root, auto_trim=False).bucket(name, int(version)).path_for(b"marker")
    assert marker is not None
    size += os.path.getsize(marker)
    built = time.perf_counter() - started
    _stats.rebase(root, {label: (size, n + 1)})
    # Counters that processes flushed since: one document in each shard, so
    # info reads 17 real files, as it does on a cache in use.
    for shard in range(_stats.SHARDS):
        path = os.path.join(_stats.stats_dir(root), f"{shard:x}")
        doc = {label: {"hits": 10, "misses": 2, "writes": 1, "bytes_read": 1000, "bytes_written": 100,
                       "corrupt_removed": 0, "size": 0, "entries": 0, "errors": {"busy": 1}}}
        _stats._write_doc(path, doc)
    return {"entries": n + 1, "bytes": size, "build_s": built}


# -- measuring -------------------------------------------------------------------------------
def time_info(root: str, runs: int) -> dict[str, float]:
    cache = safecache.Cache(root, auto_trim=False)
    _maintenance.info(cache)  # warm: imports, first open of the stats directory
    times = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        data = _maintenance.info(cache)
        times.append(time.perf_counter_ns() - t)
    fresh = fresh_info(root)
    return {
        "median_ms": statistics.median(times) / 1e6,
        "max_ms": max(times) / 1e6,
        "min_ms": min(times) / 1e6,
        "fresh_process_ms": fresh,
        "runs": runs,
        "reported_entries": data["entries"],  # type: ignore[dict-item]
        "reported_size": data["size"],  # type: ignore[dict-item]
    }


def fresh_info(root: str) -> float:
    """The first ``info`` call of a fresh interpreter (after importing)."""
    code = (
        "import time, safecache\n"
        "from safecache import _maintenance\n"
        f"c = safecache.Cache({root!r}, auto_trim=False)\n"
        "t = time.perf_counter_ns(); _maintenance.info(c); print((time.perf_counter_ns() - t) / 1e6)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    runs = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        runs.append(float(out.stdout.strip()))
    return statistics.median(runs)


def time_walk(root: str) -> dict[str, float]:
    """What sizing the cache costs without counters: a Python walk with
    lstat of every file, and ``du -s``; each the best of two runs (warm
    metadata caches: a cold walk is slower still)."""
    def py_walk() -> tuple[int, int]:
        files = total = 0
        for dirpath, _dirnames, filenames in os.walk(os.path.join(root, "buckets")):
            for name in filenames:
                total += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
        return files, total

    walks = []
    for _ in range(2):
        t = time.perf_counter()
        files, total = py_walk()
        walks.append(time.perf_counter() - t)
    du = []
    du_path = shutil.which("du")
    if du_path:
        for _ in range(2):
            t = time.perf_counter()
            subprocess.run([du_path, "-s", os.path.join(root, "buckets")], capture_output=True, check=True)
            du.append(time.perf_counter() - t)
    return {
        "walk_ms": min(walks) * 1000,
        "walk_files": files,
        "walk_bytes": total,
        "du_ms": min(du) * 1000 if du else None,  # type: ignore[dict-item]
    }


def time_trim(root: str, entries: int, size: int) -> dict[str, float]:
    """Trim so that 10 % of the cache must go (the limit just under its
    size: a trim goes down to 90 % of the limit)."""
    cache = safecache.Cache(root, max_size=size - 1, max_age=None, auto_trim=False)
    t = time.perf_counter()
    report = _maintenance.trim(cache)
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "removed": report.removed_entries,
        "removed_per_s": report.removed_entries / seconds,
        # Pass 1 reads every entry; pass 2 reads every entry again and removes.
        "examined_per_s": (2 * entries) / seconds,
        "freed_bytes": report.freed_bytes,
    }


def time_clean(root: str, entries: int) -> dict[str, float]:
    cache = safecache.Cache(root, auto_trim=False)
    t = time.perf_counter()
    report = _maintenance.clean(cache)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "removed": report.removed_entries, "removed_per_s": report.removed_entries / seconds}


# -- space -------------------------------------------------------------------------------------
def fit(work: str, sizes: list[int]) -> tuple[list[int], str]:
    """The sizes the disk can hold (each cache is deleted before the next
    is built); a note when they had to shrink."""
    st = os.statvfs(work)
    free = st.f_bavail * st.f_frsize
    inodes = st.f_favail if st.f_files else None
    out, notes = [], []
    for n in sizes:
        need = n * BLOCK + 256 * BLOCK
        m = n
        while m > 1000 and (need > free * 0.5 or (inodes is not None and m > inodes * 0.5)):
            m //= 2
            need = m * BLOCK
        if m != n:
            notes.append(f"{n:,} entries need about {n * BLOCK / 2**30:.1f} GiB and {n:,} inodes; "
                         f"{free / 2**30:.1f} GiB and {inodes} inodes free: built {m:,} instead")
        out.append(m)
    return out, "; ".join(notes)


# -- report ------------------------------------------------------------------------------------
def status(results: dict) -> dict[str, object]:
    infos = [c["info"] for c in results["caches"]]
    worst = max(i["median_ms"] for i in infos)
    worst_fresh = max(i["fresh_process_ms"] for i in infos)
    ratio = infos[-1]["median_ms"] / infos[0]["median_ms"]
    return {
        "info_under_50ms": {"value_ms": round(max(worst, worst_fresh), 3), "target_ms": INFO_TARGET_MS,
                            "met": max(worst, worst_fresh) < INFO_TARGET_MS},
        "info_constant": {"largest_over_smallest": round(ratio, 2), "limit": CONSTANT_FACTOR,
                          "met": ratio < CONSTANT_FACTOR},
    }


def print_report(results: dict) -> None:
    print()
    print(f"{'entries':>10} {'info median':>12} {'info fresh':>11} {'walk+lstat':>11} {'du -s':>9} {'walk/info':>10}")
    for c in results["caches"]:
        info, walk = c["info"], c["walk"]
        du = f"{walk['du_ms']:.0f} ms" if walk["du_ms"] is not None else "-"
        print(f"{c['entries']:>10,} {info['median_ms']:>9.3f} ms {info['fresh_process_ms']:>8.3f} ms "
              f"{walk['walk_ms']:>8.0f} ms {du:>9} {walk['walk_ms'] / info['median_ms']:>9,.0f}x")
    trim = results["trim"]
    print(f"\ntrim of {trim['entries']:,} entries to 90 % of a limit just under their size: {trim['seconds']:.2f} s, "
          f"{trim['removed']:,} removed ({trim['removed_per_s']:,.0f}/s), {trim['examined_per_s']:,.0f} entries examined/s")
    clean = results["clean"]
    print(f"clean of {clean['entries']:,} entries: {clean['seconds']:.2f} s ({clean['removed_per_s']:,.0f}/s)")
    print()
    for name, s in results["status"].items():
        print(f"target {name}: {'met' if s['met'] else 'NOT met'} ({s})")
    if results["note"]:
        print(f"\nnote: {results['note']}")


def section(results: dict, command: str) -> str:
    m = results["machine"]
    lines = [
        "## Maintenance: `info` in constant time, trimming throughput",
        "",
        "Measured by `bench/bench_maintenance.py` (the method is in its docstring):",
        "",
        f"    {command}",
        "",
        (
            f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; {m.get('kernel', '?')}; "
            f"Python {m.get('python', '?')}; bench directory on {m.get('bench_dir_fs', '?')}; "
            f"{results['started']} UTC; source {(results.get('commit') or 'unknown')[:7]}."
        ),
        "",
        "| entries | `info` median | `info`, fresh process | walk + lstat | `du -s` | walk / `info` |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results["caches"]:
        info, walk = c["info"], c["walk"]
        du = f"{walk['du_ms']:,.0f} ms" if walk["du_ms"] is not None else "-"
        lines.append(f"| {c['entries']:,} | {info['median_ms']:.3f} ms | {info['fresh_process_ms']:.3f} ms | "
                     f"{walk['walk_ms']:,.0f} ms | {du} | {walk['walk_ms'] / info['median_ms']:,.0f}x |")
    trim, clean = results["trim"], results["clean"]
    lines += [
        "",
        "| operation | entries | time | removed | removed / s | examined / s |",
        "|---|---:|---:|---:|---:|---:|",
        (
            f"| trim (10 % over: LRU down to 90 % of the limit) | {trim['entries']:,} | {trim['seconds']:.2f} s | "
            f"{trim['removed']:,} | {trim['removed_per_s']:,.0f} | {trim['examined_per_s']:,.0f} |"
        ),
        (
            f"| clean | {clean['entries']:,} | {clean['seconds']:.2f} s | {clean['removed']:,} | "
            f"{clean['removed_per_s']:,.0f} | |"
        ),
        "",
    ]
    for name, s in results["status"].items():
        lines.append(f"* target `{name}`: **{'met' if s['met'] else 'not met'}** ({s})")
    if results["note"]:
        lines += ["", f"Note: {results['note']}"]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 and 100,000 entries instead of 100,000 and 1,000,000")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="cache sizes, comma-separated")
    ap.add_argument("--dir", help="create the caches in a fresh directory under DIR (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="do not remove the caches afterwards")
    ap.add_argument("--json", metavar="PATH", help="results file (default bench/results/maintenance-<UTC date>.json)")
    ap.add_argument("--section", metavar="PATH", help="also write a Markdown section with the tables to PATH")
    ap.add_argument("--info-runs", type=int, default=51)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = tempfile.mkdtemp(prefix="safecache-bench-maint-", dir=args.dir)
    try:
        return run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: str) -> int:
    started = _dt.datetime.now(_dt.timezone.utc)
    wanted = args.sizes or ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    sizes, note = fit(work, wanted)
    trim_n = 10_000 if args.quick else 100_000
    results: dict = {
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "argv": sys.argv[1:],
        "commit": source_commit(),
        "machine": machine(work),
        "note": note,
        "caches": [],
    }
    largest = None
    for n in sizes:
        root = os.path.join(work, f"cache-{n}")
        print(f"building {n:,} entries ...", flush=True)
        built = build(root, n)
        print(f"  built in {built['build_s']:.1f} s; timing info and walks ...", flush=True)
        info = time_info(root, args.info_runs)
        walk = time_walk(root)
        assert info["reported_entries"] == walk["walk_files"], (info, walk)
        results["caches"].append({"entries": n, "built": built, "info": info, "walk": walk})
        if n == max(sizes):
            largest = (root, n)
        else:
            shutil.rmtree(root)
    root = os.path.join(work, f"cache-trim-{trim_n}")
    print(f"building {trim_n:,} entries for the trim ...", flush=True)
    built = build(root, trim_n)
    trim = time_trim(root, trim_n, int(built["bytes"]))
    trim["entries"] = trim_n
    results["trim"] = trim
    shutil.rmtree(root)
    assert largest is not None
    print(f"cleaning {largest[1]:,} entries ...", flush=True)
    clean = time_clean(*largest)
    clean["entries"] = largest[1]
    results["clean"] = clean
    shutil.rmtree(largest[0], ignore_errors=True)
    results["status"] = status(results)
    print_report(results)
    date = started.strftime("%Y-%m-%d")
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"maintenance-{date}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {out}")
    if args.section:
        command = ".venv/bin/python bench/bench_maintenance.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
        with open(args.section, "w", encoding="utf-8") as f:
            f.write(section(results, command))
        print(f"wrote {args.section}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

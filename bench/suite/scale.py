"""Section 5: get/put with 1,000 vs 1,000,000 entries; ``info``, ``trim`` and ``clean`` at that scale.

Two caches on the same file system: a *small* one of 1,000 entries and a
*big* one that grows through 10,000 and 100,000 to 1,000,000 entries
(``--quick``: to 100,000), both of 1 KiB values.  Entries are written
directly in the documented format (docs/format.md: entry format 1, which
safecache still reads: the 48-byte header, then the payload) on 4 threads, at the path ``bucket.path_for(key)`` gives,
with use times (mtimes) spread over 20 days so that a trim has an order to
follow.  Free space and inodes are checked first; the largest size is
reduced (and the report says so) when the disk cannot hold it.

At each size the same batches run on both caches, interleaved: ``get`` of
keys sampled at random among all the cache's entries (a new sample each
round), and ``put`` of new keys (removed, untimed, after each round).  The
ratio big / small is the figure; its target is at most 1.2x.  The caches
were just written, so their directories and inodes are in memory: this
measures the store's own scaling (directory size, the fan-out), not a
cold disk.

Then, on the largest cache: ``info`` (maintenance's counters, which are
exact after a trim), a ``trim`` whose size limit is just under the cache's
size (it must remove about 10%, least recently used first), ``info``
again, in this process and as the first call of a fresh interpreter
(which pays for the modules ``info`` imports on first use), and, for
comparison, what sizing the cache costs without counters: a walk with
``lstat`` of every file, and ``du -s``.  Last, ``clean`` removes the
largest cache's entries (its throughput is the ``unlink`` rate that a trim
also pays).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib
from typing import Any

from .common import (
    Ctx,
    child_env,
    fmt_ratio,
    fmt_us,
    fs_type,
    interleaved,
    loop_floor_get,
    loop_floor_put,
    loop_get,
    loop_put,
    md_table,
    paired_ratio,
    perf_ns,
    summary_us,
    target,
)

TITLE = "5. Scale: get/put with 1,000 vs 1,000,000 entries; info, trim and clean at that scale"
TARGET_RATIO = 1.2
INFO_TARGET_MS = 50.0
INFO_CONSTANT = 2.0
PAYLOAD = 1024
HEADER = 48
#: Bytes of disk per entry, with room: a 1,072-byte file takes a 4 KiB block, plus its directory entry.
DISK_PER_ENTRY = 4096 + 256
MAGIC = b"\x89SCE"


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full={
            "points": [1_000, 10_000, 100_000, 1_000_000],
            "batch": 500,
            "get_reps": 15,
            "put_reps": 7,
            "warmup": 1,
            "threads": 4,
            "info_runs": 51,
            "fresh_runs": 5,
        },
        quick={
            "points": [1_000, 10_000, 100_000],
            "batch": 300,
            "get_reps": 7,
            "put_reps": 3,
            "warmup": 1,
            "threads": 4,
            "info_runs": 21,
            "fresh_runs": 3,
        },
        smoke={
            "points": [100, 1_000],
            "batch": 20,
            "get_reps": 2,
            "put_reps": 1,
            "warmup": 1,
            "threads": 2,
            "info_runs": 3,
            "fresh_runs": 1,
        },
    )


def entry_bytes(digest: bytes, payload: bytes, written_ns: int, kind: int = 1) -> bytes:
    """An entry file as docs/format.md defines it (layout 1, entry format 1)."""
    head = (
        MAGIC
        + (1).to_bytes(2, "little")
        + bytes([kind, 0])
        + len(payload).to_bytes(8, "little")
        + written_ns.to_bytes(8, "little")
        + digest
        + zlib.crc32(payload).to_bytes(4, "little")
    )
    return head + zlib.crc32(head).to_bytes(4, "little") + payload


def key_of(i: int) -> str:
    return f"scale-{i:08d}"


def fill(bucket: Any, start: int, stop: int, total: int, threads: int) -> float:
    """Write entries ``start`` .. ``stop - 1`` directly; returns seconds."""
    t0 = time.perf_counter()
    base = os.urandom(PAYLOAD)
    written_ns = time.time_ns()
    now = time.time()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    directory = os.path.dirname(os.path.dirname(bucket.path_for("x")))
    for i in range(256):
        os.makedirs(os.path.join(directory, f"{i:02x}"), exist_ok=True)
    errors: list[BaseException] = []

    def work(lo: int, hi: int) -> None:
        try:
            o, w, c, utime = os.open, os.write, os.close, os.utime
            for i in range(lo, hi):
                path = bucket.path_for(key_of(i))
                payload = i.to_bytes(8, "little") + base[8:]
                data = entry_bytes(bytes.fromhex(os.path.basename(path)), payload, written_ns)
                fd = o(path, flags, 0o666)
                try:
                    w(fd, data)
                finally:
                    c(fd)
                t = now - 20 * 86400 * ((i * 7919) % total) / total  # use times in no particular order
                utime(path, (t, t))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    n = stop - start
    bounds = [start + n * k // threads for k in range(threads + 1)]
    pool = [threading.Thread(target=work, args=(bounds[k], bounds[k + 1])) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def disk_budget(path: str, want: int, points: list[int]) -> tuple[list[int], str]:
    """The points that fit on the disk (keeping 1 GiB and 10% of the inodes
    free), and a note when the largest had to be dropped."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize - (1 << 30)
    inodes = st.f_favail - st.f_files // 10 if st.f_files else None
    fits = [p for p in points if p * DISK_PER_ENTRY <= free and (inodes is None or p * 1.05 <= inodes)]
    note = ""
    if len(fits) < len(points):
        note = (
            f"reduced: {want:,} entries need about {want * DISK_PER_ENTRY / (1 << 30):.1f} GiB and "
            f"{want:,} inodes; {max(free, 0) / (1 << 30):.1f} GiB and {inodes} inodes are free"
        )
    return fits, note


def run(ctx: Ctx) -> dict[str, Any]:
    import safecache

    cfg = config(ctx)
    root = ctx.subdir("scale")
    points, note = disk_budget(root, cfg["points"][-1], cfg["points"])
    if note:
        ctx.log(f"  [scale] {note}")
    st = os.statvfs(root)
    out: dict[str, Any] = {
        "config": cfg,
        "fs": fs_type(root),
        "points": {},
        "note": note,
        "disk_before": {"free_gib": round(st.f_bavail * st.f_frsize / (1 << 30), 1), "free_inodes": st.f_favail},
    }
    small_n = points[0]
    small_cache = safecache.Cache(os.path.join(root, "small"), auto_trim=False, max_size=None)
    big_cache = safecache.Cache(os.path.join(root, "big"), auto_trim=False, max_size=None)
    small, big = small_cache.bucket("scale", version=1), big_cache.bucket("scale", version=1)
    for b in (small, big):  # the root and its markers, through the API
        b.put("marker", b"creates the root")
        b.delete("marker")
    try:
        out["build"] = {"small_s": fill(small, 0, small_n, small_n, cfg["threads"])}
        have = 0
        for p in points:
            ctx.log(f"  [scale] filling the big cache to {p:,} entries ...")
            out["build"][str(p)] = fill(big, have, p, points[-1], cfg["threads"])
            have = p
            if big.get(key_of(p - 1)) is None or small.get(key_of(small_n - 1)) is None:
                raise RuntimeError("an entry written directly does not read back: the format written here is wrong")
            ctx.log(f"  [scale] {p:,} vs {small_n:,} entries: get and put batches ...")
            out["points"][str(p)] = measure(small, big, small_n, p, cfg)
        out["maintenance"] = maintenance(ctx, small_cache, big_cache, points[-1], cfg)
    finally:
        small_cache.close()
        big_cache.close()
        ctx.log("  [scale] removing the caches ...")
        t0 = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        out["remove_s"] = time.perf_counter() - t0
    return out


def measure(small: Any, big: Any, small_n: int, big_n: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """Interleaved batches on both caches: safecache's get/put, and the floor
    (the bare system calls) on the same files and directories, which tells
    the file system's scaling from safecache's."""
    n = cfg["batch"]
    m = min(n, small_n)
    rnd = random.Random(big_n)
    buckets = {"small": small, "big": big}

    def prep_get(_r: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, count in (("small", small_n), ("big", big_n)):
            keys = [key_of(i) for i in rnd.sample(range(count), m)]
            out[name] = keys
            out["floor " + name] = [buckets[name].path_for(k) for k in keys]
        return out

    gets = {
        "big": lambda data: loop_get(big.get, data["big"]),
        "small": lambda data: loop_get(small.get, data["small"]),
        "floor big": lambda data: loop_floor_get(data["floor big"], 65536),
        "floor small": lambda data: loop_floor_get(data["floor small"], 65536),
    }
    misses = big.counters.misses + small.counters.misses
    wall, cpu = interleaved(gets, cfg["get_reps"], cfg["warmup"], prep_get)
    out: dict[str, Any] = {"get": _block(wall, cpu, m)}
    out["misses_during_gets"] = big.counters.misses + small.counters.misses - misses

    values = [os.urandom(PAYLOAD)] * n
    blob = bytes(HEADER) + values[0]
    previous: list[tuple[Any, str, str]] = []

    def prep_put(r: int) -> dict[str, Any]:
        for bucket, key, floor_path in previous:  # the last round's: removed, untimed, so the sizes stay
            bucket.delete(key)
            try:
                os.unlink(floor_path)
            except FileNotFoundError:
                pass
        previous.clear()
        out: dict[str, Any] = {}
        for name, bucket in buckets.items():
            keys = [f"new-{big_n}-{r}-{i}" for i in range(n)]
            floors = [bucket.path_for(f"floor-{big_n}-{r}-{i}") for i in range(n)]
            out[name] = keys
            out["floor " + name] = [(p + ".tmp", p, blob) for p in floors]
            previous.extend((bucket, k, f) for k, f in zip(keys, floors))
        return out

    puts = {
        "big": lambda data: loop_put(big.put, data["big"], values),
        "small": lambda data: loop_put(small.put, data["small"], values),
        "floor big": lambda data: loop_floor_put(data["floor big"]),
        "floor small": lambda data: loop_floor_put(data["floor small"]),
    }
    wall, cpu = interleaved(puts, cfg["put_reps"], cfg["warmup"], prep_put)
    prep_put(-1)
    for bucket, key, floor_path in previous:
        bucket.delete(key)
        if os.path.exists(floor_path):
            os.unlink(floor_path)
    out["put"] = _block(wall, cpu, n)
    return out


def _block(wall: dict[str, list[int]], cpu: dict[str, list[int]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {k: summary_us(wall[k], n, cpu[k]) for k in wall}
    out["ratio"] = out["big"]["median_us"] / out["small"]["median_us"]
    out["paired_ratio"] = paired_ratio(wall["big"], wall["small"])
    out["cpu_ratio"] = out["big"]["cpu_median_us"] / out["small"]["cpu_median_us"]
    out["floor_ratio"] = out["floor big"]["median_us"] / out["floor small"]["median_us"]
    out["floor_cpu_ratio"] = out["floor big"]["cpu_median_us"] / out["floor small"]["cpu_median_us"]
    out["big_vs_floor"] = out["big"]["median_us"] / out["floor big"]["median_us"]
    out["small_vs_floor"] = out["small"]["median_us"] / out["floor small"]["median_us"]
    return out


def maintenance(ctx: Ctx, small_cache: Any, big_cache: Any, entries: int, cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        from safecache import maintenance as mt

        mt.info(small_cache)
    except (ImportError, AttributeError, NotImplementedError) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}".strip(": ")}
    out: dict[str, Any] = {"available": True}

    def time_info(cache: Any) -> dict[str, Any]:
        times = []
        data: dict[str, Any] = {}
        for _ in range(cfg["info_runs"]):
            t0 = perf_ns()
            data = mt.info(cache)
            times.append(perf_ns() - t0)
        return {
            "median_ms": statistics.median(times) / 1e6,
            "max_ms": max(times) / 1e6,
            "reported_entries": data.get("entries"),
            "reported_size": data.get("size"),
        }

    big_cache.flush()
    small_cache.flush()
    ctx.log(f"  [scale] info and trim at {entries:,} entries ...")
    out["info_before_trim"] = time_info(big_cache)
    t0 = time.perf_counter()
    files = size = 0
    for dirpath, _dirs, names in os.walk(big_cache.path):
        if os.sep + "buckets" + os.sep not in dirpath + os.sep:
            continue
        for name in names:
            size += os.lstat(os.path.join(dirpath, name)).st_size
            files += 1
    out["walk"] = {"seconds": time.perf_counter() - t0, "files": files, "bytes": size}
    du = shutil.which("du")
    if du:
        t0 = time.perf_counter()
        subprocess.run([du, "-s", os.path.join(big_cache.path, "buckets")], capture_output=True, check=True)
        out["du_s"] = time.perf_counter() - t0
    limit = size - 1  # just under: the trim must go down to 90% of it
    t0 = time.perf_counter()
    report = mt.trim(big_cache, max_size=limit)
    secs = time.perf_counter() - t0
    out["trim"] = {
        "seconds": secs,
        "entries_before": files,
        "max_size": limit,
        "removed": report.removed_entries,
        "freed_bytes": report.freed_bytes,
        "skipped_reason": report.skipped_reason,
        "removed_per_s": report.removed_entries / secs if secs else None,
        "examined_per_s": files / secs if secs else None,
    }
    out["info_after_trim"] = time_info(big_cache)
    out["info_after_trim"]["expected_entries"] = files - report.removed_entries
    big_cache.flush()
    out["info_fresh_process"] = fresh_info(big_cache.path, cfg["fresh_runs"])
    mt.trim(small_cache, max_size=None)  # exact counters for the small cache too
    out["info_small"] = time_info(small_cache)
    ctx.log(f"  [scale] clean of the {entries:,}-entry cache ...")
    t0 = time.perf_counter()
    report = mt.clean(big_cache)
    secs = time.perf_counter() - t0
    out["clean"] = {
        "seconds": secs,
        "removed": report.removed_entries,
        "removed_per_s": report.removed_entries / secs if secs else None,
    }
    return out


def fresh_info(path: str, runs: int) -> dict[str, Any]:
    """The first ``info`` call of a fresh interpreter, after its imports
    (median of ``runs`` interpreters)."""
    code = (
        "import time, safecache\n"
        "from safecache import maintenance\n"
        f"c = safecache.Cache({path!r}, auto_trim=False)\n"
        "t = time.perf_counter_ns(); maintenance.info(c); print((time.perf_counter_ns() - t) / 1e6)\n"
    )
    times = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
        times.append(float(done.stdout.strip()))
    return {"median_ms": statistics.median(times), "runs": runs}


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """get and put at the largest size against the small cache (issue 5);
    ``info`` under 50 ms, in a running process and as a fresh process's first
    call, and in constant time (issue 4)."""
    result = result or {}
    pts = result.get("points", {})
    points = result.get("config", {}).get("points") or [1_000, 1_000_000]
    largest = int(list(pts)[-1]) if pts else points[-1]
    why = "" if pts else result.get("note") or "not run"
    out = []
    for op in ("get", "put"):
        out.append(
            target(
                "5",
                f"{op} with {largest:,} entries <= 1.2x with {points[0]:,}",
                pts[str(largest)][op]["ratio"] if pts else None,
                TARGET_RATIO,
                source="issue 5",
                note=result.get("note", "") if pts else why,
            )
        )
    mt = result.get("maintenance", {})
    if mt.get("available"):
        big, small = mt["info_after_trim"]["median_ms"], mt["info_small"]["median_ms"]
        fresh = mt.get("info_fresh_process", {}).get("median_ms")
        why = ""
    else:
        big = small = fresh = None
        why = "maintenance not available: " + mt["reason"] if "reason" in mt else "not run"
    out += [
        target("5", f"info at {largest:,} entries < 50 ms", big, INFO_TARGET_MS, unit="ms", source="issue 4", note=why),
        target(
            "5",
            f"info at {largest:,} entries, first call in a fresh process < 50 ms",
            fresh,
            INFO_TARGET_MS,
            unit="ms",
            source="issue 4",
            note=why or ("" if fresh is not None else "not in this run's results"),
        ),
        target(
            "5",
            "info in constant time: big cache / small cache <= 2x",
            big / small if big is not None and small else None,
            INFO_CONSTANT,
            source="issue 4",
            note=why,
        ),
    ]
    return out


def plot(result: dict[str, Any], plt: Any, outdir: str) -> list[tuple[str, str]]:
    pts = result["points"]
    if len(pts) < 2:
        return []
    xs = [int(p) for p in pts]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, op in zip(axes, ("get", "put")):
        small_n = f"{result['config']['points'][0]:,}"
        for key, marker, style, color, label in (
            ("big", "o", "-", "C0", "safecache, N entries"),
            ("small", "s", "--", "C0", f"safecache, {small_n} entries (same rounds)"),
            ("floor big", "o", "-", "C2", "floor, N entries"),
            ("floor small", "s", "--", "C2", f"floor, {small_n} entries"),
        ):
            ys = [pts[p][op][key]["median_us"] for p in pts]
            ax.plot(xs, ys, marker=marker, linestyle=style, color=color, label=label)
        if op == "put":
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("entries in the cache (N)")
        ax.set_ylabel("µs per operation (median batch)")
        if op == "get":
            ax.set_ylim(bottom=0)
        ax.set_title(f"{op} (1 KiB values)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency against the number of entries")
    fig.tight_layout()
    name = "scale-latency.png"
    fig.savefig(os.path.join(outdir, name), dpi=80)
    plt.close(fig)
    return [(name, "get and put latency as the cache grows, against the small cache measured in the same rounds")]


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    parts = [
        (
            f"File system: {result['fs']}; {cfg['batch']} operations per batch, {cfg['get_reps']} get and "
            f"{cfg['put_reps']} put rounds per size, interleaved. Free before: {result['disk_before']['free_gib']} GiB, "
            f"{result['disk_before']['free_inodes']:,} inodes."
        )
    ]
    if result.get("note"):
        parts.append(f"**Size {result['note']}.**")
    rows = []
    small_n = f"{cfg['points'][0]:,}"
    for p, r in result["points"].items():
        for op in ("get", "put"):
            e = r[op]
            rows.append(
                [
                    f"{int(p):,}",
                    op,
                    fmt_us(e["big"]["median_us"]),
                    fmt_us(e["small"]["median_us"]),
                    fmt_ratio(e["ratio"]),
                    fmt_ratio(e["paired_ratio"]),
                    fmt_ratio(e["cpu_ratio"]),
                    fmt_us(e["floor big"]["median_us"]),
                    fmt_us(e["floor small"]["median_us"]),
                    fmt_ratio(e["floor_ratio"]),
                    fmt_ratio(e["floor_cpu_ratio"]),
                ]
            )
    parts.append(
        "*ratio*: N entries / " + small_n + " entries, medians; *paired*: median of the per-round ratios; "
        "*CPU*: the same in CPU time. *floor*: the bare system calls on the same files (get: open + read + "
        "close of entries sampled the same way; put: temp file + write + rename in the same directories): "
        "when the floor's ratio matches safecache's, the file system, not safecache, sets it.\n\n"
        + md_table(
            [
                "entries (N)",
                "op",
                "sc, N",
                f"sc, {small_n}",
                "ratio",
                "paired",
                "CPU ratio",
                "floor, N",
                f"floor, {small_n}",
                "floor ratio",
                "floor CPU ratio",
            ],
            rows,
            "rlrrrrrrrrr",
        )
    )
    build = result.get("build", {})
    parts.append(
        "Building (entries written directly, 4 threads): "
        + ", ".join(f"to {int(k):,}: {v:.1f} s" for k, v in build.items() if k.isdigit())
        + f"; removing the caches afterwards took {result.get('remove_s', 0):.1f} s."
    )
    mt = result.get("maintenance", {})
    if not mt.get("available"):
        parts.append(f"`info` and `trim`: not available ({mt.get('reason', 'not run')}).")
    else:
        t, a, b = mt["trim"], mt["info_after_trim"], mt["info_before_trim"]
        rows = [
            [
                "`info` (before the trim: counters miss the entries written directly)",
                f"{b['median_ms']:.3f} ms",
                f"reported {b['reported_entries']:,} entries",
            ],
            [
                "walk with `lstat` of every file (what sizing costs without counters)",
                f"{mt['walk']['seconds'] * 1e3:,.0f} ms",
                f"{mt['walk']['files']:,} files",
            ],
        ]
        if "du_s" in mt:
            rows.append(["`du -s` of the buckets", f"{mt['du_s'] * 1e3:,.0f} ms", ""])
        rows += [
            [
                "`trim(max_size=size - 1)`",
                f"{t['seconds']:.2f} s",
                f"removed {t['removed']:,} ({t['removed_per_s']:,.0f}/s); examined {t['examined_per_s']:,.0f} entries/s",
            ],
            [
                "`info` after the trim",
                f"{a['median_ms']:.3f} ms",
                f"reported {a['reported_entries']:,} entries (expected {a['expected_entries']:,})",
            ],
        ]
        fresh = mt.get("info_fresh_process")
        if fresh:
            rows.append(
                [
                    "`info` after the trim, first call in a fresh process",
                    f"{fresh['median_ms']:.3f} ms",
                    f"median of {fresh['runs']} interpreters",
                ]
            )
        rows.append([f"`info` on the {cfg['points'][0]:,}-entry cache", f"{mt['info_small']['median_ms']:.3f} ms", ""])
        clean = mt.get("clean")
        if clean:
            rows.append(
                [
                    "`clean` of the largest cache",
                    f"{clean['seconds']:.2f} s",
                    f"removed {clean['removed']:,} ({clean['removed_per_s']:,.0f}/s)",
                ]
            )
        parts.append(
            "Maintenance on the largest cache (`safecache.maintenance`):\n\n"
            + md_table(["operation", "time", ""], rows, "lrl")
        )
    return "\n\n".join(parts)

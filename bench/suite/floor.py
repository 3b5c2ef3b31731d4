"""Section 2: per-operation cost against the floor, for 1 KiB, 64 KiB and 1 MiB values.

For each size, in one process:

* get (hit): ``bucket.get`` vs the floor ``os.open`` + ``os.read`` (one call
  for the whole file) + ``os.close`` of a file of the same size (header +
  value) with precomputed paths in the bucket's own fan-out directories, vs
  ``diskcache.Cache.get``;
* put to a new key, and put of new content over an existing key:
  ``bucket.put`` vs the floor (``O_EXCL`` temp file + one ``write`` +
  ``close`` + ``os.replace``) vs ``diskcache.Cache.set``;
* put of the identical value (safecache's no-op path).

Batches of ``n`` operations, contenders interleaved A B C, B C A, ... after
untimed warm-up rounds; the figure is the median batch divided by ``n``.
The floor's files live in the bucket's fan-out directories (names that are
never a key's digest) because on ext4 the cost of creating a file depends on
the directory: with a separate tree the floor's puts measured up to 2x
apart from safecache's for that reason alone.  The CPU time of the same
batches (``thread_time_ns``) is a cross-check on a busy machine.
``bench/compare.py`` runs the 1 KiB get and puts of this section against
two source trees in one run (see bench/README.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Any

from .common import (
    Ctx,
    KiB,
    MiB,
    fmt_ratio,
    fmt_us,
    fs_type,
    interleaved,
    loop_floor_get,
    loop_floor_put,
    loop_get,
    loop_put,
    md_table,
    missing_lines,
    optional_module,
    paired_ratio,
    profile,
    profile_markdown,
    summary_us,
    target,
    tmpfs_dir,
)

TITLE = "2. Per-operation floor: get/put of 1 KiB, 64 KiB, 1 MiB against the system calls"
HEADER = 80  # safecache's entry header region (64 bytes, then the stored key): the floor's files get the same size
OPS = ("get", "put_new", "put_over", "put_same")
OP_LABELS = {
    "get": "get (hit)",
    "put_new": "put, new key",
    "put_over": "put, new content over a key",
    "put_same": "put, identical value (no-op)",
}
TARGETS_1K = {"floor": 1.25, "diskcache": 0.9}


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full={
            "sizes": [[KiB, 1000, 31, 15], [64 * KiB, 200, 21, 11], [MiB, 20, 15, 9]],
            "warmup": 2,
            "fs": ["main", "tmpfs"],
        },
        quick={"sizes": [[KiB, 300, 9, 5], [64 * KiB, 60, 7, 4], [MiB, 8, 5, 3]], "warmup": 1, "fs": ["main"]},
        smoke={"sizes": [[KiB, 10, 2, 2], [64 * KiB, 4, 2, 2], [MiB, 2, 2, 2]], "warmup": 1, "fs": ["main"]},
    )


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"


def filler_for(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def make_value(size: int, i: int, batch: int, filler: bytes) -> bytes:
    head = f"{batch:08d}:{i:08d}:".encode()
    return head + filler[len(head) : size]


def floor_path(root: str, key: str) -> str:
    digest = hashlib.blake2b(b"floor:" + key.encode(), digest_size=16).hexdigest()
    return os.path.join(root, digest[:2], digest)


def get_keys(tag: str, n: int) -> list[str]:
    return [f"get-{tag}-{i:06d}" for i in range(n)]


def put_round(op: str, tag: str, r: int, n: int, size: int, filler: bytes) -> tuple[list[str], list[bytes]]:
    """Round ``r``'s keys and values for ``put_new`` (new keys every round)
    or ``put_over`` (the same keys, round -1 stores them first); every value
    is new content."""
    batch = r + 1
    keys = [f"{op}-{tag}-{batch if op == 'put_new' else 0}-{i:06d}" for i in range(n)]
    return keys, [make_value(size, i, batch, filler) for i in range(n)]


def bench_size(
    bucket: Any,
    dc_get: Any,
    dc_put: Any,
    floor_root: str,
    size: int,
    n: int,
    get_reps: int,
    put_reps: int,
    warmup: int,
    profile_it: bool = False,
) -> dict[str, Any]:
    filler = filler_for(size)
    for i in range(256):
        os.makedirs(os.path.join(floor_root, f"{i:02x}"), exist_ok=True)
    tag = size_label(size).replace(" ", "")
    out: dict[str, Any] = {}

    # -- get ------------------------------------------------------------------------
    keys = get_keys(tag, n)
    values = [make_value(size, i, 0, filler) for i in range(n)]
    paths = [floor_path(floor_root, k) for k in keys]
    for k, v, p in zip(keys, values, paths):
        if not bucket.put(k, v):
            raise RuntimeError(f"safecache put failed for {k!r}: see the warning above")
        if dc_get is not None:
            dc_get.set(k, v)
        with open(p, "wb") as f:
            f.write(b"\0" * HEADER + v)
    if any(bucket.get(k) != v for k, v in zip(keys, values)):
        raise RuntimeError("safecache returned wrong values: not benchmarking a broken store")
    read_size = HEADER + size + 1

    def sc_get(_: Any) -> int:
        return loop_get(bucket.get, keys)

    contenders = {"safecache": sc_get, "floor": lambda _: loop_floor_get(paths, read_size)}
    if dc_get is not None:
        contenders["diskcache"] = lambda _: loop_get(dc_get.get, keys)
    wall, cpu = interleaved(contenders, get_reps, warmup)
    out["get"] = _block(wall, cpu, n)
    if profile_it:
        out["profile"] = {"get": profile(sc_get, [None] * _profile_batches(n), exclude=("floor.py",))}

    # -- put: new keys, and new content over existing keys ---------------------------------
    for op in ("put_new", "put_over"):

        def prepare(r: int, op: str = op) -> tuple[list[str], list[bytes], list[tuple[str, str, bytes]]]:
            ks, vs = put_round(op, tag, r, n, size, filler)
            finals = [floor_path(floor_root, k) for k in ks]
            return ks, vs, [(p + ".tmp", p, b"\0" * HEADER + v) for p, v in zip(finals, vs)]

        if op == "put_over":
            ks, vs, fl = prepare(-1)
            for k, v, (_tmp, final, blob) in zip(ks, vs, fl):
                bucket.put(k, v)
                if dc_put is not None:
                    dc_put.set(k, v)
                with open(final, "wb") as f:
                    f.write(blob)

        def sc_put(data: Any) -> int:
            return loop_put(bucket.put, data[0], data[1])

        contenders = {"safecache": sc_put, "floor": lambda data: loop_floor_put(data[2])}
        if dc_put is not None:
            contenders["diskcache"] = lambda data: loop_put(dc_put.set, data[0], data[1])
        before = bucket.counters.writes
        wall, cpu = interleaved(contenders, put_reps, warmup, prepare)
        out[op] = _block(wall, cpu, n)
        out[op]["safecache"]["entries_written"] = bucket.counters.writes - before
        out[op]["safecache"]["entries_expected"] = (put_reps + warmup) * n
        if profile_it and op == "put_new":
            rounds = range(put_reps + warmup + 1, put_reps + warmup + 1 + _profile_batches(n))
            out["profile"]["put, new key"] = profile(sc_put, [prepare(r) for r in rounds], exclude=("floor.py",))

    # -- put of the identical value -----------------------------------------------------------
    before = bucket.counters.writes
    wall, cpu = interleaved({"safecache": lambda _: loop_put(bucket.put, keys, values)}, get_reps, warmup)
    out["put_same"] = {"safecache": summary_us(wall["safecache"], n, cpu["safecache"])}
    out["put_same"]["safecache"]["entries_written"] = bucket.counters.writes - before  # 0 expected
    out["put_same"]["ratios"] = {
        "vs_floor_put_new": out["put_same"]["safecache"]["median_us"] / out["put_new"]["floor"]["median_us"],
        "vs_safecache_get": out["put_same"]["safecache"]["median_us"] / out["get"]["safecache"]["median_us"],
    }
    return out


def _profile_batches(n: int) -> int:
    """Batches to profile: about 2,000 operations, at most 10 batches."""
    return max(1, min(10, 2000 // n))


def _block(wall: dict[str, list[int]], cpu: dict[str, list[int]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {name: summary_us(wall[name], n, cpu[name]) for name in wall}
    sc = out["safecache"]["median_us"]
    ratios = {
        "vs_floor": sc / out["floor"]["median_us"],
        "paired_vs_floor": paired_ratio(wall["safecache"], wall["floor"]),
        "cpu_vs_floor": out["safecache"]["cpu_median_us"] / out["floor"]["cpu_median_us"],
    }
    if "diskcache" in out:
        ratios |= {
            "vs_diskcache": sc / out["diskcache"]["median_us"],
            "paired_vs_diskcache": paired_ratio(wall["safecache"], wall["diskcache"]),
            "floor_vs_diskcache": out["floor"]["median_us"] / out["diskcache"]["median_us"],
            "cpu_vs_diskcache": out["safecache"]["cpu_median_us"] / out["diskcache"]["cpu_median_us"],
        }
    out["ratios"] = ratios
    return out


def run(ctx: Ctx) -> dict[str, Any]:
    import safecache

    cfg = config(ctx)
    diskcache, why = optional_module("diskcache")
    out: dict[str, Any] = {"config": cfg, "missing": {"diskcache": why} if why else {}, "results": {}}
    shm = tmpfs_dir()
    for fs in cfg["fs"]:
        if fs == "tmpfs" and shm is None:
            out["results"][fs] = {"skipped": "no writable tmpfs (/dev/shm)"}
            continue
        root = ctx.subdir("floor") if fs == "main" else tempfile.mkdtemp(prefix="safecache-suite-", dir=shm)
        block: dict[str, Any] = {"fs": fs_type(root), "sizes": {}}
        out["results"][fs] = block
        try:
            for size, n, get_reps, put_reps in cfg["sizes"]:
                label = size_label(size)
                ctx.log(f"  [floor] {fs}: {label} values, {n} keys per batch ...")
                base = os.path.join(root, label.replace(" ", ""))
                cache = safecache.Cache(os.path.join(base, "safecache"), auto_trim=False)
                bucket = cache.bucket("bench", version=1)
                dc_get = diskcache.Cache(os.path.join(base, "dc-get")) if diskcache else None
                dc_put = diskcache.Cache(os.path.join(base, "dc-put")) if diskcache else None
                # The bucket's directory, from the public API (path_for is <dir>/<xx>/<digest>).
                floor_root = os.path.dirname(os.path.dirname(bucket.path_for("any key")))
                try:
                    block["sizes"][label] = bench_size(
                        bucket,
                        dc_get,
                        dc_put,
                        floor_root,
                        size,
                        n,
                        get_reps,
                        put_reps,
                        cfg["warmup"],
                        ctx.profile and fs == "main",
                    )
                    block["sizes"][label]["bytes"] = size
                finally:
                    for dc in (dc_get, dc_put):
                        if dc is not None:
                            dc.close()
                    cache.close()
                    shutil.rmtree(base, ignore_errors=True)
        finally:
            if fs != "main":
                shutil.rmtree(root, ignore_errors=True)
    return out


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """1 KiB get, put of a new key and put over a key, each against the floor
    and against diskcache, on the main file system and (full run) on tmpfs."""
    out = []
    for fs in ("main", "tmpfs"):
        block = (result or {}).get("results", {}).get(fs, {})
        sizes = block.get("sizes", {}).get("1 KiB")
        if sizes:
            why = ""
        elif result is None or fs == "main":
            why = "not run"
        elif fs in result["config"]["fs"]:
            why = block.get("skipped", "not run")
        else:
            why = "the tmpfs cross-check runs in the full run only"
        prefix, source = ("", "issue 2") if fs == "main" else ("cross-check on tmpfs: ", "issue 2 (tmpfs)")
        for op, label in (("get", "get"), ("put_new", "put (new key)"), ("put_over", "put (over a key)")):
            r = sizes[op]["ratios"] if sizes else {}
            name = f"{prefix}1 KiB {label}"
            out.append(
                target("2", f"{name} <= 1.25x floor", r.get("vs_floor"), TARGETS_1K["floor"], source=source, note=why)
            )
            dc_why = why or ("" if "vs_diskcache" in r else "diskcache not measured")
            out.append(
                target(
                    "2",
                    f"{name} <= 0.9x diskcache",
                    r.get("vs_diskcache"),
                    TARGETS_1K["diskcache"],
                    source=source,
                    note=dc_why,
                )
            )
    return out


def markdown(result: dict[str, Any]) -> str:
    parts = [
        (
            "Microseconds per operation, median batch; *sc* = safecache. Ratios below 1 mean safecache is faster. "
            "*CPU sc/floor*: the same ratio in CPU time of the batches (less sensitive to other jobs)."
        )
    ]
    parts += missing_lines(result["missing"])
    for fs, block in result["results"].items():
        if "sizes" not in block:
            parts.append(f"**{fs}**: skipped ({block.get('skipped')}).")
            continue
        rows = []
        for label, b in block["sizes"].items():
            for op in OPS:
                e = b[op]
                sc = e["safecache"]
                r = e.get("ratios", {})
                if op == "put_same":
                    rows.append(
                        [
                            label,
                            OP_LABELS[op],
                            fmt_us(sc["median_us"]),
                            "",
                            "",
                            "",
                            "",
                            "",
                            "",
                            f"{fmt_ratio(r['vs_safecache_get'])} of sc get",
                        ]
                    )
                    continue
                rows.append(
                    [
                        label,
                        OP_LABELS[op],
                        fmt_us(sc["median_us"]),
                        fmt_us(e["floor"]["median_us"]),
                        fmt_us(e["diskcache"]["median_us"]) if "diskcache" in e else "-",
                        fmt_ratio(r["vs_floor"]),
                        fmt_ratio(r.get("vs_diskcache")),
                        fmt_ratio(r.get("floor_vs_diskcache")),
                        fmt_ratio(r["cpu_vs_floor"]),
                        f"{sc['p25_us']:.1f}-{sc['p75_us']:.1f}",
                    ]
                )
        what = "main file system" if fs == "main" else "cross-check on tmpfs"
        parts.append(
            f"**{what} ({block['fs']})**\n\n"
            + md_table(
                [
                    "size",
                    "operation",
                    "safecache",
                    "floor",
                    "diskcache",
                    "sc/floor",
                    "sc/diskcache",
                    "floor/diskcache",
                    "CPU sc/floor",
                    "sc p25-p75 µs",
                ],
                rows,
                "llrrrrrrrr",
            )
        )
        for label, b in block["sizes"].items():
            for op, prof in b.get("profile", {}).items():
                parts.append(
                    profile_markdown(
                        f"cProfile of safecache's {op} loop, {label} values, "
                        f"{_profile_batches(b['get']['safecache']['ops_per_batch'])} batches of "
                        f"{b['get']['safecache']['ops_per_batch']}",
                        prof,
                    )
                )
    return "\n\n".join(parts)

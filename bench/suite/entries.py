"""Section 9: the entry API: the push-style writer against ``put``, metadata
read without the value (``get_meta``) against ``get``, and metadata replaced
(``set_meta``) against a put of the whole entry.

One process, one cache; each group's contenders interleaved A B C, B C A, ...
after untimed warm-up rounds (the figure is the median batch divided by its
number of calls; a ratio is the median of the per-round ratios of per-call
times, each round's batches having run back to back):

* writes, for 1 KiB and 1 MiB values, to new keys every round (nothing is
  deleted until the run ends: on ext4, deleting files makes creating them
  slower for a while): ``bucket.put(key, data)``; ``with bucket.writer(key)
  as f: f.write(data)``; ``bucket.put(key, data, meta=...)`` with 200 bytes
  of HTTP-like metadata;
* reads of one 1 KiB and one 10 MiB entry, each stored with that metadata and
  read over and over (in the page cache): ``bucket.get_meta(key)`` and
  ``bucket.get(key)``.  ``get_meta`` reads the entry's header, never its
  value, so its cost should not grow with the value's size.  The short
  batches (``get_meta`` of both entries, ``get`` of the 1 KiB one) are
  interleaved in rounds of their own; ``get`` of the 10 MiB entry, which
  takes as long as hundreds of them, in fewer rounds against ``get_meta`` of
  the same entry;
* metadata of a 10 MiB entry replaced: ``bucket.set_meta(key, meta)`` (a
  sidecar file, the value untouched) against what a caller without it would
  do, ``bucket.put(key, value, meta=meta)`` of the same 10 MiB value with new
  metadata (never an identical entry, so it is written each time).

The CPU time of the same batches (``thread_time_ns``) is a cross-check on a
busy machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from .common import (
    Ctx,
    KiB,
    MiB,
    fmt_ratio,
    fmt_us,
    interleaved,
    md_table,
    perf_ns,
    profile,
    profile_markdown,
    summary_us,
    target,
)

TITLE = "9. Entries: the writer against put, get_meta against get, set_meta against a put"
TARGETS = {"writer_vs_put_1mib": 1.1, "get_meta_10mib_vs_1kib": 2.0, "set_meta_vs_put_10mib": 0.1}
SOURCE = "issue: what real tools need (must-show: bench)"
WRITES = ("put", "writer", "put, meta")
READS = ("get_meta, 1 KiB", "get, 1 KiB", "get_meta, 10 MiB", "get, 10 MiB")
SET_META = ("set_meta, 10 MiB", "put, 10 MiB, new meta")
BIG = 10 * MiB
#: About what an HTTP cache keeps beside a body (status, ETag, dates, type, length).
META = (
    b'{"status": 200, "etag": "W/\\"5f3c-1a2b3c4d5e6f\\"", "date": "Wed, 25 Nov 2026 10:00:00 GMT", '
    b'"last-modified": "Tue, 24 Nov 2026 09:00:00 GMT", "content-type": "application/zip", "length": 1}'
)


def config(ctx: Ctx) -> dict[str, Any]:
    # writes: [size, calls per batch]; reads/set_meta: calls per batch of each contender.
    picked: dict[str, Any] = ctx.pick(
        full={
            "writes": [[KiB, 300], [MiB, 10]],
            "write_reps": 15,
            "reads": {"small": 300, "meta_big": 300, "get_big": 4, "meta_reps": 41},
            "set_meta": {"set_meta": 100, "put": 2},
            "reps": 21,
            "warmup": 2,
        },
        quick={
            "writes": [[KiB, 100], [MiB, 6]],
            "write_reps": 9,
            "reads": {"small": 100, "meta_big": 100, "get_big": 2, "meta_reps": 21},
            "set_meta": {"set_meta": 40, "put": 1},
            "reps": 9,
            "warmup": 1,
        },
        smoke={
            "writes": [[KiB, 5], [MiB, 2]],
            "write_reps": 2,
            "reads": {"small": 5, "meta_big": 5, "get_big": 1, "meta_reps": 2},
            "set_meta": {"set_meta": 3, "put": 1},
            "reps": 2,
            "warmup": 1,
        },
    )
    return picked


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"


def value(size: int, tag: str) -> bytes:
    """``size`` bytes starting with ``tag``: a new content for every tag."""
    head = tag.encode() + b":"
    return head + (bytes(range(256)) * (size // 256 + 1))[: size - len(head)]


def per_call_ratio(a: list[int], na: int, b: list[int], nb: int) -> float:
    """Median over rounds of (a's time per call) / (b's time per call)."""
    return statistics.median((x / na) / (y / nb) for x, y in zip(a, b))


# -- writes -------------------------------------------------------------------------------------
def bench_writes(ctx: Ctx, bucket: Any, size: int, n: int, reps: int, warmup: int) -> dict[str, Any]:
    label = size_label(size).replace(" ", "")

    def prepare(r: int) -> dict[str, tuple[list[str], list[bytes]]]:
        # Nothing is deleted until the run ends: on ext4 deletions make file
        # creation slower for a while (section 4), in this section and after it.
        return {
            name: ([f"{name}-{label}-{r}-{i}" for i in range(n)], [value(size, f"{r}-{i}") for i in range(n)])
            for name in WRITES
        }

    put = bucket.put
    writer = bucket.writer

    def do_put(data: Any) -> int:
        keys, values = data["put"]
        t0 = perf_ns()
        for k, v in zip(keys, values):
            put(k, v)
        return perf_ns() - t0

    def do_writer(data: Any) -> int:
        keys, values = data["writer"]
        t0 = perf_ns()
        for k, v in zip(keys, values):
            with writer(k) as f:
                f.write(v)
        return perf_ns() - t0

    def do_put_meta(data: Any) -> int:
        keys, values = data["put, meta"]
        t0 = perf_ns()
        for k, v in zip(keys, values):
            put(k, v, meta=META)
        return perf_ns() - t0

    contenders: dict[str, Callable[[Any], int]] = {"put": do_put, "writer": do_writer, "put, meta": do_put_meta}
    ctx.log(f"  [entries] writes of {size_label(size)}: {reps} interleaved rounds of 3 batches of {n} ...")
    before = bucket.counters.writes
    wall, cpu = interleaved(contenders, reps, warmup, prepare)
    stored = bucket.counters.writes - before
    expected = (reps + warmup) * n * len(WRITES)
    # The last round's entries are still there: each must read back as written.
    last = reps + warmup - 1
    for name in WRITES:
        k = f"{name}-{label}-{last}-{n - 1}"
        if bucket.get(k) != value(size, f"{last}-{n - 1}"):
            raise RuntimeError(f"{name} did not store what it was given: not benchmarking a broken cache")
    if bucket.get_meta(f"put, meta-{label}-{last}-0") != META:
        raise RuntimeError("put(meta=...) did not store its metadata")
    if stored != expected:
        raise RuntimeError(f"{stored} entries stored of {expected}: a write failed (see the warning above)")
    out: dict[str, Any] = {
        "n": n,
        "results": {name: summary_us(wall[name], n, cpu[name]) for name in WRITES},
        "ratios": {
            "writer_vs_put": per_call_ratio(wall["writer"], n, wall["put"], n),
            "put_meta_vs_put": per_call_ratio(wall["put, meta"], n, wall["put"], n),
            "cpu_writer_vs_put": statistics.median(cpu["writer"]) / statistics.median(cpu["put"]),
        },
    }
    if ctx.profile and size >= MiB:
        rounds = [prepare(r) for r in range(1000, 1000 + max(1, min(5, 50 // n)))]
        out["profile"] = profile(do_writer, rounds, exclude=("entries.py",))
    return out


# -- reads and set_meta ------------------------------------------------------------------------
def repeat(fn: Any, key: str, n: int) -> int:
    t0 = perf_ns()
    for _ in range(n):
        fn(key)
    return perf_ns() - t0


def bench_reads(ctx: Ctx, bucket: Any, cfg: dict[str, Any], reps: int, warmup: int) -> dict[str, Any]:
    small, big = value(KiB, "small"), value(BIG, "big")
    if not (bucket.put("read-1KiB", small, meta=META) and bucket.put("read-10MiB", big, meta=META)):
        raise RuntimeError("put failed: see the warning above")
    checks = [
        bucket.get_meta("read-1KiB") == META,
        bucket.get_meta("read-10MiB") == META,
        bucket.get("read-1KiB") == small,
        bucket.get("read-10MiB") == big,
    ]
    if not all(checks):
        raise RuntimeError("the entries do not read back as written: not benchmarking a broken cache")
    del big
    n: dict[str, int] = {
        "get_meta, 1 KiB": cfg["small"],
        "get, 1 KiB": cfg["small"],
        "get_meta, 10 MiB": cfg["meta_big"],
        "get, 10 MiB": cfg["get_big"],
    }
    get, get_meta = bucket.get, bucket.get_meta
    batch = {
        "get_meta, 1 KiB": lambda _: repeat(get_meta, "read-1KiB", n["get_meta, 1 KiB"]),
        "get, 1 KiB": lambda _: repeat(get, "read-1KiB", n["get, 1 KiB"]),
        "get_meta, 10 MiB": lambda _: repeat(get_meta, "read-10MiB", n["get_meta, 10 MiB"]),
        "get, 10 MiB": lambda _: repeat(get, "read-10MiB", n["get, 10 MiB"]),
    }
    misses = bucket.counters.misses
    # The short batches in many rounds of their own (a 10 MiB get takes as
    # long as hundreds of them: with it in every round, each round would
    # span a long stretch of the machine's load); then the 10 MiB get against
    # get_meta of the same entry.
    short = ("get_meta, 1 KiB", "get, 1 KiB", "get_meta, 10 MiB")
    meta_reps = cfg["meta_reps"]
    ctx.log(f"  [entries] get_meta of 1 KiB and 10 MiB entries, get of 1 KiB: {meta_reps} interleaved rounds ...")
    wall, cpu = interleaved({name: batch[name] for name in short}, meta_reps, warmup)
    ctx.log(f"  [entries] get against get_meta of a 10 MiB entry: {reps} interleaved rounds ...")
    big_wall, big_cpu = interleaved({name: batch[name] for name in ("get_meta, 10 MiB", "get, 10 MiB")}, reps, warmup)
    if bucket.counters.misses != misses:
        raise RuntimeError("a timed get missed")

    def ratio(a: str, b: str, w: dict[str, list[int]] = wall) -> float:
        return per_call_ratio(w[a], n[a], w[b], n[b])

    def cpu_per_call(c: dict[str, list[int]], name: str) -> float:
        return float(statistics.median(c[name])) / n[name]

    results = {name: summary_us(wall[name], n[name], cpu[name]) for name in short}
    results["get, 10 MiB"] = summary_us(big_wall["get, 10 MiB"], n["get, 10 MiB"], big_cpu["get, 10 MiB"])
    return {
        "n": n,
        "rounds": {"short": meta_reps, "get, 10 MiB": reps},
        "results": results,
        "ratios": {
            "get_meta_10mib_vs_1kib": ratio("get_meta, 10 MiB", "get_meta, 1 KiB"),
            "cpu_get_meta_10mib_vs_1kib": cpu_per_call(cpu, "get_meta, 10 MiB") / cpu_per_call(cpu, "get_meta, 1 KiB"),
            "get_meta_vs_get_1kib": ratio("get_meta, 1 KiB", "get, 1 KiB"),
            "get_meta_vs_get_10mib": ratio("get_meta, 10 MiB", "get, 10 MiB", big_wall),
        },
    }


def bench_set_meta(ctx: Ctx, bucket: Any, cfg: dict[str, Any], reps: int, warmup: int) -> dict[str, Any]:
    big = value(BIG, "set-meta")
    if not (bucket.put("set-meta-10MiB", big, meta=META) and bucket.put("reput-10MiB", big, meta=META)):
        raise RuntimeError("put failed: see the warning above")
    n: dict[str, int] = {"set_meta, 10 MiB": cfg["set_meta"], "put, 10 MiB, new meta": cfg["put"]}
    set_meta, put = bucket.set_meta, bucket.put
    count = [0]

    def metas(k: int) -> list[bytes]:
        # New metadata for every call (a revalidation's new Date header).
        base = count[0]
        count[0] += k
        return [META + b" %d" % (base + i) for i in range(k)]

    def do_set_meta(_: Any) -> int:
        ms = metas(n["set_meta, 10 MiB"])
        t0 = perf_ns()
        for m in ms:
            set_meta("set-meta-10MiB", m)
        return perf_ns() - t0

    def do_put(_: Any) -> int:
        ms = metas(n["put, 10 MiB, new meta"])
        t0 = perf_ns()
        for m in ms:
            put("reput-10MiB", big, meta=m)
        return perf_ns() - t0

    contenders: dict[str, Callable[[Any], int]] = {"set_meta, 10 MiB": do_set_meta, "put, 10 MiB, new meta": do_put}
    ctx.log(f"  [entries] set_meta of a 10 MiB entry against a put of it: {reps} interleaved rounds ...")
    before = bucket.counters.writes
    wall, cpu = interleaved(contenders, reps, warmup)
    expected = (reps + warmup) * n["put, 10 MiB, new meta"]
    if bucket.counters.writes - before != expected:
        raise RuntimeError("a timed put was not written (an identical entry, or a failure)")
    got = bucket.get_with_meta("set-meta-10MiB")
    if got is None or got[0] != big or not got[1].startswith(META + b" "):
        raise RuntimeError("set_meta did not leave the value with its new metadata")
    return {
        "n": n,
        "results": {name: summary_us(wall[name], n[name], cpu[name]) for name in SET_META},
        "ratios": {
            "set_meta_vs_put": per_call_ratio(
                wall["set_meta, 10 MiB"],
                n["set_meta, 10 MiB"],
                wall["put, 10 MiB, new meta"],
                n["put, 10 MiB, new meta"],
            )
        },
    }


def run(ctx: Ctx) -> dict[str, Any]:
    import safecache

    cfg = config(ctx)
    cache = safecache.Cache(ctx.subdir("entries"), auto_trim=False)
    bucket = cache.bucket("entries", version=1)
    warmup = cfg["warmup"]
    out: dict[str, Any] = {"config": cfg, "writes": {}}
    for size, n in cfg["writes"]:
        out["writes"][size_label(size)] = bench_writes(ctx, bucket, size, n, cfg["write_reps"], warmup)
    out["reads"] = bench_reads(ctx, bucket, cfg["reads"], cfg["reps"], warmup)
    out["set_meta"] = bench_set_meta(ctx, bucket, cfg["set_meta"], cfg["reps"], warmup)
    cache.close()
    return out


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    r = result or {}
    writer = r.get("writes", {}).get("1 MiB", {}).get("ratios", {}).get("writer_vs_put")
    meta = r.get("reads", {}).get("ratios", {}).get("get_meta_10mib_vs_1kib")
    set_meta = r.get("set_meta", {}).get("ratios", {}).get("set_meta_vs_put")
    return [
        target("9", "writer within 1.1x of put, 1 MiB values", writer, TARGETS["writer_vs_put_1mib"], source=SOURCE),
        target(
            "9",
            "get_meta of a 10 MiB entry within 2x of get_meta of a 1 KiB entry (it does not read the value)",
            meta,
            TARGETS["get_meta_10mib_vs_1kib"],
            source=SOURCE,
        ),
        target(
            "9",
            "set_meta on a 10 MiB entry under 0.1x of a put of the same entry",
            set_meta,
            TARGETS["set_meta_vs_put_10mib"],
            source=SOURCE,
        ),
    ]


def _row(name: str, s: dict[str, Any], ratio: str) -> list[object]:
    return [
        name,
        fmt_us(s["median_us"]),
        f"{fmt_us(s['p25_us'])} - {fmt_us(s['p75_us'])}",
        fmt_us(s.get("cpu_median_us")),
        ratio,
    ]


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    parts = []
    rows = []
    for label, w in result["writes"].items():
        r, ratios = w["results"], w["ratios"]
        rows.append(_row(f"put, {label}", r["put"], "1"))
        rows.append(_row(f"writer, {label}", r["writer"], fmt_ratio(ratios["writer_vs_put"])))
        rows.append(_row(f"put with meta, {label}", r["put, meta"], fmt_ratio(ratios["put_meta_vs_put"])))
    sizes = ", ".join(f"{n} calls for {size_label(size)}" for size, n in cfg["writes"])
    parts.append(
        f"Writes to new keys: batches of {sizes}; {cfg['write_reps']} interleaved rounds after {cfg['warmup']} "
        f"untimed warm-up round{'' if cfg['warmup'] == 1 else 's'}."
    )
    parts.append(md_table(["contender", "per call (median)", "IQR", "CPU per call", "vs put"], rows, "lrrrr"))

    reads = result["reads"]
    r, ratios = reads["results"], reads["ratios"]
    vs = {
        "get_meta, 1 KiB": fmt_ratio(ratios["get_meta_vs_get_1kib"]) + " of get",
        "get, 1 KiB": "1",
        "get_meta, 10 MiB": fmt_ratio(ratios["get_meta_vs_get_10mib"])
        + " of get; "
        + fmt_ratio(ratios["get_meta_10mib_vs_1kib"])
        + " of get_meta, 1 KiB",
        "get, 10 MiB": "1",
    }
    parts.append(
        "Reads of one entry over and over: batches of "
        + ", ".join(f"{reads['n'][name]} for {name}" for name in READS[:3])
        + f" in {reads['rounds']['short']} interleaved rounds; batches of {reads['n']['get, 10 MiB']} for get, 10 MiB "
        f"interleaved with get_meta of the same entry in {reads['rounds']['get, 10 MiB']} rounds, which give its "
        "ratio. The CPU ratio of get_meta 10 MiB / 1 KiB is "
        f"{fmt_ratio(ratios['cpu_get_meta_10mib_vs_1kib'])}."
    )
    parts.append(
        md_table(
            ["contender", "per call (median)", "IQR", "CPU per call", "ratio"],
            [_row(name, r[name], vs[name]) for name in READS],
            "lrrrr",
        )
    )

    sm = result["set_meta"]
    r = sm["results"]
    parts.append(
        "Metadata of a 10 MiB entry replaced (batches of "
        + ", ".join(f"{sm['n'][name]} for {name}" for name in SET_META)
        + ")."
    )
    parts.append(
        md_table(
            ["contender", "per call (median)", "IQR", "CPU per call", "vs put"],
            [
                _row("set_meta, 10 MiB", r["set_meta, 10 MiB"], fmt_ratio(sm["ratios"]["set_meta_vs_put"])),
                _row("put, 10 MiB, new meta", r["put, 10 MiB, new meta"], "1"),
            ],
            "lrrrr",
        )
    )
    prof = result["writes"].get("1 MiB", {}).get("profile")
    if prof:
        parts.append(profile_markdown("Profile of the writer's 1 MiB batches", prof))
    return "\n\n".join(parts)

"""Section 8: memoize's warm call against a bare ``get`` of the same value.

One process, one cache.  A memoized function ``lint(path, line_length=88)``
returns a small dict (JSON: 60-odd bytes); after one untimed call per path
every call is warm.  Contenders, each a batch of ``n`` calls over ``n``
different paths, interleaved A B C, B C A, ... after untimed warm-up rounds:

* ``get``: ``bucket.get`` of a plain ``str`` key holding the same bytes (the
  floor memoize is measured against: what a tool writes by hand);
* ``get, memoize's key``: ``bucket.get(f.cache_key(path))`` with the keys
  built beforehand (the structured key's share of the cost);
* ``get + json.loads``: a hand-written warm call (``get`` then decode);
* ``memoize (json)``: ``lint(path)``, the default codec;
* ``memoize (raw)``: a function with ``codec="raw"`` returning the same bytes;
* ``memoize, keyword call``: ``lint(path=path, line_length=88)``, which binds
  its arguments with ``inspect`` (a positional call does not).

The figure is the median batch divided by ``n``; the ratio is the median of
the per-round ratios against ``get`` (each round's batches ran back to back).
The CPU time of the same batches (``thread_time_ns``) is a cross-check.
"""

from __future__ import annotations

import json
from typing import Any

from .common import (
    Ctx,
    fmt_ratio,
    fmt_us,
    interleaved,
    loop_get,
    md_table,
    paired_ratio,
    perf_ns,
    profile,
    profile_markdown,
    summary_us,
    target,
)

TITLE = "8. Memoize: a warm call against a bare get of the same value"
TARGETS = {"warm_vs_get": 1.5}
CONTENDERS = (
    "get",
    "get, memoize's key",
    "get + json.loads",
    "memoize (json)",
    "memoize (raw)",
    "memoize, keyword call",
)


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full={"n": 1000, "reps": 31, "warmup": 3},
        quick={"n": 300, "reps": 11, "warmup": 2},
        smoke={"n": 20, "reps": 2, "warmup": 1},
    )


def run(ctx: Ctx) -> dict[str, Any]:
    import safecache

    cfg = config(ctx)
    n = cfg["n"]
    cache = safecache.Cache(ctx.subdir("memoize"), auto_trim=False)
    bucket = cache.bucket("memo")

    @bucket.memoize
    def lint(path: str, line_length: int = 88) -> dict[str, Any]:
        return {"path": path, "findings": [], "line_length": line_length, "version": "1.0"}

    encoded = {}

    @bucket.memoize(codec="raw")
    def lint_raw(path: str, line_length: int = 88) -> bytes:
        return encoded[path]

    paths = [f"src/pkg/module_{i:05d}.py" for i in range(n)]
    plain = [f"plain-{p}" for p in paths]
    memo_keys = [lint.cache_key(p) for p in paths]
    for p, k in zip(paths, plain):
        value = lint(p)  # stores it
        data = bucket.get(lint.cache_key(p))
        if data is None or json.loads(data) != value:
            raise RuntimeError("memoize did not store what it returned: not benchmarking a broken cache")
        encoded[p] = data
        lint_raw(p)
        bucket.put(k, data)
    if any(bucket.get(k) is None for k in plain) or any(lint_raw(p) != encoded[p] for p in paths):
        raise RuntimeError("the values to read back are not all there")
    loads = json.loads
    get = bucket.get

    def get_decode(_: Any) -> int:
        t0 = perf_ns()
        for k in plain:
            loads(get(k))
        return perf_ns() - t0

    def keyword(_: Any) -> int:
        t0 = perf_ns()
        for p in paths:
            lint(path=p, line_length=88)
        return perf_ns() - t0

    contenders = {
        "get": lambda _: loop_get(get, plain),
        "get, memoize's key": lambda _: loop_get(get, memo_keys),
        "get + json.loads": get_decode,
        "memoize (json)": lambda _: loop_get(lint, paths),
        "memoize (raw)": lambda _: loop_get(lint_raw, paths),
        "memoize, keyword call": keyword,
    }
    misses = bucket.counters.misses
    ctx.log(f"  [memoize] {cfg['reps']} interleaved rounds of {len(contenders)} batches of {n} warm calls ...")
    wall, cpu = interleaved(contenders, cfg["reps"], cfg["warmup"])
    if bucket.counters.misses != misses:
        raise RuntimeError("a timed call missed: the figures would include computing")
    results = {name: summary_us(wall[name], n, cpu[name]) for name in contenders}
    ratios = {name: paired_ratio(wall[name], wall["get"]) for name in contenders if name != "get"}
    out: dict[str, Any] = {"config": cfg, "results": results, "ratios_vs_get": ratios}
    if ctx.profile:
        out["profile"] = profile(contenders["memoize (json)"], [None] * max(1, 2000 // n), exclude=("memoize.py",))
    cache.close()
    return out


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    ratio = (result or {}).get("ratios_vs_get", {}).get("memoize (json)")
    return [
        target(
            "8",
            "memoize warm call within 1.5x a bare get of the same value",
            ratio,
            TARGETS["warm_vs_get"],
            source="issue: what real tools need (item 7)",
        )
    ]


def markdown(result: dict[str, Any]) -> str:
    r = result["results"]
    ratios = result["ratios_vs_get"]
    rows = [
        [
            name,
            fmt_us(r[name]["median_us"]),
            f"{fmt_us(r[name]['p25_us'])} - {fmt_us(r[name]['p75_us'])}",
            fmt_us(r[name].get("cpu_median_us")),
            "1" if name == "get" else fmt_ratio(ratios[name]),
        ]
        for name in CONTENDERS
    ]
    cfg = result["config"]
    parts = [
        f"Batches of {cfg['n']} warm calls, {cfg['reps']} interleaved rounds after {cfg['warmup']} untimed ones.",
        md_table(["contender", "per call (median)", "IQR", "CPU per call", "vs get"], rows, "lrrrr"),
    ]
    if "profile" in result:
        parts.append(profile_markdown("Profile of the memoize (json) batches", result["profile"]))
    return "\n\n".join(parts)

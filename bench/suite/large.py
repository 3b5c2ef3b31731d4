"""Section 3: large values, streamed, against ``cp`` and ``cat``; peak memory.

For each size (10 MiB and 100 MiB), in rounds whose order rotates, each
contender runs in a fresh child process so that its peak memory is its own
(the high-water mark ``VmHWM`` of the child's address space; not
``ru_maxrss`` from ``wait4``, which on Linux carries the parent's high-water
mark across fork and exec, so a small child of a large parent reports the
parent's figure):

* put: ``bucket.put_stream(key, open(src, "rb"))`` to a new key; a Python
  floor (read the source and write a temp file in 1 MiB chunks, rename);
  ``cp src dst``;
* get: ``bucket.open(key)`` and reading the stream in 1 MiB chunks; a Python
  floor (``os.read`` of the entry file in 1 MiB chunks); ``cat entry``
  into /dev/null.

Time: the operation measured inside the child (interpreter start excluded)
for the Python contenders; the whole process for ``cp`` and ``cat`` (their
start, about a millisecond, included).  Memory: the child's peak resident
set (``VmHWM`` read by the child after the operation), and the growth of
that high-water mark during the operation (``VmHWM`` after minus ``VmRSS``
before).  ``cp`` and ``cat`` are references for time only.  The source file and the entries are in the page cache:
this measures the CPU and memory cost of the code, not the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from typing import Any

from .common import (
    WORKER,
    Ctx,
    MiB,
    child_env,
    fmt_ratio,
    fs_type,
    md_table,
    missing_lines,
    perf_ns,
    profile_markdown,
    target,
)

TITLE = "3. Large values: streaming put and get against cp and cat, and peak memory"
#: peak RSS may grow by at most this much from the small to the large value
TARGET_GROWTH_MIB = 4.0
PUT = ("safecache put_stream", "floor put", "cp")
GET = ("safecache open+read", "floor get", "cat")


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full={"sizes_mib": [10, 100], "rounds": 5},
        quick={"sizes_mib": [10, 100], "rounds": 2},
        smoke={"sizes_mib": [1, 4], "rounds": 1},
    )


def _spawn(argv: list[str], env: dict[str, str], stdout: Any) -> tuple[str, float]:
    """Run ``argv``; return (stdout text, wall seconds)."""
    t0 = perf_ns()
    done = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, env=env, check=False)
    wall = (perf_ns() - t0) / 1e9
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode().strip()[-2000:]}")
    return (done.stdout.decode() if done.stdout else ""), wall


def _python(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    text, wall = _spawn([sys.executable, WORKER, "large", json.dumps(spec)], env, subprocess.PIPE)
    res = json.loads(text.strip().splitlines()[-1])
    if not res["ok"]:
        raise RuntimeError(f"{spec['op']} failed in the child: {res}")
    res["wall_s"] = wall
    return res


def make_source(path: str, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        f.writelines(i.to_bytes(8, "little") + block[8:] for i in range(size // MiB))


def run(ctx: Ctx) -> dict[str, Any]:
    import safecache

    cfg = config(ctx)
    root = ctx.subdir("large")
    env = child_env()
    cache_dir = os.path.join(root, "cache")
    cache = safecache.Cache(cache_dir, auto_trim=False)
    bucket = cache.bucket("large", version=1)
    cp, cat = shutil.which("cp"), shutil.which("cat")
    out: dict[str, Any] = {"config": cfg, "fs": fs_type(root), "results": {}, "missing": {}}
    if cp is None or cat is None:
        out["missing"]["cp/cat"] = "not found on PATH"
    baseline = _python({"op": "none", "cache": cache_dir}, env)
    out["baseline"] = {"hwm_kb": baseline["hwm_after_kb"], "rss_kb": baseline["rss_before_kb"]}
    try:
        for size_mib in cfg["sizes_mib"]:
            size = size_mib * MiB
            src = os.path.join(root, f"src-{size_mib}.bin")
            make_source(src, size)
            ctx.log(f"  [large] {size_mib} MiB: {cfg['rounds']} rounds ...")
            raw: dict[str, list[dict[str, Any]]] = {name: [] for name in PUT + GET}
            for r in range(cfg["rounds"]):
                key = f"large-{size_mib}-{r}"
                entry = bucket.path_for(key)
                assert entry is not None
                floor_dst = os.path.join(root, f"floor-{r}.bin")
                cp_dst = os.path.join(root, f"cp-{r}.bin")

                def command(argv: list[str], stdout: Any = None) -> dict[str, Any]:
                    _, wall = _spawn(argv, env, stdout)
                    return {"seconds": wall, "wall_s": wall}

                def cat_entry(path: str) -> dict[str, Any]:
                    with open(os.devnull, "wb") as null:
                        return command([cat, path], null)  # type: ignore[list-item]

                puts: dict[str, tuple[Any, ...]] = {
                    "safecache put_stream": (
                        _python,
                        {"op": "put_stream", "cache": cache_dir, "key": key, "src": src},
                        env,
                    ),
                    "floor put": (_python, {"op": "floor_put", "cache": cache_dir, "src": src, "dst": floor_dst}, env),
                    "cp": (command, [cp, src, cp_dst]),
                }
                gets: dict[str, tuple[Any, ...]] = {
                    "safecache open+read": (_python, {"op": "get", "cache": cache_dir, "key": key}, env),
                    "floor get": (_python, {"op": "floor_get", "cache": cache_dir, "src": entry}, env),
                    "cat": (cat_entry, entry),
                }
                for group in (puts, gets):  # gets need the entry the put stored
                    names = list(group)
                    shift = r % len(names)
                    for name in names[shift:] + names[:shift]:
                        if name in ("cp", "cat") and (cp is None or cat is None):
                            continue
                        fn, *args = group[name]
                        raw[name].append(fn(*args))
                with open(entry, "rb") as stored:
                    from safecache import _format

                    offset = _format.parse_header(stored.read(1 << 16), None).offset
                if os.path.getsize(entry) != size + offset:
                    raise RuntimeError("put_stream did not store the whole value")
                for path in (entry, floor_dst, cp_dst):
                    if os.path.exists(path):
                        os.unlink(path)
            block: dict[str, Any] = {}
            for name, runs in raw.items():
                if not runs:
                    continue
                secs = [x["seconds"] for x in runs]
                med = statistics.median(secs)
                e: dict[str, Any] = {
                    "median_ms": med * 1e3,
                    "min_ms": min(secs) * 1e3,
                    "max_ms": max(secs) * 1e3,
                    "mib_per_s": size_mib / med if med else None,
                    "runs": len(runs),
                }
                if "hwm_after_kb" in runs[0]:
                    e["peak_rss_mib"] = max(x["hwm_after_kb"] for x in runs) / 1024
                    e["hwm_growth_mib"] = max(x["hwm_after_kb"] - x["rss_before_kb"] for x in runs) / 1024
                    e["child_wall_ms"] = statistics.median(x["wall_s"] for x in runs) * 1e3
                block[name] = e
            for group, ref in ((PUT, "cp"), (GET, "cat")):
                for name in group:
                    if name in block and ref in block:
                        block[name]["vs_" + ref] = block[name]["median_ms"] / block[ref]["median_ms"]
            out["results"][f"{size_mib} MiB"] = block
            if ctx.profile and size_mib == cfg["sizes_mib"][-1]:
                ctx.log(f"  [large] profile: put_stream and open+read of {size_mib} MiB under cProfile ...")
                key = f"large-{size_mib}-profile"
                put = _python({"op": "put_stream", "cache": cache_dir, "key": key, "src": src, "profile": True}, env)
                get = _python({"op": "get", "cache": cache_dir, "key": key, "profile": True}, env)
                out["profile"] = {"size_mib": size_mib, "put_stream": put["profile"], "open+read": get["profile"]}
                os.unlink(bucket.path_for(key))  # type: ignore[arg-type]
            os.unlink(src)
    finally:
        cache.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    sizes = list((result or {}).get("results", {}))
    small = result["results"][sizes[0]] if len(sizes) >= 2 else {}  # type: ignore[index]
    large = result["results"][sizes[-1]] if len(sizes) >= 2 else {}  # type: ignore[index]
    span = f"{sizes[-1]} minus at {sizes[0]}" if len(sizes) >= 2 else "100 MiB minus at 10 MiB"
    out = []
    for name in ("safecache put_stream", "safecache open+read"):
        if name in small and name in large:
            growth, why = large[name]["peak_rss_mib"] - small[name]["peak_rss_mib"], ""
        else:
            growth, why = None, "fewer than two sizes measured"
        out.append(
            target(
                "3",
                f"{name}: peak RSS at {span} <= {TARGET_GROWTH_MIB:g} MiB",
                growth,
                TARGET_GROWTH_MIB,
                unit="MiB",
                source="issue 5 (memory must not grow with size)",
                note=why,
            )
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    base = result["baseline"]
    parts = [
        (
            f"Median of {result['config']['rounds']} rounds on {result['fs']} (page cache warm). *ms*: the operation "
            "inside the child for Python contenders, the whole process for cp and cat. *peak RSS*: the child's "
            "high-water mark (`VmHWM`) after the operation; *HWM growth*: that minus its resident set before. "
            f"A child that imports safecache and does nothing peaks at {base['hwm_kb'] / 1024:.1f} MiB."
        )
    ]
    parts += missing_lines(result["missing"])
    rows = []
    for size, block in result["results"].items():
        for name, e in block.items():
            ref = e.get("vs_cp", e.get("vs_cat"))
            rows.append(
                [
                    size,
                    name,
                    f"{e['median_ms']:.1f}",
                    f"{e['mib_per_s']:,.0f}" if e["mib_per_s"] else "-",
                    fmt_ratio(ref) if name not in ("cp", "cat") else "1.00x",
                    f"{e['peak_rss_mib']:.1f}" if "peak_rss_mib" in e else "-",
                    f"{e['hwm_growth_mib']:.1f}" if "hwm_growth_mib" in e else "-",
                ]
            )
    parts.append(
        md_table(["size", "contender", "ms", "MiB/s", "/ cp or cat", "peak RSS MiB", "HWM growth MiB"], rows, "llrrrrr")
    )
    prof = result.get("profile")
    if prof:
        for op in ("put_stream", "open+read"):
            parts.append(profile_markdown(f"cProfile of `{op}` of {prof['size_mib']} MiB", prof[op]))
    return "\n\n".join(parts)

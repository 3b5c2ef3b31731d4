"""Section 1: diskcache's own workload (its tests/benchmark_core.py).

Each process does ``rounds`` x ``ops`` operations (full run: 4 x 12,500;
the original does 100,000 in one go) on 100 keys (``str(randrange(100))``
as bytes): 90% get, 9% set of ``str(count) * randrange(1, 100)`` bytes,
1% delete, each operation timed alone; the first ``warmup`` operations of
each process are not recorded.  The cache is prefilled with the 100 keys.
Run with 1 process and with 8 processes at once, for each contender, split
into rounds whose contender order rotates (so load drift on a shared
machine hits all alike).  Percentiles use diskcache's definition
(``sorted(v)[int(len(v) * p) - 1]``).  Differences from the original: a
``perf_counter_ns`` timer instead of ``time.time``, a start barrier instead
of ``sleep(0.01)``, rounds, a bare file-per-key *floor* store as a
contender, a cross-check on tmpfs, and each operation's CPU time (``thread_time_ns``, read
outside the timed interval) recorded too, to tell waiting from working.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from typing import Any

from .common import (
    Ctx,
    WorkerPool,
    contenders_available,
    fmt_ratio,
    fmt_us,
    fs_type,
    md_table,
    missing_lines,
    percentile,
    target,
    tmpfs_dir,
)

TITLE = "1. diskcache's workload: 100 keys, 90% get / 9% set / 1% delete"
ACTIONS = ("get", "set", "delete")
CURVE = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 1.0)
TARGET_SET_P99 = 0.1
TARGET_GET_MEDIAN = 0.9
#: (label, processes, file system) of the full run; "main" is the --dir file
#: system, "tmpfs" a cross-check where creating and renaming files costs only CPU.
FULL_RUNS = [["1", 1, "main"], ["8", 8, "main"], ["8 on tmpfs", 8, "tmpfs"]]


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full={
            "ops": 12_500,
            "rounds": 4,
            "warmup": 250,
            "runs": FULL_RUNS,
            "contenders": ["safecache", "diskcache", "diskcache-community", "diskcache.FanoutCache", "floor"],
        },
        quick={
            "ops": 2_500,
            "rounds": 2,
            "warmup": 100,
            "runs": FULL_RUNS,
            "contenders": ["safecache", "diskcache", "diskcache-community", "floor"],
        },
        smoke={
            "ops": 150,
            "rounds": 1,
            "warmup": 10,
            "runs": [["1", 1, "main"], ["2", 2, "main"]],
            "contenders": ["safecache", "diskcache", "diskcache-community", "floor"],
        },
    ) | {"range": 100}


def _stats(values: list[int], misses: int) -> dict[str, Any]:
    v = sorted(x / 1000.0 for x in values)  # µs
    if not v:
        return {"count": 0}
    return {
        "count": len(v),
        "misses": misses,
        "min_us": v[0],
        "p50_us": percentile(v, 0.5),
        "p90_us": percentile(v, 0.9),
        "p99_us": percentile(v, 0.99),
        "p999_us": percentile(v, 0.999),
        "max_us": v[-1],
        "mean_us": statistics.fmean(v),
        "total_s": sum(v) / 1e6,
        "curve_us": [[p, percentile(v, p)] for p in CURVE],
    }


def run(ctx: Ctx) -> dict[str, Any]:
    cfg = config(ctx)
    names, missing = contenders_available(cfg["contenders"])
    out: dict[str, Any] = {"config": cfg, "contenders": names, "missing": missing, "results": {}}
    main_root = ctx.subdir("workload")
    shm = tmpfs_dir()
    shm_root = tempfile.mkdtemp(prefix="safecache-suite-", dir=shm) if shm else None
    out["fs"] = {"main": fs_type(main_root), "tmpfs": "tmpfs" if shm else None}
    try:
        _runs(ctx, cfg, names, out, main_root, shm_root)
    finally:
        if shm_root:
            shutil.rmtree(shm_root, ignore_errors=True)
    return out


def _runs(
    ctx: Ctx, cfg: dict[str, Any], names: list[str], out: dict[str, Any], main_root: str, shm_root: str | None
) -> None:
    with WorkerPool(max(r[1] for r in cfg["runs"]), main_root) as pool:
        for label, procs, fs in cfg["runs"]:
            if fs == "tmpfs" and shm_root is None:
                out["results"][label] = {"skipped": "no writable tmpfs (/dev/shm)"}
                continue
            root = main_root if fs == "main" else shm_root
            out["results"][label] = block = {"procs": procs, "fs": fs, "contenders": {}}
            series: dict[str, dict[str, Any]] = {
                n: {
                    "wall": {a: [] for a in ACTIONS},
                    "cpu": {a: [] for a in ACTIONS},
                    "misses": {a: 0 for a in ACTIONS},
                    "errors": 0,
                    "elapsed_ns": [],
                    "nivcsw": 0,
                    "nvcsw": 0,
                }
                for n in names
            }
            for r in range(cfg["rounds"]):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    path = os.path.join(root, f"{name}-{procs}")
                    if r == 0:
                        shutil.rmtree(path, ignore_errors=True)
                    ctx.log(f"  [workload] {label}: round {r + 1}/{cfg['rounds']}: {name} ...")
                    tasks = [
                        {
                            "task": "workload",
                            "store": name,
                            "path": path,
                            "ops": cfg["ops"],
                            "range": cfg["range"],
                            "warmup": cfg["warmup"],
                            "seed": 1000 * r + i,
                            "prefill": r == 0 and i == 0,
                            "out": os.path.join(main_root, f"lat-{i}.json"),
                        }
                        for i in range(procs)
                    ]
                    results = pool.run(tasks)
                    s = series[name]
                    for task, res in zip(tasks, results):
                        with open(task["out"], encoding="utf-8") as f:
                            lat = json.load(f)
                        os.remove(task["out"])
                        for a in ACTIONS:
                            s["wall"][a].extend(lat["wall"][a])
                            s["cpu"][a].extend(lat["cpu"][a])
                            s["misses"][a] += res["misses"][a]
                        s["errors"] += res["errors"]
                        s["elapsed_ns"].append(res["elapsed_ns"])
                        s["nivcsw"] += res["involuntary_switches"]
                        s["nvcsw"] += res["voluntary_switches"]
            for name, s in series.items():
                ops_done = sum(len(s["wall"][a]) for a in ACTIONS)
                block["contenders"][name] = {
                    a: _stats(s["wall"][a], s["misses"][a]) | {"cpu": _stats(s["cpu"][a], 0)} for a in ACTIONS
                } | {
                    "errors": s["errors"],
                    "involuntary_switches_per_1000_ops": 1000 * s["nivcsw"] / max(1, ops_done),
                    "voluntary_switches_per_1000_ops": 1000 * s["nvcsw"] / max(1, ops_done),
                }
                for a in ACTIONS:  # the CPU curve is not needed in the results file
                    block["contenders"][name][a]["cpu"].pop("curve_us", None)
            for name in names:
                shutil.rmtree(os.path.join(root, f"{name}-{procs}"), ignore_errors=True)
        if ctx.profile and "safecache" in names:
            procs = max(r[1] for r in cfg["runs"])
            root = main_root
            ctx.log(f"  [workload] profile: safecache, {procs} processes, cProfile in one of them ...")
            path = os.path.join(root, "profile")
            tasks = [
                {
                    "task": "workload",
                    "store": "safecache",
                    "path": path,
                    "ops": cfg["ops"],
                    "range": cfg["range"],
                    "warmup": cfg["warmup"],
                    "seed": 99_000 + i,
                    "prefill": i == 0,
                    "profile": i == 0,
                    "out": os.path.join(root, f"lat-p{i}.json"),
                }
                for i in range(procs)
            ]
            results = pool.run(tasks)
            for task in tasks:
                os.remove(task["out"])
            out["profile"] = {"procs": procs, "ops": cfg["ops"], **results[0]["profile"]}
            shutil.rmtree(path, ignore_errors=True)


def _get(result: dict[str, Any], label: str, name: str, action: str, field: str) -> float | None:
    try:
        return result["results"][label]["contenders"][name][action][field]
    except KeyError:
        return None


def _vs_diskcache(result: dict[str, Any] | None, label: str, action: str, field: str) -> float | None:
    if result is None:
        return None
    sc, dc = _get(result, label, "safecache", action, field), _get(result, label, "diskcache", action, field)
    return sc / dc if sc and dc else None


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The set P99 with the most processes and the get median with one and
    with the most, against diskcache; the same on tmpfs (a cross-check)."""
    runs = (result or {}).get("config", {}).get("runs") or FULL_RUNS
    main = [(procs, label) for label, procs, fs in runs if fs == "main"]
    one, many = min(main)[1], max(main)[1]
    tmpfs = [label for label, _procs, fs in runs if fs == "tmpfs"] or [
        label for label, _procs, fs in FULL_RUNS if fs == "tmpfs"
    ]
    measured = (result or {}).get("results", {})
    cells = [(many, "set", "p99_us", f"{many}-process set P99: safecache", TARGET_SET_P99, "issue 5")]
    cells += [
        (p, "get", "p50_us", f"{p}-process get median: safecache", TARGET_GET_MEDIAN, "issue 5") for p in (one, many)
    ]
    for label in tmpfs:
        cells += [
            (label, "set", "p99_us", f"cross-check, {label}: set P99 safecache", TARGET_SET_P99, "issue 5 (tmpfs)"),
            (
                label,
                "get",
                "p50_us",
                f"cross-check, {label}: get median safecache",
                TARGET_GET_MEDIAN,
                "issue 5 (tmpfs)",
            ),
        ]
    out = []
    for label, action, field, name, limit, source in cells:
        value = _vs_diskcache(result, label, action, field)
        if value is not None:
            why = ""
        elif label not in measured:
            why = "not in this run's level" if result is not None else "not run"
        else:
            why = measured[label].get("skipped") or "diskcache not measured"
        out.append(target("1", f"{name} <= {limit:g}x diskcache", value, limit, note=why, source=source))
    return out


def plot(result: dict[str, Any], plt: Any, outdir: str) -> list[tuple[str, str]]:
    import math

    labels = [k for k, b in result["results"].items() if "contenders" in b]
    fig, axes = plt.subplots(len(labels), 2, figsize=(10, 3.4 * len(labels)), squeeze=False)
    for row, label in enumerate(labels):
        for col, action in enumerate(("get", "set")):
            ax = axes[row][col]
            for name, block in result["results"][label]["contenders"].items():
                curve = block[action].get("curve_us")
                if not curve:
                    continue
                xs = [-math.log10(max(1 - q, 1e-5)) for q, _ in curve]
                ax.plot(
                    xs,
                    [v for _, v in curve],
                    marker="o",
                    markersize=3,
                    label=name,
                    linestyle="--" if name == "floor" else "-",
                )
            ticks = [0.5, 0.9, 0.99, 0.999, 0.9999]
            ax.set_xticks([-math.log10(1 - t) for t in ticks] + [5])
            ax.set_xticklabels(["P50", "P90", "P99", "P99.9", "P99.99", "max"])
            ax.set_yscale("log")
            ax.set_ylabel("latency (µs, log scale)")
            procs = result["results"][label]["procs"]
            ax.set_title(f"{action}: {label.replace(str(procs), f'{procs} process' + ('es' if procs > 1 else ''), 1)}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("diskcache's workload: latency percentiles (lower is better)")
    fig.tight_layout()
    name = "workload-latency.png"
    fig.savefig(os.path.join(outdir, name), dpi=80)
    plt.close(fig)
    return [(name, "Latency percentiles of get and set per contender (x: percentile; y: µs, log scale)")]


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    parts = [
        (
            f"Each process: {cfg['rounds']} rounds of {cfg['ops']:,} operations on {cfg['range']} keys "
            f"(the first {cfg['warmup']} of each round not recorded); the contenders' order rotates between rounds. "
            "Each operation is timed alone; percentiles as diskcache's `tests/utils.py` computes them. "
            "*CPU* columns: the same operations' CPU time (`thread_time_ns`); wall time well above CPU time is "
            "waiting: for a lock, the disk, or a core (2 cores, 8 processes). "
            "*floor* is a bare file-per-key store (temp file + rename, open + read; no header, checksum or checks): "
            f"what any file-per-entry design pays on this file system. Main file system: {result['fs']['main']}."
        ),
    ]
    parts += missing_lines(result["missing"])
    for label, block in result["results"].items():
        if "contenders" not in block:
            parts.append(f"**{label}**: skipped ({block.get('skipped')}).")
            continue
        rows = []
        dc = block["contenders"].get("diskcache")
        for name, b in block["contenders"].items():
            for a in ACTIONS:
                s = b[a]
                if not s.get("count"):
                    continue
                ok = dc and dc[a].get("count")
                ratio = s["p50_us"] / dc[a]["p50_us"] if ok else None
                ratio99 = s["p99_us"] / dc[a]["p99_us"] if ok else None
                rows.append(
                    [
                        name if a == "get" else "",
                        a,
                        f"{s['count']:,}",
                        f"{s['misses']:,}",
                        fmt_us(s["min_us"]),
                        fmt_us(s["p50_us"]),
                        fmt_us(s["p90_us"]),
                        fmt_us(s["p99_us"]),
                        fmt_us(s["p999_us"]),
                        fmt_us(s["max_us"]),
                        fmt_us(s["cpu"].get("p50_us")),
                        fmt_us(s["cpu"].get("p99_us")),
                        fmt_ratio(ratio),
                        fmt_ratio(ratio99),
                    ]
                )
        procs = block["procs"]
        title = f"{procs} process{'es' if procs > 1 else ''}" + (" on tmpfs" if block["fs"] == "tmpfs" else "")
        parts.append(
            f"**{title}**\n\n"
            + md_table(
                [
                    "contender",
                    "op",
                    "count",
                    "miss",
                    "min",
                    "P50",
                    "P90",
                    "P99",
                    "P99.9",
                    "max",
                    "CPU P50",
                    "CPU P99",
                    "P50 / diskcache",
                    "P99 / diskcache",
                ],
                rows,
                "llrrrrrrrrrrrr",
            )
        )
        sw = "; ".join(
            f"{name} {b['involuntary_switches_per_1000_ops']:.0f} involuntary, "
            f"{b['voluntary_switches_per_1000_ops']:.0f} voluntary" + (f", {b['errors']} errors" if b["errors"] else "")
            for name, b in block["contenders"].items()
        )
        parts.append(f"Context switches per 1,000 operations: {sw}.")
    prof = result.get("profile")
    if prof:
        rows = [
            [
                f"`{r['function']}`",
                f"{r['calls']:,}",
                f"{r['own_ms']:.0f}",
                f"{r['own_share'] * 100:.0f}%",
                f"{r['cumulative_ms']:.0f}",
            ]
            for r in prof["top"][:12]
        ]
        parts.append(
            f"cProfile of one safecache process among {prof['procs']} ({prof['ops']:,} operations; the profiler "
            f"inflates Python-level calls; {prof['total_ms']:.0f} ms in all, of which {prof.get('harness_ms', 0):.0f} ms "
            "in the benchmark loop itself, left out below), top functions by own time "
            "(share: of the whole profile):\n\n"
            + md_table(["function", "calls", "own ms", "share", "cumulative ms"], rows, "lrrrr")
        )
    return "\n\n".join(parts)

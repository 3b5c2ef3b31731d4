"""Section 7: contention: throughput of 1, 2, 4 and 8 processes on the same keys and on disjoint keys.

Each process runs for a fixed time (started together by a barrier) and
counts its operations; the figure is the total operations per second of
all processes.  Two mixes: diskcache's (90% get / 9% set / 1% delete of
values of up to a few hundred bytes) and put-only (every operation stores
new content).  *Same keys*: every process uses the same 100 keys;
*disjoint*: each process has 100 keys of its own.  The machine has
``cores`` cores: beyond that, more processes cannot add throughput, and
the curve shows what contention costs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from .common import Ctx, WorkerPool, contenders_available, fmt_ratio, fs_type, md_table, missing_lines, tmpfs_dir

TITLE = "7. Contention: throughput of 1, 2, 4, 8 processes on the same keys and on disjoint keys"
KEYS = 100


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full={
            "procs": [1, 2, 4, 8],
            "duration": 2.0,
            "mixes": ["mixed", "put"],
            "fs": ["main", "tmpfs"],
            "contenders": ["safecache", "diskcache"],
        },
        quick={
            "procs": [1, 2, 4, 8],
            "duration": 0.4,
            "mixes": ["mixed", "put"],
            "fs": ["main"],
            "contenders": ["safecache", "diskcache"],
        },
        smoke={
            "procs": [1, 2],
            "duration": 0.1,
            "mixes": ["mixed", "put"],
            "fs": ["main"],
            "contenders": ["safecache", "diskcache"],
        },
    )


def run(ctx: Ctx) -> dict[str, Any]:
    cfg = config(ctx)
    names, missing = contenders_available(cfg["contenders"])
    main_root = ctx.subdir("contention")
    out: dict[str, Any] = {
        "config": cfg,
        "contenders": names,
        "missing": missing,
        "results": {},
        "cores": os.cpu_count(),
        "fs": {"main": fs_type(main_root)},
    }
    shm = tmpfs_dir() if "tmpfs" in cfg["fs"] else None
    shm_root = tempfile.mkdtemp(prefix="safecache-suite-", dir=shm) if shm else None
    if "tmpfs" in cfg["fs"] and shm_root is None:
        out["fs"]["tmpfs"] = "skipped: no writable tmpfs (/dev/shm)"
    try:
        with WorkerPool(max(cfg["procs"]), main_root) as pool:
            for fs, root in (("main", main_root), ("tmpfs", shm_root)):
                if root is not None and fs in cfg["fs"]:
                    _cells(ctx, cfg, names, pool, root, out, "" if fs == "main" else " (tmpfs)")
    finally:
        if shm_root:
            shutil.rmtree(shm_root, ignore_errors=True)
    return out


def _cells(
    ctx: Ctx, cfg: dict[str, Any], names: list[str], pool: WorkerPool, root: str, out: dict[str, Any], suffix: str
) -> None:
    for mix in cfg["mixes"]:
        for layout in ("same", "disjoint"):
            label = f"{mix}, {layout} keys{suffix}"
            out["results"][label] = block = {n: {} for n in names}
            ctx.log(f"  [contention] {label}: {', '.join(map(str, cfg['procs']))} processes x {', '.join(names)} ...")
            for procs in cfg["procs"]:
                order = names[procs % len(names) :] + names[: procs % len(names)]
                for name in order:
                    path = os.path.join(root, f"{name}-{mix}-{layout}-{procs}")
                    shutil.rmtree(path, ignore_errors=True)
                    tasks = []
                    for i in range(procs):
                        keys = [str(k) if layout == "same" else f"{i}-{k}" for k in range(KEYS)]
                        # prefill: the shared keys once, disjoint keys by their owner
                        pre = keys if (layout == "disjoint" or i == 0) and mix == "mixed" else []
                        tasks.append(
                            {
                                "task": "throughput",
                                "store": name,
                                "path": path,
                                "keys": keys,
                                "prefill": pre,
                                "mix": mix,
                                "duration": cfg["duration"],
                                "seed": 7000 + 100 * procs + i,
                            }
                        )
                    results = pool.run(tasks)
                    ops = sum(r["ops"] for r in results)
                    secs = max(r["elapsed_ns"] for r in results) / 1e9
                    block[name][str(procs)] = {
                        "ops": ops,
                        "seconds": secs,
                        "ops_per_s": ops / secs,
                        "errors": sum(r["counts"]["errors"] for r in results),
                        "per_process_ops_per_s": [r["ops"] / (r["elapsed_ns"] / 1e9) for r in results],
                    }
                    shutil.rmtree(path, ignore_errors=True)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    return []  # no target in issue 5: the curves are the result


def plot(result: dict[str, Any], plt: Any, outdir: str) -> list[tuple[str, str]]:
    labels = list(result["results"])
    cols = 4
    rows_n = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 3.3 * rows_n), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(labels) :]:
        ax.axis("off")
    for ax, label in zip(flat, labels):
        for i, (name, block) in enumerate(result["results"][label].items()):
            xs = [int(p) for p in block]
            ax.plot(xs, [block[p]["ops_per_s"] for p in block], marker="o", label=name, color=f"C{i}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("processes")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    for row in axes:
        row[0].set_ylabel("operations / s (all processes)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Throughput against the number of processes ({result['cores']} cores)")
    fig.tight_layout()
    name = "contention-throughput.png"
    fig.savefig(os.path.join(outdir, name), dpi=80)
    plt.close(fig)
    return [(name, "Total throughput of 1 to 8 processes, same keys and disjoint keys")]


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    parts = [
        (
            f"{cfg['duration']:g} s per cell; operations per second of all processes together "
            f"({result['cores']} cores); main file system: {result['fs']['main']}, and a cross-check on tmpfs "
            "where listed. *x 1 process*: throughput relative to the same contender alone."
        )
    ]
    parts += missing_lines(result["missing"])
    rows = []
    for label, block in result["results"].items():
        for name, per in block.items():
            one = per[str(cfg["procs"][0])]["ops_per_s"]
            cells = []
            for p in cfg["procs"]:
                e = per[str(p)]
                cells.append(
                    f"{e['ops_per_s']:,.0f} ({fmt_ratio(e['ops_per_s'] / one)})"
                    + (f", {e['errors']} errors" if e["errors"] else "")
                )
            rows.append([label, name, *cells])
    parts.append(
        md_table(
            ["workload", "contender", *[f"{p} proc. (x 1 process)" for p in cfg["procs"]]],
            rows,
            "ll" + "r" * len(cfg["procs"]),
        )
    )
    sc_dc = []
    for label, block in result["results"].items():
        if "safecache" in block and "diskcache" in block:
            cells = [
                fmt_ratio(block["safecache"][str(p)]["ops_per_s"] / block["diskcache"][str(p)]["ops_per_s"])
                for p in cfg["procs"]
            ]
            sc_dc.append([label, *cells])
    if sc_dc:
        parts.append(
            "safecache's throughput relative to diskcache's (above 1: safecache does more):\n\n"
            + md_table(["workload", *[f"{p} proc." for p in cfg["procs"]]], sc_dc, "l" + "r" * len(cfg["procs"]))
        )
    return "\n\n".join(parts)

"""Section 4: placing trees by each link mode against ``cp -r`` (bench/bench_trees.py's measurements).

The measurement code is ``bench_trees.py``'s (its docstring has the method):
a *small* tree of 10,000 files of 1-8 KiB (``--quick``: 1,500) and a *large*
one of 4 files of 64 MiB (``--quick``: 8 MiB), committed with
``bucket.trees.get_or_create``, then ``tree.place(dest, mode=m)`` for each
mode against ``cp -r`` and ``shutil.copytree`` in interleaved rounds, on the
work directory's file system and, where it can be mounted (root, loop
devices, xfsprogs), on a loop-mounted XFS image with reflinks.  The floors
(bare-Python link/copy/clone loops) and the cost breakdown run on the XFS
image when there is one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

from .common import Ctx, KiB, MiB, md_table, target

TITLE = "4. Trees: placing 10,000 small files by each link mode against cp -r"


def config(ctx: Ctx) -> dict[str, Any]:
    import bench_trees

    full = bench_trees.config(False)
    return ctx.pick(
        full=full,
        quick=full
        | {
            "small_files": 1500,
            "small_dirs": 15,
            "large_size": 8 * MiB,
            "reps_small": 3,
            "reps_large": 3,
            "min_reps": 2,
            "budget_s": 2.0,
            "cost_rounds": 3,
        },
        smoke=full
        | {
            "small_files": 200,
            "small_dirs": 4,
            "large_files": 2,
            "large_size": MiB,
            "reps_small": 1,
            "reps_large": 1,
            "min_reps": 1,
            "budget_s": 1.0,
            "cost_rounds": 1,
        },
    )


def run(ctx: Ctx) -> dict[str, Any]:
    import bench_trees

    cfg = config(ctx)
    work = ctx.subdir("trees")
    fss: dict[str, Any] = {}
    out: dict[str, Any] = {"config": cfg, "filesystems": fss, "cp": bench_trees._cp_version()}
    profile_main = ("hardlink", "copy") if ctx.profile else ()
    profile_xfs = ("hardlink", "clone", "copy") if ctx.profile else ()
    data = cfg["small_files"] * 12 * KiB + cfg["large_files"] * cfg["large_size"]
    size = max(1 << 30, 3 * data)
    xfs_ctx = (
        bench_trees.xfs_mount(work, size) if ctx.xfs else contextlib.nullcontext("not asked for (--no-xfs or --smoke)")
    )
    with xfs_ctx as where:
        have_xfs = os.path.isdir(where)
        if not have_xfs:
            ctx.log(f"  [trees] XFS skipped: {where}")
        main_root = os.path.join(work, "main")
        os.mkdir(main_root)
        fss["main"] = bench_trees.bench_fs(
            "main", main_root, cfg, xfs=False, extras=not have_xfs and ctx.level != "smoke", profile_modes=profile_main
        )
        shutil.rmtree(main_root, ignore_errors=True)
        if have_xfs:
            fss["xfs"] = bench_trees.bench_fs("xfs", where, cfg, xfs=True, extras=True, profile_modes=profile_xfs)
        else:
            fss["xfs"] = {"skipped": where}
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    import bench_trees

    out = []
    for name, t in bench_trees.targets(result).items():
        out.append(
            target(
                "4",
                f"small tree, {name}: >= {t['target']:g}x faster than copy mode",
                t["speedup"],
                t["target"],
                unit="x",
                higher_is_better=True,
                source="issue 3",
            )
        )
    return out


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def markdown(result: dict[str, Any]) -> str:
    import bench_trees

    parts = [f"`cp` is {result['cp']}. Times are medians; */ copy* and */ cp -r*: below 1 is faster."]
    for label, block in result["filesystems"].items():
        if "trees" not in block:
            parts.append(f"**{label}**: skipped ({block.get('skipped')}).")
            continue
        journal = "; ext4 without a journal" if block.get("ext4_journal") is False else ""
        parts.append(
            f"**{label}: {block['fs']}{journal}.** Creating an empty file cost "
            f"{block['create_us_before']:.0f} µs before and {block['create_us_after']:.0f} µs after."
        )
        for tree_name, tree in block["trees"].items():
            rows = []
            for name, e in tree["results"].items():
                if "error" in e:
                    rows.append([name, "failed: " + e["error"], "", "", "", "", ""])
                    continue
                rows.append(
                    [
                        name,
                        bench_trees.used_text(e),
                        e["placed_as"] or "-",
                        _fmt_ms(e["median_ms"]),
                        f"{e['files_per_s']:,.0f}",
                        f"{e['ratio_to_copy']:.2f}" if e.get("ratio_to_copy") else "-",
                        f"{e['ratio_to_cp_r']:.2f}" if e.get("ratio_to_cp_r") else "-",
                    ]
                )
            extra = "; destinations deleted after the last round" if tree.get("deleted_after_last_round") else ""
            parts.append(
                f"{label}, {tree_name} tree: {tree['files']:,} files, {tree['bytes'] / MiB:.1f} MiB; median of "
                f"{tree['rounds']} rounds{extra}.\n\n"
                + md_table(
                    ["contender", "mode used", "destination got", "median ms", "files/s", "/ copy", "/ cp -r"],
                    rows,
                    "lllrrrr",
                )
            )
        costs = block.get("costs")
        if costs:
            n = costs["files"]
            rows = [
                [label_, f"{costs[k] * 1e3 / n:.2f} µs per file"]
                for label_, k in (
                    ("existence check (`lexists`), destination missing", "lexists_missing_ms"),
                    ("two path joins", "join_ms"),
                    ("two concatenations instead", "concat_ms"),
                    ("one fstat", "fstat_ms"),
                    ("one copy_file_range at end of file", "copy_file_range_at_eof_ms"),
                )
                if k in costs
            ]
            rows.append(["shared lock, hold + release", f"{costs['hold_release_ms'] * 1e3:.1f} µs per placement"])
            rows.append([f"mkdir of the {costs['dirs']} directories", f"{costs['mkdir_dirs_ms']:.2f} ms"])
            parts.append(
                f"{label}: costs behind the small tree's placement, each measured alone:\n\n"
                + md_table(["cost", "measured"], rows, "lr")
            )
        for mode, prof in block.get("profile", {}).items():
            rows = [
                [f"`{r['function']}`", f"{r['calls']:,}", f"{r['own_ms']:.1f}", f"{r['own_share'] * 100:.0f}%"]
                for r in prof["top"][:8]
            ]
            parts.append(
                f"{label}: cProfile of `place(mode={mode!r})`, small tree ({prof['total_ms']:.0f} ms under "
                "the profiler):\n\n" + md_table(["function", "calls", "own ms", "share"], rows, "lrrr")
            )
    return "\n\n".join(parts)

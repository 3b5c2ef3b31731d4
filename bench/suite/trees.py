"""Section 4: trees: placing a cached directory (``tree.place``) by each link mode against ``cp -r``.

Two trees are committed with ``bucket.trees.get_or_create``: *small*,
10,000 files of 1-8 KiB in 100 leaf directories shaped like unpacked wheels
(``--quick``: 1,500), and *large*, 4 files of 64 MiB (``--quick``: 8 MiB).
For each tree, ``tree.place(new_dest, mode=m)`` for m in copy, hardlink,
symlink, clone and auto (with the mode actually used and the fallbacks),
against ``cp -r`` (a subprocess, its start included) and
``shutil.copytree``; on XFS also ``cp -r --reflink=always`` and
``--reflink=never``.  For the small tree, bare-Python *floors* with every
path precomputed (a loop of ``os.link``, a minimal copy loop with
``copy_file_range``, on XFS a minimal ``FICLONE`` loop, and the link and
copy loops on 2 threads) show what safecache's own per-file work costs.

File systems: the work directory's, and where it can be mounted (root, loop
devices, xfsprogs; skipped with the reason otherwise) a 1 GiB sparse XFS
image made with ``mkfs.xfs -m reflink=1``, where clone really clones.  The
floors, the costs behind the small tree's placement (the shared lock, the
existence check, path joins, ``fstat``, ``copy_file_range`` at end of
file, ``mkdir``) and their cProfile run on the XFS image when there is one,
where creating a file costs what it normally does.

Method: one untimed placement per tree, then rounds of all contenders in a
rotating order (A B C, B C A, ...), each into a new destination deleted,
untimed, right after its repetition; the figure is the median wall time of
up to 7 rounds (at least 3, or 2 when a file system makes rounds very
slow).  Exception: on an ext4 without a journal, the small tree's
destinations are deleted after the last round, because there every
deletion makes the creates of the next minutes slower (see
``ext4_journal``).  ``os.sync()`` runs once after the trees are built;
copies are timed into the page cache.  For one file of each destination,
``lstat`` and ``FIEMAP`` say what it got (the same inode, a symlink,
shared extents, or its own data): on XFS ``copy_file_range`` (safecache's
copy mode) and ``cp`` (coreutils 9 defaults to ``--reflink=auto``) share
extents instead of copying bytes.  Creating an empty file on each file
system is timed before and after.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

from .common import Ctx, KiB, MiB, fs_type, md_table, mount_of, perf_ns, profile, profile_markdown, target

TITLE = "4. Trees: placing 10,000 small files by each link mode against cp -r"
#: hardlink and clone should place the small tree at least this many times faster than copy mode (issue 3).
TARGET_SPEEDUP = 5.0
MODES = ("copy", "hardlink", "symlink", "clone", "auto")
FULL = {
    "small_files": 10_000,
    "small_dirs": 100,
    "large_files": 4,
    "large_size": 64 * MiB,
    "reps_small": 7,
    "reps_large": 7,
    "min_reps": 3,
    "budget_s": 10.0,
    "cost_rounds": 9,
    "threads": 2,
    "profile_top": 12,
}


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full=FULL,
        quick=FULL
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
        smoke=FULL
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
    cfg = config(ctx)
    work = ctx.subdir("trees")
    fss: dict[str, Any] = {}
    out: dict[str, Any] = {"config": cfg, "filesystems": fss, "cp": cp_version()}
    profile_main = ("hardlink", "copy") if ctx.profile else ()
    profile_xfs = ("hardlink", "clone", "copy") if ctx.profile else ()
    data = cfg["small_files"] * 12 * KiB + cfg["large_files"] * cfg["large_size"]
    size = max(1 << 30, 3 * data)
    xfs_ctx = xfs_mount(work, size) if ctx.xfs else contextlib.nullcontext("not asked for (--no-xfs or --smoke)")
    with xfs_ctx as where:
        have_xfs = os.path.isdir(where)
        if not have_xfs:
            ctx.log(f"  [trees] XFS skipped: {where}")
        main_root = os.path.join(work, "main")
        os.mkdir(main_root)
        # The floors and the cost breakdown go where creating a file is not a
        # pathology of its own: the XFS image if there is one.
        fss["main"] = bench_fs(
            ctx,
            "main",
            main_root,
            cfg,
            xfs=False,
            extras=not have_xfs and ctx.level != "smoke",
            profile_modes=profile_main,
        )
        shutil.rmtree(main_root, ignore_errors=True)
        if have_xfs:
            fss["xfs"] = bench_fs(ctx, "xfs", where, cfg, xfs=True, extras=True, profile_modes=profile_xfs)
        else:
            fss["xfs"] = {"skipped": where}
    return out


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """hardlink and clone place the small tree >= 5x faster than copy mode, on
    each file system (the mode actually used is in the name)."""
    out = []
    for fs_label in ("main", "xfs"):
        block = (result or {}).get("filesystems", {}).get(fs_label, {})
        r = block.get("trees", {}).get("small", {}).get("results", {})
        for mode in ("hardlink", "clone"):
            e, copy = r.get(f"place {mode}", {}), r.get("place copy", {})
            if "median_ms" in e and "median_ms" in copy:
                used = ", ".join(e.get("used", {})) or "?"
                name, speedup, why = f"{fs_label}: {mode} (used: {used})", copy["median_ms"] / e["median_ms"], ""
            else:
                name, speedup = f"{fs_label}: {mode}", None
                why = e.get("error") or copy.get("error") or block.get("skipped") or "not run"
            out.append(
                target(
                    "4",
                    f"small tree, {name}: >= {TARGET_SPEEDUP:g}x faster than copy mode",
                    speedup,
                    TARGET_SPEEDUP,
                    unit="x",
                    higher_is_better=True,
                    source="issue 3",
                    note=why,
                )
            )
    return out


# -- the file system ---------------------------------------------------------------------------
def ext4_journal(path: str) -> bool | None:
    """For ext4: whether it has a journal (a jbd2 entry for its device), None
    when unknown or not ext4.  Without one, ext4 avoids reusing an inode
    deleted in the last 60 s (360 s while its inode table block is dirty):
    creating a file reads the deletion time of every free inode it passes
    (recently_deleted() in fs/ext4/ialloc.c), so after many deletions in a
    block group each create costs up to milliseconds."""
    _, dev, kind, _ = mount_of(path)
    if kind != "ext4" or not os.path.isdir("/proc/fs/jbd2"):
        return None
    try:
        name = os.path.basename(os.path.realpath(dev))
        return any(e.startswith(name + "-") for e in os.listdir("/proc/fs/jbd2"))
    except OSError:
        return None


def create_cost_us(root: str, n: int = 300) -> float:
    """Microseconds to create (O_CREAT|O_EXCL, close) an empty file in a new
    directory under ``root``: what every non-link placement pays per file."""
    d = tempfile.mkdtemp(prefix="create-probe-", dir=root)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        t0 = perf_ns()
        for i in range(n):
            os.close(os.open(os.path.join(d, f"f{i}"), flags, 0o644))
        return (perf_ns() - t0) / n / 1e3
    finally:
        shutil.rmtree(d, ignore_errors=True)


def cp_version() -> str:
    try:
        out = subprocess.run(["cp", "--version"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else "unknown"
    except OSError:
        return "unknown"


# -- what a destination got ---------------------------------------------------------------------
_FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap) where "read|write" is 3 << 30
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_SHARED = 0x2000


def shares_extents(path: str) -> bool | None:
    """Whether a file's data extents are shared with another file (a reflink),
    from FIEMAP; None where FIEMAP is not available."""
    if sys.platform != "linux":
        return None
    import fcntl

    count = 64
    buf = bytearray(struct.pack("=QQIIII", 0, (1 << 64) - 1, _FIEMAP_FLAG_SYNC, 0, count, 0) + bytes(56 * count))
    try:
        with open(path, "rb") as f:
            fcntl.ioctl(f.fileno(), _FS_IOC_FIEMAP, buf, True)
    except OSError:
        return None
    mapped = struct.unpack_from("=I", buf, 20)[0]
    return any(struct.unpack_from("=I", buf, 32 + 56 * i + 40)[0] & _FIEMAP_EXTENT_SHARED for i in range(mapped))


def placed_as(src: str, dst: str) -> str:
    """What ``dst`` is relative to the cache's ``src``."""
    try:
        st = os.lstat(dst)
    except OSError as exc:
        return f"missing ({exc.strerror})"
    if os.path.islink(dst):
        return "symlink"
    s = os.stat(src)
    if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
        return "same inode"
    shared = shares_extents(dst)
    if shared is None:
        return "own inode"
    return "own inode, shared extents" if shared else "own inode, own data"


# -- trees -----------------------------------------------------------------------------------
def small_layout(n_files: int, n_dirs: int, seed: int) -> tuple[list[str], list[tuple[str, int]]]:
    """Directories and (relative path, size) of a tree shaped like unpacked
    wheels: ``pkgNN/subM/modNNNNN.py``, 1-8 KiB each."""
    rng = random.Random(seed)
    per_pkg = 5
    leaves = [f"pkg{i // per_pkg:02d}/sub{i % per_pkg}" for i in range(n_dirs)]
    dirs = sorted({leaf.split("/")[0] for leaf in leaves} | set(leaves))
    files = [(f"{leaves[i % n_dirs]}/mod{i:05d}.py", rng.randint(1 * KiB, 8 * KiB)) for i in range(n_files)]
    return dirs, files


def fill_small(path: str, dirs: list[str], files: list[tuple[str, int]], seed: int) -> None:
    rng = random.Random(seed)
    pool = rng.randbytes(1 * MiB)
    for d in dirs:
        os.makedirs(os.path.join(path, d), exist_ok=True)
    for rel, size in files:
        start = rng.randrange(0, len(pool) - size)
        with open(os.path.join(path, *rel.split("/")), "wb") as f:
            f.write(pool[start : start + size])


def fill_large(path: str, count: int, size: int) -> None:
    os.makedirs(os.path.join(path, "blobs"))
    for i in range(count):
        with open(os.path.join(path, "blobs", f"part{i}.bin"), "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 * MiB))
                f.write(chunk)
                left -= len(chunk)


def make_trees(cache_dir: str, cfg: dict) -> dict[str, object]:
    """Commit the small and the large tree into a cache at ``cache_dir``;
    returns {"small": tree, "large": tree} and the build times."""
    import safecache

    cache = safecache.Cache(cache_dir)
    bucket = cache.bucket("bench-trees", version=1)
    dirs, files = small_layout(cfg["small_files"], cfg["small_dirs"], seed=1)
    out: dict[str, object] = {}
    t0 = perf_ns()
    out["small"] = bucket.trees.get_or_create(
        ("small", cfg["small_files"], cfg["small_dirs"]), lambda p: fill_small(p, dirs, files, seed=1)
    )
    t1 = perf_ns()
    out["large"] = bucket.trees.get_or_create(
        ("large", cfg["large_files"], cfg["large_size"]),
        lambda p: fill_large(p, cfg["large_files"], cfg["large_size"]),
    )
    t2 = perf_ns()
    out["build_s"] = {"small": (t1 - t0) / 1e9, "large": (t2 - t1) / 1e9}
    for name in ("small", "large"):
        tree = out[name]
        if tree.ephemeral:  # type: ignore[attr-defined]
            raise RuntimeError(f"the cache at {cache_dir} could not store the {name} tree (see the warning above)")
    os.sync()  # the trees' writeback should not land in the timed region
    return out


# -- contenders ------------------------------------------------------------------------------
def _rusage_s() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def place_contender(tree, mode: str):
    def run(dest: str):
        t0 = perf_ns()
        report = tree.place(dest, mode=mode)
        elapsed = perf_ns() - t0
        if not report.complete or report.placed != len(tree.manifest.files):
            raise RuntimeError(f"place(mode={mode!r}) was incomplete: {report!r}")
        return elapsed, report

    return run


def command_contender(tree, argv: list[str]):
    def run(dest: str):
        t0 = perf_ns()
        done = subprocess.run([*argv, tree.path, dest], capture_output=True, text=True, check=False)
        elapsed = perf_ns() - t0
        if done.returncode != 0:
            return None, done.stderr.strip() or f"exit status {done.returncode}"
        return elapsed, None

    return run


def copytree_contender(tree):
    def run(dest: str):
        t0 = perf_ns()
        shutil.copytree(tree.path, dest, symlinks=True)
        return perf_ns() - t0, None

    return run


def _split(items: list, k: int) -> list[list]:
    """``k`` contiguous chunks (the list is sorted by path, so a chunk keeps
    to its own directories)."""
    size = -(-len(items) // k)
    return [items[i : i + size] for i in range(0, len(items), size)]


# FICLONE is _IOW(0x94, 9, int): 0x40049409 where the ioctl direction "write"
# is 1 (x86, arm, ...), 0x80049409 where it is 4 (powerpc, mips, sparc, alpha).
_FICLONE = 0x40049409
if sys.platform == "linux" and os.uname().machine.startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
    _FICLONE = 0x80049409


def floor_contenders(tree, threads: int, *, clone: bool) -> dict:
    """Bare-Python loops doing the minimum a placement must do, with every
    path precomputed: the directories, then per file os.link, or a minimal
    copy (open both, copy_file_range, close both; the mode comes from the
    manifest), or (``clone``) a minimal clone (open both, FICLONE, close
    both).  Serial, and split over ``threads`` threads."""
    files = tree.manifest.files
    src = [os.path.join(tree.path, *f[0].split("/")) for f in files]
    rels = [os.path.join(*f[0].split("/")) for f in files]
    modes = [f[2] for f in files]
    sizes = [f[1] for f in files]
    dirs = [os.path.join(*d.split("/")) for d in tree.manifest.dirs]
    flags_r = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    flags_w = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    cfr = getattr(os, "copy_file_range", None)

    def link_range(dest: str, idx: range) -> None:
        link, join = os.link, os.path.join
        for i in idx:
            link(src[i], join(dest, rels[i]))

    def copy_range(dest: str, idx: range) -> None:
        op, cl, join = os.open, os.close, os.path.join
        for i in idx:
            fs = op(src[i], flags_r)
            fd = op(join(dest, rels[i]), flags_w, modes[i])
            size, off = sizes[i], 0
            while off < size:
                n = cfr(fs, fd, size - off, off, off) if cfr else os.sendfile(fd, fs, off, size - off)
                if n == 0:
                    break
                off += n
            cl(fd)
            cl(fs)

    def clone_range(dest: str, idx: range) -> None:
        import fcntl

        op, cl, join, ioctl = os.open, os.close, os.path.join, fcntl.ioctl
        for i in idx:
            fs = op(src[i], flags_r)
            fd = op(join(dest, rels[i]), flags_w, modes[i])
            ioctl(fd, _FICLONE, fs)
            cl(fd)
            cl(fs)

    def mkdirs(dest: str) -> None:
        os.mkdir(dest)
        for d in dirs:
            os.mkdir(os.path.join(dest, d))

    def serial(body):
        def run(dest: str):
            t0 = perf_ns()
            mkdirs(dest)
            body(dest, range(len(files)))
            return perf_ns() - t0, None

        return run

    def parallel(body):
        chunks = [range(c.start, c.stop) for c in _split(range(len(files)), threads)]

        def run(dest: str):
            t0 = perf_ns()
            mkdirs(dest)
            workers = [threading.Thread(target=body, args=(dest, c)) for c in chunks]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return perf_ns() - t0, None

        return run

    out = {"floor: os.link loop": serial(link_range), "floor: minimal copy loop": serial(copy_range)}
    if clone:
        out["floor: minimal clone loop"] = serial(clone_range)
    if threads > 1:
        out[f"floor: os.link loop, {threads} threads"] = parallel(link_range)
        out[f"floor: minimal copy loop, {threads} threads"] = parallel(copy_range)
    return out


def contenders_for(tree, *, xfs: bool, floors: bool, threads: int) -> dict:
    out = {f"place {m}": place_contender(tree, m) for m in MODES}
    out["cp -r"] = command_contender(tree, ["cp", "-r"])
    if xfs:
        out["cp -r --reflink=always"] = command_contender(tree, ["cp", "-r", "--reflink=always"])
        out["cp -r --reflink=never"] = command_contender(tree, ["cp", "-r", "--reflink=never"])
    out["shutil.copytree"] = copytree_contender(tree)
    if floors:
        out.update(floor_contenders(tree, threads, clone=xfs))
    return out


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        raise RuntimeError(f"could not remove the destination {path}")


def measure(
    tree, contenders: dict, dest_root: str, reps: int, min_reps: int, budget_s: float, *, defer_delete: bool = False
) -> dict[str, dict]:
    """Run every contender up to ``reps`` times, rotating the order each round
    (A B C, B C A, ...), each time into a new destination that is deleted
    (untimed) right after.  After ``min_reps`` rounds, stops early once the
    rounds took ``budget_s`` seconds; after 2 rounds, once they took three
    times that (a file system where creating a file is very slow).
    ``defer_delete``: delete the destinations after the last round instead
    (see :func:`ext4_journal` for why).  One untimed placement first warms the tree's lock file and the code paths.
    Returns per contender its wall times (ns), CPU times (s, children
    included), the last report and what the destination got."""
    names = list(contenders)
    sample = tree.manifest.files[len(tree.manifest.files) // 2][0]
    res: dict[str, dict] = {
        n: {"wall_ns": [], "cpu_s": [], "report": None, "placed_as": None, "error": None} for n in names
    }
    os.makedirs(dest_root, exist_ok=True)
    warm = os.path.join(dest_root, "warm-up")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree.place(warm, mode="auto")
    remove(warm)
    started = time.monotonic()
    delete_s = 0.0
    deferred: list[str] = []
    rounds = 0
    for r in range(reps):
        spent = time.monotonic() - started
        # Enough rounds once the budget is spent; on a file system where a
        # round takes far longer than the budget, stop after 2.
        if (r >= min_reps and spent > budget_s) or (r >= 2 and spent > 3 * budget_s):
            break
        rounds += 1
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            slot = res[name]
            if slot["error"]:
                continue
            dest = os.path.join(dest_root, f"{r}-{name.replace(' ', '_').replace(':', '').replace(',', '')}")
            gc.collect()
            c0 = _rusage_s()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                elapsed, info = contenders[name](dest)
            c1 = _rusage_s()
            if elapsed is None:
                slot["error"] = info
            else:
                slot["wall_ns"].append(elapsed)
                slot["cpu_s"].append(c1 - c0)
                if slot["placed_as"] is None:
                    slot["placed_as"] = placed_as(
                        os.path.join(tree.path, *sample.split("/")), os.path.join(dest, *sample.split("/"))
                    )
                if info is not None:
                    slot["report"] = info
            if defer_delete:
                deferred.append(dest)
                continue
            d0 = time.monotonic()
            remove(dest)
            delete_s += time.monotonic() - d0
    d0 = time.monotonic()
    for dest in deferred:
        remove(dest)
    delete_s += time.monotonic() - d0
    res["_meta"] = {
        "deferred_delete": defer_delete,
        "rounds": rounds,
        "delete_s": delete_s,
        "seconds": time.monotonic() - started,
    }
    return res


def summarize(raw: dict[str, dict], n_files: int, n_bytes: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, slot in raw.items():
        if slot["error"]:
            out[name] = {"error": slot["error"]}
            continue
        ms = sorted(t / 1e6 for t in slot["wall_ns"])
        q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) >= 2 else [ms[0]] * 3
        med = statistics.median(ms)
        entry = {
            "median_ms": med,
            "min_ms": ms[0],
            "max_ms": ms[-1],
            "p25_ms": q[0],
            "p75_ms": q[2],
            "times_ms": [t / 1e6 for t in slot["wall_ns"]],
            "cpu_median_ms": statistics.median(slot["cpu_s"]) * 1e3,
            "files_per_s": n_files / (med / 1e3),
            "mib_per_s": n_bytes / MiB / (med / 1e3),
            "placed_as": slot["placed_as"],
        }
        report = slot["report"]
        if report is not None:
            entry["used"] = dict(report.used)
            entry["fallbacks"] = [list(f) for f in report.fallbacks]
        out[name] = entry
    copy = out.get("place copy", {}).get("median_ms")
    cp = out.get("cp -r", {}).get("median_ms")
    for entry in out.values():
        if "median_ms" in entry:
            entry["ratio_to_copy"] = entry["median_ms"] / copy if copy else None
            entry["ratio_to_cp_r"] = entry["median_ms"] / cp if cp else None
    return out


def used_text(entry: dict) -> str:
    used = entry.get("used")
    if used is None:
        return "-"
    text = ", ".join(f"{m}" if len(used) == 1 else f"{m} {n}" for m, n in used.items())
    chain = " -> ".join([f[0] for f in entry.get("fallbacks", [])[:1]] + [f[1] for f in entry.get("fallbacks", [])])
    return f"{text} (fell back {chain})" if chain else text


# -- costs behind the small tree's placement ---------------------------------------------------
def measure_costs(tree, work: str, rounds: int) -> dict[str, object]:
    """Each per-file and per-placement cost of the small tree's placement,
    alone, with the same paths: median over ``rounds`` runs (milliseconds for
    all the tree's files)."""
    files = tree.manifest.files
    dirs = tree.manifest.dirs
    dest = os.path.join(work, "costs-dest")

    def med(fn, setup=None) -> float:
        times = []
        for _ in range(rounds):
            if setup is not None:
                setup()
            gc.collect()
            t0 = perf_ns()
            fn()
            times.append(perf_ns() - t0)
        return statistics.median(times) / 1e6

    def joins() -> None:  # what Tree._place does per file: _join(self.path, rel) and _join(dest, rel)
        for rel, *_ in files:
            os.path.join(tree.path, *rel.split("/"))
            os.path.join(dest, *rel.split("/"))

    native = [f[0].replace("/", os.sep) for f in files]  # could be computed once per manifest

    def concat() -> None:  # the alternative: prefix + precomputed native relative path
        a, b = tree.path + os.sep, dest + os.sep
        for rel in native:
            a + rel
            b + rel

    dst_paths = [os.path.join(dest, *f[0].split("/")) for f in files]

    def lexists() -> None:  # the existence check per file (the destination is empty: all miss)
        lx = os.path.lexists
        for p in dst_paths:
            lx(p)

    def clear() -> None:
        shutil.rmtree(dest, ignore_errors=True)

    def mkdirs_only() -> None:
        os.mkdir(dest)
        for d in dirs:
            os.mkdir(os.path.join(dest, *d.split("/")))

    def hold_release() -> None:
        for _ in range(100):
            with tree:
                pass

    n = len(files)
    # Two calls safecache's copy mode makes per file that a copy knowing the
    # size and mode from the manifest would not: fstat of the new file
    # (_match_mode) and a last copy_file_range that returns 0 at the end.
    src = os.path.join(tree.path, *files[0][0].split("/"))
    size = files[0][1]
    probe = os.path.join(work, "costs-probe")
    fs = os.open(src, os.O_RDONLY)
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        cfr = getattr(os, "copy_file_range", None)
        if cfr is not None:
            cfr(fs, fd, size, 0, 0)

        def fstats() -> None:
            st = os.fstat
            for _ in range(n):
                st(fd)

        def cfr_eof() -> None:
            for _ in range(n):
                cfr(fs, fd, 8 * MiB, size, size)  # type: ignore[misc]

        costs: dict[str, object] = {"fstat_ms": med(fstats)}
        if cfr is not None:
            costs["copy_file_range_at_eof_ms"] = med(cfr_eof)
    finally:
        os.close(fd)
        os.close(fs)
        os.unlink(probe)
    costs["join_ms"] = med(joins)
    costs["concat_ms"] = med(concat)
    clear()
    mkdirs_only()
    costs["lexists_missing_ms"] = med(lexists)
    costs["mkdir_dirs_ms"] = med(mkdirs_only, setup=clear)
    clear()
    costs["hold_release_ms"] = med(hold_release) / 100
    costs["files"] = n
    costs["dirs"] = len(dirs)
    return costs


def profile_place(tree: Any, work: str, modes: tuple[str, ...], top: int) -> dict[str, Any]:
    """cProfile of one placement of ``tree`` per mode: the ``top`` functions
    by own time (the profiler's overhead inflates Python frames)."""
    out: dict[str, Any] = {}
    for mode in modes:
        dest = os.path.join(work, f"profile-{mode}")
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[mode] = profile(lambda d, mode=mode: tree.place(d, mode=mode), [dest], top=top)
        remove(dest)
    return out


# -- XFS with reflink on a loop device -------------------------------------------------------
def _sbin_which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


@contextlib.contextmanager
def xfs_mount(parent: str, size: int):
    """Yield a directory on a fresh loop-mounted XFS image with reflink=1, or
    a string saying why that is impossible.  Unmounts and removes it after."""
    if sys.platform != "linux":
        yield "not Linux"
        return
    if os.geteuid() != 0:
        yield "mounting a file system image needs root"
        return
    if not os.path.exists("/dev/loop-control"):
        yield "no loop devices (/dev/loop-control is missing)"
        return
    mkfs = _sbin_which("mkfs.xfs")
    if mkfs is None:
        yield "mkfs.xfs is not installed (Debian: xfsprogs)"
        return
    base = tempfile.mkdtemp(prefix="xfs-", dir=parent)
    mnt = os.path.join(base, "mnt")
    os.mkdir(mnt)
    image = os.path.join(base, "xfs.img")
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(size)  # sparse
        made = subprocess.run([mkfs, "-q", "-m", "reflink=1", image], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            yield f"mkfs.xfs failed: {made.stderr.strip()}"
            return
        done = subprocess.run(["mount", "-o", "loop", image, mnt], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            yield f"mount -o loop failed: {done.stderr.strip()}"
            return
        mounted = True
        work = os.path.join(mnt, "work")
        os.mkdir(work)
        yield work
    finally:
        if mounted and subprocess.run(["umount", mnt], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# -- one file system -------------------------------------------------------------------------
def bench_fs(
    ctx: Ctx, label: str, root: str, cfg: dict[str, Any], *, xfs: bool, extras: bool, profile_modes: tuple[str, ...]
) -> dict[str, Any]:
    """Build both trees in a cache under ``root`` and measure every contender.
    ``extras``: also the floors and the costs (small tree);
    ``profile_modes``: the modes to profile the small tree's placement in."""
    journal = ext4_journal(root)
    out: dict[str, Any] = {
        "fs": fs_type(root, options=True),
        "ext4_journal": journal,
        "create_us_before": create_cost_us(root),
        "trees": {},
    }
    ctx.log(
        f"  [trees] {label}: {out['fs']}; creating an empty file: {out['create_us_before']:.0f} µs"
        + ("; ext4 WITHOUT a journal" if journal is False else "")
        + "; building the trees ..."
    )
    t0 = time.monotonic()
    built = make_trees(os.path.join(root, "cache"), cfg)
    out["build_s"] = built["build_s"]
    out["build_and_sync_s"] = time.monotonic() - t0
    for name in ("small", "large"):
        tree = built[name]
        m = tree.manifest
        reps = cfg["reps_small"] if name == "small" else cfg["reps_large"]
        contenders = contenders_for(tree, xfs=xfs, floors=extras and name == "small", threads=cfg["threads"])
        ctx.log(
            f"  [trees] {label}: {name} tree, {len(m.files)} files, {m.size / MiB:.1f} MiB; "
            f"{len(contenders)} contenders, up to {reps} interleaved rounds ..."
        )
        raw = measure(
            tree,
            contenders,
            os.path.join(root, "dest"),
            reps,
            cfg["min_reps"],
            cfg["budget_s"],
            # ext4 without a journal: deleting 10,000 files between rounds
            # would make every later round's creates walk past them.
            defer_delete=journal is False and name == "small",
        )
        meta = raw.pop("_meta")
        out["trees"][name] = {
            "files": len(m.files),
            "dirs": len(m.dirs),
            "bytes": m.size,
            "rounds": meta["rounds"],
            "rounds_asked": reps,
            "seconds": meta["seconds"],
            "delete_s": meta["delete_s"],
            "deleted_after_last_round": meta["deferred_delete"],
            "results": summarize(raw, len(m.files), m.size),
        }
        if name == "small" and extras:
            ctx.log(f"  [trees] {label}: costs of the small tree's placement ...")
            out["costs"] = measure_costs(tree, root, cfg["cost_rounds"])
        if name == "small" and profile_modes:
            ctx.log(f"  [trees] {label}: profiling the small tree's placement: {', '.join(profile_modes)} ...")
            out["profile"] = profile_place(tree, root, profile_modes, cfg["profile_top"])
    out["create_us_after"] = create_cost_us(root)
    return out


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def markdown(result: dict[str, Any]) -> str:
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
                        used_text(e),
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
            parts.append(profile_markdown(f"{label}: cProfile of `place(mode={mode!r})`, small tree", prof))
    return "\n\n".join(parts)

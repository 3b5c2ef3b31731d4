#!/usr/bin/env python3
"""Benchmark placing cached trees (``tree.place``) in every link mode, against
``cp -r`` and ``shutil.copytree``.

Measures, in one run:

1. two trees committed into a cache with ``bucket.trees.get_or_create``:
   *small* (10,000 files of 1-8 KiB in 100 leaf directories, like an
   unpacked set of wheels) and *large* (4 files of 64 MiB);
2. for each tree, ``tree.place(fresh_dest, mode=m)`` for m in copy,
   hardlink, symlink, clone and auto, with the mode actually used
   (``report.used``) and the fallbacks; ``cp -r <tree.path> <fresh_dest>``
   (a subprocess) as the external reference and ``shutil.copytree`` as the
   Python one; for the small tree also bare-Python *floors* (a loop of
   ``os.link``, a minimal copy loop, a minimal clone loop on XFS, and the
   link and copy loops on 2 threads) that show what safecache's own per-file
   work costs;
3. the same on a loop-mounted XFS image made with ``mkfs.xfs -m reflink=1``
   (needs root, loop devices and xfsprogs; skipped with the reason when
   impossible), where clone really clones, plus ``cp -r --reflink=always``
   and ``cp -r --reflink=never``;
4. the costs behind the small tree's placement (on the XFS image if there
   is one, which creates files at a normal cost): the shared lock, the
   per-file existence check, the path joins, fstat and copy_file_range, the
   directories; and a cProfile of the placement (top functions by own time).

Each destination is new and is deleted outside the timed region, right
after its repetition.  Exception: the small tree on ext4 without a journal,
whose destinations are deleted after the last round (see ``ext4_journal``:
there every deletion makes the creates of the next minutes slower, so each
round would pay for the previous rounds' deletions).  Contenders are
interleaved (A B C, B C A, ...) after one untimed placement; the figure is
the median wall time of up to 7 rounds (at least 3, or 2 when a file system
makes rounds very slow).  For each contender the run also records what the
destination got (the same inode, a symlink, shared extents, or its own
data; from ``lstat`` and ``FIEMAP``), because on XFS ``copy_file_range``
(safecache's copy mode) and ``cp`` (coreutils >= 9 defaults to
``--reflink=auto``) share extents instead of copying bytes.  Each file
system's cost of creating an empty file is measured before and after.
Nothing here asserts on times.

Every figure and a machine description go to
``bench/results/trees-<UTC date>.json``.  Run from the repository root::

    .venv/bin/python bench/bench_trees.py            # full run, about 70 s here
    .venv/bin/python bench/bench_trees.py --quick    # smaller trees, about 30 s
    .venv/bin/python bench/bench_trees.py --dir /dev/shm --no-xfs   # tmpfs only
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as _dt
import gc
import io
import json
import os
import platform
import pstats
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

KiB = 1 << 10
MiB = 1 << 20

#: hardlink and clone should place the small tree at least this many times
#: faster than copy mode.
TARGET_SPEEDUP = 5.0

MODES = ("copy", "hardlink", "symlink", "clone", "auto")

perf_ns = time.perf_counter_ns


# -- machine -------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def fs_type(path: str) -> str:
    """File system type (and mount options) of ``path``: the longest matching
    mount point in /proc/mounts."""
    real = os.path.realpath(path)
    best, found = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4:
                    continue
                mnt = parts[1].encode().decode("unicode_escape")  # \040 for spaces
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, found = mnt, f"{parts[2]} ({parts[3]})"
    except OSError:
        pass
    return found


def ext4_journal(path: str) -> bool | None:
    """For ext4: whether it has a journal (a jbd2 entry for its device), None
    when unknown or not ext4.  Without one, ext4 avoids reusing an inode
    deleted in the last 60 s (360 s while its inode table block is dirty):
    creating a file reads the deletion time of every free inode it passes
    (recently_deleted() in fs/ext4/ialloc.c), so after many deletions in a
    block group each create costs up to milliseconds."""
    real = os.path.realpath(path)
    best, dev, kind = "", "", ""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].encode().decode("unicode_escape")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, dev, kind = mnt, parts[0], parts[2]
        if kind != "ext4" or not os.path.isdir("/proc/fs/jbd2"):
            return None
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


def _cp_version() -> str:
    try:
        out = subprocess.run(["cp", "--version"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else "unknown"
    except OSError:
        return "unknown"


def machine() -> dict[str, object]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MiB
    except (ValueError, OSError, AttributeError):
        mem = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_mib": mem,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernel": f"{platform.system()} {platform.release()}",
        "cp": _cp_version(),
        "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def source_commit() -> str | None:
    """The commit checked out here, read from .git without running git (best
    effort; uncommitted changes are not reflected)."""
    git = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".git")
    try:
        if os.path.isfile(git):  # a worktree: "gitdir: <path>"
            with open(git, encoding="utf-8") as f:
                git = os.path.join(os.path.dirname(git), f.read().split(":", 1)[1].strip())
        with open(os.path.join(git, "HEAD"), encoding="utf-8") as f:
            head = f.read().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        try:
            with open(os.path.join(git, ref), encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            with open(os.path.join(git, "packed-refs"), encoding="utf-8") as f:
                for line in f:
                    if line.rstrip().endswith(" " + ref):
                        return line.split()[0]
    except (OSError, IndexError):
        pass
    return None


# -- what a destination got ------------------------------------------------------
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


# -- trees ---------------------------------------------------------------------------
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
            raise SystemExit(f"the cache at {cache_dir} could not store the {name} tree (see the warning above)")
    os.sync()  # the trees' writeback should not land in the timed region
    return out


# -- contenders -------------------------------------------------------------------
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
            raise SystemExit(f"place(mode={mode!r}) was incomplete: {report!r}")
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
        raise SystemExit(f"could not remove the destination {path}")


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
        if name == "_meta":
            continue
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


# -- costs behind the small tree's placement --------------------------------------------
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


def profile_place(tree, work: str, modes: tuple[str, ...], top: int) -> dict[str, object]:
    """cProfile of one placement of ``tree`` per mode: the ``top`` functions
    by own time (the profiler's overhead inflates Python frames)."""
    out: dict[str, object] = {}
    for mode in modes:
        dest = os.path.join(work, f"profile-{mode}")
        prof = cProfile.Profile()
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prof.enable()
            tree.place(dest, mode=mode)
            prof.disable()
        remove(dest)
        stream = io.StringIO()
        stats = pstats.Stats(prof, stream=stream)
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = []
        for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            where = f"{os.path.basename(filename)}:{line}({func})" if filename != "~" else func
            rows.append(
                {"function": where, "calls": nc, "own_ms": tt * 1e3, "cumulative_ms": ct * 1e3, "own_share": tt / total}
            )
        rows.sort(key=lambda r: -r["own_ms"])
        out[mode] = {"total_ms": total * 1e3, "top": rows[:top]}
    return out


# -- XFS with reflink on a loop device ---------------------------------------------
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


# -- one file system -------------------------------------------------------------------
def bench_fs(
    label: str, root: str, cfg: dict, *, xfs: bool, extras: bool, profile_modes: tuple[str, ...]
) -> dict[str, object]:
    """Build both trees in a cache under ``root`` and measure every contender.
    ``extras``: also the floors and the costs (small tree);
    ``profile_modes``: the modes to profile the small tree's placement in."""
    journal = ext4_journal(root)
    out: dict[str, object] = {
        "fs": fs_type(root),
        "ext4_journal": journal,
        "create_us_before": create_cost_us(root),
        "trees": {},
    }
    print(
        f"[{label}] {out['fs']}; creating an empty file: {out['create_us_before']:.0f} us"
        + ("; ext4 WITHOUT a journal" if journal is False else ""),
        flush=True,
    )
    print(f"[{label}] building the trees ...", flush=True)
    t0 = time.monotonic()
    built = make_trees(os.path.join(root, "cache"), cfg)
    out["build_s"] = built["build_s"]
    out["build_and_sync_s"] = time.monotonic() - t0
    for name in ("small", "large"):
        tree = built[name]
        m = tree.manifest
        n_bytes = m.size
        reps = cfg["reps_small"] if name == "small" else cfg["reps_large"]
        contenders = contenders_for(tree, xfs=xfs, floors=extras and name == "small", threads=cfg["threads"])
        print(
            f"[{label}] {name} tree: {len(m.files)} files, {n_bytes / MiB:.1f} MiB; "
            f"{len(contenders)} contenders, up to {reps} interleaved rounds ...",
            flush=True,
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
        meta = raw["_meta"]
        out["trees"][name] = {  # type: ignore[index]
            "files": len(m.files),
            "dirs": len(m.dirs),
            "bytes": n_bytes,
            "rounds": meta["rounds"],
            "rounds_asked": reps,
            "seconds": meta["seconds"],
            "delete_s": meta["delete_s"],
            "deleted_after_last_round": meta["deferred_delete"],
            "results": summarize(raw, len(m.files), n_bytes),
        }
        if name == "small":
            if extras:
                print(f"[{label}] costs of the small tree's placement ...", flush=True)
                out["costs"] = measure_costs(tree, root, cfg["cost_rounds"])
            if profile_modes:
                print(f"[{label}] profiling the small tree's placement: {', '.join(profile_modes)} ...", flush=True)
                out["profile"] = profile_place(tree, root, profile_modes, cfg["profile_top"])
    out["create_us_after"] = create_cost_us(root)
    return out


# -- report -------------------------------------------------------------------------
def speedup_status(copy_ms: float, mode_ms: float) -> dict[str, object]:
    speedup = copy_ms / mode_ms
    met = speedup >= TARGET_SPEEDUP
    if met:
        text = f"met: {speedup:.2f}x faster than copy ({speedup / TARGET_SPEEDUP:.2f}x the {TARGET_SPEEDUP:g}x target)"
    else:
        text = (
            f"MISSED: {speedup:.2f}x faster than copy, needs {TARGET_SPEEDUP:g}x: "
            f"{fmt_ms(mode_ms)} ms would have to become {fmt_ms(copy_ms / TARGET_SPEEDUP)} ms "
            f"({TARGET_SPEEDUP / speedup:.2f}x faster)"
        )
    return {"speedup": speedup, "target": TARGET_SPEEDUP, "met": met, "status": text}


def targets(results: dict) -> dict[str, dict[str, object]]:
    """hardlink and clone >= 5x faster than copy mode on the small tree, per
    file system; with the mode actually used and, where there is one, the
    speed-up over a byte-for-byte copy (``cp -r --reflink=never``)."""
    out: dict[str, dict[str, object]] = {}
    for fs_label, block in results["filesystems"].items():
        if "trees" not in block:
            continue
        r = block["trees"]["small"]["results"]
        copy = r["place copy"]["median_ms"]
        for mode in ("hardlink", "clone"):
            e = r[f"place {mode}"]
            used = ", ".join(e.get("used", {})) or "?"
            t = speedup_status(copy, e["median_ms"]) | {
                "file_system": fs_label,
                "mode": mode,
                "used": e.get("used"),
                "copy_placed_as": r["place copy"]["placed_as"],
            }
            never = r.get("cp -r --reflink=never", {}).get("median_ms")
            if never:
                t["speedup_vs_byte_copy_cp"] = never / e["median_ms"]
            out[f"{fs_label}: {mode} (used: {used})"] = t
    return out


def fmt_ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def print_table(fs_label: str, tree_name: str, block: dict) -> None:
    r = block["results"]
    print()
    print(
        f"{fs_label}, {tree_name} tree: {block['files']} files in {block['dirs']} dirs, "
        f"{block['bytes'] / MiB:.1f} MiB; median of {block['rounds']} interleaved rounds"
        + (
            f" (cut from {block['rounds_asked']}: the rounds took {block['seconds']:.0f} s)"
            if block["rounds"] < 3
            else ""
        )
        + ("; destinations deleted after the last round" if block.get("deleted_after_last_round") else "")
    )
    head = (
        f"{'contender':<38}{'used':<40}{'destination got':<27}{'median ms':>10}{'p25-p75':>14}"
        f"{'files/s':>9}{'MiB/s':>8}{'/copy':>7}{'/cp -r':>8}"
    )
    print(head)
    print("-" * len(head))
    for name, e in r.items():
        if "error" in e:
            print(f"{name:<38}failed: {e['error']}")
            continue
        spread = f"{fmt_ms(e['p25_ms'])}-{fmt_ms(e['p75_ms'])}"
        rc = f"{e['ratio_to_copy']:.2f}" if e.get("ratio_to_copy") else "-"
        rr = f"{e['ratio_to_cp_r']:.2f}" if e.get("ratio_to_cp_r") else "-"
        print(
            f"{name:<38}{used_text(e):<40}{e['placed_as'] or '-':<27}{fmt_ms(e['median_ms']):>10}{spread:>14}"
            f"{e['files_per_s']:>9.0f}{e['mib_per_s']:>8.0f}{rc:>7}{rr:>8}"
        )
    noisy = [
        n
        for n, e in r.items()
        if "median_ms" in e and e["median_ms"] >= 1 and (e["p75_ms"] - e["p25_ms"]) > 0.2 * e["median_ms"]
    ]
    if noisy:
        print(f"  NOISY (interquartile range over 20% of a median of 1 ms or more): {', '.join(noisy)}")


def print_costs(fs_label: str, block: dict) -> None:
    c = block["costs"]
    n = c["files"]
    print(f"\n{fs_label}: costs behind the small tree's placement ({n} files, {c['dirs']} dirs; each alone, median):")
    print(f"  shared lock, hold + release per placement   {c['hold_release_ms'] * 1e3:8.1f} us")
    print(f"  mkdir of the {c['dirs']} directories              {c['mkdir_dirs_ms']:8.2f} ms")
    rows = [
        ("lexists(dst), all missing", "lexists_missing_ms"),
        ("two path joins (_join)", "join_ms"),
        ("  vs two concatenations", "concat_ms"),
        ("one fstat", "fstat_ms"),
        ("one copy_file_range at EOF", "copy_file_range_at_eof_ms"),
    ]
    for label, key in rows:
        if key in c:
            print(f"  per file: {label:<33}{c[key]:8.2f} ms  ({c[key] * 1e3 / n:.2f} us/file)")
    r = block["trees"]["small"]["results"]
    pairs = [
        ("hardlink", "floor: os.link loop"),
        ("copy", "floor: minimal copy loop"),
        ("clone", "floor: minimal clone loop"),
    ]
    for mode, floor in pairs:
        if floor not in r or "median_ms" not in r[floor]:
            continue
        sc, fl = r[f"place {mode}"]["median_ms"], r[floor]["median_ms"]
        print(
            f"  place {mode:<8} {fmt_ms(sc):>6} ms vs {floor:<26} {fmt_ms(fl):>6} ms: safecache adds "
            f"{sc - fl:6.1f} ms ({(sc - fl) * 1e3 / n:5.2f} us/file, {sc / fl:.2f}x)"
        )
    for floor in [k for k in r if k.startswith("floor:") and "threads" in k]:
        serial = floor.rsplit(",", 1)[0]
        if "median_ms" in r.get(floor, {}) and "median_ms" in r.get(serial, {}):
            print(
                f"  {floor:<40} {fmt_ms(r[floor]['median_ms']):>6} ms: {r[serial]['median_ms'] / r[floor]['median_ms']:.2f}x "
                f"the serial loop"
            )


def print_profile(fs_label: str, block: dict) -> None:
    for mode, prof in block.get("profile", {}).items():
        print(
            f"\n{fs_label}: cProfile of place(mode={mode!r}), small tree ({prof['total_ms']:.0f} ms under the "
            "profiler), top functions by own time:"
        )
        for row in prof["top"]:
            print(f"  {row['own_ms']:8.1f} ms {row['own_share'] * 100:5.1f}%  {row['calls']:>7}  {row['function']}")


def print_report(results: dict) -> None:
    m = results["machine"]
    print()
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['memory_mib']} MiB, "
        f"{m['kernel']}, Python {m['python']}, {m['cp']}; load average before/after "
        f"{(m.get('loadavg_before') or [0])[0]:.2f}/{(m.get('loadavg_after') or [0])[0]:.2f}"
    )
    for fs_label, block in results["filesystems"].items():
        if "trees" not in block:
            print(f"\n{fs_label}: SKIPPED: {block.get('skipped')}")
            continue
        note = "; ext4 WITHOUT a journal" if block.get("ext4_journal") is False else ""
        print(
            f"\n== {fs_label}: {block['fs']}; creating an empty file costs {block['create_us_before']:.0f} us "
            f"before / {block['create_us_after']:.0f} us after{note}"
        )
        for tree_name in ("small", "large"):
            print_table(fs_label, tree_name, block["trees"][tree_name])
    for fs_label, block in results["filesystems"].items():
        if "costs" in block:
            print_costs(fs_label, block)
    for fs_label, block in results["filesystems"].items():
        print_profile(fs_label, block)
    print(
        f"\nTarget: hardlink and clone place the small tree >= {TARGET_SPEEDUP:g}x faster than copy mode "
        "(same file system):"
    )
    for name, t in results["targets"].items():
        extra = ""
        if "speedup_vs_byte_copy_cp" in t:
            extra = f"; {t['speedup_vs_byte_copy_cp']:.2f}x faster than cp -r --reflink=never"
        print(f"  {name}: {t['status']}\n      [copy mode's destination got: {t['copy_placed_as']}{extra}]")


# -- main ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller trees and fewer rounds")
    ap.add_argument(
        "--dir",
        help="work in a fresh directory under DIR (default: the system temp dir); "
        "the main cache and destinations go there, and the XFS image file",
    )
    ap.add_argument("--keep", action="store_true", help="do not remove the work directory afterwards")
    ap.add_argument(
        "--json", metavar="PATH", help="write the results here (default: bench/results/trees-<UTC date>.json)"
    )
    ap.add_argument("--no-xfs", action="store_true", help="skip the measurements on a loop-mounted XFS image")
    return ap.parse_args(argv)


def config(quick: bool) -> dict:
    common = {"large_files": 4, "threads": 2, "profile_top": 12}
    if quick:
        return common | {
            "small_files": 3000,
            "small_dirs": 30,
            "large_size": 8 * MiB,
            "reps_small": 3,
            "reps_large": 3,
            "min_reps": 2,
            "budget_s": 5.0,
            "cost_rounds": 5,
        }
    return common | {
        "small_files": 10_000,
        "small_dirs": 100,
        "large_size": 64 * MiB,
        "reps_small": 7,
        "reps_large": 7,
        "min_reps": 3,
        "budget_s": 10.0,
        "cost_rounds": 9,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config(args.quick)
    parent = args.dir or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="safecache-bench-trees-", dir=parent)
    started = time.monotonic()
    results: dict[str, object] = {
        "benchmark": "bench/bench_trees.py",
        "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": sys.argv[1:] if argv is None else argv,
        "quick": args.quick,
        "source_commit": source_commit(),
        "machine": machine(),
        "config": cfg,
        "method": (
            "tree.place(new_dest, mode=m) per link mode; cp -r and shutil.copytree from tree.path; floors are "
            "bare-Python loops with precomputed paths. One untimed placement per tree first; then rounds of all "
            "contenders in a rotating order, each into a new destination deleted (untimed) right after (the small "
            "tree on ext4 without a journal: after its last round, see ext4_journal()); "
            "up to rounds_asked rounds, fewer (at least min_reps) once a tree's rounds took budget_s, and only 2 "
            "once they took 3 x budget_s (a file system where creating files is very slow). "
            "os.sync() once after the trees are built. Figures: median wall time (perf_counter); CPU time "
            "includes children (getrusage). placed_as: lstat and FIEMAP of one file of the destination."
        ),
        "filesystems": {},
    }
    fss: dict[str, object] = results["filesystems"]  # type: ignore[assignment]
    try:
        data = cfg["small_files"] * 12 * KiB + cfg["large_files"] * cfg["large_size"]
        size = max(1 << 30, 3 * data)
        xfs_ctx = contextlib.nullcontext("--no-xfs") if args.no_xfs else xfs_mount(work, size)
        with xfs_ctx as where:
            have_xfs = os.path.isdir(where)
            if not have_xfs:
                print(f"[xfs] SKIPPED: {where}", flush=True)
            main_root = os.path.join(work, "main")
            os.mkdir(main_root)
            # The floors and the cost breakdown go where creating a file is not
            # a pathology of its own: the XFS image if there is one.
            fss["main"] = bench_fs(
                "main", main_root, cfg, xfs=False, extras=not have_xfs, profile_modes=("hardlink", "copy")
            )
            shutil.rmtree(main_root, ignore_errors=True)
            if have_xfs:
                fss["xfs"] = bench_fs(
                    "xfs", where, cfg, xfs=True, extras=True, profile_modes=("hardlink", "clone", "copy")
                )
                fss["xfs"]["image_bytes"] = size  # type: ignore[index]
            else:
                fss["xfs"] = {"skipped": where}
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None  # type: ignore[index]
    results["targets"] = targets(results)
    results["seconds"] = time.monotonic() - started
    print_report(results)
    path = args.json or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"trees-{results['utc'][:10]}.json",  # type: ignore[index]
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Fallback reasons name files: keep this machine's temp paths out of the results.
    text = json.dumps(results, indent=1).replace(json.dumps(work)[1:-1], "<work>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"\nwrote {os.path.relpath(path)} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

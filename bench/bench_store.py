#!/usr/bin/env python3
"""Benchmark safecache's local store against the file-system floor and diskcache.

Measures, in one run:

1. get of 1 KiB values: ``Bucket.get`` vs the floor (open + read + close of a
   file of the same size in the bucket's own fan-out directories, paths
   precomputed) vs ``diskcache.Cache.get``;
2. put of 1 KiB values with new content each time (to a new key, and over an
   existing key), vs the floor (O_EXCL temp file + write + close + rename) vs
   ``diskcache.Cache.set``; plus safecache's put of an identical value that is
   already stored (the no-op path) on its own line;
3. import time of ``safecache`` and ``diskcache`` in fresh interpreters,
   minus ``python -c pass``, with ``-X importtime`` as a cross-check;

then prints a table, the targets with their status, and writes every figure
plus a machine description to ``bench/results/store-<UTC date>.json``.

Timing: each contender runs a batch of ``--keys`` operations; the batches of
the contenders are interleaved (A B C, B C A, C A B, ...) so machine noise hits
them all alike, after untimed warm-up batches.  The figure reported is the
median batch time divided by the batch size.  Nothing here asserts on times.

Only safecache's public API is used.  Run from the repository root::

    .venv/bin/python bench/bench_store.py            # full run, about 30 s
    .venv/bin/python bench/bench_store.py --quick    # under 30 s

``--profile-op get|put|put-over|put-noop`` runs only safecache's loop for that
operation (put: new keys; put-over: new content over existing keys) (for ``python -m cProfile -s tottime bench/bench_store.py ...``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

VALUE_SIZE = 1024
#: safecache's entry header; the floor's files get the same size on disk.
ENTRY_HEADER = 48
FLOOR_READ = 65536

TARGETS = {
    "get_vs_floor": 1.25,
    "get_vs_diskcache": 0.9,
    "put_vs_floor": 1.25,
    "put_vs_diskcache": 0.9,
    "import_ms": 10.0,
    "import_ms_aim": 5.0,
    "import_vs_diskcache": 0.5,
}

perf_ns = time.perf_counter_ns
thread_ns = time.thread_time_ns


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


def _fs_type(path: str) -> str:
    """File system type of ``path``, from the longest matching mount point in /proc/mounts."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].encode().decode("unicode_escape")  # \040 for spaces
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def machine(bench_dir: str) -> dict[str, object]:
    import sqlite3

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_build": " ".join(platform.python_build()),
        "kernel": f"{platform.system()} {platform.release()}",
        "bench_dir_fs": _fs_type(bench_dir),
        "sqlite": sqlite3.sqlite_version,
    }


def source_commit() -> str | None:
    """The commit checked out in this repository, read from .git without running
    git (best effort; uncommitted changes are not reflected)."""
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


# -- helpers -------------------------------------------------------------------
def value_for(i: int, batch: int) -> bytes:
    """1 KiB of content that differs per key and per batch (cheap to make)."""
    head = f"{batch:08d}:{i:08d}:".encode()
    return head + _FILLER[len(head) :]


_FILLER = bytes(range(256)) * (VALUE_SIZE // 256)


def fanout_path(root: str, key: str) -> str:
    """A path shaped like safecache's: ``<root>/<xx>/<32 hex>``.

    The floor's files live in the bucket's own fan-out directories (their
    names are never a safecache key's digest), so both contenders work in the
    same directories: on ext4 the cost of creating a file depends on where the
    directory's inodes sit on disk, and separate trees measured up to 2x apart."""
    digest = hashlib.blake2b(b"floor:" + key.encode(), digest_size=16).hexdigest()
    return os.path.join(root, digest[:2], digest)


def make_fanout(root: str) -> None:
    for i in range(256):
        os.makedirs(os.path.join(root, f"{i:02x}"), exist_ok=True)


def interleaved(
    contenders: dict, reps: int, warmup: int, prepare=None, cpu: dict | None = None
) -> dict[str, list[int]]:
    """Run each contender's batch ``warmup + reps`` times, rotating the order
    every round; return the timed batches' wall times (ns) per contender.

    Each contender times its own loop with ``perf_counter_ns``.  If ``cpu`` is
    a dict it receives the batches' CPU times (``thread_time_ns``, which does
    not count time other processes held the CPU, nor I/O waits).
    ``prepare(round)`` builds the inputs of a round (untimed) and its result
    is passed to every contender of that round."""
    names = list(contenders)
    times: dict[str, list[int]] = {n: [] for n in names}
    cpus: dict[str, list[int]] = {n: [] for n in names}
    for r in range(warmup + reps):
        data = prepare(r) if prepare else None
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            c0 = thread_ns()
            elapsed = contenders[name](data)
            c1 = thread_ns()
            if r >= warmup:
                times[name].append(elapsed)
                cpus[name].append(c1 - c0)
    if cpu is not None:
        cpu.update(cpus)
    return times


def summary(batches: list[int], n: int, cpu: list[int] | None = None) -> dict[str, float]:
    per_op = sorted(b / n / 1000.0 for b in batches)  # microseconds
    q = statistics.quantiles(per_op, n=4) if len(per_op) >= 2 else [per_op[0]] * 3
    out = {"cpu_median_us": statistics.median(cpu) / n / 1000.0} if cpu else {}
    return out | {
        "median_us": statistics.median(per_op),
        "p25_us": q[0],
        "p75_us": q[2],
        "min_us": per_op[0],
        "max_us": per_op[-1],
        "batches": len(per_op),
        "ops_per_batch": n,
    }


# -- get -------------------------------------------------------------------------
def bench_get(bucket, dc, floor_root: str, n: int, reps: int, warmup: int) -> dict:
    keys = [f"bench-key-{i:06d}" for i in range(n)]
    values = [value_for(i, 0) for i in range(n)]
    paths = [fanout_path(floor_root, k) for k in keys]
    make_fanout(floor_root)
    entry_size = ENTRY_HEADER + VALUE_SIZE
    for k, v, p in zip(keys, values, paths):
        if not bucket.put(k, v):
            raise SystemExit(f"safecache put failed for {k!r}: see the warning above")
        dc.set(k, v)
        with open(p, "wb") as f:
            f.write(b"\0" * ENTRY_HEADER + v)
    assert os.path.getsize(paths[0]) == entry_size
    if any(bucket.get(k) != v for k, v in zip(keys, values)):
        raise SystemExit("safecache returned wrong values: not benchmarking a broken store")
    if any(dc.get(k) != v for k, v in zip(keys, values)):
        raise SystemExit("diskcache returned wrong values")

    def safecache_get(_):
        get = bucket.get
        t0 = perf_ns()
        for k in keys:
            get(k)
        return perf_ns() - t0

    def floor_get(_):
        o, r, c, flags = os.open, os.read, os.close, os.O_RDONLY
        t0 = perf_ns()
        for p in paths:
            fd = o(p, flags)
            r(fd, FLOOR_READ)
            c(fd)
        return perf_ns() - t0

    def diskcache_get(_):
        get = dc.get
        t0 = perf_ns()
        for k in keys:
            get(k)
        return perf_ns() - t0

    cpu: dict[str, list[int]] = {}
    times = interleaved(
        {"safecache": safecache_get, "floor": floor_get, "diskcache": diskcache_get}, reps, warmup, cpu=cpu
    )
    if any(bucket.get(k) != v for k, v in zip(keys, values)):
        raise SystemExit("safecache values changed during the get benchmark")
    out = {name: summary(t, n, cpu[name]) for name, t in times.items()}
    return out | {"_keys": keys, "_values": values, "_batches": times, "_cpu": cpu}


# -- put -------------------------------------------------------------------------
def bench_put(bucket, dc, floor_root: str, n: int, reps: int, warmup: int, *, fresh: bool) -> dict:
    """Put ``n`` values per batch, each with content never stored before:
    to new keys (``fresh``) or over the same ``n`` existing keys."""
    make_fanout(floor_root)
    tag = "new" if fresh else "over"

    def prepare(r: int):
        batch = r + 1 if not fresh else r
        keys = [f"put-{tag}-{batch if fresh else 0}-{i:06d}" for i in range(n)]
        values = [value_for(i, batch) for i in range(n)]
        finals = [fanout_path(floor_root, k) for k in keys]
        floor = [(p + ".tmp", p, b"\0" * ENTRY_HEADER + v) for p, v in zip(finals, values)]
        return keys, values, floor

    if not fresh:  # the keys exist before the first timed batch
        keys, values, floor = prepare(-1)
        for k, v, (tmp, final, blob) in zip(keys, values, floor):
            bucket.put(k, v)
            dc.set(k, v)
            with open(final, "wb") as f:
                f.write(blob)

    def safecache_put(data):
        keys, values, _ = data
        put = bucket.put
        t0 = perf_ns()
        for k, v in zip(keys, values):
            put(k, v)
        return perf_ns() - t0

    def floor_put(data):
        _, _, floor = data
        o, w, c, rep = os.open, os.write, os.close, os.replace
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        t0 = perf_ns()
        for tmp, final, blob in floor:
            fd = o(tmp, flags, 0o666)
            w(fd, blob)
            c(fd)
            rep(tmp, final)
        return perf_ns() - t0

    def diskcache_set(data):
        keys, values, _ = data
        set_ = dc.set
        t0 = perf_ns()
        for k, v in zip(keys, values):
            set_(k, v)
        return perf_ns() - t0

    stored_before = bucket.counters.writes
    cpu: dict[str, list[int]] = {}
    times = interleaved(
        {"safecache": safecache_put, "floor": floor_put, "diskcache": diskcache_set}, reps, warmup, prepare, cpu
    )
    written = bucket.counters.writes - stored_before
    last_keys, last_values, _ = prepare(warmup + reps - 1)
    if bucket.get(last_keys[-1]) != last_values[-1]:
        raise SystemExit("safecache did not store what the put benchmark wrote")
    out = {name: summary(t, n, cpu[name]) for name, t in times.items()}
    out["_batches"] = times
    out["_cpu"] = cpu
    out["safecache"]["entries_written"] = written  # each put must really write
    out["safecache"]["entries_expected"] = (warmup + reps) * n
    return out


def bench_put_noop(bucket, keys, values, n: int, reps: int, warmup: int) -> dict:
    """safecache put of the value already stored under the key: nothing is written."""
    before = bucket.counters.writes

    def safecache_put_same(_):
        put = bucket.put
        t0 = perf_ns()
        for k, v in zip(keys, values):
            put(k, v)
        return perf_ns() - t0

    cpu: dict[str, list[int]] = {}
    times = interleaved({"safecache": safecache_put_same}, reps, warmup, cpu=cpu)
    out = {"safecache": summary(times["safecache"], n, cpu["safecache"])}
    out["safecache"]["entries_written"] = bucket.counters.writes - before  # 0 expected
    return out


# -- import time ---------------------------------------------------------------------
def _children_cpu() -> float:
    """User + system CPU seconds of waited-for children so far (0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _iqr(values: list[int]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def bench_import(runs: int, xruns: int, cwd: str) -> dict:
    import diskcache
    import safecache

    py = sys.executable
    env = _child_env()
    dirs = [os.path.dirname(safecache.__file__), os.path.dirname(diskcache.__file__)]
    subprocess.run([py, "-m", "compileall", "-q", *dirs], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    commands = {
        "pass": [py, "-c", "pass"],
        "safecache": [py, "-c", "import safecache"],
        "diskcache": [py, "-c", "import diskcache"],
    }
    for cmd in commands.values():  # check, and let any missing .pyc be written now
        for _ in range(2):
            subprocess.run(cmd, env=env, cwd=cwd, check=True)

    child_cpu: dict[str, list[float]] = {name: [] for name in commands}

    def runner(name, cmd):
        def run(_):
            before = _children_cpu()
            t0 = perf_ns()
            subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elapsed = perf_ns() - t0
            child_cpu[name].append((_children_cpu() - before) * 1000.0)
            return elapsed

        return run

    times = interleaved({name: runner(name, cmd) for name, cmd in commands.items()}, runs, 1)
    wall = {name: statistics.median(t) / 1e6 for name, t in times.items()}
    cpu = {name: statistics.median(c[1:]) for name, c in child_cpu.items()}  # [0] was the warm-up

    def importtime(module: str) -> float:
        cums = []
        for _ in range(xruns):
            res = subprocess.run(
                [py, "-X", "importtime", "-c", f"import {module}"],
                env=env, cwd=cwd, capture_output=True, text=True, check=True,
            )
            for line in res.stderr.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[2].strip() == module:
                    cums.append(int(parts[1]))
        return statistics.median(cums) / 1000.0 if cums else float("nan")

    def stderr_of_median(t: list[int]) -> float:  # ms; normal approximation from the IQR
        return 1.2533 * (_iqr(t) / 1.349) / len(t) ** 0.5 / 1e6

    se = {name: stderr_of_median(t) for name, t in times.items()}
    return {
        "wall_ms": wall,
        "safecache_ms_stderr": (se["safecache"] ** 2 + se["pass"] ** 2) ** 0.5,
        "diskcache_ms_stderr": (se["diskcache"] ** 2 + se["pass"] ** 2) ** 0.5,
        "wall_runs_ms": {name: [x / 1e6 for x in t] for name, t in times.items()},
        "safecache_ms": wall["safecache"] - wall["pass"],
        "diskcache_ms": wall["diskcache"] - wall["pass"],
        "wall_iqr_ms": {name: _iqr(t) / 1e6 for name, t in times.items()},
        "child_cpu_ms": cpu,
        "safecache_cpu_ms": cpu["safecache"] - cpu["pass"],
        "diskcache_cpu_ms": cpu["diskcache"] - cpu["pass"],
        "importtime_cumulative_ms": {"safecache": importtime("safecache"), "diskcache": importtime("diskcache")},
        "runs": runs,
        "importtime_runs": xruns,
        "bytecode": "compileall run on both packages; PYTHONDONTWRITEBYTECODE unset for the timed children",
        "pythondontwritebytecode_in_env": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }


# -- report --------------------------------------------------------------------------
def status(value: float, limit: float) -> dict[str, object]:
    met = value <= limit
    if met:
        text = f"met ({(1 - value / limit) * 100:.1f}% under the limit)"
    else:
        text = f"MISSED by {(value / limit - 1) * 100:.1f}% ({value:.3g} vs <= {limit:.3g})"
    return {"value": value, "limit": limit, "met": met, "status": text}


def targets(results: dict) -> dict[str, dict[str, object]]:
    out = {}
    get = results["get"]
    out["get <= 1.25x floor"] = status(get["ratios"]["vs_floor"], TARGETS["get_vs_floor"])
    out["get <= 0.9x diskcache"] = status(get["ratios"]["vs_diskcache"], TARGETS["get_vs_diskcache"])
    for label, name in (("put (new key)", "put_new"), ("put (overwrite)", "put_overwrite")):
        r = results[name]["ratios"]
        out[f"{label} <= 1.25x floor"] = status(r["vs_floor"], TARGETS["put_vs_floor"])
        out[f"{label} <= 0.9x diskcache"] = status(r["vs_diskcache"], TARGETS["put_vs_diskcache"])
    imp = results["import"]
    out["import safecache < 10 ms"] = status(imp["safecache_ms"], TARGETS["import_ms"])
    out["import safecache < 5 ms (aim)"] = status(imp["safecache_ms"], TARGETS["import_ms_aim"])
    out["import safecache < 0.5x diskcache"] = status(
        imp["safecache_ms"] / imp["diskcache_ms"], TARGETS["import_vs_diskcache"]
    )
    return out


def add_ratios(block: dict) -> None:
    """Ratios of the medians; also the median of the per-round ratios (each
    round's batches ran back to back, so these pair up under the same noise)."""
    raw = block.pop("_batches")
    block.pop("_cpu")
    sc = block["safecache"]["median_us"]
    block["ratios"] = {
        "vs_floor": sc / block["floor"]["median_us"],
        "vs_diskcache": sc / block["diskcache"]["median_us"],
        "floor_vs_diskcache": block["floor"]["median_us"] / block["diskcache"]["median_us"],
        "cpu_vs_floor": block["safecache"]["cpu_median_us"] / block["floor"]["cpu_median_us"],
        "cpu_vs_diskcache": block["safecache"]["cpu_median_us"] / block["diskcache"]["cpu_median_us"],
        "paired_vs_floor": statistics.median(a / b for a, b in zip(raw["safecache"], raw["floor"])),
        "paired_vs_diskcache": statistics.median(a / b for a, b in zip(raw["safecache"], raw["diskcache"])),
    }


def print_report(results: dict) -> None:
    m = results["machine"]
    p = results["parameters"]
    print()
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['kernel']}, Python {m['python']}, "
          f"bench dir on {m['bench_dir_fs']}, SQLite {m['sqlite']}")
    if m.get("loadavg_before") is not None:
        print(f"Load average (1 min) before/after: {m['loadavg_before'][0]:.2f} / {m['loadavg_after'][0]:.2f}"
              " (other work on the machine shows up as noise)")
    print(f"Local store: {p['keys']} keys of {VALUE_SIZE} B; median of {p['get_batches']} get / "
          f"{p['put_batches']} put batches of {p['keys']} ops (interleaved, after warm-up); microseconds per op")
    print()
    rows = (
        ("get, 1 KiB hit", "get"),
        ("put, 1 KiB, new key", "put_new"),
        ("put, 1 KiB, new content over key", "put_overwrite"),
    )
    head = (f"{'operation':<34}{'safecache':>10}{'floor':>9}{'diskcache':>10}{'sc/floor':>10}{'sc/diskc':>10}"
            f"{'floor/diskc':>12}{'sc p25-p75':>13}")
    print(head)
    print("-" * len(head))
    for label, name in rows:
        b = results[name]
        sc, r = b["safecache"], b["ratios"]
        spread = f"{sc['p25_us']:.1f}-{sc['p75_us']:.1f}"
        print(f"{label:<34}{sc['median_us']:>10.2f}{b['floor']['median_us']:>9.2f}{b['diskcache']['median_us']:>10.2f}"
              f"{r['vs_floor']:>9.2f}x{r['vs_diskcache']:>9.2f}x{r['floor_vs_diskcache']:>11.2f}x{spread:>13}")
    noop = results["put_noop"]["safecache"]
    fl = results["put_new"]["floor"]["median_us"]
    spread = f"{noop['p25_us']:.1f}-{noop['p75_us']:.1f}"
    print(f"{'put, identical value (no-op)':<34}{noop['median_us']:>10.2f}{'':>9}{'':>10}"
          f"{noop['median_us'] / fl:>9.2f}x{'':>10}{'':>12}{spread:>13}")
    print(f"  (no-op put: sc/floor is against the floor's new-key put; it is "
          f"{results['put_noop']['ratios']['vs_safecache_get']:.2f}x safecache's get)")
    print()
    print("Same batches, CPU time of this thread (thread_time_ns: excludes time other processes held the CPU")
    print("and time blocked on I/O; a cross-check on a busy machine, not the headline figure):")
    head = f"{'operation':<34}{'safecache':>10}{'floor':>9}{'diskcache':>10}{'sc/floor':>10}{'sc/diskc':>10}"
    print(head)
    print("-" * len(head))
    for label, name in rows:
        b = results[name]
        r = b["ratios"]
        print(f"{label:<34}{b['safecache']['cpu_median_us']:>10.2f}{b['floor']['cpu_median_us']:>9.2f}"
              f"{b['diskcache']['cpu_median_us']:>10.2f}{r['cpu_vs_floor']:>9.2f}x{r['cpu_vs_diskcache']:>9.2f}x")
    print(f"{'put, identical value (no-op)':<34}{noop['cpu_median_us']:>10.2f}")
    noisy = [
        f"{name} {who}"
        for name in ("get", "put_new", "put_overwrite")
        for who, st in results[name].items()
        if who != "ratios" and (st["p75_us"] - st["p25_us"]) / st["median_us"] > 0.2
    ]
    if noisy:
        print(f"  NOISY (interquartile range over 20% of the median): {', '.join(noisy)}; "
              "rerun on a quieter machine before comparing absolute times")
    imp = results["import"]
    print()
    print(f"Import (wall time of a fresh interpreter minus `-c pass`, median of {imp['runs']} interleaved runs):")
    print(f"  python -c pass          {imp['wall_ms']['pass']:7.2f} ms")
    print(f"  import safecache        {imp['safecache_ms']:+7.2f} ms +- {imp['safecache_ms_stderr']:.2f}"
          f"   (-X importtime cumulative: {imp['importtime_cumulative_ms']['safecache']:.2f} ms)")
    print(f"  import diskcache        {imp['diskcache_ms']:+7.2f} ms +- {imp['diskcache_ms_stderr']:.2f}"
          f"   (-X importtime cumulative: {imp['importtime_cumulative_ms']['diskcache']:.2f} ms)")
    print(f"  safecache / diskcache   {imp['safecache_ms'] / imp['diskcache_ms']:7.2f}x")
    print(f"  cross-check, CPU time of the children (user+sys, minus `-c pass`): safecache "
          f"{imp['safecache_cpu_ms']:.2f} ms, diskcache {imp['diskcache_cpu_ms']:.2f} ms")
    print("  (+- is the approximate standard error of the difference of the medians, from the spread)")
    if max(imp["safecache_ms_stderr"], imp["diskcache_ms_stderr"]) > 1.0:
        print("  NOISY: the wall-time differences are uncertain by more than 1 ms; trust the CPU-time cross-check")
    print(f"  ({imp['bytecode']}; PYTHONDONTWRITEBYTECODE was "
          f"{imp['pythondontwritebytecode_in_env']!r} in this environment)")
    print()
    print("Targets:")
    for name, t in results["targets"].items():
        v = t["value"]
        shown = f"{v:.2f} ms" if name.startswith("import safecache <") and "diskcache" not in name else f"{v:.2f}x"
        print(f"  {name:<36}{shown:>10}   {t['status']}")


# -- main ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches and runs (under 30 s)")
    ap.add_argument("--dir", help="create the caches in a fresh directory under DIR (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="do not remove the caches afterwards")
    ap.add_argument("--json", metavar="PATH",
                    help="write the results here (default: bench/results/store-<UTC date>.json)")
    ap.add_argument("--keys", type=int, default=1000, help="keys per batch (default 1000)")
    ap.add_argument("--profile-op", choices=["get", "put", "put-over", "put-noop"],
                    help="only run safecache's loop for this operation (to run under cProfile)")
    return ap.parse_args(argv)


def profile_op(op: str, work: str, n: int) -> None:
    """Just safecache's loop, ~50k operations, for a profiler to look at."""
    import safecache

    bucket = safecache.Cache(os.path.join(work, "safecache")).bucket("bench", version=1)
    keys = [f"bench-key-{i:06d}" for i in range(n)]
    for i, k in enumerate(keys):
        bucket.put(k, value_for(i, 0))
    rounds = 50
    if op == "get":
        get = bucket.get
        for _ in range(rounds):
            for k in keys:
                get(k)
    elif op == "put-noop":
        values = [value_for(i, 0) for i in range(n)]
        put = bucket.put
        for _ in range(rounds):
            for k, v in zip(keys, values):
                put(k, v)
    elif op == "put-over":  # new content over existing keys
        put = bucket.put
        for r in range(1, rounds + 1):
            values = [value_for(i, r) for i in range(n)]
            for k, v in zip(keys, values):
                put(k, v)
    else:  # put: new keys
        put = bucket.put
        for r in range(1, rounds + 1):
            batch = [(f"put-new-{r}-{i:06d}", value_for(i, r)) for i in range(n)]
            for k, v in batch:
                put(k, v)
    print(f"{op}: {rounds * n} operations, counters {bucket.counters.as_dict()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parent = args.dir or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="safecache-bench-", dir=parent)
    try:
        if args.profile_op:
            profile_op(args.profile_op, work, args.keys)
            return 0
        return run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"caches kept in {work}")


def run(args: argparse.Namespace, work: str) -> int:
    import diskcache
    import safecache

    started = time.monotonic()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    n = args.keys
    if args.quick:
        get_reps, put_reps, warmup, imp_runs, x_runs = 15, 7, 2, 10, 5
    else:
        get_reps, put_reps, warmup, imp_runs, x_runs = 61, 31, 3, 30, 11
    noop_reps = get_reps

    cache = safecache.Cache(os.path.join(work, "safecache"))
    bucket = cache.bucket("bench", version=1)
    dc_get = diskcache.Cache(os.path.join(work, "diskcache-get"))
    dc_put = diskcache.Cache(os.path.join(work, "diskcache-put"))
    # The bucket's directory, from the public API (path_for is <dir>/<xx>/<digest>).
    floor = os.path.dirname(os.path.dirname(bucket.path_for("any key")))
    results: dict[str, object] = {
        "benchmark": "bench/bench_store.py",
        "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(work),
        "versions": {"safecache": safecache.__version__, "diskcache": diskcache.__version__},
        "source_commit": source_commit(),
        "parameters": {
            "keys": n, "value_bytes": VALUE_SIZE, "get_batches": get_reps, "put_batches": put_reps,
            "noop_batches": noop_reps, "warmup_batches": warmup, "import_runs": imp_runs,
            "importtime_runs": x_runs, "floor_entry_bytes": ENTRY_HEADER + VALUE_SIZE,
            "bench_dir": "system temp dir" if args.dir is None else args.dir,
        },
        "targets_spec": TARGETS,
    }
    try:
        print(f"get: {n} keys x {get_reps} batches ...", flush=True)
        get = bench_get(bucket, dc_get, floor, n, get_reps, warmup)
        keys, values = get.pop("_keys"), get.pop("_values")
        add_ratios(get)
        results["get"] = get
        floor_put = floor
        print(f"put (new keys): {n} x {put_reps} batches ...", flush=True)
        results["put_new"] = bench_put(bucket, dc_put, floor_put, n, put_reps, warmup, fresh=True)
        print(f"put (new content over existing keys): {n} x {put_reps} batches ...", flush=True)
        results["put_overwrite"] = bench_put(bucket, dc_put, floor_put, n, put_reps, warmup, fresh=False)
        for name in ("put_new", "put_overwrite"):
            add_ratios(results[name])
        print(f"put (identical value, no-op): {n} x {noop_reps} batches ...", flush=True)
        results["put_noop"] = bench_put_noop(bucket, keys, values, n, noop_reps, warmup)
        results["put_noop"]["ratios"] = {
            "vs_floor_put": results["put_noop"]["safecache"]["median_us"] / results["put_new"]["floor"]["median_us"],
            "vs_safecache_get": results["put_noop"]["safecache"]["median_us"] / get["safecache"]["median_us"],
        }
    finally:
        dc_get.close()
        dc_put.close()
        cache.close()
    print(f"import: {imp_runs} interleaved runs each ...", flush=True)
    results["import"] = bench_import(imp_runs, x_runs, work)
    results["targets"] = targets(results)
    results["counters"] = cache.stats()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_before"] = load_before
    results["machine"]["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    print_report(results)
    if args.json:
        out = args.json
    else:
        day = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"store-{day}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=False)
        f.write("\n")
    print(f"\n{results['seconds']} s; results written to {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

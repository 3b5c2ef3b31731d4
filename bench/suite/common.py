"""What the sections share: the run context, the machine description, timing
helpers, target status, and a pool of worker processes."""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(BENCH)
WORKER = os.path.join(BENCH, "suite", "worker.py")

KiB = 1 << 10
MiB = 1 << 20

perf_ns = time.perf_counter_ns
thread_ns = time.thread_time_ns


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Ctx:
    """One run of the suite: its level (``full``, ``quick`` or ``smoke``),
    its work directory and options."""

    level: str
    work: str
    xfs: bool = True
    profile: bool = True
    notes: list[str] = field(default_factory=list)

    def pick(self, full: Any, quick: Any, smoke: Any) -> Any:
        return {"full": full, "quick": quick, "smoke": smoke}[self.level]

    def log(self, text: str) -> None:
        print(text, flush=True)

    def subdir(self, name: str) -> str:
        path = os.path.join(self.work, name)
        os.makedirs(path, exist_ok=True)
        return path


def optional_module(name: str) -> tuple[Any, str | None]:
    """(module, None) or (None, why it is missing)."""
    try:
        return __import__(name), None
    except ImportError as exc:
        return None, f"{name} is not installed ({exc})"


# -- machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def mount_of(path: str) -> tuple[str, str, str, str]:
    """(mount point, device, file system type, mount options) of ``path``: the
    longest matching mount point in /proc/mounts; unknown values are ""."""
    real = os.path.realpath(path)
    best = ("", "", "unknown", "")
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4:
                    continue
                mnt = parts[1].encode().decode("unicode_escape")  # \040 for spaces
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, parts[0], parts[2], parts[3])
    except OSError:
        pass
    return best


def fs_type(path: str, *, options: bool = False) -> str:
    """File system type of ``path`` (with its mount options if ``options``)."""
    _, _, kind, opts = mount_of(path)
    return f"{kind} ({opts})" if options and opts else kind


def mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("safecache", "diskcache", "diskcache_community", "matplotlib"):
        mod, _ = optional_module(name)
        out[name] = getattr(mod, "__version__", None) if mod is not None else None
    return out


def machine(bench_dir: str) -> dict[str, object]:
    import sqlite3

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        du = shutil.disk_usage(bench_dir)
        free_gib = round(du.free / (1 << 30), 1)
    except OSError:
        free_gib = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_gib": mem_total_gib(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernel": f"{platform.system()} {platform.release()}",
        "bench_dir_fs": fs_type(bench_dir),
        "bench_dir_free_gib": free_gib,
        "sqlite": sqlite3.sqlite_version,
        "versions": versions(),
    }


def source_commit() -> str | None:
    """The commit checked out here, read from .git without running git
    (uncommitted changes are not reflected)."""
    git = os.path.join(REPO, ".git")
    try:
        if os.path.isfile(git):
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


# -- statistics ------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float | None:
    """diskcache's definition (tests/utils.py): ``sorted(values)[int(len * p) - 1]``
    (p = 0 gives the minimum, p = 1 the maximum). ``values`` must be sorted."""
    if not values:
        return None
    if p == 0:
        return values[0]
    return values[max(0, int(len(values) * p) - 1)]


def iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def summary_us(batches_ns: list[int], n: int, cpu_ns: list[int] | None = None) -> dict[str, float]:
    """Per-operation figures (µs) from batch times (ns) of ``n`` operations."""
    per_op = sorted(b / n / 1000.0 for b in batches_ns)
    q = statistics.quantiles(per_op, n=4) if len(per_op) >= 2 else [per_op[0]] * 3
    out = {
        "median_us": statistics.median(per_op),
        "p25_us": q[0],
        "p75_us": q[2],
        "min_us": per_op[0],
        "max_us": per_op[-1],
        "batches": len(per_op),
        "ops_per_batch": n,
    }
    if cpu_ns:
        out["cpu_median_us"] = statistics.median(cpu_ns) / n / 1000.0
    return out


def interleaved(
    contenders: dict[str, Callable[[Any], int]], reps: int, warmup: int, prepare: Callable[[int], Any] | None = None
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Run each contender's batch ``warmup + reps`` times, rotating the order
    every round (A B C, B C A, ...) so that machine noise hits all alike.
    Each contender times its own loop and returns nanoseconds.  Returns the
    timed batches' wall times and CPU times (``thread_time_ns``) per contender.
    ``prepare(round)`` builds the round's inputs (untimed), passed to every
    contender of the round."""
    names = list(contenders)
    wall: dict[str, list[int]] = {n: [] for n in names}
    cpu: dict[str, list[int]] = {n: [] for n in names}
    for r in range(warmup + reps):
        data = prepare(r) if prepare else None
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            c0 = thread_ns()
            elapsed = contenders[name](data)
            c1 = thread_ns()
            if r >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(c1 - c0)
    return wall, cpu


# -- timed loops: one batch of get or put, and the floor's (the bare system calls) -----------
def loop_get(get: Any, keys: list[str]) -> int:
    t0 = perf_ns()
    for k in keys:
        get(k)
    return perf_ns() - t0


def loop_put(put: Any, keys: list[str], values: list[bytes]) -> int:
    t0 = perf_ns()
    for k, v in zip(keys, values):
        put(k, v)
    return perf_ns() - t0


def loop_floor_get(paths: list[str], read_size: int) -> int:
    o, r, c, flags = os.open, os.read, os.close, os.O_RDONLY
    t0 = perf_ns()
    for p in paths:
        fd = o(p, flags)
        r(fd, read_size)
        c(fd)
    return perf_ns() - t0


def loop_floor_put(files: list[tuple[str, str, bytes]]) -> int:
    """``O_EXCL`` temp file + one write + close + rename, per (temp, final, bytes)."""
    o, w, c, rep = os.open, os.write, os.close, os.replace
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = perf_ns()
    for tmp, final, blob in files:
        fd = o(tmp, flags, 0o666)
        w(fd, blob)
        c(fd)
        rep(tmp, final)
    return perf_ns() - t0


def paired_ratio(a: list[int], b: list[int]) -> float:
    """Median of the per-round ratios (each round's batches ran back to back)."""
    return statistics.median(x / y for x, y in zip(a, b))


def profile(
    fn: Callable[[Any], Any], args: list[Any], *, top: int = 10, exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    """cProfile of ``fn(arg)`` for each of ``args``: the ``top`` functions by
    own time, leaving out functions defined in the files named in ``exclude``
    (the benchmark's own loops).  The profiler inflates every Python-level call."""
    import cProfile

    from .worker import top_functions

    prof = cProfile.Profile()
    prof.enable()
    for arg in args:
        fn(arg)
    prof.disable()
    return top_functions(prof, top, exclude, ("_lsprof", "perf_counter_ns"))


def profile_markdown(title: str, prof: dict[str, Any], rows_n: int = 8) -> str:
    rows = [
        [f"`{r['function']}`", f"{r['calls']:,}", f"{r['own_ms']:.1f}", f"{r['own_share'] * 100:.0f}%"]
        for r in prof["top"][:rows_n]
    ]
    return f"{title} ({prof['total_ms']:.0f} ms under the profiler), top functions by own time:\n\n" + md_table(
        ["function", "calls", "own ms", "share"], rows, "lrrr"
    )


# -- targets ---------------------------------------------------------------------------------
def target(
    section: str,
    name: str,
    value: float | None,
    limit: float,
    *,
    unit: str = "x",
    higher_is_better: bool = False,
    note: str = "",
    source: str = "",
) -> dict[str, object]:
    """A target with its status: met, or missed and by how much."""
    if value is None:
        return {
            "section": section,
            "target": name,
            "value": None,
            "limit": limit,
            "unit": unit,
            "met": None,
            "status": "not measured" + (f" ({note})" if note else ""),
            "source": source,
            "note": note,
        }

    def fmt(v: float) -> str:
        if unit == "x":
            return f"{v:.2f}x"
        return f"{v:.3g} {unit}"

    met = value >= limit if higher_is_better else value <= limit
    cmp = ">=" if higher_is_better else "<="
    if met:
        margin = (value / limit - 1) if higher_is_better else (1 - value / limit)
        text = f"met ({fmt(value)}; {margin * 100:.0f}% {'above' if higher_is_better else 'under'} the limit)"
    else:
        factor = (limit / value) if higher_is_better else (value / limit)
        if higher_is_better:
            by = f"{(1 - value / limit) * 100:.0f}% short" if factor < 2 else f"{factor:.1f} times short"
        else:
            by = f"by {(factor - 1) * 100:.0f}%" if factor < 2 else f"{factor:.1f} times over the limit"
        text = f"missed {by} ({fmt(value)} against {cmp} {fmt(limit)})"
    return {
        "section": section,
        "target": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "met": met,
        "status": text,
        "source": source,
        "note": note,
    }


def unmeasured(targets: list[dict[str, Any]], why: str) -> list[dict[str, Any]]:
    """The same targets, each as not measured in this run, saying why (a
    section that was not run or failed still lists every target it has)."""
    return [
        target(t["section"], t["target"], None, t["limit"], unit=t["unit"], source=t["source"], note=why)
        for t in targets
    ]


# -- children --------------------------------------------------------------------------------
def child_env(**extra: str) -> dict[str, str]:
    """The environment of timed children: without PYTHONDONTWRITEBYTECODE (set in
    this development environment: the children must use compiled bytecode
    like a user's interpreter) and without import-time profiling."""
    env = dict(os.environ)
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME", "PYTHONTRACEMALLOC"):
        env.pop(name, None)
    env.update(extra)
    return env


class WorkerPool:
    """``n`` long-lived worker processes (``suite/worker.py``) that run tasks
    given as JSON lines.  ``run(tasks)`` hands one task to each of the first
    ``len(tasks)`` workers, waits until all are ready (caches open, inputs
    built), releases them at once, and returns their results."""

    def __init__(self, n: int, cwd: str) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        env = child_env()
        for _ in range(n):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, WORKER, "pool"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=cwd,
                    env=env,
                    bufsize=1,
                )
            )

    def _read(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a benchmark worker exited (status {proc.wait()}); see its error above")
        msg = json.loads(line)
        if msg.get("error"):
            raise RuntimeError(f"a benchmark worker failed: {msg['error']}")
        return msg

    def run(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(tasks) > len(self.procs):
            raise ValueError("more tasks than workers")
        active = self.procs[: len(tasks)]
        for proc, task in zip(active, tasks):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(task) + "\n")
            proc.stdin.flush()
        for proc in active:
            msg = self._read(proc)
            if msg.get("state") != "ready":
                raise RuntimeError(f"unexpected message from a worker: {msg}")
        start_at = time.time() + 0.05  # the same moment for every worker
        for proc in active:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"go": start_at}) + "\n")
            proc.stdin.flush()
        return [self._read(proc) for proc in active]

    def close(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> WorkerPool:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def contenders_available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The store contenders importable here, and why the others are not."""
    modules = {
        "safecache": "safecache",
        "diskcache": "diskcache",
        "diskcache.FanoutCache": "diskcache",
        "diskcache-community": "diskcache_community",
        "floor": "os",
    }
    ok, missing = [], {}
    for name in names:
        _, why = optional_module(modules[name])
        if why is None:
            ok.append(name)
        else:
            hint = (
                " (pip install diskcache-community)"
                if name == "diskcache-community"
                else " (pip install -e '.[bench]')"
            )
            missing[name] = why + hint
    return ok, missing


def tmpfs_dir() -> str | None:
    """A writable tmpfs directory (/dev/shm) for cross-check runs, or None."""
    if (
        sys.platform == "linux"
        and os.path.isdir("/dev/shm")
        and fs_type("/dev/shm") == "tmpfs"
        and os.access("/dev/shm", os.W_OK)
    ):
        return "/dev/shm"
    return None


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    if us >= 10_000:
        return f"{us / 1000:,.1f} ms"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    if us >= 100:
        return f"{us:.0f} µs"
    if us >= 10:
        return f"{us:.1f} µs"
    return f"{us:.2f} µs"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x"


def missing_lines(missing: dict[str, str]) -> list[str]:
    """The report's line naming the contenders not measured, if any."""
    if not missing:
        return []
    return ["Not measured: " + "; ".join(f"{k}: {v}" for k, v in missing.items()) + "."]


def md_table(header: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column: l or r."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)

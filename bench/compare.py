#!/usr/bin/env python3
"""Compare safecache's 1 KiB get and put between two source trees, in one run.

    .venv/bin/python bench/compare.py HEAD src             # the last commit against the working tree
    .venv/bin/python bench/compare.py HEAD~1 HEAD --quick  # two commits
    .venv/bin/python bench/compare.py /tmp/old/src src     # two directories
    .venv/bin/python bench/compare.py src src              # the same tree twice: what noise alone gives

OLD and NEW are each a directory that holds the ``safecache`` package (a
``src`` directory), or else a git revision of this repository, whose
``src/`` is extracted (``git archive``) into the work directory.  Each runs
in its own child process with ``PYTHONPATH`` set to it (the child checks
that it imported safecache from there), with its own cache in the same
work directory.

The measurement is section 2's (``bench/suite/floor.py``) for 1 KiB values:
get (hit), put to a new key, put of new content over a key and put of the
identical value, in batches of ``n`` operations with the same keys, values
and loops.  The two children's batches are interleaved (old new, new old,
...) after untimed warm-up rounds, and only one runs at a time.  For each
operation (31 timed rounds of 1,000; ``--quick``: 9 of 300): the median
batch of each side (µs per operation), the ratio new / old of the medians,
the median of the per-round ratios with its 95% confidence interval (order
statistics: no assumption on the distribution), and the same ratio in the
children's CPU time.  When the interval contains
1, the two trees are within noise of each other in this run.  Nothing here
fails on a slow result.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from suite.common import REPO, Ctx, KiB, child_env, interleaved, loadavg, loop_get, loop_put, summary_us, thread_ns
from suite.floor import OP_LABELS, OPS, config, filler_for, get_keys, make_value, put_round

TAG = "1KiB"


# -- the child: one source tree ------------------------------------------------------------------
def child(spec: dict[str, Any]) -> int:
    """Serve batches for the parent: one JSON line in (``{"op", "round"}``),
    one out (``{"ns", "cpu_ns", "written"}``), until the end of stdin."""
    import safecache

    where = os.path.realpath(safecache.__file__)
    if not where.startswith(os.path.realpath(spec["src"]) + os.sep):
        print(json.dumps({"error": f"safecache was imported from {where}, not from {spec['src']}"}), flush=True)
        return 1
    n, size = spec["n"], spec["size"]
    filler = filler_for(size)
    cache = safecache.Cache(spec["dir"], auto_trim=False)
    bucket = cache.bucket("bench", version=1)
    keys = get_keys(TAG, n)
    values = [make_value(size, i, 0, filler) for i in range(n)]
    over_keys, over_values = put_round("put_over", TAG, -1, n, size, filler)
    for k, v in zip(keys + over_keys, values + over_values):
        if not bucket.put(k, v):
            print(json.dumps({"error": f"put failed for {k!r}"}), flush=True)
            return 1
    if any(bucket.get(k) != v for k, v in zip(keys, values)):
        print(json.dumps({"error": "safecache returned wrong values"}), flush=True)
        return 1
    print(json.dumps({"ready": True, "file": where, "version": getattr(safecache, "__version__", None)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "get":
            ks, vs = keys, None
        elif op == "put_same":
            ks, vs = keys, values
        else:
            ks, vs = put_round(op, TAG, req["round"], n, size, filler)
        before = bucket.counters.writes
        gc.collect()
        c0 = thread_ns()
        ns = loop_get(bucket.get, ks) if vs is None else loop_put(bucket.put, ks, vs)
        c1 = thread_ns()
        print(json.dumps({"ns": ns, "cpu_ns": c1 - c0, "written": bucket.counters.writes - before}), flush=True)
    cache.close()
    return 0


# -- the parent ---------------------------------------------------------------------------------
class Side:
    """One source tree, served by a child process."""

    def __init__(self, label: str, spec: str, work: str, n: int) -> None:
        self.label, self.spec = label, spec
        self.src, self.origin = resolve(spec, os.path.join(work, f"{label}-src"))
        self.cpu_ns: list[int] = []
        self.written: list[int] = []
        args = {"src": self.src, "dir": os.path.join(work, f"{label}-cache"), "n": n, "size": KiB}
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=work,
            env=child_env(PYTHONPATH=self.src),
            bufsize=1,
        )
        hello = self._read()
        self.file, self.version = hello["file"], hello["version"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.label} child exited (status {self.proc.wait()}); see its error above")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"the {self.label} child: {msg['error']}")
        return msg

    def batch(self, op: str, r: int) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "round": r}) + "\n")
        self.proc.stdin.flush()
        msg = self._read()
        self.cpu_ns.append(msg["cpu_ns"])
        self.written.append(msg["written"])
        return msg["ns"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def resolve(spec: str, dest: str) -> tuple[str, str]:
    """(the directory holding ``safecache``, what it is): ``spec`` itself if
    it is a directory, else ``src/`` of the git revision ``spec``, extracted
    under ``dest``."""
    if os.path.isdir(spec):
        path = os.path.abspath(spec)
        if not os.path.isdir(os.path.join(path, "safecache")):
            raise SystemExit(f"{spec}: no safecache package in this directory (give the src directory)")
        return path, "working tree" if path == os.path.join(REPO, "src") else "directory"
    done = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "--verify", "--short", spec + "^{commit}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{spec}: neither a directory nor a git revision of {REPO}")
    commit = done.stdout.strip()
    tar = subprocess.run(
        ["git", "-C", REPO, "archive", "--format=tar", commit, "src"], capture_output=True, check=False
    )
    if tar.returncode != 0:
        raise SystemExit(f"git archive {commit} src failed: {tar.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # Python before 3.11.4
            archive.extractall(dest)  # our own repository's archive
    return os.path.join(dest, "src"), f"commit {commit}"


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median (order statistics
    from the binomial distribution); None when there are too few values."""
    x = sorted(values)
    n = len(x)
    tail, k = 0.0, 0
    for j in range(n + 1):
        p = math.comb(n, j) / 2**n
        if tail + p > (1 - confidence) / 2:
            break
        tail += p
        k = j + 1
    return (x[k - 1], x[n - k]) if k else None


def verdict(ci: tuple[float, float] | None) -> str:
    if ci is None:
        return "too few rounds to tell"
    lo, hi = ci
    if lo <= 1 <= hi:
        return "within noise"
    if lo > 1:
        return f"new slower by {(lo - 1) * 100:.0f}-{(hi - 1) * 100:.0f}%"
    return f"new faster by {(1 - hi) * 100:.0f}-{(1 - lo) * 100:.0f}%"


def compare(old: Side, new: Side, op: str, reps: int, warmup: int, n: int) -> dict[str, Any]:
    for side in (old, new):
        side.cpu_ns.clear()
        side.written.clear()
    wall, _ = interleaved(
        {"old": lambda r: old.batch(op, r), "new": lambda r: new.batch(op, r)}, reps, warmup, prepare=lambda r: r
    )
    cpu = {s.label: s.cpu_ns[warmup:] for s in (old, new)}
    out: dict[str, Any] = {s.label: summary_us(wall[s.label], n, cpu[s.label]) for s in (old, new)}
    per_round = [b / a for a, b in zip(wall["old"], wall["new"])]
    ci = median_ci(per_round)
    out |= {
        "ratio": out["new"]["median_us"] / out["old"]["median_us"],
        "paired_ratio": statistics.median(per_round),
        "paired_ratio_ci95": list(ci) if ci else None,
        "cpu_ratio": out["new"]["cpu_median_us"] / out["old"]["cpu_median_us"],
        "verdict": verdict(ci),
        "written": {s.label: sum(s.written) for s in (old, new)},
    }
    # Every put of new content must write an entry, and the identical-value put none.
    expected = {"get": None, "put_same": 0}.get(op, (reps + warmup) * n)
    if expected is not None and any(w != expected for w in out["written"].values()):
        out["warning"] = f"entries written {out['written']}, expected {expected} on each side"
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("old", help="the source tree to compare against: a src directory or a git revision")
    ap.add_argument("new", help="the source tree measured against it: a src directory or a git revision")
    ap.add_argument("--quick", action="store_true", help="section 2's --quick sizes (300 keys, 9 rounds)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (checks that it runs)")
    ap.add_argument("--keys", type=int, help="operations per batch (default: section 2's, 1,000 in a full run)")
    ap.add_argument("--rounds", type=int, help="timed rounds of every operation (default: 31; --quick 9)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {', '.join(OPS)} (default: all)")
    ap.add_argument("--dir", help="create the work directory under DIR (default: the system temp directory)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        return child(json.loads(sys.argv[2]))
    args = parse_args(argv)
    ops = [op.strip() for op in args.ops.split(",")]
    if not set(ops) <= set(OPS):
        raise SystemExit(f"--ops: choose from {', '.join(OPS)}")
    level = "smoke" if args.smoke else "quick" if args.quick else "full"
    parent = args.dir or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="safecache-compare-", dir=parent)
    cfg = config(Ctx(level=level, work=work))
    size, n, get_reps, _put_reps = cfg["sizes"][0]
    assert size == KiB
    n = args.keys or n
    sides: list[Side] = []
    results: dict[str, Any] = {
        "tool": "bench/compare.py",
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": level,
        "keys_per_batch": n,
        "warmup_rounds": cfg["warmup"],
        "loadavg_before": loadavg(),
        "ops": {},
    }
    try:
        sides = [Side("old", args.old, work, n), Side("new", args.new, work, n)]
        old, new = sides
        results["sources"] = {s.label: {"given": s.spec, "origin": s.origin, "version": s.version} for s in sides}
        print(f"old: {args.old} ({old.origin}); new: {args.new} ({new.origin}); {n} keys of 1 KiB per batch")
        for op in ops:
            reps = args.rounds or get_reps  # section 2's get rounds for every operation: enough for an interval
            print(f"  {OP_LABELS[op]}: {reps} interleaved rounds ...", flush=True)
            results["ops"][op] = compare(old, new, op, reps, cfg["warmup"], n)
    finally:
        for side in sides:
            side.close()
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_after"] = loadavg()
    print()
    print(report(results))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json.dumps(results, indent=1) + "\n")
        print(f"\nresults written to {os.path.relpath(args.json)}")
    return 0


def report(results: dict[str, Any]) -> str:
    head = f"{'operation (1 KiB)':<32}{'old µs':>9}{'new µs':>9}{'new/old':>9}{'paired':>9}{'95% CI':>14}{'CPU':>8}  verdict"
    lines = [head, "-" * len(head)]
    for op, r in results["ops"].items():
        ci = r["paired_ratio_ci95"]
        lines.append(
            f"{OP_LABELS[op]:<32}{r['old']['median_us']:>9.2f}{r['new']['median_us']:>9.2f}{r['ratio']:>8.3f}x"
            f"{r['paired_ratio']:>8.3f}x{f'{ci[0]:.3f}-{ci[1]:.3f}x' if ci else '-':>14}{r['cpu_ratio']:>7.3f}x"
            f"  {r['verdict']}"
        )
        if "warning" in r:
            lines.append(f"  WARNING: {r['warning']}")
    lines.append(
        "new/old: ratio of the median batches; paired: median of the per-round ratios, with its 95% confidence "
        "interval; CPU: the children's CPU time, new/old. "
        f"Load average before {results['loadavg_before']}, after {results['loadavg_after']}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""joblib trial: 8 processes memoizing the same 10 inputs with
``joblib.Memory``, ``backend="safecache"`` side by side with joblib's own
``FileSystemStoreBackend`` (``"local"``); then the hit latency of both.

    .venv/bin/python bench/trials/joblib.py                 # 8 processes x 10 inputs x 3 rounds, as recorded
    .venv/bin/python bench/trials/joblib.py --processes 4 --rounds 1 --json out.json

Each worker process starts at a barrier, then calls the memoized function on
inputs 0..9 in the same order, ``--rounds`` times, so all of them miss the
same input at the same moment.  The function sleeps ``--work`` seconds (the
computation) and returns a ~10 KiB value derived from its input.  Workers run
under the Windows emulator with transient denials: ``safecache.testing.patch_os``
routes every ``os``/``open`` call of the process through it, joblib's own
store included, which then renames as joblib does on Windows (its own
``nt`` code: ``_joblib_as_on_windows``).  Without ``patch_os`` (older
safecache), joblib's store runs on plain Linux: the table says which.  Per backend, summed over the workers:

- exceptions: a memoized call raised;
- wrong: a call returned a value other than the function's;
- computations: times the function ran (10 is once per input);
- hits: calls answered from the cache.

Hit latency: one process, no emulator, the median time of a memoized call
that hits, for a small value, a 1 MiB numpy array, and the same array with
``mmap_mode="r"``, the two backends' calls alternating; the ratio is
safecache over joblib's own store.  Nothing
is asserted here: the bounded check is ``tests/test_adapter_joblib.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

# This file is named after the library it tries: keep its directory off the
# path, or ``import joblib`` would import this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

SIDES = ("safecache", "local")
LABELS = {"safecache": 'backend="safecache"', "local": "joblib FileSystemStoreBackend"}

_computed: list[int] = []
_work_seconds = 0.0


def value_of(i: int) -> dict[str, Any]:
    """What the memoized function returns for input ``i``."""
    return {"input": i, "blob": hashlib.sha256(str(i).encode()).digest() * 320}


def work(i: int) -> dict[str, Any]:
    """The memoized function: a computation of ``--work`` seconds."""
    _computed.append(i)
    time.sleep(_work_seconds)
    return value_of(i)


@contextlib.contextmanager
def _emulated(side: str, denials: float, violations: float | None, seed: int) -> Iterator[str]:
    """The Windows emulator with transient denials, for both backends
    through ``patch_os`` where it exists (else joblib's own store runs on
    plain Linux).  Yields what was emulated, for the table."""
    if denials < 0:
        yield "no"
        return
    from safecache import testing

    patch_os = getattr(testing, "patch_os", None)
    if patch_os is None:
        with testing.windows_semantics(transient_denials=denials, transient_lock_violations=violations, seed=seed):
            yield "yes" if side == "safecache" else "no (safecache.testing.patch_os does not exist yet)"
        return
    with patch_os(transient_denials=denials, transient_lock_violations=violations, seed=seed):
        if side == "safecache":
            yield "yes"
        else:
            yield "yes (patch_os; joblib's Windows rename)" if _joblib_as_on_windows() else "yes (patch_os)"


def _joblib_as_on_windows() -> bool:
    """Give joblib's store the rename joblib itself uses on Windows.

    joblib's ``backports`` module defines ``concurrency_safe_rename`` under
    ``if os.name == "nt":`` (``os.replace`` retried on errors 5 and 13 for
    about a second) and, elsewhere, binds ``os.replace`` at import, which
    ``patch_os`` cannot route.  This runs joblib's own Windows block, taken
    from its source, while ``patch_os`` is active, and makes it the store's
    ``_move_item``.  False if joblib's source no longer has that block.
    """
    import inspect

    from joblib import _store_backends, backports

    source = inspect.getsource(backports)
    start = source.find('if os.name == "nt":')
    end = source.find("\nelse:", start)
    if start < 0 or end < 0:
        return False
    namespace: dict[str, Any] = {"os": os, "time": time}
    block = source[start:end].replace('if os.name == "nt":', "if True:", 1)
    exec(compile(block, backports.__file__, "exec"), namespace)
    _store_backends.FileSystemStoreBackend._move_item = staticmethod(namespace["concurrency_safe_rename"])
    return True


def _worker(
    side: str, root: str, inputs: int, rounds: int, work_s: float, denials: float, violations: float | None, seed: int, barrier: Any, out: Any
) -> None:
    global _work_seconds
    _work_seconds = work_s
    caught = warnings.catch_warnings(record=True)
    seen = caught.__enter__()
    warnings.simplefilter("always")
    import joblib

    import safecache.adapters.joblib

    safecache.adapters.joblib.register()
    counts: dict[str, Any] = {"calls": 0, "exceptions": 0, "wrong": 0, "computations": 0, "hits": 0, "errors": []}
    with _emulated(side, denials, violations, seed) as emulated:
        counts["emulated"] = emulated
        memoized = joblib.Memory(root, backend=side, verbose=0).cache(work)
        barrier.wait()
        for _ in range(rounds):
            for i in range(inputs):
                before = len(_computed)
                counts["calls"] += 1
                try:
                    value = memoized(i)
                except Exception as exc:  # what a caller of joblib would see
                    counts["exceptions"] += 1
                    if len(counts["errors"]) < 3:
                        counts["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                if value != value_of(i):
                    counts["wrong"] += 1
                if len(_computed) == before:
                    counts["hits"] += 1
        counts["computations"] = len(_computed)
    counts["warnings"] = sorted({f"{w.category.__name__}: {w.message}"[:300] for w in seen})
    out.put(counts)


def trial(
    side: str, processes: int, inputs: int, rounds: int, work_s: float, denials: float, violations: float | None, timeout: float
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    root = tempfile.mkdtemp(prefix=f"joblib-trial-{side}-")
    try:
        barrier, out = ctx.Barrier(processes), ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(side, root, inputs, rounds, work_s, denials, violations, 1000 + n, barrier, out))
            for n in range(processes)
        ]
        for p in procs:
            p.start()
        results, deadline = [], time.monotonic() + timeout
        while len(results) < processes and time.monotonic() < deadline:
            try:
                results.append(out.get(timeout=1))
            except Exception:
                if not any(p.is_alive() for p in procs) and out.empty():
                    break
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        total: dict[str, Any] = {"side": side, "processes": processes, "finished": len(results), "errors": []}
        for key in ("calls", "exceptions", "wrong", "computations", "hits"):
            total[key] = sum(r[key] for r in results)
        total["warnings"] = []
        for r in results:
            total["errors"] += r["errors"]
            total["warnings"] += [w for w in r["warnings"] if w not in total["warnings"]]
        total["emulated"] = results[0]["emulated"] if results else "?"
        total["crashed"] = processes - len(results)
        return total
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- hit latency ----------------------------------------------------------------------------
def _payload(kind: str) -> Any:
    if kind == "small":
        return b"x" * 1024
    import numpy

    return numpy.arange(1 << 17, dtype=numpy.float64)  # 1 MiB


def _load(kind: str) -> Any:
    return _payload(kind.replace("-mmap", ""))


def hit_latency(kinds: tuple[str, ...], repeat: int) -> dict[str, dict[str, float]]:
    """Median time of a memoized call that hits, per value kind and backend.
    The two backends' calls alternate, so that whatever else the machine
    does slows both alike and the ratio holds."""
    import joblib

    import safecache.adapters.joblib

    safecache.adapters.joblib.register()
    out: dict[str, dict[str, float]] = {}
    for kind in kinds:
        roots = {side: tempfile.mkdtemp(prefix=f"joblib-latency-{side}-") for side in SIDES}
        try:
            mmap_mode = "r" if kind.endswith("-mmap") else None
            memoized = {
                side: joblib.Memory(roots[side], backend=side, verbose=0, mmap_mode=mmap_mode).cache(_load) for side in SIDES
            }
            times: dict[str, list[float]] = {side: [] for side in SIDES}
            for side in SIDES:
                memoized[side](kind)
                memoized[side](kind)  # warm
            for _ in range(repeat):
                for side in SIDES:
                    t0 = time.perf_counter()
                    memoized[side](kind)
                    times[side].append(time.perf_counter() - t0)
            out[kind] = {side: statistics.median(times[side]) * 1e6 for side in SIDES}
        finally:
            for root in roots.values():
                shutil.rmtree(root, ignore_errors=True)
        out[kind]["ratio"] = out[kind]["safecache"] / out[kind]["local"]
    return out


def report(trials: list[dict[str, Any]], latency: dict[str, dict[str, float]] | None, args: argparse.Namespace) -> str:
    lines = [
        f"{args.processes} processes x {args.inputs} inputs x {args.rounds} rounds, {args.work:g} s per computation, "
        f"transient denials {args.denials:g}, lock violations "
        f"{args.denials / 10 if args.lock_violations is None else args.lock_violations:g}",
        "",
        "| backend | emulated | calls | exceptions | wrong | computations | hits |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        crashed = f" ({t['crashed']} workers did not finish)" if t["crashed"] else ""
        lines.append(
            f"| {LABELS[t['side']]} | {t['emulated']} | {t['calls']}{crashed} | {t['exceptions']} | {t['wrong']} "
            f"| {t['computations']} | {t['hits']} |"
        )
    for t in trials:
        for error in t["errors"]:
            lines.append(f"- {t['side']} raised: {error}")
        for warning in t.get("warnings", [])[:5]:
            lines.append(f"- {t['side']} warned: {warning}")
    if latency:
        lines += ["", "| hit latency (median) | safecache | joblib local | ratio |", "|---|---|---|---|"]
        for kind, row in latency.items():
            lines.append(f"| {kind} | {row['safecache']:.0f} µs | {row['local']:.0f} µs | {row['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=float, default=0.05, help="seconds per computation")
    parser.add_argument("--denials", type=float, default=0.02, help="transient denial probability (-1: no emulator)")
    parser.add_argument(
        "--lock-violations", type=float, default=None, help="probability of error 33 on a read or write (default: denials / 10)"
    )
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated: safecache,local")
    parser.add_argument("--latency-repeat", type=int, default=300, help="hits timed per value (0: skip latency)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per side")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    sides = [s for s in args.sides.split(",") if s]
    trials = [
        trial(s, args.processes, args.inputs, args.rounds, args.work, args.denials, args.lock_violations, args.timeout) for s in sides
    ]
    latency = None
    if args.latency_repeat > 0:
        kinds = ("small",)
        try:
            import numpy  # noqa: F401

            kinds += ("array-1MiB", "array-1MiB-mmap")
        except ImportError:
            pass
        latency = hit_latency(kinds, args.latency_repeat)
    print(report(trials, latency, args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"trials": trials, "latency": latency, "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A benchmark child process.

``worker.py pool``: read tasks as JSON lines on stdin; for each, open the
store and build the inputs, answer ``{"state": "ready"}``, wait for
``{"go": <unix time>}``, run until that moment, then run the task and answer
one JSON line with the result.  Exits at the end of stdin.

``worker.py large '<json>'``: one large-value operation in a fresh process,
with the process's memory before and its high-water mark after.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

perf_ns = time.perf_counter_ns


class Store:
    def __init__(self, get: Callable, set_: Callable, delete: Callable, close: Callable) -> None:
        self.get, self.set, self.delete, self.close = get, set_, delete, close


def open_store(name: str, path: str) -> Store:
    if name == "safecache":
        import safecache

        # auto_trim=False: closing would otherwise trim (outside the timed
        # loops, but it costs every worker a walk); trimming is measured in
        # the scale section.
        cache = safecache.Cache(path, auto_trim=False)
        bucket = cache.bucket("bench", version=1)
        return Store(bucket.get, bucket.put, bucket.delete, cache.close)
    if name == "diskcache":
        import diskcache

        dc = diskcache.Cache(path)
        return Store(dc.get, dc.set, dc.delete, dc.close)
    if name == "diskcache.FanoutCache":
        import diskcache

        fc = diskcache.FanoutCache(path, shards=8, timeout=0.010)
        return Store(fc.get, fc.set, fc.delete, fc.close)
    if name == "diskcache-community":
        import diskcache_community

        dcc = diskcache_community.Cache(path)
        return Store(dcc.get, dcc.set, dcc.delete, dcc.close)
    if name == "floor":
        return floor_store(path)
    raise ValueError(f"unknown store {name!r}")


def floor_store(path: str) -> Store:
    """What any file-per-entry store minimally does: one file per key (the
    key's hex as its name); get = open + read + close; set = O_EXCL temp
    file + write + close + rename over the key's file; delete = unlink.  No
    header, no checksum, no identical-entry check, no retries."""
    os.makedirs(path, exist_ok=True)
    o, r, w, c, rep, unl = os.open, os.read, os.write, os.close, os.replace, os.unlink
    rflags, wflags = os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_EXCL
    prefix = path + os.sep
    tag = f".{os.getpid()}-"
    counter = [0]

    def get(key: bytes) -> bytes | None:
        try:
            fd = o(prefix + key.hex(), rflags)
        except FileNotFoundError:
            return None
        try:
            return r(fd, 65536)
        finally:
            c(fd)

    def set_(key: bytes, value: bytes) -> bool:
        final = prefix + key.hex()
        counter[0] += 1
        tmp = final + tag + str(counter[0])
        fd = o(tmp, wflags, 0o666)
        try:
            w(fd, value)
        finally:
            c(fd)
        rep(tmp, final)
        return True

    def delete(key: bytes) -> bool:
        try:
            unl(prefix + key.hex())
            return True
        except FileNotFoundError:
            return False

    return Store(get, set_, delete, lambda: None)


def wait_for_go() -> None:
    line = sys.stdin.readline()
    start_at = json.loads(line)["go"]
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def prefill(store: Store, keys: list[bytes]) -> None:
    for key in keys:
        store.set(key, key)


# -- tasks -------------------------------------------------------------------------------------
def task_workload(spec: dict[str, Any]) -> dict[str, Any]:
    """diskcache's tests/benchmark_core.py worker: ``ops`` operations on
    ``range`` keys, 90% get / 9% set / 1% delete, each timed alone; the first
    ``warmup`` are not recorded."""
    store = open_store(spec["store"], spec["path"])
    ops, key_range, warmup = spec["ops"], spec["range"], spec["warmup"]
    if spec.get("prefill"):
        prefill(store, [str(k).encode() for k in range(key_range)])
    rnd = random.Random(spec["seed"])
    randrange, rand = rnd.randrange, rnd.random
    timings: dict[str, list[int]] = {"get": [], "set": [], "delete": []}
    cpu: dict[str, list[int]] = {"get": [], "set": [], "delete": []}
    cpu_ns = time.thread_time_ns
    misses = {"get": 0, "set": 0, "delete": 0}
    errors = 0
    get, set_, delete = store.get, store.set, store.delete
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    print(json.dumps({"state": "ready"}), flush=True)
    wait_for_go()
    if profiler is not None:
        profiler.enable()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_start = perf_ns()
    for count in range(ops):
        key = str(randrange(key_range)).encode()
        value = str(count).encode() * randrange(1, 100)
        choice = rand()
        # As in diskcache's benchmark, only the call itself is inside the timers.
        try:
            if choice < 0.900:
                action = "get"
                c0 = cpu_ns()
                t0 = perf_ns()
                result = get(key)
                t1 = perf_ns()
                c1 = cpu_ns()
                miss = result is None
            elif choice < 0.990:
                action = "set"
                c0 = cpu_ns()
                t0 = perf_ns()
                result = set_(key, value)
                t1 = perf_ns()
                c1 = cpu_ns()
                miss = result is False
            else:
                action = "delete"
                c0 = cpu_ns()
                t0 = perf_ns()
                result = delete(key)
                t1 = perf_ns()
                c1 = cpu_ns()
                miss = result is False
        except Exception:  # noqa: BLE001 - a contender's timeout counts, it does not stop the run
            t1 = perf_ns()
            c1 = cpu_ns()
            errors += 1
            miss = True
        if count > warmup:
            timings[action].append(t1 - t0)
            cpu[action].append(c1 - c0)
            if miss:
                misses[action] += 1
    elapsed = perf_ns() - t_start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {
        "misses": misses,
        "errors": errors,
        "elapsed_ns": elapsed,
        "involuntary_switches": ru.ru_nivcsw - ru0.ru_nivcsw,
        "voluntary_switches": ru.ru_nvcsw - ru0.ru_nvcsw,
    }
    if profiler is not None:
        profiler.disable()
        out["profile"] = top_functions(profiler, spec.get("profile_top", 15))
    store.close()
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump({"wall": timings, "cpu": cpu}, f)
    return out


def task_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """As many operations as fit in ``duration`` seconds: ``mixed`` (90% get /
    9% set / 1% delete, diskcache's mix) or ``put`` (every operation stores
    new content), on the worker's ``keys``."""
    store = open_store(spec["store"], spec["path"])
    keys = [k.encode() for k in spec["keys"]]
    if spec.get("prefill"):
        prefill(store, [k.encode() for k in spec["prefill"]])
    rnd = random.Random(spec["seed"])
    n_keys = len(keys)
    mixed = spec["mix"] == "mixed"
    get, set_, delete = store.get, store.set, store.delete
    counts = {"get": 0, "set": 0, "delete": 0, "errors": 0}
    print(json.dumps({"state": "ready"}), flush=True)
    wait_for_go()
    deadline = perf_ns() + int(spec["duration"] * 1e9)
    ops = 0
    randrange, rand = rnd.randrange, rnd.random
    tag = str(spec["seed"]).encode() + b":"
    t0 = perf_ns()
    now = t0
    while now < deadline:
        key = keys[randrange(n_keys)]
        try:
            if not mixed:
                set_(key, tag + str(ops).encode() * 20)
                counts["set"] += 1
            else:
                choice = rand()
                if choice < 0.900:
                    get(key)
                    counts["get"] += 1
                elif choice < 0.990:
                    set_(key, tag + str(ops).encode() * randrange(1, 100))
                    counts["set"] += 1
                else:
                    delete(key)
                    counts["delete"] += 1
        except Exception:  # noqa: BLE001
            counts["errors"] += 1
        ops += 1
        now = perf_ns()
    elapsed = now - t0
    store.close()
    return {"ops": ops, "elapsed_ns": elapsed, "counts": counts}


#: What the workers' own loops call: left out of their profiles.
HARNESS_FILES = ("worker.py", "random.py")
HARNESS_FUNCS = (
    "thread_time_ns",
    "perf_counter_ns",
    "method 'random'",
    "getrandbits",
    "method 'encode'",
    "method 'append'",
    "disable' of '_lsprof",
)


def top_functions(
    profiler: Any, top: int, files: tuple[str, ...] = HARNESS_FILES, funcs: tuple[str, ...] = HARNESS_FUNCS
) -> dict[str, Any]:
    """The ``top`` functions of a cProfile run by own time, leaving out (and
    adding up as ``harness_ms``) the functions defined in ``files`` (base
    names) or whose names contain one of ``funcs``: the benchmark's own loop."""
    import pstats

    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    harness = 0.0
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if os.path.basename(filename) in files or any(h in func for h in funcs):
            harness += tt
            continue
        rows.append(
            {
                "function": f"{os.path.basename(filename)}:{line}({func})" if filename != "~" else func,
                "calls": nc,
                "own_ms": tt * 1e3,
                "cumulative_ms": ct * 1e3,
                "own_share": tt / total if total else 0.0,
            }
        )
    rows.sort(key=lambda r: -r["own_ms"])
    return {"total_ms": total * 1e3, "harness_ms": harness * 1e3, "top": rows[:top]}


TASKS = {"workload": task_workload, "throughput": task_throughput}


def pool() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        try:
            result = TASKS[spec["task"]](spec)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
            import traceback

            traceback.print_exc()
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            return 1
        print(json.dumps(result), flush=True)
    return 0


# -- large values, one per process ----------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def large(spec: dict[str, Any]) -> int:
    import safecache

    chunk = 1 << 20
    op = spec["op"]
    cache = safecache.Cache(spec["cache"], auto_trim=False)
    bucket = cache.bucket("large", version=1)
    rss_before = _status_kb("VmRSS")
    hwm_before = _status_kb("VmHWM")
    ok = True
    nbytes = 0
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = perf_ns()
    if op == "put_stream":
        with open(spec["src"], "rb") as src:
            ok = bucket.put_stream(spec["key"], src)
        nbytes = os.path.getsize(spec["src"])
    elif op == "get":
        stream = bucket.open(spec["key"])
        if stream is None:
            ok = False
        else:
            with stream:
                while True:
                    block = stream.read(chunk)
                    if not block:
                        break
                    nbytes += len(block)
    elif op == "floor_put":  # read the source and write a temp file in 1 MiB chunks, rename it
        dst = spec["dst"]
        tmp = dst + ".tmp"
        with open(spec["src"], "rb", buffering=0) as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                while True:
                    block = src.read(chunk)
                    if not block:
                        break
                    os.write(fd, block)
                    nbytes += len(block)
            finally:
                os.close(fd)
        os.replace(tmp, dst)
    elif op == "floor_get":  # read a file in 1 MiB chunks
        fd = os.open(spec["src"], os.O_RDONLY)
        try:
            while True:
                block = os.read(fd, chunk)
                if not block:
                    break
                nbytes += len(block)
        finally:
            os.close(fd)
    elif op != "none":
        raise ValueError(op)
    elapsed = perf_ns() - t0
    hwm_after = _status_kb("VmHWM")
    cache.close()
    out = {
        "op": op,
        "ok": ok,
        "bytes": nbytes,
        "seconds": elapsed / 1e9,
        "rss_before_kb": rss_before,
        "hwm_before_kb": hwm_before,
        "hwm_after_kb": hwm_after,
    }
    if profiler is not None:
        profiler.disable()
        out["profile"] = top_functions(profiler, 10)
    print(json.dumps(out), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["pool"]:
        return pool()
    if argv[:1] == ["large"]:
        return large(json.loads(argv[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

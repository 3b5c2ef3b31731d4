"""Many real processes on one root: races, compute-once, takeover after death.

Each test runs under the Windows-semantics emulator as well as on plain
POSIX, because Windows is where sharing a cache file breaks tools (ruff #12284).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import _workers
import safecache

ctx = multiprocessing.get_context("fork")

PLATFORMS = {
    "posix": None,
    "windows": {"transient_denials": 0.05, "seed": 12284},
}


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_eight_processes_racing_on_few_keys_never_see_torn_values(tmp_path: Path, platform: str, stress: bool) -> None:
    """8 processes get and put the same 4 keys for several seconds; under the
    Windows emulator with an antivirus-like 5 % of operations denied.  No
    exception reaches a caller and every get returns None or a whole value."""
    root = str(tmp_path / "cache")
    seconds = 30.0 if stress else 3.0
    queue = ctx.Queue()
    keys = ["a", "b", "c", "d"]
    procs = [
        ctx.Process(target=_workers.race_worker, args=(root, i, keys, seconds, PLATFORMS[platform], queue))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    problems = [problem for r in results for problem in r["problems"]]
    assert problems == []
    # The race really happened: values were stored and read back.
    assert sum(r["stored"] for r in results) > 50
    assert sum(r["hits"] for r in results) > 50
    if platform == "windows":
        # ...and Windows denials really were in play (injected sharing
        # violations, replaces refused by the rules) without reaching any caller.
        assert sum(r["emulator"].get("transient", 0) for r in results) > 100


def _factory_worker(root: str, key: str, marker: str, windows: dict[str, Any] | None, start: Any, queue: Any) -> None:
    import warnings

    warnings.simplefilter("ignore")
    if windows is not None:
        from safecache.testing import enable_windows_semantics

        enable_windows_semantics(**windows)
    cache = safecache.Cache(root)
    bucket = cache.bucket("once")

    def factory() -> bytes:
        with open(marker, "a") as f:  # one line per factory run
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough that every other process arrives while it runs
        return f"made by {os.getpid()}".encode()

    start.wait()
    queue.put(bucket.get_or_create(key, factory))


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_get_or_create_runs_the_factory_once_among_eight_processes(tmp_path: Path, platform: str) -> None:
    root, marker = str(tmp_path / "cache"), str(tmp_path / "factory-runs")
    start, queue = ctx.Event(), ctx.Queue()
    windows = None if PLATFORMS[platform] is None else {"seed": 1}
    procs = [ctx.Process(target=_factory_worker, args=(root, "k", marker, windows, start, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    values = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    runs = Path(marker).read_text().split()
    assert len(runs) == 1
    assert values == [f"made by {runs[0]}".encode()] * 8


def _hanging_creator(root: str, started: Any) -> None:
    cache = safecache.Cache(root)

    def factory() -> bytes:
        started.set()
        time.sleep(3600)
        return b"never"

    cache.bucket("once").get_or_create("k", factory)


def _waiting_creator(root: str, queue: Any) -> None:
    cache = safecache.Cache(root)
    queue.put(cache.bucket("once").get_or_create("k", lambda: b"made by the waiter"))


def test_waiter_takes_over_when_the_computing_process_is_killed(tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    started, queue = ctx.Event(), ctx.Queue()
    creator = ctx.Process(target=_hanging_creator, args=(root, started))
    creator.start()
    assert started.wait(timeout=60)
    waiter = ctx.Process(target=_waiting_creator, args=(root, queue))
    waiter.start()
    time.sleep(0.3)  # let the waiter block on the lock (correctness does not depend on it)
    assert waiter.is_alive()
    os.kill(creator.pid, signal.SIGKILL)  # type: ignore[arg-type]
    creator.join()
    assert queue.get(timeout=60) == b"made by the waiter"
    waiter.join(timeout=30)
    assert safecache.Cache(root).bucket("once").get("k") == b"made by the waiter"


def test_writers_killed_at_random_moments_never_leave_a_torn_entry(tmp_path: Path, stress: bool) -> None:
    """Crash test: a writer is SIGKILLed at a random moment, 200 times (2,000
    with --stress).  Afterwards every key reads as a miss or a whole value,
    and a fresh process uses the cache in strict mode without an error."""
    import random

    root = str(tmp_path / "cache")
    keys = [f"k{i}" for i in range(6)]
    rng = random.Random(8147)
    kills = 2000 if stress else 200
    for i in range(kills):
        p = ctx.Process(target=_workers.crash_writer, args=(root, i, keys))
        p.start()
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join()
        assert p.exitcode == -signal.SIGKILL
    cache = safecache.Cache(root, strict=True)
    bucket = cache.bucket("crash")
    served = 0
    for key in keys:
        value = bucket.get(key)
        if value is not None:
            served += 1
            assert _workers.check_value(key, value) is None
    assert served > 0  # writers did complete entries between kills
    leftovers = list(Path(root).rglob("*.tmp"))
    # A fresh interpreter, strict mode: every operation must work on the crashed cache.
    code = (
        "import sys, safecache; c = safecache.Cache(sys.argv[1], strict=True); b = c.bucket('crash');"
        "[b.get(k) for k in ('k0','k1','k2','k3','k4','k5')];"
        "assert b.put('k0', b'fresh') and b.get('k0') == b'fresh';"
        "assert b.get_or_create('new', lambda: b'n') == b'n'; assert b.delete('k1') in (True, False)"
    )
    subprocess.run([sys.executable, "-c", code, root], check=True, timeout=60)
    # Killed writers leave at most their temp files, which no reader opens.
    assert all(p.name.endswith(".tmp") for p in leftovers)

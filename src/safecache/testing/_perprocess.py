"""Per-process randomness and counters, shared by the emulator and the fault
injector.

Each process, forked children included, draws from its own seeded random
stream and keeps its own counters and records, so that children do not
repeat their parent's choices and a test's numbers are those of the process
that reads them.
"""

from __future__ import annotations

import os
import random
import sys
import threading
from typing import Any


def _stream_seed(seed: int, owner_pid: int) -> str:
    """The seed of this process's random stream.

    Each process needs its own stream (children that repeat their parent's
    choices would all be denied at the same step), and a stream that is the
    same on every run.  Process ids differ between runs, so a process started
    by ``multiprocessing`` is told apart by its name ("Process-3",
    "ForkPoolWorker-2"), which follows the order processes were started in,
    and a pytest-xdist worker by its name ("gw3").  The process that made
    the object uses the seed alone; other forked processes fall back to
    their pid.
    """
    mp = sys.modules.get("multiprocessing")
    name = mp.current_process().name if mp is not None else "MainProcess"
    if name != "MainProcess":
        return f"{seed}/{name}"
    pid = os.getpid()
    if pid != owner_pid:
        return f"{seed}/pid-{pid}"
    # An xdist worker made the emulator from the same options as its
    # siblings (the plugin, SAFECACHE_EMULATE_WINDOWS): its name, gw0, gw1...
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{seed}/{worker}" if worker else f"{seed}"


class _PerProcess:
    """A seeded random stream and counters that each process has its own of.

    A forked child inherits the parent's object; the pid check makes it start
    a fresh stream and fresh counters instead of replaying the parent's.
    """

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._owner = os.getpid()
        self._pid = -1
        self._rng = random.Random()
        self._stats: dict[str, int] = {}
        self._records: list[Any] = []
        self._lock = threading.Lock()

    def _current(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            self._lock = threading.Lock()  # the parent's may be held by a thread that did not fork
            self._stats = {}
            self._records = []
            self._rng = random.Random(None if self._seed is None else _stream_seed(self._seed, self._owner))

    def chance(self, probability: float) -> bool:
        if probability <= 0.0:
            return False  # draw nothing: a zero probability must not shift the stream
        self._current()
        with self._lock:
            return self._rng.random() < probability

    def choice(self, options: tuple[int, ...]) -> int:
        self._current()
        with self._lock:
            return self._rng.choice(options)

    def count(self, key: str) -> None:
        self._current()
        with self._lock:
            self._stats[key] = self._stats.get(key, 0) + 1

    def take(self, key: str, limit: int | None) -> bool:
        """Count one more ``key`` unless ``limit`` are already counted."""
        self._current()
        with self._lock:
            done = self._stats.get(key, 0)
            if limit is not None and done >= limit:
                return False
            self._stats[key] = done + 1
            return True

    def stats(self) -> dict[str, int]:
        self._current()
        with self._lock:
            return dict(self._stats)

    def records(self) -> list[Any]:
        """A list this process appends to (a forked child starts empty)."""
        self._current()
        return self._records


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
    return float(value)

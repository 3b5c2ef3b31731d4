"""Code run inside child processes by the concurrency and crash tests.

Values are self-describing so any reader can check that it got bytes some
put wrote in full: ``b"<key>|<writer>|<seq>|<size>|"`` followed by ``size``
bytes derived from that prefix.
"""

from __future__ import annotations

import os
import random
import traceback
import warnings
from typing import Any


def make_value(key: str, writer: int, seq: int, size: int) -> bytes:
    prefix = f"{key}|{writer}|{seq}|{size}|".encode()
    block = (prefix * (64 // len(prefix) + 1))[:64]
    body = (block * (size // 64 + 1))[:size]
    return prefix + body


def check_value(key: str, value: bytes) -> str | None:
    """None if ``value`` is exactly what some ``make_value(key, ...)`` made,
    else a description of what is wrong."""
    try:
        k, writer, seq, size, _ = value.split(b"|", 4)
        expected = make_value(k.decode(), int(writer), int(seq), int(size))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a torn value
        return f"unparseable value ({exc}): {value[:60]!r}"
    if k.decode() != key:
        return f"value of key {k.decode()!r} served for {key!r}"
    if value != expected:
        return f"value differs from what writer {writer.decode()} seq {seq.decode()} wrote (len {len(value)} vs {len(expected)})"
    return None


def race_worker(root: str, writer: int, keys: list[str], seconds: float, windows: dict[str, Any] | None, queue: Any) -> None:
    """Get and put ``keys`` for ``seconds``; report counts and any problem."""
    import time

    import safecache

    result: dict[str, Any] = {
        "writer": writer, "gets": 0, "hits": 0, "puts": 0, "stored": 0, "problems": [], "warnings": 0, "emulator": {}
    }
    ops = None
    try:
        if windows is not None:
            from safecache.testing import enable_windows_semantics

            ops = enable_windows_semantics(**windows)
        rng = random.Random(writer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = safecache.Cache(root, retry_budget=0.2)
            bucket = cache.bucket("race")
            deadline = time.monotonic() + seconds
            seq = 0
            while time.monotonic() < deadline:
                key = rng.choice(keys)
                if rng.random() < 0.5:
                    seq += 1
                    size = rng.choice([10, 1000, 70_000])
                    result["puts"] += 1
                    result["stored"] += bucket.put(key, make_value(key, writer, seq, size))
                else:
                    result["gets"] += 1
                    value = bucket.get(key)
                    if value is not None:
                        result["hits"] += 1
                        problem = check_value(key, value)
                        if problem:
                            result["problems"].append(problem)
            result["warnings"] = len(caught)
        if ops is not None:
            result["emulator"] = ops.stats
    except BaseException:  # noqa: BLE001 - the test's point: nothing may escape
        result["problems"].append("exception reached the caller:\n" + traceback.format_exc())
    queue.put(result)


def crash_writer(root: str, writer: int, keys: list[str]) -> None:
    """Write forever (until SIGKILLed): small and large, whole and streamed."""
    import io

    import safecache

    warnings.simplefilter("ignore")
    cache = safecache.Cache(root)
    bucket = cache.bucket("crash")
    rng = random.Random(os.getpid())
    seq = 0
    while True:
        seq += 1
        key = rng.choice(keys)
        value = make_value(key, writer, seq, rng.choice([100, 50_000, 2_000_000]))
        if rng.random() < 0.5:
            bucket.put(key, value)
        else:
            bucket.put_stream(key, io.BytesIO(value))


class VirtualClock:
    """Stands in for the ``time`` module in ``safecache._fs`` (install it with
    ``monkeypatch.setattr(_fs, "time", clock)``, or assign it in a child
    process): the retry loop's sleeps advance a virtual clock at once and are
    counted, so a test measures how much budget an operation spent without
    waiting for it or asserting wall-clock time.  ``on_first_sleep`` runs once,
    at the first sleep: another process's action during the retries."""

    def __init__(self, on_first_sleep: Any = None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.slept = 0.0
        self.on_first_sleep = on_first_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.slept += seconds
        self.now += seconds
        action, self.on_first_sleep = self.on_first_sleep, None
        if action is not None:
            action()


def stored_reader(root: str, worker: int, keys: list[str], rounds: int, windows: dict[str, Any], queue: Any) -> None:
    """Get every one of ``keys`` (all stored, never changed) ``rounds`` times
    under the Windows emulator; report false misses (None for a stored key),
    wrong values, warnings and the emulator's counters.  Bounded in count, and
    in time by a 120 s guard that reports itself."""
    import time

    import safecache

    result: dict[str, Any] = {
        "worker": worker, "gets": 0, "false_misses": 0, "problems": [], "warnings": 0, "emulator": {},
        "timed_out": False,
    }
    try:
        from safecache.testing import enable_windows_semantics

        ops = enable_windows_semantics(**windows)
        deadline = time.monotonic() + 120
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bucket = safecache.Cache(root).bucket("reads")  # the default retry budget (2 s)
            for _ in range(rounds):
                for key in keys:
                    result["gets"] += 1
                    value = bucket.get(key)
                    if value is None:
                        result["false_misses"] += 1
                    else:
                        problem = check_value(key, value)
                        if problem:
                            result["problems"].append(problem)
                if time.monotonic() > deadline:
                    result["timed_out"] = True
                    break
            result["warnings"] = len(caught)
        result["emulator"] = ops.stats
    except BaseException:  # noqa: BLE001 - the test's point: nothing may escape
        result["problems"].append("exception reached the caller:\n" + traceback.format_exc())
    queue.put(result)


def unreadable_reader(
    root: str, keys: list[str], gets: int, windows: dict[str, Any], fault: Any, queue: Any
) -> None:
    """Get each of ``keys`` (stored, but unreadable) ``gets`` times under the
    emulator, with ``fault`` (an ``inject_errors`` argument tuple, or None) on
    top, the retry loop on a :class:`VirtualClock`; report how much budget
    was spent and by how many gets."""
    import safecache
    from safecache import _fs
    from safecache.testing import enable_windows_semantics, inject_errors

    result: dict[str, Any] = {"values": [], "slept": 0.0, "gets_that_slept": 0, "budget": 0.0, "problems": []}
    try:
        warnings.simplefilter("ignore")
        ops = enable_windows_semantics(**windows)
        clock = VirtualClock()
        _fs.time = clock  # type: ignore[assignment]  # this process only
        cache = safecache.Cache(root)
        bucket = cache.bucket("reads")
        result["budget"] = cache.retry_budget
        with inject_errors(*fault[0], **fault[1]) if fault else _nothing():
            for _ in range(gets):
                for key in keys:
                    before = clock.sleeps
                    result["values"].append(bucket.get(key))
                    result["gets_that_slept"] += clock.sleeps > before
        result["slept"] = clock.slept
        result["emulator"] = ops.stats
    except BaseException:  # noqa: BLE001
        result["problems"].append("exception reached the caller:\n" + traceback.format_exc())
    queue.put(result)


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def memoize_worker(root: str, marker: str, start: Any, queue: Any) -> None:
    """Call a memoized function that records each run in ``marker``; put its
    result on ``queue`` (test_memoize: compute once among processes)."""
    import time

    import safecache

    warnings.simplefilter("ignore")
    bucket = safecache.Cache(root).bucket("memo")

    @bucket.memoize
    def slow(x: int) -> dict[str, int]:
        with open(marker, "a") as f:  # one line per run
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough that every other process arrives while it runs
        return {"x": x, "by": os.getpid()}

    start.wait()
    queue.put(slow(21))


def aio_worker(root: str, marker: str, start: Any, queue: Any) -> None:
    """Four coroutines ask ``bucket.aio.get_or_create`` for one key; the
    factory records each run in ``marker`` (test_aio: compute once among
    the coroutines of several processes)."""
    import asyncio

    import safecache

    warnings.simplefilter("ignore")
    bucket = safecache.Cache(root).bucket("aio")

    async def factory() -> bytes:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        await asyncio.sleep(0.5)
        return f"made by {os.getpid()}".encode()

    async def main() -> list[bytes]:
        return list(await asyncio.gather(*(bucket.aio.get_or_create("k", factory) for _ in range(4))))

    start.wait()
    queue.put(asyncio.run(main()))

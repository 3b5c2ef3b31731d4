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

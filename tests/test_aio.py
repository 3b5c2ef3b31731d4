"""``bucket.aio`` (safecache._aio, docs/async.md): the bucket's methods,
awaited, with their file-system work off the event loop; an async stream;
compute-once among coroutines and processes; an async lock; cancellation
that leaves no lock held and no stream open."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import warnings
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import pytest

import _workers
import safecache
from safecache import _aio, _osops
from safecache._osops import OsOps  # safecache.testing.OsOps; this avoids importing the emulators

T = TypeVar("T")


@pytest.fixture
def bucket(cache: safecache.Cache) -> safecache.Bucket:
    return cache.bucket("aio")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


class ThreadRecorder(OsOps):
    """The real OS, noting which threads make system calls."""

    def __init__(self) -> None:
        self.threads: set[str] = set()


def _recording(name: str) -> Callable[..., Any]:
    real = getattr(OsOps, name)

    def call(self: ThreadRecorder, *args: Any, **kwargs: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        return real(self, *args, **kwargs)

    return call


for _name, _member in vars(OsOps).items():
    if callable(_member) and not _name.startswith("_"):
        setattr(ThreadRecorder, _name, _recording(_name))


# -- the methods -----------------------------------------------------------------------------
def test_the_methods_do_what_the_buckets_do(bucket: safecache.Bucket) -> None:
    async def main() -> None:
        aio = bucket.aio
        assert await aio.get("k") is None
        assert await aio.contains("k") is False
        assert await aio.put("k", b"value", meta=b"m") is True
        assert await aio.get("k") == b"value"
        assert await aio.contains("k") is True
        assert await aio.get_meta("k") == b"m"
        assert await aio.get_with_meta("k") == (b"value", b"m")
        assert await aio.set_meta("k", b"n") is True
        assert await aio.get_with_meta("k") == (b"value", b"n")
        assert await aio.touch("k") is True
        assert await aio.delete("k") is True
        assert await aio.delete("k") is False
        assert await aio.touch("k") is False

    run(main())
    assert bucket.get("k") is None


def test_bucket_aio_is_one_facade_per_bucket(bucket: safecache.Bucket) -> None:
    assert bucket.aio is bucket.aio
    assert bucket.aio.bucket is bucket


def test_no_system_call_runs_on_the_event_loops_thread(bucket: safecache.Bucket) -> None:
    recorder = ThreadRecorder()
    big = os.urandom(3 << 20)

    async def main() -> None:
        aio = bucket.aio
        await aio.put("k", b"v")
        await aio.get("k")
        await aio.put("big", big)
        stream = await aio.open("big")
        assert stream is not None
        async with stream:
            assert b"".join([chunk async for chunk in stream]) == big
        await aio.get_or_create("made", _value(b"x"))
        async with aio.lock("k"):
            pass
        await aio.put_stream("s", _chunks([b"a", b"b"]))
        await aio.delete("k")

    _osops.current = recorder  # the conftest restores the real one
    run(main())
    assert recorder.threads, "the recorder saw no call"
    assert threading.current_thread().name not in recorder.threads
    assert all(name.startswith("safecache-aio-") for name in recorder.threads)


def test_programming_errors_raise_at_the_call(bucket: safecache.Bucket) -> None:
    async def main() -> None:
        aio = bucket.aio
        with pytest.raises(TypeError):
            await aio.get({1})
        with pytest.raises(TypeError):
            await aio.put("k", "text")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await aio.get_or_create("k", _value(b"x"), ttl=-1)
        with pytest.raises(ValueError):
            await aio.get_or_create("k", _value(b"x"), kind="cheap")
        with pytest.raises(ValueError):
            aio.lock("k", timeout=float("nan"))
        with pytest.raises(TypeError):
            aio.lock({1})

    run(main())


# -- open: an async stream -------------------------------------------------------------------------
def test_open_streams_a_large_value_in_one_mib_chunks(bucket: safecache.Bucket) -> None:
    data = os.urandom((3 << 20) + 5)
    bucket.put("big", data)

    async def main() -> list[bytes]:
        stream = await bucket.aio.open("big")
        assert stream is not None
        async with stream:
            chunks = [chunk async for chunk in stream]
        assert stream.closed
        return chunks

    chunks = run(main())
    assert [len(c) for c in chunks] == [1 << 20] * 3 + [5]
    assert b"".join(chunks) == data


def test_read_returns_what_is_asked_then_the_rest_then_nothing(bucket: safecache.Bucket) -> None:
    for key, data in (("small", b"0123456789"), ("large", os.urandom(2 << 20))):
        bucket.put(key, data)

        async def main(key: str) -> tuple[bytes, bytes, bytes]:
            stream = await bucket.aio.open(key)
            assert stream is not None
            try:
                return await stream.read(4), await stream.read(), await stream.read()
            finally:
                await stream.aclose()
                await stream.aclose()  # idempotent

        assert run(main(key)) == (data[:4], data[4:], b"")


def test_open_of_a_missing_key_is_none(bucket: safecache.Bucket) -> None:
    assert run(bucket.aio.open("absent")) is None
    assert run(bucket.aio.open_with_meta("absent")) is None


def test_open_with_meta_gives_the_stream_and_its_metadata(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"value", meta=b"headers")

    async def main() -> tuple[bytes, bytes]:
        opened = await bucket.aio.open_with_meta("k")
        assert opened is not None
        stream, meta = opened
        async with stream:
            return await stream.read(), meta

    assert run(main()) == (b"value", b"headers")


# -- put_stream from an async source -------------------------------------------------------------
async def _chunks(parts: list[bytes], fail: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part
    if fail:
        raise ConnectionError("the download broke off")


def test_put_stream_stores_an_async_source(bucket: safecache.Bucket) -> None:
    parts = [os.urandom(1 << 20), b"tail"]
    assert run(bucket.aio.put_stream("k", _chunks(parts), ttl=60)) is True
    assert bucket.get("k") == b"".join(parts)


def test_put_stream_takes_a_plain_source_too(bucket: safecache.Bucket) -> None:
    assert run(bucket.aio.put_stream("k", [b"a", b"b"])) is True
    assert bucket.get("k") == b"ab"


def test_a_failing_async_source_stores_nothing_and_leaves_no_temp_file(bucket: safecache.Bucket) -> None:
    with pytest.raises(ConnectionError):
        run(bucket.aio.put_stream("k", _chunks([b"part"], fail=True)))
    assert bucket.get("k") is None
    directory = bucket.directory
    assert directory is not None
    assert [f for _, _, files in os.walk(directory) for f in files] == []


def test_a_cancelled_put_stream_stores_nothing(bucket: safecache.Bucket) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1024
            await asyncio.sleep(0.001)

    async def main() -> None:
        task = asyncio.create_task(bucket.aio.put_stream("k", endless()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert bucket.get("k") is None


# -- get_or_create ---------------------------------------------------------------------------------
def _value(data: bytes, runs: list[int] | None = None, delay: float = 0.0) -> Callable[[], Awaitable[bytes]]:
    async def factory() -> bytes:
        if runs is not None:
            runs.append(1)
        await asyncio.sleep(delay)
        return data

    return factory


def test_get_or_create_computes_once_among_coroutines(bucket: safecache.Bucket) -> None:
    runs: list[int] = []

    async def main() -> list[bytes]:
        factory = _value(b"made", runs, delay=0.1)
        return list(await asyncio.gather(*(bucket.aio.get_or_create("k", factory) for _ in range(20))))

    assert run(main()) == [b"made"] * 20
    assert runs == [1]
    assert bucket.get("k") == b"made"
    assert bucket.aio._turns == {}  # nothing outlives the loop


def test_get_or_create_computes_once_among_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    root, marker = str(tmp_path / "cache"), str(tmp_path / "runs")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_workers.aio_worker, args=(root, marker, start, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    values = [value for _ in procs for value in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    runs = Path(marker).read_text().split()
    assert len(runs) == 1
    assert values == [f"made by {runs[0]}".encode()] * 16


def test_waiting_for_another_process_lock_does_not_block_the_loop(bucket: safecache.Bucket) -> None:
    """A lock held elsewhere (here: another descriptor, which flock treats as
    another holder): the loop keeps running while get_or_create waits, and
    when the holder stores the value, the waiter reads it instead of computing."""
    runs: list[int] = []
    holder = bucket.lock("k", timeout=5)
    assert holder.__enter__() is True

    async def main() -> bytes:
        task = asyncio.create_task(bucket.aio.get_or_create("k", _value(b"mine", runs), timeout=60))
        await asyncio.sleep(0.3)  # if the wait blocked the loop, this would resume only after the task ended
        assert not task.done()
        bucket.put("k", b"theirs")
        holder.__exit__(None, None, None)
        return await task

    assert run(main()) == b"theirs"
    assert runs == []


def test_a_factory_exception_propagates_and_nothing_is_stored(bucket: safecache.Bucket) -> None:
    async def broken() -> bytes:
        raise RuntimeError("no network")

    with pytest.raises(RuntimeError, match="no network"):
        run(bucket.aio.get_or_create("k", broken))
    assert bucket.get("k") is None
    assert run(bucket.aio.get_or_create("k", _value(b"later"))) == b"later"


def test_get_or_create_needs_an_async_factory_of_bytes(bucket: safecache.Bucket) -> None:
    with pytest.raises(TypeError, match="async factory"):
        run(bucket.aio.get_or_create("k", lambda: b"sync"))  # type: ignore[arg-type,return-value]

    async def text() -> str:
        return "text"

    with pytest.raises(TypeError, match="bytes"):
        run(bucket.aio.get_or_create("k", text))  # type: ignore[arg-type]


@pytest.mark.parametrize("state", ["disabled", "read-only"])
def test_a_cache_that_cannot_store_still_runs_the_factory(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    if state == "read-only":
        cache_dir.mkdir()
        monkeypatch.setattr("safecache._location._read_only_fs", lambda path: True)
    runs: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", safecache.CacheWarning)
        bucket = safecache.Cache(cache_dir, enabled=state != "disabled").bucket("aio")
        assert run(bucket.aio.get_or_create("k", _value(b"v", runs))) == b"v"
        assert run(bucket.aio.get_or_create("k", _value(b"v", runs))) == b"v"
        assert run(bucket.aio.put("k", b"v")) is False
    assert runs == [1, 1]


def test_strict_read_only_raises_before_the_factory_runs(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir.mkdir()
    monkeypatch.setattr("safecache._location._read_only_fs", lambda path: True)
    runs: list[int] = []
    with pytest.warns(safecache.CacheWarning, match="read-only"):
        bucket = safecache.Cache(cache_dir, strict=True).bucket("aio")
    with pytest.raises(safecache.CacheReadOnlyError):
        run(bucket.aio.get_or_create("k", _value(b"v", runs)))
    assert runs == []


def test_one_facade_serves_one_loop_after_another(bucket: safecache.Bucket) -> None:
    for i in range(3):
        assert run(bucket.aio.get_or_create(f"k{i}", _value(b"v"))) == b"v"
    assert bucket.aio._turns == {}


# -- lock ------------------------------------------------------------------------------------------
def test_lock_holds_the_buckets_cross_process_lock(cache_dir: Path) -> None:
    bucket = safecache.Cache(cache_dir, strict=True).bucket("aio")

    async def main() -> None:
        async with bucket.aio.lock("k") as held:
            assert held is True
            with pytest.raises(safecache.LockTimeoutError):
                await asyncio.to_thread(_take, bucket, "k")
        await asyncio.to_thread(_take, bucket, "k")  # released

    run(main())


def _take(bucket: safecache.Bucket, key: str) -> None:
    with bucket.lock(key, timeout=0):
        pass


def test_lock_is_not_held_when_the_cache_is_disabled(cache_dir: Path) -> None:
    bucket = safecache.Cache(cache_dir, enabled=False).bucket("aio")

    async def main() -> bool:
        async with bucket.aio.lock("k") as held:
            return held

    assert run(main()) is False


def test_a_cancelled_wait_for_a_lock_does_not_leave_it_held(cache_dir: Path) -> None:
    bucket = safecache.Cache(cache_dir, strict=True).bucket("aio")
    holder = bucket.lock("k")
    holder.__enter__()

    async def main() -> None:
        task = asyncio.create_task(_hold(bucket))
        await asyncio.sleep(0.1)  # the task waits for the lock in a thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        holder.__exit__(None, None, None)  # the waiting thread now takes it, then lets it go
        await asyncio.to_thread(_take_within, bucket, "k", 10.0)

    run(main())


async def _hold(bucket: safecache.Bucket) -> None:
    async with bucket.aio.lock("k", timeout=30):
        await asyncio.sleep(3600)


def _take_within(bucket: safecache.Bucket, key: str, timeout: float) -> None:
    with bucket.lock(key, timeout=timeout):
        pass


def test_a_cancelled_open_closes_the_stream_it_opened(bucket: safecache.Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket.put("big", os.urandom(2 << 20))
    opened: list[Any] = []
    entered, release = threading.Event(), threading.Event()
    real_open = bucket.open

    def slow_open(key: object) -> Any:
        entered.set()
        release.wait(10)
        stream = real_open(key)
        opened.append(stream)
        return stream

    monkeypatch.setattr(bucket, "open", slow_open)

    async def main() -> None:
        task = asyncio.create_task(bucket.aio.open("big"))
        await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        for _ in range(200):
            if opened and opened[0].closed:
                break
            await asyncio.sleep(0.01)

    run(main())
    assert opened and opened[0].closed


def test_the_io_pool_is_safecaches_own_and_small() -> None:
    assert _aio.IO_THREADS <= 8
    pool = _aio._pool()
    assert pool is _aio._pool()
    assert run(_aio._in_thread(lambda: threading.current_thread().name)).startswith("safecache-aio-io")


def test_a_process_exits_promptly_while_a_cancelled_wait_goes_on(tmp_path: Path) -> None:
    """Another process holds the lock; this one's wait is cancelled and the
    program ends.  The waiting thread must not keep the interpreter alive
    until the lock timeout (pools' threads are joined at exit)."""
    import subprocess
    import sys

    root = tmp_path / "cache"
    holder = safecache.Cache(root).bucket("aio").lock("k")
    assert holder.__enter__() is True
    code = (
        "import asyncio, safecache\n"
        f"bucket = safecache.Cache({str(root)!r}, lock_timeout=600).bucket('aio')\n"
        "async def main():\n"
        "    task = asyncio.create_task(bucket.aio.get_or_create('k', None))\n"
        "    await asyncio.sleep(0.3)\n"
        "    task.cancel()\n"
        "asyncio.run(main())\n"
        "print('done')\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        holder.__exit__(None, None, None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"

"""The async facade of a bucket: ``bucket.aio`` (docs/async.md).

Every method does its file-system work in a worker thread, so the event
loop never waits for a disk, a retry budget or a lock.  The threads are
safecache's own, not the loop's default executor's:

* the **I/O pool** (``IO_THREADS``) runs gets, puts, opens and reads.
  The default executor is the application's (``asyncio.to_thread``, and
  ``getaddrinfo`` for every connection it opens): a cache on a slow or
  flaky file system (a scanner making Windows retry for its budget, an NFS
  server gone away) must not starve it, and the application's work must
  not delay the cache.  Disk work does not get faster with more threads
  than a few, so the pool is small.
* a **wait for a cross-process lock** runs in a daemon thread of its own.
  A wait can last as long as another process computes a value (up to the
  lock timeout): kept apart, waits never hold up a get, and a wait that
  was cancelled never delays the interpreter's exit (a pool's threads are
  joined at exit; if the process ends holding the lock, the OS releases it).

Compute-once has two levels: coroutines of one process asking for the same
key take turns on an ``asyncio.Lock`` (no thread is spent on a wait inside
the process), and the one whose turn it is takes the bucket's cross-process
lock in a thread before it awaits the factory on the loop.

Cancellation: a call cancelled while its thread is under way lets the
thread finish (threads cannot be interrupted), then undoes what must not
outlive the call: a lock taken is released, a stream opened is closed, an
entry being written is discarded.  A cancelled ``put`` may still store.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from . import _format, _keys, _locks, _write
from ._errors import CacheReadOnlyError
from ._location import READ_ONLY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import IO, Any, AsyncIterable, Awaitable, Callable, Iterable, TypeVar, Union

    from ._bucket import Bucket
    from ._locks import MaybeLock

    T = TypeVar("T")
    Key = object
    Source = Union[bytes, bytearray, memoryview, IO[bytes], Iterable[bytes], AsyncIterable[bytes]]

#: Threads for file-system calls, shared by every bucket of the process.
IO_THREADS = 8
#: Size of the chunks ``async for chunk in stream`` yields.
CHUNK = 1 << 20

_pools: dict[str, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(name: str = "io") -> ThreadPoolExecutor:
    pool = _pools.get(name)
    if pool is None:
        with _pools_lock:
            pool = _pools.get(name)
            if pool is None:
                pool = _pools[name] = ThreadPoolExecutor(IO_THREADS, thread_name_prefix=f"safecache-aio-{name}")
    return pool


def _in_daemon(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """Run ``fn`` in a new daemon thread (for waits: see the module's doc)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name="safecache-aio-lock", daemon=True).start()
    return future


def _forget_pools() -> None:
    # A forked child has none of its parent's threads, but a pool would
    # believe its idle ones are still there and queue work for nobody.
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


async def _in_thread(
    fn: Callable[..., T], *args: Any, wait: bool = False, undo: Callable[[T], object] | None = None, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs)`` in a worker thread of the I/O pool (``wait``:
    in a daemon thread of its own).  If the caller is cancelled while the
    call is under way, ``undo(result)`` runs (off the loop's thread) once
    the call has finished, if it succeeded."""
    future: Future[T] = _in_daemon(fn, *args, **kwargs) if wait else _pool().submit(fn, *args, **kwargs)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if undo is not None:
            future.add_done_callback(lambda done: _undo_after(done, undo))
        raise


def _undo_after(done: Future[T], undo: Callable[[T], object]) -> None:
    if done.cancelled() or done.exception() is not None:
        return  # never ran, or failed: nothing to undo
    result = done.result()
    try:
        _pool().submit(undo, result)  # not on the loop's thread (this may run there)
    except RuntimeError:  # the interpreter is shutting down: no new pool work
        undo(result)


class AsyncReader:
    """An entry's value as an async stream (``await bucket.aio.open(key)``).

    ``await read(n=-1)`` returns up to ``n`` bytes (all the rest by default;
    ``b""`` at the end); ``async for chunk in stream`` yields chunks of
    ``CHUNK`` (1 MiB); ``await aclose()`` or ``async with`` closes it.  Reads
    of a large entry run in a worker thread; a small entry is already in
    memory.  The bytes were verified before ``open`` returned.  A read
    cancelled mid-way leaves the position undefined: close the stream.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._memory = isinstance(stream, io.BytesIO)

    @property
    def closed(self) -> bool:
        return self._stream.closed

    async def read(self, n: int = -1) -> bytes:
        if self._memory:
            return self._stream.read(n)
        return await _in_thread(self._stream.read, n)

    def __aiter__(self) -> AsyncReader:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Close the stream (idempotent).  Prompt closing matters on Windows,
        where an open reader makes writers of the same key wait."""
        if self._memory or self._stream.closed:
            self._stream.close()
        else:
            await _in_thread(self._stream.close)

    async def __aenter__(self) -> AsyncReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _close_reader(opened: object) -> None:
    if isinstance(opened, tuple):
        opened = opened[0]
    if opened is not None:
        opened.close()  # type: ignore[attr-defined]


class AsyncLock:
    """``async with bucket.aio.lock(key) as held:`` -- the bucket's
    cross-process lock for ``key`` (:meth:`Bucket.lock`), taken and released
    in worker threads.  ``held`` is as there: False when the lock could not
    be taken (lenient mode, one warning; strict mode raises).  Not re-entrant,
    and not a lock between coroutines of one process that do not use it."""

    def __init__(self, bucket: Bucket, key: Key, timeout: float | None) -> None:
        if timeout is not None:
            _locks.check_timeout(timeout)  # here, not in a thread later
        _keys.key_digest(key)  # an unsupported key raises at the call
        self._bucket = bucket
        self._key = key
        self._timeout = timeout
        self._held: MaybeLock | None = None

    def _take(self) -> tuple[MaybeLock, bool]:
        lock = self._bucket.lock(self._key, timeout=self._timeout)
        return lock, lock.__enter__()

    async def __aenter__(self) -> bool:
        if self._held is not None:
            raise RuntimeError("this lock is already held: aio.lock() is not re-entrant")
        lock, held = await _in_thread(self._take, wait=True, undo=_release)
        self._held = lock
        return held

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lock, self._held = self._held, None
        if lock is not None:
            # Shielded: a second cancellation must not leave the lock held.
            await asyncio.shield(_in_thread(lock.__exit__, None, None, None))


def _release(taken: tuple[MaybeLock, bool]) -> None:
    taken[0].__exit__(None, None, None)


class AsyncBucket:
    """The async facade of a :class:`Bucket` (``bucket.aio``); see docs/async.md.

    Each method is the bucket's method of the same name, with the same
    arguments, results and error policy, awaited: the file-system work runs
    in worker threads, never on the event loop.  ``contains(key)`` stands for
    ``key in bucket``; ``open`` returns an :class:`AsyncReader`;
    ``get_or_create`` awaits an async factory; ``lock`` is an async context
    manager.  Programming errors (an unsupported key, a bad ``ttl``) raise
    at the call.  Usable from any number of event loops and threads.
    """

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        # (loop, key digest) -> [lock, coroutines using it]: one computes at a time per key.
        self._turns: dict[tuple[object, str], list[Any]] = {}

    def __repr__(self) -> str:
        return f"<AsyncBucket of {self.bucket!r}>"

    async def get(self, key: Key) -> bytes | None:
        """:meth:`Bucket.get`, awaited."""
        return await _in_thread(self.bucket.get, key)

    async def get_meta(self, key: Key) -> bytes | None:
        """:meth:`Bucket.get_meta`, awaited."""
        return await _in_thread(self.bucket.get_meta, key)

    async def get_with_meta(self, key: Key) -> tuple[bytes, bytes] | None:
        """:meth:`Bucket.get_with_meta`, awaited."""
        return await _in_thread(self.bucket.get_with_meta, key)

    async def contains(self, key: Key) -> bool:
        """``key in bucket``, awaited."""
        return await _in_thread(self.bucket.__contains__, key)

    async def put(
        self,
        key: Key,
        data: bytes | bytearray | memoryview,
        *,
        kind: str = "built",
        meta: bytes | None = None,
        ttl: float | None = None,
    ) -> bool:
        """:meth:`Bucket.put`, awaited.  ``data`` must not change until it returns."""
        return await _in_thread(self.bucket.put, key, data, kind=kind, meta=meta, ttl=ttl)

    async def put_stream(
        self, key: Key, source: Source, *, kind: str = "built", meta: bytes | None = None, ttl: float | None = None
    ) -> bool:
        """:meth:`Bucket.put_stream`, awaited; ``source`` may also be an async
        iterable of bytes-like chunks (read on the loop, written in a thread,
        one chunk at a time: memory stays bounded).  An exception from the
        source, or a cancellation, propagates and nothing is stored."""
        if not hasattr(source, "__aiter__"):
            return await _in_thread(self.bucket.put_stream, key, source, kind=kind, meta=meta, ttl=ttl)
        writer = self.bucket.writer(key, kind=kind, meta=meta, ttl=ttl)  # checks its arguments; no file yet
        # One call on the writer at a time, even when a cancelled write is
        # still under way in its thread as the discard starts.
        turn = threading.Lock()

        def serial(fn: Callable[..., T], *args: Any) -> T:
            with turn:
                return fn(*args)

        try:
            await _in_thread(serial, writer.__enter__)
            async for chunk in source:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"put_stream(): the source yielded {type(chunk).__name__}, not bytes-like chunks")
                await _in_thread(serial, writer.write, chunk)
        except BaseException as exc:
            await asyncio.shield(_in_thread(serial, writer.__exit__, type(exc), exc, None))  # discards
            raise
        await asyncio.shield(_in_thread(serial, writer.__exit__, None, None, None))
        return writer.stored

    async def set_meta(self, key: Key, meta: bytes) -> bool:
        """:meth:`Bucket.set_meta`, awaited."""
        return await _in_thread(self.bucket.set_meta, key, meta)

    async def touch(self, key: Key) -> bool:
        """:meth:`Bucket.touch`, awaited."""
        return await _in_thread(self.bucket.touch, key)

    async def delete(self, key: Key) -> bool:
        """:meth:`Bucket.delete`, awaited."""
        return await _in_thread(self.bucket.delete, key)

    async def open(self, key: Key) -> AsyncReader | None:
        """:meth:`Bucket.open` as an :class:`AsyncReader`, or None."""
        stream = await _in_thread(self.bucket.open, key, undo=_close_reader)
        return None if stream is None else AsyncReader(stream)

    async def open_with_meta(self, key: Key) -> tuple[AsyncReader, bytes] | None:
        """:meth:`Bucket.open_with_meta`: ``(AsyncReader, meta)``, or None."""
        opened = await _in_thread(self.bucket.open_with_meta, key, undo=_close_reader)
        return None if opened is None else (AsyncReader(opened[0]), opened[1])

    def lock(self, key: Key, *, timeout: float | None = None) -> AsyncLock:
        """:meth:`Bucket.lock` as an async context manager::

            async with bucket.aio.lock(key) as held:
                ...

        The wait runs in a thread of its own; a cancelled wait releases the
        lock if the thread takes it after all."""
        return AsyncLock(self.bucket, key, timeout)

    async def get_or_create(
        self,
        key: Key,
        factory: Callable[[], Awaitable[bytes | bytearray | memoryview]],
        *,
        kind: str = "built",
        timeout: float | None = None,
        meta: bytes | None = None,
        ttl: float | None = None,
    ) -> bytes:
        """Return ``key``'s value, awaiting ``factory()`` to make it if missing.

        :meth:`Bucket.get_or_create` for async code, with the same contract:
        among the coroutines of this process and the threads and processes
        asking for the same missing key at once, one awaits ``factory``; the
        others wait (coroutines on an ``asyncio.Lock``, the process on the
        cross-process lock, in a thread) and then read what it stored.
        ``factory`` runs on the event loop and must return an awaitable of
        bytes.  Its exceptions (and cancellation) propagate and nothing is
        stored.  A cache that cannot store runs the factory and returns its
        result; strict mode raises as the bucket's method does.
        """
        _format.kind_code(kind)
        _write.check_meta(meta)
        _write.expires_ns(ttl, 0)
        if timeout is not None:
            _locks.check_timeout(timeout)
        bucket = self.bucket
        value = await _in_thread(bucket.get, key)
        if value is not None:
            return value
        cache = bucket.cache
        if cache.strict and cache.state is READ_ONLY:
            raise CacheReadOnlyError(
                f"cannot store a computed value: {cache.state_reason}", filename=cache.path, operation="get_or_create"
            )
        turn = self._turn(key)
        try:
            async with turn[0]:
                value = await _in_thread(bucket.get, key)  # the coroutine before us may have stored it
                if value is not None:
                    return value
                async with self.lock(key, timeout=timeout) as held:
                    if held:
                        value = await _in_thread(bucket.get, key)  # another process may have
                        if value is not None:
                            return value
                    made = await _made(factory)
                    await _in_thread(bucket.put, key, made, kind=kind, meta=meta, ttl=ttl)
                    return made
        finally:
            turn[1] -= 1
            if not turn[1]:
                self._turns.pop(turn[2], None)

    def _turn(self, key: Key) -> list[Any]:
        """This loop's turn-taking lock for ``key``, counted while in use and
        forgotten after (so nothing outlives its loop)."""
        name = (asyncio.get_running_loop(), _keys.key_digest(key))
        turn = self._turns.get(name)
        if turn is None:
            turn = self._turns[name] = [asyncio.Lock(), 0, name]
        turn[1] += 1
        return turn


async def _made(factory: Callable[[], Awaitable[bytes | bytearray | memoryview]]) -> bytes:
    awaitable = factory()
    if not hasattr(awaitable, "__await__"):
        raise TypeError(
            f"get_or_create() needs an async factory (returning an awaitable), not one returning "
            f"{type(awaitable).__name__}; use bucket.get_or_create() for a plain function"
        )
    value = await awaitable
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"factory must return bytes, not {type(value).__name__}")


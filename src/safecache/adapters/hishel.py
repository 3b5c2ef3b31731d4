"""hishel 2 storages kept in a safecache bucket: ``SyncStorage(bucket)`` is a
``hishel.BaseStorage``, ``AsyncStorage(bucket)`` a ``hishel.AsyncBaseStorage``.

``("hishel-entry", id)`` is one response: its body is the value; request,
status, headers, TTL deadline, TTI and last use the metadata (JSON).  It is
published once the consumer has read the body to its end, and never
rewritten (``set_meta`` replaces its metadata).  ``("hishel-key", key)``
lists the ids stored under a hishel key; it changes only under that key's
lock, which also serialises metadata rewrites.  docs/adapters/hishel.md has
the rest: expiry, failures, what hishel's own tests check.  Since 0.2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

from .._errors import CacheError
from .._format import MAX_META

try:
    from hishel import AsyncBaseStorage, BaseStorage, Entry, Headers, Request, Response
except ImportError as exc:  # not installed, or hishel 0.x/1.x
    raise ImportError(f"safecache.adapters.hishel needs hishel 2 ({exc}): pip install 'safecache[hishel]'") from exc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._aio import AsyncReader
    from .._bucket import Bucket

__all__ = ["AsyncStorage", "SyncStorage"]

log = logging.getLogger("safecache")

#: Entries kept per hishel key (the oldest are dropped): several share a key
#: when responses vary, or when processes missed at once.
MAX_ENTRIES_PER_KEY = 64
#: Bytes per chunk of a stored body served (hishel's SQLite storage's).
CHUNK = 128 * 1024
_ID = 16  # bytes of an entry id in an index
_DISCARD = (Exception, Exception("discarded"), None)  # raised into a writer: it drops what it holds

Update = Callable[[bytes | None], bytes | None]


def _entry_key(entry_id: uuid.UUID) -> tuple[str, str]:
    return ("hishel-entry", entry_id.hex)


def _index_key(key: str) -> tuple[str, str]:
    return ("hishel-key", key)


# -- what is stored --------------------------------------------------------------------------------
def _headers(headers: Headers) -> dict[str, list[str]]:
    return {name: list(headers.get_list(name) or ()) for name in headers}


@dataclass
class _Record:
    """An entry's metadata: everything but its body and id."""

    key: str
    request: Request
    status: int
    headers: Headers
    deadline: float | None  # when its TTL ends (Unix time)
    tti: float | None  # idle time allowed (seconds)
    used: float  # when get_entries last returned it, or it was stored

    def encode(self) -> bytes | None:
        """The metadata, or None if over ``MAX_META`` (huge headers: not stored)."""
        q = self.request
        fields = {"v": 1, "key": self.key, "method": q.method, "url": q.url, "request_headers": _headers(q.headers),
                  "status": self.status, "headers": _headers(self.headers), "deadline": self.deadline,
                  "tti": self.tti, "used": self.used}  # fmt: skip
        meta = json.dumps(fields, separators=(",", ":")).encode()
        return meta if len(meta) <= MAX_META else None

    @classmethod
    def decode(cls, meta: bytes) -> _Record | None:
        """The record, or None for metadata this adapter did not write."""
        try:
            d = json.loads(meta)
            if d.get("v") != 1:
                return None
            request = Request(method=d["method"], url=d["url"], headers=Headers(d["request_headers"]))
            headers = Headers(d["headers"])
            return cls(d["key"], request, int(d["status"]), headers, d["deadline"], d["tti"], float(d["used"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def _expires(self, used: float) -> float | None:
        idle = None if self.tti is None else used + self.tti
        return min((t for t in (self.deadline, idle) if t is not None), default=None)

    def expired(self, now: float) -> bool:
        expires = self._expires(self.used)
        return expires is not None and expires <= now

    def refresh_due(self, now: float) -> bool:
        """Whether returning the entry now should be recorded: only when that
        moves its expiry by half its TTI or more, so most hits write nothing."""
        before, after = self._expires(self.used), self._expires(now)
        return self.tti is not None and before is not None and after is not None and after - before >= self.tti / 2

    def servable(self, key: str, now: float) -> bool:
        """A lookup of ``key`` serves it now as it is (most hits)."""
        return self.key == key and not self.expired(now) and not self.refresh_due(now)

    def sink_args(self, now: float) -> tuple[bytes, float | None] | None:
        """(meta, ttl) for the writer of a body whose storing starts now, or
        None when it cannot be stored (expired already, headers too large)."""
        ttl = None if self.deadline is None else self.deadline - now
        meta = replace(self, used=now).encode()
        return None if meta is None or (ttl is not None and ttl <= 0) else (meta, ttl)

    def entry(self, entry_id: uuid.UUID, stream: Iterator[bytes] | AsyncIterator[bytes]) -> Entry:
        return Entry(id=entry_id, request=self.request, response=Response(self.status, self.headers, stream))

    @classmethod
    def new(cls, storage: Any, request: Request, response: Response, key: str, ttl: Any, tti: Any) -> _Record:
        """A new entry's record: its limits fall back to the storage's defaults now."""
        now = time.time()
        deadline, tti = storage._limits(ttl, tti, now)
        return cls(key, request, response.status_code, response.headers, deadline, tti, now)


def _ids(index: bytes | None) -> list[uuid.UUID]:
    if not index or len(index) % _ID:
        return []
    return [uuid.UUID(bytes=index[i : i + _ID]) for i in range(0, len(index), _ID)]


def _with_id(entry_id: uuid.UUID, dropped: list[uuid.UUID]) -> Update:
    """Add ``entry_id`` to an index (newest last, MAX_ENTRIES_PER_KEY at most; ``dropped``: those left out)."""

    def add(old: bytes | None) -> bytes:
        ids = [i for i in _ids(old) if i != entry_id] + [entry_id]
        dropped[:] = ids[:-MAX_ENTRIES_PER_KEY]
        return b"".join(i.bytes for i in ids[-MAX_ENTRIES_PER_KEY:])

    return add


def _without(gone: Iterable[uuid.UUID]) -> Update:
    """Remove ``gone`` from an index (an empty index is deleted)."""
    drop = set(gone)
    return lambda old: b"".join(i.bytes for i in _ids(old) if i not in drop) or None


def _failed(operation: str, exc: CacheError) -> None:
    # Strict mode only: hishel's contract is that no storage failure fails a request.
    log.warning("safecache: hishel storage: %s failed: %s", operation, exc)


class _Writes:
    """The ids this process is writing, and those removed meanwhile: until it is published, only the
    writing process knows an entry's id, so a removal during the write is honoured at commit."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._writing: set[uuid.UUID] = set()
        self._removed: set[uuid.UUID] = set()

    def start(self, entry_id: uuid.UUID) -> None:
        with self._guard:
            self._writing.add(entry_id)

    def removed(self, entry_id: uuid.UUID) -> bool:
        with self._guard:
            return entry_id in self._removed

    def finish(self, entry_id: uuid.UUID) -> bool:
        """Stop tracking; True if the entry was removed during its write."""
        with self._guard:
            self._writing.discard(entry_id)
            removed = entry_id in self._removed
            self._removed.discard(entry_id)
            return removed

    def remove(self, entry_id: uuid.UUID) -> None:
        with self._guard:
            if entry_id in self._writing:
                self._removed.add(entry_id)


class _Tee:
    """The body streams of ``create_entry`` yield the body while a writer
    stores it, and publish the entry at its end.  Storing stops (and what was
    written is discarded) past ``max_stream_size``, on a removal or a cache
    failure, but the consumer gets the whole body; an error from the body,
    or closing or dropping the stream early, discards the entry.  Writer calls
    are made one at a time: the async stream makes them in threads."""

    def __init__(self, storage: SyncStorage, entry_id: uuid.UUID, record: _Record) -> None:
        self._storage = storage
        self._id = entry_id
        self._record = record
        self._sink: Any = None  # the entered EntryWriter, while storing
        self._size = 0
        self._started = self._done = False
        self._turn = threading.Lock()
        storage._writes.start(entry_id)

    def _store(self, chunk: bytes) -> None:
        with self._turn:
            if self._sink is None:
                return
            self._size += len(chunk)
            limit = self._storage.max_stream_size
            try:
                if (limit is None or self._size <= limit) and not self._storage._writes.removed(self._id):
                    self._sink.write(chunk)
                    return
            except CacheError as exc:
                _failed("store", exc)
            self._discard()

    def _discard(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.__exit__(*_DISCARD)

    def _finish(self, commit: bool) -> None:
        with self._turn:
            if self._done:
                return
            self._done = True
            if not commit or self._storage._writes.removed(self._id):
                self._discard()
            sink, self._sink, stored = self._sink, None, False
            if sink is not None:
                try:
                    sink.__exit__(None, None, None)
                    stored = sink.stored
                except CacheError as exc:
                    _failed("store", exc)
        # Asked after the commit: a removal from now on finds the entry.
        if self._storage._writes.finish(self._id):
            if stored:
                self._storage._delete(self._id)
        elif stored:
            self._storage._publish(self._id, self._record.key)

    def __del__(self) -> None:
        try:  # dropped unread or half-read: discard (its temp file is removed)
            self._finish(False)
        except Exception:  # noqa: BLE001, S110 -- nothing may escape a finaliser
            pass


class _Saving(_Tee):
    """The body stream of ``SyncStorage.create_entry``."""

    def __init__(self, storage: SyncStorage, entry_id: uuid.UUID, record: _Record, body: Iterable[bytes]) -> None:
        super().__init__(storage, entry_id, record)
        self._body = iter(body)

    def __iter__(self) -> _Saving:
        return self

    def __next__(self) -> bytes:
        if not self._started:
            self._started = True
            self._sink = self._storage._open_sink(self._id, self._record)
        try:
            chunk = next(self._body)
        except StopIteration:
            self._finish(True)
            raise
        except BaseException:
            self._finish(False)
            raise
        if self._sink is not None:
            self._store(chunk)
        return chunk

    def close(self) -> None:
        self._finish(False)


class _Body:
    """A stored body, read from the stream ``get_entries`` opened; closed at its end, on close, or dropped."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream: IO[bytes] | None = stream

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        chunk = b"" if self._stream is None else self._stream.read(CHUNK)
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    __del__ = close


class SyncStorage(BaseStorage):
    """A ``hishel.BaseStorage`` that keeps its entries in ``bucket``.

    ``default_ttl``, ``default_tti`` (seconds) and ``max_stream_size``
    (bytes) are hishel's.  Any number of threads may share one storage, and
    any number of processes one bucket.  After ``close()`` its methods raise
    ``RuntimeError``, as hishel's own storages do; the bucket (the caller's)
    stays open, and bodies already returned can still be read.  Since 0.2.
    """

    def __init__(
        self, bucket: Bucket, *, default_ttl: float | None = None, default_tti: float | None = None,
        max_stream_size: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(default_ttl=default_ttl, default_tti=default_tti, max_stream_size=max_stream_size)
        self.bucket = bucket
        self._writes = _Writes()
        self._closed = False

    def __repr__(self) -> str:
        return f"<SyncStorage in {self.bucket!r}>"

    def create_entry(
        self, request: Request, response: Response, key: str, *, ttl: float | None = None, tti: float | None = None
    ) -> Entry:
        self._check()
        entry_id, record = uuid.uuid4(), _Record.new(self, request, response, key, ttl, tti)
        body = response.stream if response.stream is not None else ()
        if not isinstance(body, Iterable):
            raise TypeError("SyncStorage needs a sync response stream: use AsyncStorage with async clients")
        stream = _Saving(self, entry_id, record, body)
        return Entry(id=entry_id, request=request, response=replace(response, stream=stream))

    def get_entries(self, key: str) -> list[Entry]:
        self._check()
        entries: list[Entry] = []
        try:
            gone = []
            now = time.time()
            for entry_id in _ids(self.bucket.get(_index_key(key))):
                entry = self._lookup(entry_id, key, now)
                if entry is None:
                    gone.append(entry_id)
                else:
                    entries.append(entry)
            if gone:
                self.bucket.update(_index_key(key), _without(gone), kind="fetched")
        except CacheError as exc:
            for entry in entries:
                entry.response.stream.close()  # type: ignore[union-attr]
            _failed("get_entries", exc)
            return []
        return entries

    def update_headers(self, id: uuid.UUID, headers: Headers) -> None:
        self._check()
        try:
            record = self._record(id)
            if record is not None:
                with self.bucket.lock(_index_key(record.key)):
                    record = self._record(id)
                    if record is not None:
                        self._rewrite(id, replace(record, headers=headers))
        except CacheError as exc:
            _failed("update_headers", exc)

    def remove_entry(self, id: uuid.UUID) -> None:
        self._check()
        self._writes.remove(id)
        try:
            record = self._record(id)
            self._delete(id)
            if record is not None:
                self.bucket.update(_index_key(record.key), _without([id]), kind="fetched")
        except CacheError as exc:
            _failed("remove_entry", exc)

    def close(self) -> None:
        self._closed = True

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed and can no longer be used")

    # -- the steps ---------------------------------------------------------------------------------
    def _lookup(self, entry_id: uuid.UUID, key: str, now: float) -> Entry | None:
        """The entry with its body opened, or None if it is gone (its id then leaves the index)."""
        opened = self.bucket.open_with_meta(_entry_key(entry_id))
        if opened is None:
            return None
        stream, meta = opened
        record = _Record.decode(meta)
        if record is not None and (record.servable(key, now) or self._keep(entry_id, record, key, now)):
            return record.entry(entry_id, _Body(stream))
        stream.close()
        return None

    def _keep(self, entry_id: uuid.UUID, record: _Record, key: str, now: float) -> bool:
        """Whether a lookup serves an entry that is not :meth:`_Record.servable`
        as it is: an expired one is deleted; one whose use is due is recorded
        (under the key's lock) and served unless it is gone."""
        if record.key != key:
            return False
        if record.expired(now):
            self._delete(entry_id)
            return False
        with self.bucket.lock(_index_key(key)):
            latest = self._record(entry_id)
            if latest is None:
                return False
            return not latest.refresh_due(now) or self._rewrite(entry_id, replace(latest, used=now))

    def _record(self, entry_id: uuid.UUID) -> _Record | None:
        meta = self.bucket.get_meta(_entry_key(entry_id))
        return None if meta is None else _Record.decode(meta)

    def _rewrite(self, entry_id: uuid.UUID, record: _Record) -> bool:
        """Replace the entry's metadata.  True unless the entry is gone: one
        that cannot be rewritten (a read-only cache, headers grown too large)
        keeps its metadata and is still served."""
        meta, key = record.encode(), _entry_key(entry_id)
        return meta is None or self.bucket.set_meta(key, meta) or key in self.bucket

    def _open_sink(self, entry_id: uuid.UUID, record: _Record) -> Any:
        args = record.sink_args(time.time())
        if args is None:
            return None
        sink = self.bucket.writer(_entry_key(entry_id), kind="fetched", meta=args[0], ttl=args[1])
        try:
            sink.__enter__()
        except CacheError as exc:
            _failed("store", exc)
            return None
        return sink

    def _publish(self, entry_id: uuid.UUID, key: str) -> None:
        dropped: list[uuid.UUID] = []
        try:
            self.bucket.update(_index_key(key), _with_id(entry_id, dropped), kind="fetched")
        except CacheError as exc:
            _failed("store", exc)
        for old in dropped:
            self._delete(old)

    def _delete(self, entry_id: uuid.UUID) -> None:
        try:
            self.bucket.delete(_entry_key(entry_id))
        except CacheError as exc:
            _failed("remove_entry", exc)


# -- async ---------------------------------------------------------------------------------------------
async def _off(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # What bucket.aio cannot do yet runs in a worker thread: the writer's
    # calls (aio has no push-style writer, and put_stream does not fit: here
    # the consumer's reads drive the body) and the steps made under a key's
    # lock (aio has no update).
    return await asyncio.to_thread(fn, *args, **kwargs)


class _AsyncSaving(_Tee):
    """The body stream of ``AsyncStorage.create_entry``."""

    def __init__(self, storage: AsyncStorage, entry_id: uuid.UUID, record: _Record, body: Any) -> None:
        super().__init__(storage._sync, entry_id, record)
        self._body = body.__aiter__() if hasattr(body, "__aiter__") else _aiter(body)

    def __aiter__(self) -> _AsyncSaving:
        return self

    async def __anext__(self) -> bytes:
        if not self._started:
            self._started = True
            self._sink = await _off(self._storage._open_sink, self._id, self._record)
        try:
            chunk: bytes = await self._body.__anext__()
        except StopAsyncIteration:
            await asyncio.shield(_off(self._finish, True))
            raise
        except BaseException:
            await asyncio.shield(_off(self._finish, False))
            raise
        if self._sink is not None:
            await _off(self._store, chunk)
        return chunk

    async def aclose(self) -> None:
        await asyncio.shield(_off(self._finish, False))


async def _aiter(body: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in body:
        yield chunk


class _AsyncBody:
    """A stored body, read through ``bucket.aio`` from the stream ``get_entries`` opened."""

    def __init__(self, reader: AsyncReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _AsyncBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._reader.read(CHUNK)
        if not chunk:
            await self._reader.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await self._reader.aclose()


class AsyncStorage(AsyncBaseStorage):
    """A ``hishel.AsyncBaseStorage`` that keeps its entries in ``bucket``:
    :class:`SyncStorage`'s contract, awaited.  No file-system call runs on
    the event loop: lookups and bodies go through ``bucket.aio``, the rest
    through worker threads.  Needs asyncio (not trio).  Since 0.2."""

    def __init__(
        self, bucket: Bucket, *, default_ttl: float | None = None, default_tti: float | None = None,
        max_stream_size: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(default_ttl=default_ttl, default_tti=default_tti, max_stream_size=max_stream_size)
        self.bucket = bucket
        self._aio = bucket.aio
        self._sync = SyncStorage(bucket, max_stream_size=max_stream_size)  # its steps, run in threads
        self._check = self._sync._check

    def __repr__(self) -> str:
        return f"<AsyncStorage in {self.bucket!r}>"

    async def create_entry(
        self, request: Request, response: Response, key: str, *, ttl: float | None = None, tti: float | None = None
    ) -> Entry:
        self._check()
        entry_id, record = uuid.uuid4(), _Record.new(self, request, response, key, ttl, tti)
        stream = _AsyncSaving(self, entry_id, record, response.stream if response.stream is not None else ())
        return Entry(id=entry_id, request=request, response=replace(response, stream=stream))

    async def get_entries(self, key: str) -> list[Entry]:
        self._check()
        entries: list[Entry] = []
        try:
            gone = []
            now = time.time()
            for entry_id in _ids(await self._aio.get(_index_key(key))):
                entry = await self._lookup(entry_id, key, now)
                if entry is None:
                    gone.append(entry_id)
                else:
                    entries.append(entry)
            if gone:
                await _off(self.bucket.update, _index_key(key), _without(gone), kind="fetched")
        except CacheError as exc:
            for entry in entries:
                await entry.response.stream.aclose()  # type: ignore[union-attr]
            _failed("get_entries", exc)
            return []
        return entries

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:
        await _off(self._sync.update_headers, id, headers)

    async def remove_entry(self, id: uuid.UUID) -> None:
        await _off(self._sync.remove_entry, id)

    async def close(self) -> None:
        self._sync.close()

    async def _lookup(self, entry_id: uuid.UUID, key: str, now: float) -> Entry | None:
        opened = await self._aio.open_with_meta(_entry_key(entry_id))  # as SyncStorage._lookup
        if opened is None:
            return None
        reader, meta = opened
        record = _Record.decode(meta)
        keep = self._sync._keep
        if record is not None and (record.servable(key, now) or await _off(keep, entry_id, record, key, now)):
            return record.entry(entry_id, _AsyncBody(reader))
        await reader.aclose()
        return None

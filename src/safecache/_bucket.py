"""A ``Bucket``: a named, versioned namespace of entries in a cache."""

from __future__ import annotations

import os
import time
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

from . import _format, _fs, _keys, _layout, _locks, _osops, _policy, _read, _stats, _trust, _write
from ._errors import CachePermissionError, CacheReadOnlyError, LockTimeoutError
from ._format import HEADER_SIZE, Invalid
from ._location import DISABLED, READ_ONLY, READY

if TYPE_CHECKING:
    from typing import IO, Callable, Iterable, Iterator, ParamSpec, TypeVar, Union, overload

    from ._memoize import Memoized

    P = ParamSpec("P")
    R = TypeVar("R")

    from ._aio import AsyncBucket
    from ._cache import Cache
    from ._listing import EntryInfo
    from ._trees import Trees
    from ._write import EntryWriter

    Key = object  # str, bytes, or a structured key: see docs/keys.md
    Source = Union[bytes, bytearray, memoryview, IO[bytes], Iterable[bytes]]

_os_open, _os_read, _os_close = os.open, os.read, os.close
_unpack_header = _format._FULL.unpack_from
_crc32 = _format.crc32
_MAGIC, _VERSION, _KINDS = _format.MAGIC, _format.VERSION, _format.KIND_NAMES
_READ_FLAGS = _osops.READ_FLAGS
_entry_path = _layout.entry_path

#: Use is recorded by refreshing an entry's mtime at most this often (Go).
MTIME_INTERVAL_NS = _read.MTIME_INTERVAL_NS
#: Entries up to this size are read in one system call.
_BLOCK = _format.BLOCK
#: Streaming chunk size.
_CHUNK = _format.CHUNK


def _no_trees(bucket: Bucket) -> Trees:
    raise RuntimeError("safecache: trees are not wired (import safecache, not its private modules alone)")


#: Makes a bucket's ``Trees``.  Trees sit a layer above buckets, so this
#: layer does not import them: ``safecache/__init__`` installs a factory
#: that imports ``_trees`` on first use (most tools never need it).
_make_trees: Callable[[Bucket], Trees] = _no_trees


class Bucket:
    """A namespace of entries: ``put``, ``get``, ``delete``, ``in``,
    ``get_or_create``, and streaming with ``put_stream``/``open``.

    Obtain one with :meth:`Cache.bucket`.  Every method follows the cache's
    error policy: in lenient mode no method raises because of the cache.
    """

    def __init__(self, cache: Cache, name: str, version: int) -> None:
        self.cache = cache
        self.name = name
        self.version = version
        self.counters = _stats.Counters()
        self._label = _layout.label(name, version)
        self._trees: Trees | None = None
        if cache.path is not None:
            self.directory: str | None = _layout.bucket_dir(cache.path, name, version)
            self._locks_dir: str | None = _layout.bucket_locks_dir(cache.path, name, version)
            if cache.state is not DISABLED:
                reason = _trust.check_dirs(
                    (os.path.dirname(self.directory), self.directory, os.path.dirname(self._locks_dir), self._locks_dir),
                    shared=cache.shared,
                )
                if reason:
                    # docs/security.md: a bucket whose directories are not
                    # trusted is not used: a miss or a no-op for every call.
                    message = f"bucket {self._label} is not used: {reason}; remove that directory, or set the cache elsewhere"
                    if cache.strict:
                        raise CachePermissionError(message, filename=cache.path, operation="open", cause="owner")
                    cache._announce("owner", message)
                    self.directory = self._locks_dir = None
        else:
            self.directory = self._locks_dir = None

    def __repr__(self) -> str:
        return f"<Bucket {self._label} of {self.cache!r}>"

    @property
    def trees(self) -> Trees:
        """This bucket's trees: immutable directories committed atomically
        and placed by clone, hard link, symlink or copy (see :class:`Trees`)."""
        trees = self._trees
        if trees is None:
            trees = self._trees = _make_trees(self)
        return trees

    # -- paths -------------------------------------------------------------------
    def path_for(self, key: Key) -> str | None:
        """The file that holds ``key``'s entry (None when the cache is disabled)."""
        if self.directory is None:
            return None
        return self._locate(key)[1]

    def _locate(self, key: Key) -> tuple[str, str]:
        """(digest, entry path) of ``key``; the bucket must have a directory."""
        digest = _keys.key_digest(key)
        assert self.directory is not None
        return digest, _layout.entry_path(self.directory, digest)

    def _debug(self, op: str, key: Key, digest: str, outcome: str) -> None:
        _policy.stderr(f"safecache: {self._label} {op} {outcome}: key={_keys.describe_key(key)} digest={digest}")

    # -- reading -----------------------------------------------------------------
    def get(self, key: Key) -> bytes | None:
        """Return the bytes stored for ``key``, or None.

        Returns exactly the bytes one ``put`` stored, or None: a missing,
        truncated, corrupt or unreadable entry is a miss (a corrupt one is
        also removed and counted).
        """
        cache = self.cache
        directory = self.directory
        if directory is None or cache.state is DISABLED:
            return None
        digest = _keys.key_digest(key)
        path = _entry_path(directory, digest)
        counters = self.counters
        fd = -1
        fast = _osops.current is _osops.fast_path
        try:
            if fast:
                # The common case, without a Python frame per system call;
                # anything unusual takes the general path below.
                try:
                    fd = _os_open(path, _READ_FLAGS)
                    block = _os_read(fd, _BLOCK)
                except FileNotFoundError:
                    return self._miss(key, digest, path)
                except OSError:
                    if fd >= 0:
                        _os_close(fd)
                    fd = -1
            if fd < 0:
                opened = _fs.read_file(path, budget=cache.retry_budget)
                if opened is None:
                    return self._miss(key, digest, path)
                fd, block = opened
            raw = bytes.fromhex(digest)
            size = len(block)
            if size < _BLOCK:
                # _format.read_entry, inlined for whole small entries: this is
                # every hit's cost.  test_format proves the two agree on every
                # input (Hypothesis).
                if size >= HEADER_SIZE:
                    (magic, version, kind, _flags, length, written_ns, got, expires_ns, klen, mlen,
                     payload_crc, head_crc) = _unpack_header(block)
                    offset = HEADER_SIZE + klen + mlen
                    if (
                        magic == _MAGIC
                        and version == _VERSION
                        and got == raw
                        and size == offset + length
                        and kind in _KINDS
                        and _crc32(block[HEADER_SIZE:offset], _crc32(block[:60])) == head_crc
                    ):
                        payload = block[offset:]
                        if _crc32(payload) != payload_crc:
                            raise Invalid("bad-checksum")
                    else:
                        header, payload = _format.decode_small(block, raw)
                        written_ns, expires_ns = header.written_ns, header.expires_ns
                else:
                    header, payload = _format.decode_small(block, raw)
                    written_ns, expires_ns = header.written_ns, header.expires_ns
            else:
                header, large = _format.read_entry(fd, block, raw)
                payload, written_ns, expires_ns = large or b"", header.written_ns, header.expires_ns
            if expires_ns:
                now = time.time_ns()
                if expires_ns <= now:
                    counters.misses += 1
                    if cache.debug_keys:
                        self._debug("get", key, digest, "miss (expired)")
                    return None
            if time.time_ns() - written_ns > MTIME_INTERVAL_NS:
                self._mark_used(fd, path)
        except Invalid as invalid:
            self._corrupt(path, fd, invalid)
            if cache.debug_keys:
                self._debug("get", key, digest, f"miss ({invalid.reason})")
            return None
        except OSError as exc:
            counters.misses += 1
            counters.error(cache._failed("get", exc, path))
            return None
        finally:
            if fd >= 0:
                _os_close(fd) if fast else _osops.current.close(fd)
        counters.hits += 1
        counters.bytes_read += len(payload)
        if cache.debug_keys:
            self._debug("get", key, digest, "hit")
        return payload

    def _miss(self, key: Key, digest: str, path: str) -> bytes | None:
        """A local miss: the remote tier's answer, if there is one."""
        cache = self.cache
        tier = cache.tier
        payload = tier.fetch(self, digest, path) if tier is not None else None
        if payload is None:
            self.counters.misses += 1
            if cache.debug_keys:
                self._debug("get", key, digest, "miss" if tier is None else "miss (local and remote)")
            return None
        self.counters.hits += 1
        self.counters.bytes_read += len(payload)
        if cache.debug_keys:
            self._debug("get", key, digest, f"hit (remote {tier.display})")  # type: ignore[union-attr]
        return payload

    def _mark_used(self, fd: int, path: str) -> None:
        _read.mark_used(fd, path)

    def _corrupt(self, path: str, fd: int, invalid: Invalid) -> None:
        _read.corrupt(self, path, fd, invalid)

    def __contains__(self, key: Key) -> bool:
        """True if an entry for ``key`` is present with a valid header and length.

        The payload checksum is not read (``get`` checks it), so a True here
        can still be followed by a miss if the payload is damaged.
        """
        cache = self.cache
        if self.directory is None or cache.state is DISABLED:
            return False
        digest, path = self._locate(key)
        try:
            header = _read.header_of(path, digest, budget=cache.retry_budget)
            return header is not None and not header.expired(time.time_ns())
        except OSError as exc:
            self.counters.error(cache._failed("contains", exc, path))
            return False

    def open(self, key: Key) -> IO[bytes] | None:
        """Return a binary file object reading ``key``'s value, or None.

        The whole entry is verified before this returns (in chunks: memory
        does not grow with the value's size), so the stream never yields
        bytes that fail their checksum.  Close it (or use ``with``) promptly:
        on Windows an open reader makes writers of the same key wait.
        """
        opened = self._open_entry(key, "open")
        return None if opened is None else opened[0]

    def open_with_meta(self, key: Key) -> tuple[IO[bytes], bytes] | None:
        """Like :meth:`open`, with the entry's metadata: ``(stream, meta)``
        of one and the same put, or None.  Since 0.2."""
        opened = self._open_entry(key, "open", meta=True)
        return None if opened is None else (opened[0], opened[1])

    def get_with_meta(self, key: Key) -> tuple[bytes, bytes] | None:
        """``(value, meta)`` of one and the same put, or None.  ``meta`` is
        ``b""`` when the entry has none.  A reader never sees metadata without
        its value, or with another value.  Since 0.2."""
        opened = self._open_entry(key, "get", meta=True, keep=True)
        if opened is None:
            return None
        stream, meta = opened
        with stream:
            return stream.read(), meta

    def get_meta(self, key: Key) -> bytes | None:
        """The metadata of ``key``'s entry without reading its value: None
        when there is no (unexpired) entry, ``b""`` when it has no metadata.
        Since 0.2."""
        return _read.get_meta(self, key)

    def _open_entry(
        self, key: Key, operation: str, *, meta: bool = False, keep: bool = False
    ) -> tuple[IO[bytes], bytes] | None:
        return _read.open_entry(self, key, operation, meta=meta, keep=keep)

    # -- writing -----------------------------------------------------------------
    def _writable(self, operation: str) -> bool:
        cache = self.cache
        if cache.state is READY:
            return cache._ensure_root()
        if cache.strict and cache.state is READ_ONLY:
            raise CacheReadOnlyError(
                f"cannot {operation}: {cache.state_reason}", filename=cache.path, operation=operation
            )
        return False

    def put(
        self,
        key: Key,
        data: bytes | bytearray | memoryview,
        *,
        kind: str = "built",
        meta: bytes | None = None,
        ttl: float | None = None,
    ) -> bool:
        """Store ``data`` under ``key``.

        Returns True when the entry is stored or an identical entry was
        already there (then nothing is written, so readers holding it open on
        Windows are not disturbed); False when nothing could be stored (the
        cache is disabled or read-only, or the write failed: see the warning).
        ``kind`` is ``"built"`` (expensive to make: computed here) or
        ``"fetched"`` (cheap to get again: downloaded); pruning for CI keeps
        the first and drops the second.  ``meta``: a small bytes blob (at most
        ``safecache.MAX_META`` bytes) stored atomically with the value (since
        0.2).  ``ttl``: seconds until the entry expires and reads as a miss
        (since 0.2; None: never).
        """
        return _write.put(self, key, data, kind=kind, meta=meta, ttl=ttl)

    def put_stream(
        self, key: Key, source: Source, *, kind: str = "built", meta: bytes | None = None, ttl: float | None = None
    ) -> bool:
        """Store a value read from ``source`` without holding it in memory.

        ``source`` is a binary file object (read in 1 MiB chunks) or an
        iterable of bytes-like chunks.  Returns as :meth:`put`.  An exception
        raised by ``source`` itself propagates (it is the caller's, not the
        cache's), and nothing is stored; so does a TypeError for a chunk that
        is not bytes-like, and a BlockingIOError for a non-blocking stream
        with no data ready (a prefix is never stored as the value).
        """
        return _write.put_stream(self, key, source, kind=kind, meta=meta, ttl=ttl)

    def writer(self, key: Key, *, kind: str = "built", meta: bytes | None = None, ttl: float | None = None) -> EntryWriter:
        """A binary file object to write ``key``'s value into, for use in a
        ``with`` block (``pickle.dump(obj, f)`` works)::

            with bucket.writer(key) as f:
                f.write(b"...")

        The entry is committed when the block exits normally, discarded if it
        raises, and never visible half-written; memory stays bounded whatever
        the size.  After the block, ``f.stored`` says whether it was stored
        (False when the cache cannot store: writes then go nowhere, and
        nothing raises in lenient mode).  Since 0.2.
        """
        return _write.EntryWriter(self, key, kind=kind, meta=meta, ttl=ttl)

    def set_meta(self, key: Key, meta: bytes, *, expect: bytes | None = None) -> bool:
        """Replace the metadata of ``key``'s entry without rewriting or copying
        its value (an HTTP 304 revalidation updates the headers of a 50 MB
        body).  Atomic with respect to readers and to a concurrent ``put``
        (a put that lands later wins).  With ``expect``, only if the current
        metadata equals it, so it never attaches to a value stored since the
        caller read.  False when there is no entry or ``expect`` differs.  Since 0.2."""
        return _write.set_meta(self, key, meta, expect=expect)

    def touch(self, key: Key) -> bool:
        """Record a use of ``key``'s entry now (trimming is least recently used
        first; reads record use at most once an hour).  False if there is no
        entry.  Since 0.2."""
        return _write.touch(self, key)

    def delete(self, key: Key) -> bool:
        """Remove ``key``'s entry.  True if one was removed; False if there was
        none or it could not be removed (see the warning)."""
        cache = self.cache
        if self.directory is None or cache.state is DISABLED:
            return False
        if cache.state is READ_ONLY:
            if cache.strict:
                raise CacheReadOnlyError(f"cannot delete: {cache.state_reason}", filename=cache.path, operation="delete")
            return False
        path = self.path_for(key)
        assert path is not None
        try:
            size = _stats.entry_size(path)
            removed = _fs.remove(path, budget=cache.retry_budget)
            if removed:
                self.counters.size -= size
                self.counters.entries -= 1
                _fs.discard(_layout.meta_path(path))
            return removed
        except OSError as exc:
            self.counters.error(cache._failed("delete", exc, path))
            return False

    # -- compute once --------------------------------------------------------------
    def get_or_create(
        self,
        key: Key,
        factory: Callable[[], bytes],
        *,
        kind: str = "built",
        timeout: float | None = None,
        meta: bytes | None = None,
        ttl: float | None = None,
    ) -> bytes:
        """Return ``key``'s value, calling ``factory()`` to make it if missing.

        Among threads and processes asking for the same missing key at once,
        one runs ``factory``; the others wait for its lock (at most
        ``timeout`` seconds, default the cache's ``lock_timeout``) and then
        read what it stored.  If the computing process dies, the OS releases
        its lock and a waiter takes over.  Exceptions from ``factory``
        propagate unchanged and nothing is stored.

        When the cache cannot store (disabled, read-only, full) the factory
        runs and its result is returned anyway; in strict mode a read-only
        cache raises ``CacheReadOnlyError`` instead, before the factory runs.  If the lock cannot be taken
        (timeout, or a file system without locks) the factory runs without
        it, with one warning; strict mode raises ``LockTimeoutError`` or
        ``LockUnsupportedError`` instead.  Raises ``TypeError`` if the factory
        returns something other than bytes.
        """
        _format.kind_code(kind)
        if timeout is not None:
            _locks.check_timeout(timeout)  # at the call: a nan would never return
        value = self.get(key)
        if value is not None:
            return value
        cache = self.cache
        if self.directory is not None and cache.state is READY:
            # Create the root and its markers before the lock file, so a
            # factory that fails never leaves a root without CACHEDIR.TAG.
            cache._ensure_root()
        if self.directory is None or cache.state is not READY:
            if cache.strict and cache.state is READ_ONLY:
                raise CacheReadOnlyError(
                    f"cannot store a computed value: {cache.state_reason}", filename=cache.path, operation="get_or_create"
                )
            return _checked(factory())
        assert self._locks_dir is not None

        def create() -> bytes:
            made = _checked(factory())
            self.put(key, made, kind=kind, meta=meta, ttl=ttl)
            return made

        def lock_failed(exc: OSError, path: str) -> None:
            operation = "get_or_create" if isinstance(exc, LockTimeoutError) else "lock"
            self.counters.error(cache._failed(operation, exc, path, lock=True))

        return _locks.compute_once(
            _layout.entry_lock(self._locks_dir, _keys.key_digest(key)),
            timeout=cache.lock_timeout if timeout is None else timeout,
            lookup=lambda: self.get(key),
            create=create,
            lock_failed=lock_failed,
        )


    # -- locks and read-modify-write ---------------------------------------------------
    def lock(self, key: Key, *, timeout: float | None = None) -> _locks.MaybeLock:
        """The cross-process lock ``get_or_create`` uses for ``key``, for
        check-compute-store flows that cannot hand safecache a factory::

            with bucket.lock(key) as held:
                if key not in bucket:
                    bucket.put(key, compute())

        Waits at most ``timeout`` seconds (default: the cache's
        ``lock_timeout``).  ``held`` is False when the lock could not be taken
        (a timeout, a file system without locks, a cache that cannot store):
        the block then runs without it, with one warning; strict mode raises
        ``LockTimeoutError``/``LockUnsupportedError`` instead.  The OS
        releases the lock if the process dies.  Not re-entrant.  Since 0.2.
        """
        if timeout is not None:
            _locks.check_timeout(timeout)
        cache = self.cache
        path = None
        if self._locks_dir is not None and cache.state is READY and cache._ensure_root():
            path = _layout.entry_lock(self._locks_dir, _keys.key_digest(key))

        def failed(exc: OSError, lock_path: str) -> None:
            self.counters.error(cache._failed("lock", exc, lock_path, lock=True))

        return _locks.MaybeLock(path, timeout=cache.lock_timeout if timeout is None else timeout, failed=failed)

    def update(
        self,
        key: Key,
        fn: Callable[[bytes | None], bytes | None],
        *,
        kind: str = "built",
        meta: bytes | None = None,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> bytes | None:
        """Apply ``fn(old_value_or_None) -> new_value_or_None`` to ``key``'s
        entry under :meth:`lock`, so concurrent updates of one aggregate entry
        (ruff's one entry per package) are not lost.  None from ``fn`` deletes
        the entry.  Returns the new value.  Exceptions from ``fn`` propagate
        and change nothing.  Since 0.2."""
        _format.kind_code(kind)
        with self.lock(key, timeout=timeout):
            new = fn(self.get(key))
            if new is None:
                self.delete(key)
                return None
            value = _checked(new)
            self.put(key, value, kind=kind, meta=meta, ttl=ttl)
            return value

    # -- listing -------------------------------------------------------------------------
    def items(self) -> Iterator[EntryInfo]:
        """Every (unexpired, valid) entry: an :class:`safecache.EntryInfo` with
        its key, size, kind, written and expiry times and metadata length.

        A walk of the bucket's directory that reads each entry's header (not
        its value): its cost grows with the number of entries.  It tolerates
        concurrent writers and removals (an entry is listed old or new, or not
        at all if removed meanwhile).  Entries whose key was not stored (over
        16 KiB encoded, or written by safecache 0.1) have ``key`` None.
        Since 0.2."""
        from ._listing import items  # listing is for tools that need it: not every run pays its import

        return items(self)

    def keys(self) -> Iterator[object]:
        """The keys of :meth:`items` (those that were stored), as given to
        ``put`` and normalised as docs/keys.md says.  A walk.  Since 0.2."""
        return (info.key for info in self.items() if info.key is not None)

    def __len__(self) -> int:
        """The number of entries :meth:`items` lists (a walk).  Since 0.2."""
        return sum(1 for _ in self.items())

    def __iter__(self) -> Iterator[object]:
        return self.keys()

    def clear(self) -> int:
        """Remove every entry of this bucket version; return how many were
        removed.  Entries written meanwhile may survive.  Since 0.2."""
        from ._listing import clear

        return clear(self)

    # -- pickling, memoize, async ---------------------------------------------------------
    def __reduce__(self) -> tuple[object, ...]:
        """A bucket pickles as its cache (by location and settings) plus its
        name and version, and reopens in the receiving process (joblib ships
        its store to worker processes).  Since 0.2."""
        return (_reopen_bucket, (self.cache, self.name, self.version))

    if TYPE_CHECKING:

        @overload
        def memoize(self, fn: Callable[P, R], /, *, codec: object = "json", ttl: float | None = None,
                    key: Callable[..., object] | None = None, source: bool = True) -> Memoized[P, R]: ...
        @overload
        def memoize(self, codec: str = "json", /, *, ttl: float | None = None,
                    key: Callable[..., object] | None = None, source: bool = True
                    ) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...
        @overload
        def memoize(self, /, *, codec: object = "json", ttl: float | None = None,
                    key: Callable[..., object] | None = None, source: bool = True
                    ) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...

    def memoize(self, fn: object = None, /, *, codec: object = None, ttl: float | None = None,
                key: Callable[..., object] | None = None, source: bool = True) -> object:
        """Cache a function's results in this bucket (docs/memoize.md): ``@bucket.memoize`` or
        ``@bucket.memoize(codec="json", ttl=None, key=None, source=True)``; ``@bucket.memoize("pickle")``
        names the codec first.  Returns a ``Memoized`` (or a decorator making one).  Raises
        ValueError for an unknown codec or an invalid ttl, TypeError for an option of the wrong type.  Since 0.2."""
        from ._memoize import memoize

        return memoize(self, fn, codec=codec, ttl=ttl, key=key, source=source)  # type: ignore[call-overload]

    @property
    def aio(self) -> AsyncBucket:
        """An async facade of this bucket (``await bucket.aio.get(key)``): every
        call runs its file-system work off the event loop.  Since 0.2."""
        facade = self.__dict__.get("_aio")
        if facade is None:
            from ._aio import AsyncBucket

            facade = self.__dict__["_aio"] = AsyncBucket(self)
        return facade


def _reopen_bucket(cache: Cache, name: str, version: int) -> Bucket:
    return cache.bucket(name, version)


def _checked(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"factory must return bytes, not {type(value).__name__}")

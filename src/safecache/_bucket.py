"""A ``Bucket``: a named, versioned namespace of entries in a cache."""

from __future__ import annotations

import io
import os
import time
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

from . import _format, _fs, _keys, _layout, _locks, _osops, _policy, _stats, _trust
from ._errors import CachePermissionError, CacheReadOnlyError, LockTimeoutError
from ._format import HEADER_SIZE, Invalid
from ._location import DISABLED, READ_ONLY, READY

if TYPE_CHECKING:
    from typing import IO, Callable, Iterable, Union

    from ._cache import Cache
    from ._trees import Trees

    Key = object  # str, bytes, or a structured key: see docs/keys.md
    Source = Union[bytes, bytearray, memoryview, IO[bytes], Iterable[bytes]]

_os_open, _os_read, _os_close, _os_access = os.open, os.read, os.close, os.access
_unpack_header = _format._FULL.unpack_from
_crc32 = _format.crc32
_MAGIC, _VERSION, _KINDS = _format.MAGIC, _format.VERSION, _format.KIND_NAMES
#: Values up to this size are written with one system call on the fast path.
_SMALL_PUT = 1 << 20
_READ_FLAGS = _osops.READ_FLAGS
_time_ns = time.time_ns
_entry_path = _layout.entry_path

#: Use is recorded by refreshing an entry's mtime at most this often (Go).
MTIME_INTERVAL_NS = 3600 * 10**9
#: Entries up to this size are read in one system call.
_BLOCK = _format.BLOCK
#: Streaming chunk size.
_CHUNK = _format.CHUNK
#: Corrupt entries are removed best-effort: do not spend the retry budget.
_CLEANUP_BUDGET = 0.05


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
            if cache.state is not DISABLED and not self._trusted(cache.path):
                self.directory = self._locks_dir = None
        else:
            self.directory = self._locks_dir = None

    def __repr__(self) -> str:
        return f"<Bucket {self._label} of {self.cache!r}>"

    def _trusted(self, root: str) -> bool:
        """Check the directories this bucket uses (docs/security.md): each
        must be a real directory this user owns (any owner in shared mode).
        Otherwise the bucket is not used: a miss or a no-op for every call,
        with one warning; strict mode raises ``CachePermissionError``."""
        shared = self.cache.shared
        for directory in (
            _layout.bucket_dir(root, self.name, self.version),
            _layout.bucket_locks_dir(root, self.name, self.version),
        ):
            for path in (os.path.dirname(directory), directory):  # NAME, then NAME/vN
                reason = _trust.check_dir(path, shared=shared)
                if reason:
                    message = f"bucket {self._label} is not used: {reason}; remove that directory, or set the cache elsewhere"
                    if self.cache.strict:
                        raise CachePermissionError(message, filename=path, operation="open", cause="owner")
                    self.cache._announce("owner", message)
                    return False
        return True

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
                    counters.misses += 1
                    if cache.debug_keys:
                        self._debug("get", key, digest, "miss")
                    return None
                except OSError:
                    if fd >= 0:
                        _os_close(fd)
                    fd = -1
            if fd < 0:
                opened = _fs.read_file(path, budget=cache.retry_budget)
                if opened is None:
                    counters.misses += 1
                    if cache.debug_keys:
                        self._debug("get", key, digest, "miss")
                    return None
                fd, block = opened
            raw = bytes.fromhex(digest)
            size = len(block)
            if size < _BLOCK:
                # _format.read_entry, inlined for whole small entries: this is
                # every hit's cost.  test_format proves the two agree on every
                # input (Hypothesis).
                if size >= HEADER_SIZE:
                    magic, version, kind, _flags, length, written_ns, got, payload_crc, head_crc = _unpack_header(block)
                    if (
                        magic == _MAGIC
                        and version == _VERSION
                        and got == raw
                        and size == HEADER_SIZE + length
                        and kind in _KINDS
                        and _crc32(block[:44]) == head_crc
                    ):
                        payload = block[HEADER_SIZE:]
                        if _crc32(payload) != payload_crc:
                            raise Invalid("bad-checksum")
                    else:
                        payload, written_ns = _format.decode_fast(block, raw)
                else:
                    payload, written_ns = _format.decode_fast(block, raw)
            else:
                header, large = _format.read_entry(fd, block, raw)
                payload, written_ns = large or b"", header.written_ns
            if _time_ns() - written_ns > MTIME_INTERVAL_NS:
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

    def _mark_used(self, fd: int, path: str) -> None:
        """Refresh the mtime (the LRU clock) if it is over an hour old."""
        try:
            if time.time() - _osops.current.fstat(fd).st_mtime > MTIME_INTERVAL_NS / 1e9:
                _fs.touch(path)
        except OSError:
            pass  # recording use is best effort: a read-only cache cannot

    def _corrupt(self, path: str, fd: int, invalid: Invalid) -> None:
        """Count a bad entry as a miss and remove it (unless it is merely from
        a newer safecache), taking care not to remove a good entry that
        another process put there since we opened the bad one."""
        self.counters.misses += 1
        _policy.logger().info("safecache: %s: invalid entry %s (%s)", self._label, path, invalid)
        if invalid.reason == "unsupported-version":
            return
        self.counters.corrupt_removed += 1
        if self.cache.state is not READY:
            return
        try:
            size = _stats.entry_size(path)
            removed = (
                _fs.remove_if_same(path, _osops.current.fstat(fd), budget=_CLEANUP_BUDGET)
                if fd >= 0
                else _fs.remove(path, budget=_CLEANUP_BUDGET)
            )
            if removed:
                self.counters.size -= size
                self.counters.entries -= 1
        except OSError:
            pass

    def __contains__(self, key: Key) -> bool:
        """True if an entry for ``key`` is present with a valid header and length.

        The payload checksum is not read (``get`` checks it), so a True here
        can still be followed by a miss if the payload is damaged.
        """
        cache = self.cache
        if self.directory is None or cache.state is DISABLED:
            return False
        digest, path = self._locate(key)
        ops = _osops.current
        try:
            opened = _fs.read_file(path, budget=cache.retry_budget)
            if opened is None:
                return False
            fd, block = opened
            try:
                header = _format.parse_header(block, bytes.fromhex(digest))
                return ops.fstat(fd).st_size == HEADER_SIZE + header.length
            finally:
                ops.close(fd)
        except Invalid:
            return False
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
        cache = self.cache
        if self.directory is None or cache.state is DISABLED:
            return None
        digest, path = self._locate(key)
        ops = _osops.current
        fd = -1
        try:
            opened = _fs.read_file(path, budget=cache.retry_budget)
            if opened is None:
                self.counters.misses += 1
                return None
            fd, block = opened
            small = len(block) < _BLOCK
            header, payload = _format.read_entry(fd, block, bytes.fromhex(digest), keep=small)
            if payload is not None:
                self.counters.hits += 1
                self.counters.bytes_read += len(payload)
                return io.BytesIO(payload)
            if time.time_ns() - header.written_ns > MTIME_INTERVAL_NS:
                self._mark_used(fd, path)
            ops.lseek(fd, HEADER_SIZE, os.SEEK_SET)
            stream = io.open(fd, "rb", buffering=_CHUNK, closefd=True)
            fd = -1  # owned by the stream now
            self.counters.hits += 1
            self.counters.bytes_read += header.length
            return stream
        except Invalid as invalid:
            self._corrupt(path, fd, invalid)
            return None
        except OSError as exc:
            self.counters.misses += 1
            self.counters.error(cache._failed("open", exc, path))
            return None
        finally:
            if fd >= 0:
                ops.close(fd)

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

    def put(self, key: Key, data: bytes | bytearray | memoryview, *, kind: str = "built") -> bool:
        """Store ``data`` under ``key``.

        Returns True when the entry is stored or an identical entry was
        already there (then nothing is written, so readers holding it open on
        Windows are not disturbed); False when nothing could be stored (the
        cache is disabled or read-only, or the write failed: see the warning).
        ``kind`` is ``"built"`` (expensive to make: computed here) or
        ``"fetched"`` (cheap to get again: downloaded); pruning for CI keeps
        the first and drops the second.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put() takes bytes-like data, not {type(data).__name__}; use put_stream() for files")
        kind_code = _format.kind_code(kind)
        if self.directory is None or not self._writable("put"):
            return False
        cache = self.cache
        digest = _keys.key_digest(key)
        raw = bytes.fromhex(digest)
        path = _entry_path(self.directory, digest)
        length = len(data) if not isinstance(data, memoryview) else data.nbytes
        crc = _format.crc32(data)
        try:
            old_size = self._identical(path, raw, data, crc, kind_code)
            if old_size < 0:
                if cache.debug_keys:
                    self._debug("put", key, digest, "identical entry already there")
                return True
            header = _format.pack_header(length, time.time_ns(), raw, crc, kind_code)
            if not (
                length <= _SMALL_PUT
                and not cache.durable
                and _osops.current is _osops.fast_path
                and _fs.write_small_fast(path, header + data, cache.file_mode)
            ):
                _fs.write_file(
                    path, (header, memoryview(data)), durable=cache.durable, budget=cache.retry_budget, mode=cache.file_mode
                )
        except OSError as exc:
            self.counters.error(cache._failed("put", exc, path))
            return False
        counters = self.counters
        counters.writes += 1
        counters.bytes_written += length
        counters.size += HEADER_SIZE + length - old_size
        if not old_size:
            counters.entries += 1
        if cache.debug_keys:
            self._debug("put", key, digest, "stored")
        return True

    def put_stream(self, key: Key, source: Source, *, kind: str = "built") -> bool:
        """Store a value read from ``source`` without holding it in memory.

        ``source`` is a binary file object (read in 1 MiB chunks) or an
        iterable of bytes.  Returns as :meth:`put`.  An exception raised by
        ``source`` itself propagates (it is the caller's, not the cache's),
        and nothing is stored.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            return self.put(key, source, kind=kind)
        kind_code = _format.kind_code(kind)
        if self.directory is None or not self._writable("put"):
            return False
        cache = self.cache
        digest, path = self._locate(key)
        raw = bytes.fromhex(digest)
        state = {"crc": 0, "length": 0}

        def chunks() -> Iterable[bytes | bytearray | memoryview]:
            yield bytes(HEADER_SIZE)  # room for the header, written last
            for chunk in _iter_source(source):
                state["crc"] = _format.crc32(chunk, state["crc"])
                state["length"] += chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
                yield chunk

        def header() -> bytes:
            return _format.pack_header(state["length"], time.time_ns(), raw, state["crc"], kind_code)

        try:
            old_size = _stats.entry_size(path)
            _fs.write_file(
                path, chunks(), header=header, durable=cache.durable, budget=cache.retry_budget, mode=cache.file_mode
            )
        except _SourceError as err:
            raise err.original from None
        except OSError as exc:
            self.counters.error(cache._failed("put", exc, path))
            return False
        counters = self.counters
        counters.writes += 1
        counters.bytes_written += state["length"]
        counters.size += HEADER_SIZE + state["length"] - old_size
        if not old_size:
            counters.entries += 1
        return True

    def _identical(self, path: str, digest: bytes, data: bytes | bytearray | memoryview, crc: int, kind: int) -> int:
        """-1 if ``path`` already holds exactly ``data`` (same kind, same
        bytes: compared byte for byte, never by checksum alone, since a
        CRC-32 collision is trivial to craft); otherwise the size of the file
        there (0 if none), which the write will replace."""
        ops = _osops.current
        if ops is _osops.fast_path and not _os_access(path, os.F_OK):
            return 0  # the common case for a new key, without an exception
        try:
            fd = ops.open(path, _osops.READ_FLAGS)
        except OSError:
            return 0
        view = memoryview(data).cast("B")
        length = view.nbytes
        size = 0
        try:
            size = ops.fstat(fd).st_size
            if size != HEADER_SIZE + length:
                return size
            # One read for a small entry: its header, then its bytes.
            first = ops.read(fd, HEADER_SIZE + min(length, _CHUNK))
            header = _format.parse_header(first, digest)
            if header.length != length or header.payload_crc != crc or header.kind != kind:
                return size
            # The checksums agree: now the bytes themselves (the skip is only
            # taken when it is right; reading costs less than rewriting).
            # bytes.startswith compares buffers with memcmp; a memoryview
            # comparison goes element by element (100 times slower).
            offset = len(first) - HEADER_SIZE
            if not first.startswith(view[:offset], HEADER_SIZE):
                return size
            while offset < length:
                chunk = ops.read(fd, min(_CHUNK, length - offset))
                if not chunk or not chunk.startswith(view[offset : offset + len(chunk)]):
                    return size
                offset += len(chunk)
            return -1
        except (Invalid, OSError):
            return size
        finally:
            ops.close(fd)

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
            self.put(key, made, kind=kind)
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


def _checked(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"factory must return bytes, not {type(value).__name__}")


class _SourceError(Exception):
    """Wraps an exception raised by the caller's source so it is not mistaken
    for a cache failure."""

    def __init__(self, original: BaseException) -> None:
        self.original = original


def _iter_source(source: Source) -> Iterable[bytes | bytearray | memoryview]:
    """The chunks of a file object or an iterable, checked: anything but a
    bytes-like chunk is the caller's TypeError (``bytes(5)`` would store five
    zero bytes), and a non-blocking file whose ``read()`` returns None (no
    data yet) is refused rather than taken as the end: storing a prefix as
    the value would serve wrong bytes."""
    read = getattr(source, "read", None)
    try:
        if read is not None:
            while True:
                chunk = read(_CHUNK)
                if chunk is None:
                    raise BlockingIOError(
                        "put_stream(): source.read() returned None (a non-blocking stream with no data "
                        "ready); pass a blocking stream"
                    )
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"put_stream(): source.read() returned {type(chunk).__name__}, not bytes")
                if not chunk:
                    return
                yield chunk
        else:
            for chunk in source:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(f"put_stream(): the source yielded {type(chunk).__name__}, not bytes-like chunks")
                yield chunk
    except Exception as exc:  # noqa: BLE001
        raise _SourceError(exc) from exc

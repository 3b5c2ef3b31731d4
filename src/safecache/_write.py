"""Writing entries: ``put``, the push-style writer (``put_stream`` builds on it),
the identical-entry skip, and metadata replaced after the fact (``set_meta``).

The rules (docs/format.md, docs/concurrency.md): an entry is written to a
temp file beside its name, with room for its header at the front, and renamed
into place only when complete, so no reader ever sees it half-written; an
entry identical to the one being written (same kind, metadata, expiry and
bytes, compared byte for byte) is left alone, so readers holding it open on
Windows are not disturbed.
"""

from __future__ import annotations

import os
import time

from . import _format, _fs, _keys, _layout, _osops, _read, _stats
from ._format import HEADER_SIZE, Invalid
from ._location import READY

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from typing import IO, Iterable, Union

    from ._bucket import Bucket

    Key = object
    Source = Union[bytes, bytearray, memoryview, IO[bytes], Iterable[bytes]]

#: Values up to this size are written with one system call on the fast path.
_SMALL_PUT = 1 << 20
_CHUNK = _format.CHUNK
_os_access = os.access


def expires_ns(ttl: float | None, now_ns: int) -> int:
    """The expiry field for a ``ttl`` in seconds (0: never).  TypeError or
    ValueError for a ttl that is not a finite number > 0."""
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    if not 0 < ttl < float("inf"):
        raise ValueError(f"ttl must be a finite number of seconds > 0, not {ttl!r}")
    return now_ns + int(ttl * 1e9)


def check_meta(meta: bytes | bytearray | memoryview | None) -> bytes:
    if meta is None:
        return b""
    if not isinstance(meta, (bytes, bytearray, memoryview)):
        raise TypeError(f"meta must be bytes or None, not {type(meta).__name__}")
    meta = bytes(meta)
    if len(meta) > _format.MAX_META:
        raise ValueError(f"meta is limited to {_format.MAX_META} bytes, not {len(meta)}")
    return meta


def encode(key: Key) -> tuple[bytes, str]:
    """The key's canonical encoding (stored in the entry, for listing) and its digest."""
    encoding = _keys.encode_key(key)
    return encoding, _keys.digest_of_encoding(encoding)


def put(
    bucket: Bucket,
    key: Key,
    data: bytes | bytearray | memoryview,
    *,
    kind: str,
    meta: bytes | bytearray | memoryview | None,
    ttl: float | None,
) -> bool:
    """``Bucket.put``: see its docstring."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"put() takes bytes-like data, not {type(data).__name__}; use put_stream() for files")
    kind_code = _format.kind_code(kind)
    meta_bytes = check_meta(meta)
    now = time.time_ns()
    expires = expires_ns(ttl, now)
    encoding, digest = encode(key)
    if bucket.directory is None or not bucket._writable("put"):
        return False
    cache = bucket.cache
    raw = bytes.fromhex(digest)
    path = _layout.entry_path(bucket.directory, digest)
    length = data.nbytes if isinstance(data, memoryview) else len(data)
    crc = _format.crc32(data)
    try:
        old_size = _identical(path, raw, data, crc, kind_code, meta_bytes, expires)
        if old_size < 0:
            if cache.debug_keys:
                bucket._debug("put", key, digest, "identical entry already there")
            return True
        head = _format.pack_header(length, now, raw, crc, kind_code, key=encoding, meta=meta_bytes, expires_ns=expires)
        if not (
            length <= _SMALL_PUT
            and not cache.durable
            and _osops.current is _osops.fast_path
            and _fs.write_small_fast(path, head + data, cache.file_mode)
        ):
            _fs.write_file(path, (head, memoryview(data)), durable=cache.durable, budget=cache.retry_budget, mode=cache.file_mode)
    except OSError as exc:
        bucket.counters.error(cache._failed("put", exc, path))
        return False
    if old_size:
        drop_stale_meta(path)
    _count_write(bucket, length, len(head) + length - old_size, not old_size)
    if cache.tier is not None:
        cache.tier.upload(bucket, digest, path, len(head) + length)
    if cache.debug_keys:
        bucket._debug("put", key, digest, "stored")
    return True


def _count_write(bucket: Bucket, length: int, growth: int, new: bool) -> None:
    counters = bucket.counters
    counters.writes += 1
    counters.bytes_written += length
    counters.size += growth
    if new:
        counters.entries += 1


def _identical(
    path: str,
    digest: bytes,
    data: bytes | bytearray | memoryview,
    crc: int,
    kind: int,
    meta: bytes,
    expires: int,
) -> int:
    """-1 if ``path`` already holds exactly this entry (same kind, metadata,
    no expiry, same bytes: compared byte for byte, never by checksum alone,
    since a CRC-32 collision is trivial to craft); otherwise the size of the
    file there (0 if none), which the write will replace."""
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
        if expires:
            return size  # a new expiry is a new entry
        # One read for a small entry (its header region, then its bytes); a
        # large one's header is checked before any of its bytes are read.
        region = HEADER_SIZE + len(meta) + _format.MAX_KEY
        first = ops.read(fd, region + (length if length <= _format.BLOCK else 0))
        header = _format.parse_header(first, digest)
        if (
            header.version != _format.VERSION
            or size != header.offset + length
            or header.length != length
            or header.payload_crc != crc
            or header.kind != kind
            or header.expires_ns
            or header.meta != meta
            or _fs.exists(_layout.meta_path(path))
        ):
            return size
        # bytes.startswith compares buffers with memcmp; a memoryview
        # comparison goes element by element (100 times slower).
        offset = len(first) - header.offset
        if not first.startswith(view[:offset], header.offset):
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


def drop_stale_meta(path: str) -> None:
    """Remove the metadata sidecar of an entry that was just replaced, if it
    names another value (a sidecar written for the new value by a
    concurrent ``set_meta`` is kept).  Best effort."""
    sidecar = _layout.meta_path(path)
    try:
        if not _fs.exists(sidecar):
            return
        opened = _fs.read_file(path, budget=0.05)
        if opened is None:
            return
        fd, block = opened
        try:
            header = _format.parse_header(block, None)
        finally:
            _osops.current.close(fd)
        side = _fs.read_file(sidecar, budget=0.05)
        if side is None:
            return
        sfd, sblock = side
        try:
            stale = _format.parse_meta(sblock, header) is None
            st = _osops.current.fstat(sfd)
        finally:
            _osops.current.close(sfd)
        if stale:
            _fs.remove_if_same(sidecar, st, budget=0.05)
    except (OSError, Invalid):
        pass


# -- the push-style writer -------------------------------------------------------------------
class EntryWriter:
    """A binary, write-only file object that becomes ``key``'s entry when the
    ``with`` block ends normally (``bucket.writer(key)``).

    Nothing is visible until then: the bytes go to a temp file beside the
    entry, with room for the header at the front, and memory stays bounded
    whatever the size.  If the block raises, the temp file is removed and the
    exception propagates.  When the cache cannot store (disabled, read-only,
    a write fails in lenient mode), writes are accepted and discarded, and
    :attr:`stored` is False after the block; nothing raises because of the
    cache.  Not seekable; not thread-safe.
    """

    def __init__(self, bucket: Bucket, key: Key, *, kind: str, meta: bytes | None, ttl: float | None) -> None:
        self._bucket = bucket
        self._key = key
        self._kind = _format.kind_code(kind)
        self._meta = check_meta(meta)
        self._now = time.time_ns()
        self._expires = expires_ns(ttl, self._now)
        self._encoding, self._digest = encode(key)
        self._fd = -1
        self._tmp = ""
        self._path = ""
        self._head = 0
        self._length = 0
        self._crc = 0
        self._entered = False
        self._closed = False
        #: True once the entry has been committed.
        self.stored = False

    # -- the file object ------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def tell(self) -> int:
        return self._length

    def flush(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed or not self._entered:
            raise ValueError("write to a cache writer outside its with-block")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a cache writer takes bytes-like data, not {type(data).__name__}")
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if self._fd >= 0:
            try:
                _fs.write_all(self._fd, data)
            except OSError as exc:
                self._fail(exc)  # lenient: from now on a sink; strict: raises
        self._crc = _format.crc32(data, self._crc)
        self._length += n
        return n

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for line in lines:
            self.write(line)

    # -- the entry -----------------------------------------------------------------------
    def __enter__(self) -> EntryWriter:
        self._entered = True
        bucket = self._bucket
        if bucket.directory is None or not bucket._writable("put"):
            return self
        cache = bucket.cache
        self._path = _layout.entry_path(bucket.directory, self._digest)
        self._head = HEADER_SIZE + len(self._encoding if len(self._encoding) <= _format.MAX_KEY else b"") + len(self._meta)
        try:
            self._tmp, self._fd = _fs.create_temp(self._path, mode=cache.file_mode)
            _fs.write_all(self._fd, bytes(self._head))  # room for the header, written last
        except OSError as exc:
            self._fail(exc)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._closed = True
        if exc_type is not None:
            self._discard()
            return
        if self._fd < 0:
            return
        bucket, cache = self._bucket, self._bucket.cache
        ops = _osops.current
        try:
            head = _format.pack_header(
                self._length, self._now, bytes.fromhex(self._digest), self._crc & 0xFFFFFFFF, self._kind,
                key=self._encoding, meta=self._meta, expires_ns=self._expires,
            )
            if _fs.retry("pwrite", ops.pwrite, self._fd, head, 0) != len(head):
                raise OSError(5, "short header write", self._tmp)
            if cache.durable:
                ops.fsync(self._fd)
            ops.close(self._fd)
            self._fd = -1
            old_size = _stats.entry_size(self._path)
            _fs.replace_file(self._tmp, self._path, budget=cache.retry_budget)
            if cache.durable:
                _fs.fsync_dir(os.path.dirname(self._path))
        except OSError as exc:
            self._discard()
            self._fail(exc)
            return
        if old_size:
            drop_stale_meta(self._path)
        _count_write(bucket, self._length, len(head) + self._length - old_size, not old_size)
        self.stored = True
        if cache.tier is not None:
            cache.tier.upload(bucket, self._digest, self._path, len(head) + self._length)

    def _discard(self) -> None:
        if self._fd >= 0:
            try:
                _osops.current.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        if self._tmp:
            _fs.discard(self._tmp)
            self._tmp = ""

    def _fail(self, exc: OSError) -> None:
        """A cache failure while writing: lenient mode turns the writer into a
        sink (one warning); strict mode raises the typed error."""
        self._discard()
        bucket = self._bucket
        bucket.counters.error(bucket.cache._failed("put", exc, self._path or None))


def put_stream(bucket: Bucket, key: Key, source: Source, *, kind: str, meta: bytes | None, ttl: float | None) -> bool:
    """``Bucket.put_stream``: see its docstring."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return put(bucket, key, source, kind=kind, meta=meta, ttl=ttl)
    writer = EntryWriter(bucket, key, kind=kind, meta=meta, ttl=ttl)
    with writer:
        for chunk in iter_source(source):
            writer.write(chunk)
    return writer.stored


def iter_source(source: Source) -> Iterable[bytes | bytearray | memoryview]:
    """The chunks of a file object or an iterable, checked: anything but a
    bytes-like chunk is the caller's TypeError (``bytes(5)`` would store five
    zero bytes), and a non-blocking file whose ``read()`` returns None (no
    data yet) is refused rather than taken as the end: storing a prefix as
    the value would serve wrong bytes."""
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            chunk = read(_CHUNK)
            if chunk is None:
                raise BlockingIOError(
                    "put_stream(): source.read() returned None (a non-blocking stream with no data ready); "
                    "pass a blocking stream"
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


# -- metadata after the fact ---------------------------------------------------------------------
def set_meta(
    bucket: Bucket, key: Key, meta: bytes | bytearray | memoryview, *, expect: bytes | None = None
) -> bool:
    """``Bucket.set_meta``: see its docstring."""
    meta_bytes = check_meta(meta)
    if bucket.directory is None or not bucket._writable("set_meta"):
        return False
    cache = bucket.cache
    digest = _keys.key_digest(key)
    path = _layout.entry_path(bucket.directory, digest)
    try:
        header = _read.header_of(path, digest, budget=cache.retry_budget)
        if header is None or header.expired(time.time_ns()):
            return False
        if expect is not None and _read.current_meta(bucket, path, header) != expect:
            return False  # another put or set_meta landed since the caller read it
        # The sidecar names the value it belongs to (the one whose metadata
        # was just compared): a put that lands after this makes it stale,
        # and readers then ignore it.
        _fs.write_file(
            _layout.meta_path(path),
            [_format.pack_meta(header.written_ns, header.payload_crc, meta_bytes)],
            budget=cache.retry_budget,
            mode=cache.file_mode,
        )
    except Invalid:
        return False
    except OSError as exc:
        bucket.counters.error(cache._failed("set_meta", exc, path))
        return False
    return True


def touch(bucket: Bucket, key: Key) -> bool:
    """``Bucket.touch``: see its docstring."""
    if bucket.directory is None or bucket.cache.state is not READY:
        return False
    path = _layout.entry_path(bucket.directory, _keys.key_digest(key))
    try:
        _fs.touch(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        bucket.counters.error(bucket.cache._failed("touch", exc, path))
        return False

"""Reading entries with their metadata: ``open``, ``open_with_meta``,
``get_with_meta``, ``get_meta``.  (``Bucket.get`` keeps its own inlined
path: it is every hit's cost.)

The metadata a reader returns is the ``set_meta`` sidecar that belongs to
the very value it read (same write time and payload checksum), else the
metadata stored in the entry: never metadata without its value, or with
another value.
"""

from __future__ import annotations

import io
import os
import time

from . import _format, _fs, _layout, _osops, _policy, _stats
from ._format import Invalid
from ._location import DISABLED, READY

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from typing import IO

    from ._bucket import Bucket

    Key = object

_BLOCK = _format.BLOCK
_CHUNK = _format.CHUNK
#: Use is recorded by refreshing an entry's mtime at most this often (Go).
MTIME_INTERVAL_NS = 3600 * 10**9
#: Corrupt entries are removed best-effort: do not spend the retry budget.
_CLEANUP_BUDGET = 0.05


def header_of(path: str, digest: str, *, budget: float) -> _format.Header | None:
    """The validated header of the entry at ``path`` when the file holds a
    whole entry of that size (the payload's checksum is not read); None when
    it is absent, not a regular file, torn or invalid.  Raises OSError for a
    failure to read it (the caller applies the error policy)."""
    opened = _fs.read_file(path, budget=budget)
    if opened is None:
        return None
    fd, block = opened
    try:
        header = _format.parse_header(block, bytes.fromhex(digest))
        return header if _osops.current.fstat(fd).st_size == header.offset + header.length else None
    except Invalid:
        return None
    finally:
        _osops.current.close(fd)


def get_meta(bucket: Bucket, key: Key) -> bytes | None:
    """``Bucket.get_meta``: see its docstring."""
    cache = bucket.cache
    if bucket.directory is None or cache.state is DISABLED:
        return None
    digest, path = bucket._locate(key)
    try:
        header = header_of(path, digest, budget=cache.retry_budget)
        if header is None and cache.tier is not None and cache.tier.fetch(bucket, digest, path) is not None:
            header = header_of(path, digest, budget=cache.retry_budget)  # the remote's entry, now local
        if header is None or header.expired(time.time_ns()):
            return None
        return current_meta(bucket, path, header)
    except OSError as exc:
        bucket.counters.error(cache._failed("get_meta", exc, path))
        return None

def current_meta(bucket: Bucket, path: str, header: _format.Header) -> bytes:
    """The entry's metadata: a ``set_meta`` sidecar that belongs to this
    very value, else the metadata stored with it."""
    try:
        opened = _fs.read_file(_layout.meta_path(path), budget=bucket.cache.retry_budget)
    except OSError:
        return header.meta
    if opened is None:
        return header.meta
    fd, block = opened
    _osops.current.close(fd)
    side = _format.parse_meta(block, header)
    return header.meta if side is None else side

def open_entry(
    bucket: Bucket, key: Key, operation: str, *, meta: bool = False, keep: bool = False
) -> tuple[IO[bytes], bytes] | None:
    """The verified value of ``key`` as a stream (in memory when small or
    ``keep``), with its metadata when ``meta``; None on a miss."""
    cache = bucket.cache
    if bucket.directory is None or cache.state is DISABLED:
        return None
    digest, path = bucket._locate(key)
    ops = _osops.current
    fd = -1
    try:
        opened = _fs.read_file(path, budget=cache.retry_budget)
        if opened is None and cache.tier is not None and cache.tier.fetch(bucket, digest, path) is not None:
            opened = _fs.read_file(path, budget=cache.retry_budget)  # the remote's entry, now local
        if opened is None:
            bucket.counters.misses += 1
            return None
        fd, block = opened
        small = keep or len(block) < _BLOCK
        header, payload = _format.read_entry(fd, block, bytes.fromhex(digest), keep=small)
        if header.expired(time.time_ns()):
            bucket.counters.misses += 1
            return None
        found = current_meta(bucket, path, header) if meta else b""
        bucket.counters.hits += 1
        bucket.counters.bytes_read += header.length
        if payload is not None:
            return io.BytesIO(payload), found
        if time.time_ns() - header.written_ns > MTIME_INTERVAL_NS:
            bucket._mark_used(fd, path)
        ops.lseek(fd, header.offset, os.SEEK_SET)
        stream = io.open(fd, "rb", buffering=_CHUNK, closefd=True)
        fd = -1  # owned by the stream now
        return stream, found
    except Invalid as invalid:
        bucket._corrupt(path, fd, invalid)
        return None
    except OSError as exc:
        bucket.counters.misses += 1
        bucket.counters.error(cache._failed(operation, exc, path))
        return None
    finally:
        if fd >= 0:
            ops.close(fd)


def mark_used(fd: int, path: str) -> None:
    """Refresh the mtime (the LRU clock) if it is over an hour old."""
    try:
        if time.time() - _osops.current.fstat(fd).st_mtime > MTIME_INTERVAL_NS / 1e9:
            _fs.touch(path)
    except OSError:
        pass  # recording use is best effort: a read-only cache cannot

def corrupt(bucket: Bucket, path: str, fd: int, invalid: Invalid) -> None:
    """Count a bad entry as a miss and remove it (unless it is merely from
    a newer safecache), taking care not to remove a good entry that
    another process put there since we opened the bad one."""
    bucket.counters.misses += 1
    _policy.logger().info("safecache: %s: invalid entry %s (%s)", bucket._label, path, invalid)
    if invalid.reason == "unsupported-version":
        return
    bucket.counters.corrupt_removed += 1
    if bucket.cache.state is not READY:
        return
    try:
        size = _stats.entry_size(path)
        removed = (
            _fs.remove_if_same(path, _osops.current.fstat(fd), budget=_CLEANUP_BUDGET)
            if fd >= 0
            else _fs.remove(path, budget=_CLEANUP_BUDGET)
        )
        if removed:
            bucket.counters.size -= size
            bucket.counters.entries -= 1
    except OSError:
        pass

"""Listing a bucket: ``keys()``, ``items()``, ``len()``, ``clear()``.

Listing is a walk: it lists the bucket's fan-out directories and reads the
first block of every entry (its header, key and metadata; never the value).
Its cost grows with the number of entries (about what ``ls -R`` plus one
small read per entry costs), so it is for maintenance, adapters and tools
that need it, not for the hot path.  It tolerates concurrent writers and
removals: an entry replaced during the walk is listed once, old or new; one
removed is listed or not; a torn or corrupt one is skipped; nothing raises
because of the cache in lenient mode.
"""

from __future__ import annotations

import os
import time

from . import _format, _fs, _keys, _layout, _osops, _read, _stats

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from typing import Iterator

    from ._bucket import Bucket


class EntryInfo:
    """One entry, as ``bucket.items()`` lists it.

    ``key``: the key as given to ``put`` (normalised as docs/keys.md says:
    a ``tuple`` or ``list`` comes back as a ``tuple``...), or None when it was
    not stored (an encoding over 16 KiB, or an entry written by safecache
    0.1); ``size``: the value's length in bytes; ``kind``: ``"built"`` or
    ``"fetched"``; ``written``: when it was put (Unix time); ``expires``:
    when it expires (Unix time) or None; ``meta_length``: the length of its
    metadata in bytes.
    """

    __slots__ = ("key", "size", "kind", "written", "expires", "meta_length")

    def __init__(self, key: object, size: int, kind: str, written: float, expires: float | None, meta_length: int) -> None:
        self.key = key
        self.size = size
        self.kind = kind
        self.written = written
        self.expires = expires
        self.meta_length = meta_length

    def __repr__(self) -> str:
        return (
            f"EntryInfo(key={self.key!r}, size={self.size}, kind={self.kind!r}, written={self.written:.3f}, "
            f"expires={self.expires!r}, meta_length={self.meta_length})"
        )


def _entry_files(bucket: Bucket) -> Iterator[tuple[str, str]]:
    """``(digest, path)`` of every entry file name in the bucket, walking the
    fan-out directories without following links."""
    if bucket.directory is None or not bucket.cache.enabled:
        return
    ops = _osops.current
    try:
        shards = sorted(e.name for e in ops.scandir(bucket.directory) if _layout.is_shard(e.name) and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return
    except OSError as exc:
        bucket.counters.error(bucket.cache._failed("list", exc, bucket.directory))
        return
    for shard in shards:
        directory = os.path.join(bucket.directory, shard)
        try:
            names = sorted(e.name for e in ops.scandir(directory) if _layout.is_digest(e.name))
        except FileNotFoundError:
            continue  # removed while we walked
        except OSError as exc:
            bucket.counters.error(bucket.cache._failed("list", exc, directory))
            continue
        for name in names:
            yield name, os.path.join(directory, name)


def items(bucket: Bucket) -> Iterator[EntryInfo]:
    """``Bucket.items``: see its docstring."""
    now = time.time_ns()
    for digest, path in _entry_files(bucket):
        try:
            header = _read.header_of(path, digest, budget=0.05)
        except OSError:
            continue
        if header is None or header.expired(now):
            continue
        key: object = None
        if header.flags & _format.FLAG_KEY_STORED:
            try:
                key = _keys.decode_key(header.key)
            except ValueError:
                key = None
        meta = header.meta
        side = _read_sidecar(path, header)
        if side is not None:
            meta = side
        yield EntryInfo(
            key,
            header.length,
            header.kind_name,
            header.written_ns / 1e9,
            header.expires_ns / 1e9 if header.expires_ns else None,
            len(meta),
        )


def _read_sidecar(path: str, header: _format.Header) -> bytes | None:
    try:
        opened = _fs.read_file(_layout.meta_path(path), budget=0.05)
    except OSError:
        return None
    if opened is None:
        return None
    fd, block = opened
    _osops.current.close(fd)
    return _format.parse_meta(block, header)


def clear(bucket: Bucket) -> int:
    """``Bucket.clear``: see its docstring."""
    if bucket.directory is None or not bucket._writable("clear"):
        return 0
    removed = 0
    for _digest, path in _entry_files(bucket):
        try:
            size = _stats.entry_size(path)
            if _fs.remove(path, budget=bucket.cache.retry_budget):
                removed += 1
                bucket.counters.size -= size
                bucket.counters.entries -= 1
            _fs.discard(_layout.meta_path(path))
        except OSError as exc:
            bucket.counters.error(bucket.cache._failed("clear", exc, path))
    return removed

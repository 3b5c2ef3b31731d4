"""CacheControl's cache kept in a safecache bucket: ``CacheControlCache(bucket)``
is a ``cachecontrol.cache.SeparateBodyBaseCache``::

    import requests, safecache
    from cachecontrol import CacheControl
    from safecache.adapters.cachecontrol import CacheControlCache

    cache = CacheControlCache(safecache.Cache().bucket("http", version=1))
    session = CacheControl(requests.Session(), cache=cache)

One URL is one entry: its value is the response body, its metadata (at most
``safecache.MAX_META`` bytes) the response as CacheControl serialized it, with
an empty body.  The two are written by one ``put`` and read by one
``open_with_meta``, so metadata is never served without its body or with
another one (cachecontrol #324, #332: ``SeparateBodyFileCache`` writes and
reads them as two files).

How CacheControl calls a separate-body cache, and what each call does here:

- lookup: ``get(url)`` then ``get_body(url)``.  ``get`` opens the entry and
  returns its metadata; ``get_body`` returns the stream of that same entry
  (a verified value: it never yields bytes that fail their checksum).  An
  entry without metadata is a miss.
- store: ``set(url, metadata, expires)`` then ``set_body(url, body)``.  ``set``
  only holds the metadata; ``set_body`` stores both in one ``put`` (kind
  ``"fetched"``).  A body with no metadata before it is not stored.
- 304 revalidation: ``get``, ``get_body``, then ``set(url, metadata)`` with no
  ``set_body``: only the headers change.  Nothing tells ``set`` which of the
  two it is, so the metadata waits; when the thread's next call on this cache
  (or ``close()``) shows no body followed, it replaces the metadata with
  ``bucket.set_meta``: the body is not rewritten or copied.  It does so only
  while the entry is still the one that thread read, so new headers never
  land on a body another process stored meanwhile.  (Until then the stored
  headers are the old ones: another process revalidates again, which is safe.)
- ``expires`` (seconds, or an absolute ``datetime``; naive means UTC) becomes
  the entry's ``ttl``: CacheControl gives it as a hint for eviction, and
  judges freshness itself from the stored headers.  None, 0 or a time in the
  past give no ttl (kept until trimmed, as ``FileCache`` keeps everything).
- ``delete(url)`` deletes the entry; ``close()`` finishes this thread's
  pending header update and leaves the bucket open (it is the caller's).
- ``set_body_from_io(url, file)`` (pip's extension) is ``set_body`` from a
  binary file, streamed with ``put_stream``.

Keys are the URLs CacheControl gives, so a bucket may hold other entries too.
A cache problem never fails a request: it is a miss or a no-op with one
``CacheWarning`` (in strict mode the bucket's ``CacheError`` propagates).
The state between a ``get`` and its ``get_body``, and between a ``set`` and
its ``set_body``, is per thread, so one instance serves a session used from
several threads.  Since 0.2.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, NamedTuple

from .._format import MAX_META

try:
    from cachecontrol.cache import SeparateBodyBaseCache
except ImportError as exc:
    raise ImportError(
        f"safecache.adapters.cachecontrol needs CacheControl ({exc}): pip install 'safecache[cachecontrol]'"
    ) from exc

if TYPE_CHECKING:
    from .._bucket import Bucket

__all__ = ["CacheControlCache"]


class _Pending(NamedTuple):
    """Metadata ``set`` received, waiting to learn whether a body follows."""

    key: str
    meta: bytes
    ttl: float | None
    base: bytes | None  # the metadata this thread last read for key: what a 304 updates


class _Opened(NamedTuple):
    """The entry ``get`` opened, kept for the ``get_body`` that follows."""

    key: str
    stream: IO[bytes]


class CacheControlCache(SeparateBodyBaseCache):
    """A ``cachecontrol.cache.SeparateBodyBaseCache`` on ``bucket`` (see the
    module's docstring for what each method does).  Since 0.2."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"CacheControlCache({self.bucket!r})"

    # -- reading ---------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """The metadata of ``key``'s entry, or None; the entry's body is kept
        open for the ``get_body(key)`` that follows."""
        self._settle()
        local = self._local
        local.read = None
        opened = self.bucket.open_with_meta(key)
        if opened is None:
            return None
        stream, meta = opened
        if not meta:  # not stored by this adapter: nothing to describe the body
            stream.close()
            return None
        local.opened = _Opened(key, stream)
        local.read = (key, meta)
        return meta

    def get_body(self, key: str) -> IO[bytes] | None:
        """The body of the entry the last ``get(key)`` of this thread found
        (a binary stream the caller closes), else of the entry there now."""
        opened: _Opened | None = getattr(self._local, "opened", None)
        self._local.opened = None
        if opened is not None and opened.key == key:
            return opened.stream
        if opened is not None:
            opened.stream.close()
        self._settle()
        return self.bucket.open(key)

    # -- writing ---------------------------------------------------------------
    def set(self, key: str, value: bytes, expires: int | datetime | None = None) -> None:
        """Hold ``value`` (CacheControl's metadata) for the ``set_body(key)``
        that follows, or, if none does, as a header update (see the module)."""
        self._settle()
        read = getattr(self._local, "read", None)
        base = read[1] if read is not None and read[0] == key else None
        self._local.pending = _Pending(key, bytes(value), _ttl(expires), base)

    def set_body(self, key: str, body: bytes) -> None:
        """Store ``body`` with the metadata the last ``set(key)`` gave, as one entry."""
        pending = self._take_pending(key)
        if pending is not None and self._storable(pending):
            self.bucket.put(key, body, kind="fetched", meta=pending.meta, ttl=pending.ttl)

    def set_body_from_io(self, key: str, body_file: IO[bytes]) -> None:
        """``set_body`` from a binary file, read in chunks (pip's extension)."""
        pending = self._take_pending(key)
        if pending is not None and self._storable(pending):
            self.bucket.put_stream(key, body_file, kind="fetched", meta=pending.meta, ttl=pending.ttl)

    def delete(self, key: str) -> None:
        pending: _Pending | None = getattr(self._local, "pending", None)
        if pending is not None and pending.key == key:
            self._local.pending = None  # the delete wins over a header update
        self._settle()
        self._local.read = None
        self.bucket.delete(key)

    def close(self) -> None:
        """Finish this thread's pending header update; the bucket stays open."""
        self._settle()

    # -- the state between two calls -------------------------------------------
    def _take_pending(self, key: str) -> _Pending | None:
        local = self._local
        pending: _Pending | None = getattr(local, "pending", None)
        local.pending = None
        local.read = None
        self._close_opened()
        if pending is not None and pending.key != key:
            self._update_headers(pending)
            return None
        return pending

    def _storable(self, pending: _Pending) -> bool:
        if len(pending.meta) <= MAX_META:
            return True
        # Too large to store: the response it describes supersedes the entry.
        self.bucket.delete(pending.key)
        return False

    def _settle(self) -> None:
        """Close an opened body nobody asked for; a ``set`` with no body after
        it was a header update."""
        self._close_opened()
        pending: _Pending | None = getattr(self._local, "pending", None)
        if pending is not None:
            self._local.pending = None
            self._update_headers(pending)

    def _close_opened(self) -> None:
        opened: _Opened | None = getattr(self._local, "opened", None)
        if opened is not None:
            self._local.opened = None
            opened.stream.close()

    def _update_headers(self, pending: _Pending) -> None:
        """A ``set`` with no ``set_body``: CacheControl revalidated (304) the
        entry this thread read and changes only its headers."""
        bucket, key, meta = self.bucket, pending.key, pending.meta
        if len(meta) > MAX_META:
            return
        if pending.base is None:
            # Headers of a response without a body (a permanent redirect with
            # an ETag), for a URL this thread found nothing under: its body is
            # empty, stored with it; an entry stored meanwhile is left alone.
            if key not in bucket:
                bucket.put(key, b"", kind="fetched", meta=meta, ttl=pending.ttl)
            return
        # Only onto the body those headers describe: the entry this thread
        # read, not one another process stored since (checked by the store,
        # after it reads the header it attaches the new metadata to).
        bucket.set_meta(key, meta, expect=pending.base)


def _ttl(expires: float | datetime | None) -> float | None:
    """CacheControl's ``expires`` (seconds from now, or when) as a ttl."""
    if expires is None:
        return None
    if isinstance(expires, datetime):
        now = datetime.now(timezone.utc)
        if expires.tzinfo is None:  # as cachecontrol's RedisCache: naive is UTC
            now = now.replace(tzinfo=None)
        seconds = (expires - now).total_seconds()
    else:
        seconds = float(expires)
    return seconds if 0 < seconds < float("inf") else None

"""The remote tier: local first, a remote server behind it.  docs/remote.md is its specification.

A local miss asks the remote; a remote hit is verified (its signature when a
key is configured, then the entry format's own checks: key digest, lengths,
CRCs), stored locally and returned.  A put stores locally and is uploaded in
the background by one thread per cache, from a bounded queue; ``close()``
and interpreter exit flush it within a deadline, and what is left is
dropped and counted.  A remote can only ever cost bounded time: every
request has connect and read timeouts, consecutive failures open a circuit
breaker (the remote is off for this process for a while, one warning), and
the total time a process waits on the remote is capped.

What travels is the entry file itself (header, key, metadata, expiry,
payload) in an envelope::

    0  4  magic b"\\x89SCR"
    4  2  envelope version (1)
    6  2  flags: bit 0 signed, bit 1 zlib-compressed
    8  8  length of the entry (uncompressed)
    16 32 HMAC-SHA256 of the object name and the entry (only when signed)
    .. ..  the entry, compressed or not

Object names depend on the bucket, its version and the key only (never on
the server's address): ``ac/`` + SHA-256 of ``bucket/vN/digest``, the Bazel
HTTP cache's action-cache layout, so bazel-remote and an nginx WebDAV
location both serve it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
import zlib

from . import _format, _fs, _layout, _policy
from ._remote import RemoteError, RemoteStore
from ._remote_open import open_remote

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from typing import Callable

    from ._bucket import Bucket
    from ._cache import Cache
    from ._stats import Counters

MODES = ("read-write", "read-only", "write-only", "off")
MAGIC = b"\x89SCR"
_ENVELOPE = 16
_SIG = 32
FLAG_SIGNED = 1
FLAG_ZLIB = 2
#: Values larger than this stay local (never below 1 MiB).
DEFAULT_MAX_SIZE = 100 * 1024**2
MIN_MAX_SIZE = 1024**2
#: Defaults suited to a LAN or a CI network: a server that does not accept
#: a connection in 2 s is not there; one that takes 10 s to answer a request
#: is not worth waiting for.
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_TIMEOUT = 10.0
#: The most a process spends waiting on the remote in all (then it is off).
DEFAULT_BUDGET = 120.0
#: Consecutive failures that open the breaker, and for how long it stays open.
BREAKER_FAILURES = 3
BREAKER_COOLDOWN = 30.0
#: The upload queue: at most this many entries and bytes waiting.
QUEUE_ITEMS = 1024
QUEUE_BYTES = 64 * 1024**2
#: How long close() waits for the queue to drain.
DEFAULT_FLUSH_TIMEOUT = 10.0


def object_name(bucket: str, version: int, digest: str) -> str:
    """The remote object name of an entry: a function of bucket, version and key only."""
    return "ac/" + hashlib.sha256(f"{_layout.label(bucket, version)}/{digest}".encode()).hexdigest()


def seal(name: str, entry: bytes, *, key: bytes | None, compress: bool) -> bytes:
    """The envelope of ``entry`` for the object ``name``."""
    flags = 0
    signature = b""
    if key is not None:
        flags |= FLAG_SIGNED
        signature = hmac.new(key, name.encode() + b"\0" + entry, hashlib.sha256).digest()
    body = entry
    if compress:
        packed = zlib.compress(entry, 3)
        if len(packed) < len(entry):
            body, flags = packed, flags | FLAG_ZLIB
    head = MAGIC + (1).to_bytes(2, "little") + flags.to_bytes(2, "little") + len(entry).to_bytes(8, "little")
    return head + signature + body


class Refused(Exception):
    """A remote object that must not be used; ``cause`` names why."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def unseal(name: str, blob: bytes, *, key: bytes | None, max_size: int) -> bytes:
    """The entry in an envelope, checked: its declared length, its size,
    its signature when ``key`` is set (unsigned or mis-signed is refused).
    Raises :class:`Refused`.  Never unpickles or executes anything."""
    if len(blob) < _ENVELOPE or blob[:4] != MAGIC or int.from_bytes(blob[4:6], "little") != 1:
        raise Refused("bad-envelope")
    flags = int.from_bytes(blob[6:8], "little")
    length = int.from_bytes(blob[8:16], "little")
    if length > max_size + _format.HEADER_SIZE + _format.MAX_KEY + _format.MAX_META:
        raise Refused("oversized")
    signed = bool(flags & FLAG_SIGNED)
    start = _ENVELOPE + (_SIG if signed else 0)
    if len(blob) < start:
        raise Refused("truncated")
    body = blob[start:]
    if flags & FLAG_ZLIB:
        decompressor = zlib.decompressobj()
        try:
            entry = decompressor.decompress(body, length + 1)  # bounded: a zip bomb stops here
        except zlib.error:
            raise Refused("bad-compression") from None
        if decompressor.unconsumed_tail or not decompressor.eof:
            raise Refused("bad-compression")
    else:
        entry = body
    if len(entry) != length:
        raise Refused("truncated")
    if key is not None:
        if not signed:
            raise Refused("unsigned")
        expected = hmac.new(key, name.encode() + b"\0" + entry, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, blob[_ENVELOPE:start]):
            raise Refused("bad-signature")
    return entry


class TierStats:
    """Counters of one cache's remote tier in this process."""

    __slots__ = ("hits", "misses", "errors", "bytes_read", "bytes_written", "uploads", "dropped", "seconds", "refused")

    def __init__(self) -> None:
        self.hits = self.misses = self.uploads = self.dropped = 0
        self.bytes_read = self.bytes_written = 0
        self.seconds = 0.0
        self.errors: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Tier:
    """One cache's remote: fetching, uploading, the breaker and the budget."""

    def __init__(
        self,
        cache: Cache,
        url: str,
        mode: str,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        budget: float = DEFAULT_BUDGET,
        max_size: int = DEFAULT_MAX_SIZE,
        compress: bool = False,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"remote_mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.cache = cache
        self.url = url
        self.mode = mode
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.budget = budget
        self.max_size = max(int(max_size), MIN_MAX_SIZE)
        self.compress = compress
        self.flush_timeout = flush_timeout
        key = os.environ.get("SAFECACHE_REMOTE_KEY")
        self.key: bytes | None = key.encode() if key else None
        self.stats = TierStats()
        self._store: RemoteStore | None = None
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._off_reason = ""
        self._queue: list[tuple[str, str | Callable[[], bytes | None], Counters, int]] = []  # (name, path, counters, bytes counted)
        self._queued_bytes = 0
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._closing = False
        self.display = url

    # -- the store and the policy ---------------------------------------------------------
    @property
    def reads(self) -> bool:
        return self.mode in ("read-write", "read-only")

    @property
    def writes(self) -> bool:
        return self.mode in ("read-write", "write-only")

    def _available(self) -> RemoteStore | None:
        """The store, unless the breaker is open or the budget is spent."""
        if self._off_reason:
            return None
        now = time.monotonic()
        if now < self._open_until:
            return None
        if self.stats.seconds >= self.budget:
            self._turn_off("budget", f"it has used its time budget of {self.budget:g} s in this process")
            return None
        if self._store is None:
            try:
                self._store = open_remote(self.url, connect_timeout=self.connect_timeout, timeout=self.timeout)
                self.display = self._store.display
            except RemoteError as exc:
                self._turn_off(exc.cause, str(exc))
                return None
        return self._store

    def _call(self, operation: str, func: object, *args: object, **kwargs: object) -> object:
        """Run one remote request, timing it and applying the breaker.
        Returns the result or raises RemoteError (already counted)."""
        store_call = func
        start = time.monotonic()
        try:
            result = store_call(*args, **kwargs)  # type: ignore[operator]
        except RemoteError as exc:
            self._failed(operation, exc)
            raise
        finally:
            self.stats.seconds += time.monotonic() - start
        with self._lock:
            self._failures = 0
        return result

    def _failed(self, operation: str, exc: RemoteError) -> None:
        self.stats.errors[exc.cause] = self.stats.errors.get(exc.cause, 0) + 1
        _policy.logger().info("safecache: remote %s of %s failed: %s", operation, self.display, exc)
        if self.cache.strict:
            from ._errors import CacheUnavailableError

            raise CacheUnavailableError(f"remote {operation} failed ({exc.cause}): {exc}", operation=operation, cause="remote") from exc
        with self._lock:
            self._failures += 1
            if self._failures >= BREAKER_FAILURES:
                # Half-open after the cooldown: one request tries again, and if it
                # fails too the breaker opens again at once (not after three more).
                self._failures = BREAKER_FAILURES - 1
                self._open_until = time.monotonic() + BREAKER_COOLDOWN
                opened = True
            else:
                opened = False
        if opened:
            _policy.warn_once(
                f"remote-{exc.cause}",
                self.cache.path or "",
                f"safecache: the remote cache {self.display} failed {BREAKER_FAILURES} times in a row ({exc.cause}: "
                f"{exc}); it is not used for {BREAKER_COOLDOWN:g} s (run `safecache doctor` for a diagnosis)",
            )

    def _turn_off(self, cause: str, why: str) -> None:
        self._off_reason = cause
        _policy.warn_once(
            f"remote-{cause}",
            self.cache.path or "",
            f"safecache: the remote cache {self.display} is off for this process: {why}",
        )

    # -- reading ------------------------------------------------------------------------------
    def fetch(self, bucket: Bucket, digest: str, path: str) -> bytes | None:
        """On a local miss: the remote's entry for ``digest``, verified and
        stored locally at ``path`` (when the cache can store); its bytes, or
        None.  Never raises in lenient mode."""
        if not self.reads:
            return None
        store = self._available()
        if store is None:
            return None
        name = object_name(bucket.name, bucket.version, digest)
        counters = bucket.counters
        entry = self.fetch_object(name, counters)
        if entry is None:
            return None
        try:
            header, payload = _format.decode_small(entry, bytes.fromhex(digest))
        except _format.Invalid as exc:
            self.refuse(name, counters, f"invalid-{exc.reason}")
            return None
        if header.expired(time.time_ns()):
            self.stats.misses += 1
            counters.remote_misses += 1
            return None
        self.stats.hits += 1
        counters.remote_hits += 1
        if self.cache.writable and bucket.directory is not None and bucket._writable("put"):
            try:
                _fs.write_file(path, [entry], budget=self.cache.retry_budget, mode=self.cache.file_mode)
                bucket.counters.size += len(entry)
                bucket.counters.entries += 1
            except OSError as exc:
                bucket.counters.error(self.cache._failed("put", exc, path))
        return bytes(payload)

    def fetch_object(self, name: str, counters: Counters) -> bytes | None:
        """The unsealed bytes of the remote object ``name`` (checked: size,
        compression, signature), or None (absent, refused, failed: counted).
        Never raises in lenient mode."""
        if not self.reads:
            return None
        store = self._available()
        if store is None:
            return None
        started = time.monotonic()
        try:
            blob = self._call("get", store.get, name, max_size=self.max_size + 64 * 1024)
        except RemoteError as exc:
            counters.error("remote-" + exc.cause)
            return None
        finally:
            counters.remote_ms += int((time.monotonic() - started) * 1000)
        if blob is None:
            self.stats.misses += 1
            counters.remote_misses += 1
            return None
        assert isinstance(blob, bytes)
        try:
            entry = unseal(name, blob, key=self.key, max_size=self.max_size)
        except Refused as exc:
            self.refuse(name, counters, exc.cause)
            return None
        self.stats.bytes_read += len(blob)
        counters.remote_bytes_read += len(blob)
        return entry

    def refuse(self, name: str, counters: Counters, cause: str) -> None:
        """Count a remote object that must not be used (a miss)."""
        self.stats.refused[cause] = self.stats.refused.get(cause, 0) + 1
        self.stats.misses += 1
        counters.remote_misses += 1
        counters.error("remote-refused-" + cause)
        _policy.logger().info("safecache: remote object %s of %s refused: %s", name, self.display, cause)

    # -- writing ------------------------------------------------------------------------------
    def upload(self, bucket: Bucket, digest: str, path: str, size: int) -> None:
        """Queue the local entry at ``path`` for upload (in the background)."""
        self.upload_object(object_name(bucket.name, bucket.version, digest), path, bucket.counters, size)

    def upload_object(self, name: str, source: str | Callable[[], bytes | None], counters: Counters, size: int) -> None:
        """Queue an upload of ``source`` (a file's path, or a function making
        the bytes, called in the uploader thread) as the object ``name``."""
        if not self.writes or self._off_reason or size > self.max_size + 64 * 1024:
            return
        with self._lock:
            if len(self._queue) >= QUEUE_ITEMS or self._queued_bytes + size > QUEUE_BYTES:
                self.stats.dropped += 1
                counters.remote_dropped += 1
                return
            self._queue.append((name, source, counters, size))
            self._queued_bytes += size
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="safecache-upload", daemon=True)
                self._worker.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                name, path, counters, size = self._queue.pop(0)
            try:
                self._upload_one(name, path, counters)
            finally:
                with self._lock:
                    # What upload() counted, not what was read: the file may have been
                    # replaced or removed since, and a drift would make flush() wait out
                    # its whole timeout and the queue refuse uploads once it adds up.
                    self._queued_bytes = max(0, self._queued_bytes - size)
                    self._wake.notify_all()

    def _upload_one(self, name: str, source: str | Callable[[], bytes | None], counters: Counters) -> int:
        if callable(source):
            try:
                made = source()
            except Exception:  # noqa: BLE001 - a background thread must never die on a cache problem
                made = None
            if made is None:
                return 0
            entry = made
        else:
            opened = None
            try:
                opened = _fs.read_file(source, budget=0.5)
            except OSError:
                pass
            if opened is None:
                return 0
            fd, block = opened
            from . import _osops

            try:
                entry = block + _fs.read_exact(fd, self.max_size + 64 * 1024)
            except OSError:
                return 0
            finally:
                _osops.current.close(fd)
        store = self._available()
        if store is None:
            self.stats.dropped += 1
            counters.remote_dropped += 1
            return len(entry)
        blob = seal(name, entry, key=self.key, compress=self.compress)
        started = time.monotonic()
        try:
            self._call("put", store.put, name, blob)
        except RemoteError as exc:
            self.stats.dropped += 1
            counters.remote_dropped += 1
            counters.error("remote-" + exc.cause)
            return len(entry)
        except Exception:  # noqa: BLE001 - a background thread must never die on a cache problem
            self.stats.dropped += 1
            counters.remote_dropped += 1
            return len(entry)
        finally:
            counters.remote_ms += int((time.monotonic() - started) * 1000)
        self.stats.uploads += 1
        self.stats.bytes_written += len(blob)
        counters.remote_uploads += 1
        counters.remote_bytes_written += len(blob)
        return len(entry)

    def flush(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout``, default ``flush_timeout``) for queued
        uploads; drop and count what is left."""
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        with self._lock:
            while self._queue or (self._worker is not None and self._queued_bytes):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats.dropped += len(self._queue)
                    for _name, _path, counters, _size in self._queue:
                        counters.remote_dropped += 1
                    self._queue.clear()
                    self._queued_bytes = 0
                    break
                self._wake.wait(left)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001 - closing a client must not break the caller
                pass

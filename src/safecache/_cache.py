"""The ``Cache``: a root directory, its state, and the error policy in force."""

from __future__ import annotations

import _thread
import errno
import os
import sys
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

from . import _bucket, _errors, _fs, _layout, _location, _policy, _stats, _trust
from ._location import DISABLED, READ_ONLY, READY, Location

if TYPE_CHECKING:
    import weakref
    from typing import Callable

    from ._bucket import Bucket
    from ._tier import Tier

# Kept here for callers of 0.1 that imported it from this module.
valid_bucket_name = _layout.valid_bucket_name

#: Default size limit: 5 GiB, ccache's default.  A cache over it is trimmed,
#: least recently used first, down to 90 % of it (ccache trims to 90 % too,
#: so a full cache is not trimmed again by the very next write).
DEFAULT_MAX_SIZE = 5 * 1024**3
#: Default age limit: entries not used for 30 days are removed.  Go trims
#: after 5 days, citing a month of usage data in which almost all reuse fell
#: within 5 days (golang.org/issue/22990); that is for build outputs rebuilt
#: cheaply on every edit.  Tool caches here hold downloads and lint results
#: of projects touched less often, so the default is longer; set max_age to
#: choose.
DEFAULT_MAX_AGE = 30 * 24 * 3600.0
#: Automatic trimming runs at most this often (Go's trimInterval) unless the
#: cache is over its size limit.
DEFAULT_TRIM_INTERVAL = 24 * 3600.0


class Cache:
    """An on-disk cache rooted in one directory, shared by any number of processes.

    ``Cache(path)`` uses ``path``.  Without a path the root is, in order: the
    application's own environment variable (``env_var``, e.g.
    ``"MYTOOL_CACHE_DIR"``), ``SAFECACHE_DIR``, then the platform's user cache
    directory for ``app_name``.  ``enabled=False``, ``SAFECACHE_DISABLE=1`` or
    the application's ``disable_env`` variable turn caching off: every get
    misses and every put is a no-op.

    Opening a cache writes nothing; the root and its markers (``CACHEDIR.TAG``,
    ``.gitignore``, ``README``) are created by the first write.  A root that
    cannot be written is opened read-only (hits are served); one that cannot be
    read is disabled.  Either says so once, as a :class:`CacheWarning`.

    **Errors.**  By default (lenient) no cache operation raises because of the
    cache: a failure is a miss or a no-op, with one ``CacheWarning`` per cause
    per root per process and details on the ``safecache`` logger.  With
    ``strict=True`` failures raise :class:`CacheError` subclasses instead.
    Programming errors (an unsupported key type, an invalid bucket name, a
    factory returning ``str``) raise ``TypeError``/``ValueError`` in both modes.

    **Concurrency contract.**

    * Safe: any number of threads and processes on one machine, on Linux,
      macOS and Windows, reading and writing the same keys at once.  A get
      returns exactly the bytes one put stored, or ``None``.  Writers never
      modify a file in place; each entry is written to a temp file beside it
      and renamed into place, so a reader sees an old entry or a new one,
      never a mix.  A process killed at any moment leaves at worst a temp file
      (removed by maintenance) and never a readable torn entry: every entry is
      checked against its length and CRC-32, and a bad one reads as a miss and
      is removed.
    * Safe on Windows too: readers open entries with ``FILE_SHARE_DELETE``;
      an entry identical to the one being written is left alone instead of
      replaced; "in use" errors (5, 32, 33) are retried within
      ``retry_budget`` seconds, then the write is skipped (the entry already
      there stays valid).
    * ``get_or_create`` runs the factory once among the processes asking for
      the same missing key, using OS file locks that die with their holder.
    * Not safe: a root on a network file system without working locks (NFS
      without lockd, some SMB mounts) or shared by machines with different
      clocks: entries stay correct (checksums), but compute-once degrades to
      compute-possibly-twice, and safecache warns once when locking fails.
      Share across machines with a remote tier instead.
    * Not safe: another program writing inside the root.  Changes it makes
      are detected (checksums) but never repaired.
    * Without ``durable=True`` nothing is fsynced (uv, Go and ccache do the
      same): after a power loss recent entries may be missing or read as
      misses, never as wrong bytes.

    **Size.**  The cache keeps itself under ``max_size`` bytes (default
    5 GiB; None for no limit) and drops entries and trees not used for
    ``max_age`` seconds (default 30 days; None to keep them).  Use is recorded
    by refreshing an entry's mtime at most once an hour.  Trimming runs when
    a cache is closed (and at exit), at most once per ``trim_interval``
    unless the cache is over its limit, by one process at a time; others do
    not wait.  ``auto_trim=False`` leaves it to ``safecache prune``.

    Usable as a context manager; ``close()`` is idempotent.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        app_name: str | None = None,
        env_var: str | None = None,
        disable_env: str | None = None,
        enabled: bool | None = None,
        strict: bool = False,
        durable: bool = False,
        retry_budget: float = _fs.DEFAULT_RETRY_BUDGET,
        lock_timeout: float = 600.0,
        max_size: int | str | None = DEFAULT_MAX_SIZE,
        max_age: float | str | None = DEFAULT_MAX_AGE,
        trim_interval: float | str = DEFAULT_TRIM_INTERVAL,
        auto_trim: bool = True,
        shared: bool | None = None,
        remote: str | None = None,
        remote_mode: str | None = None,
        remote_timeout: float | None = None,
        remote_connect_timeout: float | None = None,
        remote_budget: float | None = None,
        remote_max_size: int | str | None = None,
        remote_compress: bool = False,
    ) -> None:
        self._settings: dict[str, object] = {
            "app_name": app_name, "env_var": env_var, "disable_env": disable_env, "strict": strict,
            "durable": durable, "retry_budget": retry_budget, "lock_timeout": lock_timeout, "max_size": max_size,
            "max_age": max_age, "trim_interval": trim_interval, "auto_trim": auto_trim, "shared": shared,
            "remote": remote, "remote_mode": remote_mode, "remote_timeout": remote_timeout,
            "remote_connect_timeout": remote_connect_timeout, "remote_budget": remote_budget,
            "remote_max_size": remote_max_size, "remote_compress": remote_compress,
        }
        if path is not None and not os.fspath(path):
            # An unset shell variable ("--cache-dir $UNSET") must not mean the
            # current directory: markers would land in the user's project.
            raise ValueError("the cache path is empty; pass a directory, or None for the default location")
        app_prefix = "".join(c if c.isascii() and c.isalnum() else "_" for c in app_name.upper()) if app_name else ""
        if env_var is None and app_name:
            env_var = app_prefix + "_CACHE_DIR"
        self.app_name = app_name
        self.env_var = env_var
        self.strict = strict
        self.durable = durable
        self.retry_budget = _number("retry_budget", retry_budget)
        self.lock_timeout = _number("lock_timeout", lock_timeout)
        self.max_size: int | None = None if max_size is None else int(_number("max_size", max_size, size=True))
        self.max_age = None if max_age is None else _number("max_age", max_age, duration=True)
        self.trim_interval = _number("trim_interval", trim_interval, duration=True)
        self.auto_trim = auto_trim
        if shared is None:
            shared = any(
                _location.env_truthy(os.environ.get(var))
                for var in (app_prefix + "_CACHE_SHARED" if app_prefix else "", "SAFECACHE_SHARED")
                if var
            )
        #: Whether this cache trusts directories other users own (docs/security.md).
        self.shared = bool(shared)
        #: Mode of the files it creates (directories follow: _fs.dir_mode_for).
        self.file_mode = _trust.file_mode(self.shared)
        self.debug_keys = _location.env_truthy(os.environ.get("SAFECACHE_DEBUG_KEYS"))
        self._lock = _thread.allocate_lock()
        #: The remote tier (docs/remote.md), or None.
        self.tier: Tier | None = None
        url = remote if remote is not None else (
            (os.environ.get(app_prefix + "_CACHE_REMOTE") if app_prefix else None) or os.environ.get("SAFECACHE_REMOTE")
        )
        mode = remote_mode or os.environ.get("SAFECACHE_REMOTE_MODE") or "read-write"
        if url and mode != "off":
            from . import _tier  # only caches with a remote pay for it

            options: dict[str, float] = {}
            for name, value in (
                ("timeout", remote_timeout), ("connect_timeout", remote_connect_timeout), ("budget", remote_budget),
            ):
                if value is not None:
                    options[name] = _number(f"remote_{name}", value)
            size = _tier.DEFAULT_MAX_SIZE if remote_max_size is None else int(_number("remote_max_size", remote_max_size, size=True))
            self.tier = _tier.Tier(self, url, mode.strip().lower(), max_size=size, compress=remote_compress, **options)
        self._buckets: dict[tuple[str, int], Bucket] = {}
        self._root_ready = False
        self._closed = False
        _track(self)
        self.location: Location = _location.resolve(
            path, app_name=app_name, env_var=env_var, disable_env=disable_env, enabled=enabled
        )
        self.path: str | None = self.location.path
        self.state_reason = ""
        if self.path is None:
            self.state = DISABLED
            self.state_reason = self.location.source
            return
        try:
            probed = _location.probe(self.path, shared=self.shared, env_var=env_var)
        except OSError as exc:  # a probe failure disables; nothing raises
            probed = _location.RootState(DISABLED, f"the cache directory could not be examined: {exc}", "unavailable")
        self.state = probed.state
        self.state_reason = probed.reason
        if probed.state != READY:
            if strict and probed.state == DISABLED:
                if probed.error is not None:
                    raise _policy.make_error(probed.error, operation="open", path=self.path, message=probed.reason)
                cls = _errors.CachePermissionError if probed.cause in ("permission", "owner") else _errors.CacheUnavailableError
                raise cls(probed.reason, filename=self.path, operation="open", cause=probed.cause or None)
            self._announce(probed.cause or "unavailable", probed.reason)

    # -- public ------------------------------------------------------------
    def bucket(self, name: str, version: int = 0) -> Bucket:
        """Return the bucket ``name`` at ``version``.

        ``name`` is 1-64 characters of ``a-z 0-9 . _ -`` starting with a letter
        or digit (lower case only: case-insensitive file systems would merge
        ``Lint`` and ``lint``), and not a name Windows reserves (``con``,
        ``nul``...).  ``version`` is an int from 0 to 2**31-1; bumping it starts
        an empty bucket and leaves the old one for pruning.  Raises
        ``ValueError``/``TypeError`` for invalid arguments.
        """
        if not isinstance(name, str):
            raise TypeError(f"bucket name must be str, not {type(name).__name__}")
        if not valid_bucket_name(name):
            raise ValueError(
                f"invalid bucket name {name!r}: use 1-64 characters of a-z, 0-9, '.', '_', '-', "
                "starting with a letter or digit"
            )
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"bucket version must be int, not {type(version).__name__}")
        if not 0 <= version < 2**31:
            raise ValueError(f"bucket version must be between 0 and 2**31-1, not {version}")
        with self._lock:
            bucket = self._buckets.get((name, version))
            if bucket is None:
                bucket = _bucket.Bucket(self, name, version)
                self._buckets[(name, version)] = bucket
            return bucket

    @property
    def enabled(self) -> bool:
        """False when the cache is disabled (every get misses)."""
        return self.state != DISABLED

    @property
    def writable(self) -> bool:
        """True when puts can store entries (the cache is neither read-only nor disabled)."""
        return self.state == READY

    def stats(self) -> dict[str, dict[str, object]]:
        """This process's counters per bucket since they were last flushed,
        keyed ``"name/vN"``."""
        with self._lock:
            buckets = list(self._buckets.values())
        return {_layout.label(b.name, b.version): b.counters.as_dict() for b in buckets}

    def flush(self) -> None:
        """Add this process's counters into the cache's shared counters
        (``<root>/stats``).  Called by :meth:`close` and at interpreter exit;
        never raises in lenient mode.  Does nothing for a cache that cannot
        be written or whose root was never created."""
        if self.state != READY or self.path is None:
            return
        if not _location.markers_present(self.path):
            # Never create a root just to store counters: not one that was
            # never written, nor one deleted while we ran (it would come back
            # without its markers).
            return
        with self._lock:
            buckets = list(self._buckets.values())
        deltas: dict[str, dict[str, object]] = {}
        taken = []
        for b in buckets:
            data = b.counters.take()
            if data is not None:
                deltas[_layout.label(b.name, b.version)] = data
                taken.append((b, data))
        if not deltas:
            return
        try:
            _stats.flush(self.path, deltas)
        except OSError as exc:
            for b, data in taken:
                b.counters.give_back(data)
            _policy.logger().info("safecache: could not flush counters to %s: %s", self.path, exc)

    def close(self) -> None:
        """Flush the counters and release resources (with a remote: wait for
        queued uploads, at most the remote's flush timeout).  Idempotent; the
        cache must not be used afterwards."""
        if not self._closed:
            self._closed = True
            if self.tier is not None:
                self.tier.close()
            self.flush()
            _open_caches.discard(self)
            if self.auto_trim and self.state == READY and self._root_ready:
                try:
                    _auto_trim(self)  # only processes that wrote get here
                except OSError as exc:  # nobody asked for this trim: never raise from close()
                    _policy.logger().info("safecache: automatic trim of %s failed: %s", self.path, exc)

    def __reduce__(self) -> tuple[object, ...]:
        """A cache pickles by location and settings and reopens in the
        receiving process: the resolved root (or disabled), not the
        environment of the receiver.  Counters stay with their process.
        Since 0.2."""
        settings = dict(self._settings)
        settings["shared"] = self.shared
        if self.path is None:
            settings["enabled"] = False
        return (_reopen, (self.path, settings))

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cache({self.path!r}, state={self.state!r})"

    # -- internal: shared by buckets ------------------------------------------
    def _dir(self, *parts: str) -> str:
        assert self.path is not None
        return os.path.join(self.path, *parts)

    def _ensure_root(self) -> bool:
        """Create the root and markers before the first write.  False (after
        demoting the cache and warning once) if that is impossible."""
        if self._root_ready:
            return True
        assert self.path is not None
        try:
            if not _location.markers_present(self.path):
                _location.write_markers(self.path, self.app_name, mode=self.file_mode)
        except OSError as exc:
            exists = _fs.exists(self.path)
            if _location.is_permission_problem(exc):
                self.state = READ_ONLY if exists else DISABLED
                what = "read-only" if exists else "disabled"
                self.state_reason = (
                    f"the cache directory {self.path!r} cannot be written ({exc.strerror}); "
                    f"the cache is {what} for this process"
                )
                if self.strict:
                    raise _policy.make_error(exc, operation="put", path=self.path, message=self.state_reason) from exc
                self._announce("read-only" if exc.errno == errno.EROFS else "permission", self.state_reason, exc)
                return False
            self._failed("open", exc, self.path)
            return False
        self._root_ready = True
        return True

    def _announce(self, cause: str, message: str, exc: BaseException | None = None) -> None:
        """Report a state change of the whole cache (read-only, disabled)."""
        _policy.logger().warning("safecache: %s", message, exc_info=exc if _policy.logger().isEnabledFor(10) else None)
        _policy.warn_once(cause, self.path or "", f"safecache: {message}")

    def _failed(self, operation: str, exc: BaseException, path: str | None, *, lock: bool = False) -> str:
        """Apply the error policy to a failed operation; return the cause.

        Strict: raise the typed error.  Lenient: log it, warn once per cause.
        """
        cause, _cls = _policy.classify(exc, lock=lock)
        if self.strict:
            raise _policy.make_error(exc, operation=operation, path=path, lock=lock) from exc
        detail = _policy.describe_exception(exc)
        tries = getattr(exc, "_safecache_exhausted", None)
        if tries:
            detail += f" after {tries[0]} attempts over {tries[1]:.2f} s"
        _policy.logger().warning("safecache: %s failed for %s: %s", operation, path, detail)
        _policy.warn_once(
            cause,
            self.path or "",
            f"safecache: cache {operation} failed ({cause}): {detail}; "
            f"continuing without the cache for this operation (cache at {self.path!r}; "
            "run `safecache doctor` for a diagnosis)",
        )
        return cause


def _no_trim(cache: Cache) -> object:
    return None


#: Trims a cache on close when it is due.  Maintenance sits a layer above the
#: cache, so this layer does not import it: ``safecache/__init__`` installs
#: a function that imports it on first use (only processes that wrote).
_auto_trim: Callable[[Cache], object] = _no_trim

_open_caches: weakref.WeakSet[Cache]
_exit_hook_installed = False


def _track(cache: Cache) -> None:
    """Remember ``cache`` so its counters are flushed at interpreter exit."""
    global _open_caches, _exit_hook_installed
    if not _exit_hook_installed:
        import atexit
        import weakref

        _open_caches = weakref.WeakSet()
        atexit.register(_flush_all)
        _exit_hook_installed = True
    _open_caches.add(cache)


def _flush_all() -> None:
    """At exit: close every cache still open (flush counters, maybe trim)."""
    for cache in list(_open_caches):
        try:
            cache.close()
        except Exception:  # noqa: BLE001 - at exit, a cache must never break the caller
            pass


def _reopen(path: str | None, settings: dict[str, object]) -> Cache:
    return Cache(path, **settings)  # type: ignore[arg-type]


def _number(name: str, value: object, *, size: bool = False, duration: bool = False) -> float:
    """A finite, non-negative setting.  Sizes and durations may also be given
    as the CLI spells them (``"2G"``, ``"30d"``).  Raises TypeError or
    ValueError at the call, not later from ``close()``."""
    if isinstance(value, str) and (size or duration):
        from ._units import parse_duration, parse_size

        number: float = parse_size(value) if size else parse_duration(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    else:
        number = value
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if number < 0:
        raise ValueError(f"{name} must not be negative, not {value!r}")
    return float(number)

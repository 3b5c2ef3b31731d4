"""joblib: a store backend for ``joblib.Memory`` on a safecache cache.

    import joblib
    import safecache.adapters.joblib

    safecache.adapters.joblib.register()       # once per process that builds a Memory
    memory = joblib.Memory("~/.cache/mytool", backend="safecache", verbose=0)

How joblib's store maps onto safecache (docs/adapters/joblib.md):

* The location joblib passes (``Memory`` appends ``joblib`` to a str) is the
  root of ``safecache.Cache(location, **cache_options)``
  (``backend_options={"cache_options": {...}}``); entries are in the bucket
  ``joblib``.
* A result is the entry ``("out", func_id, args_id)``: its value is what
  joblib's ``numpy_pickle.dump`` writes, its metadata joblib's
  ``metadata.json``.  A function's code is the entry ``("code", func_id)``.
  The paths of joblib's API (``location/func_id/args_id/output.pkl``...) are
  names mapped onto keys, never files.
* Compute once: a memoized call that misses takes the result's
  ``bucket.lock`` in ``contains_item`` (so it waits for a process computing
  it, then finds its result) and holds it through joblib's computation until
  ``store_metadata``; if the function raised, until joblib's call has ended
  (seen at the next call of any thread; the OS releases it if the process
  dies).  ``check_call_in_cache`` and async functions never lock.
* ``mmap_mode``: a result is copied (verified) into a private temp file,
  which joblib maps: a cache file is never mapped, and an ``"r+"`` map
  changes the copy, never the cached result.
* Pickle: loading a result unpickles it, as with joblib's own store;
  safecache's trust rules (docs/security.md) keep others from writing it.
"""

from __future__ import annotations

import atexit
import datetime
import errno
import io
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pickle import PicklingError
from typing import IO, Any, TypeGuard

try:
    from joblib import _store_backends, numpy_pickle  # type: ignore[import-untyped, unused-ignore]
    from joblib import memory as _memory  # type: ignore[import-untyped, unused-ignore]
    from joblib.logger import format_time  # type: ignore[import-untyped, unused-ignore]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "safecache.adapters.joblib needs joblib: pip install 'safecache[joblib]'"
    ) from exc

from .. import _fs, _osops
from .._bucket import Bucket
from .._cache import Cache
from .._format import MAX_META

__all__ = ["SafecacheStoreBackend", "register"]

#: The bucket results live in, and the version of this adapter's keys.
BUCKET = "joblib"
VERSION = 1
#: The names of joblib's files, as its path-based API speaks of them.
OUTPUT, METADATA, FUNC_CODE = "output.pkl", "metadata.json", "func_code.py"
#: The suffix ``concurrency_safe_write`` gives a temp name (uuid-pid-thread).
_TEMP_SUFFIX = re.compile(r"\.[0-9a-f]{32}-\d+-\d+$")
_CHUNK = 1 << 18


def register() -> None:
    """Register this backend with joblib under the name ``"safecache"``, for
    ``joblib.Memory(location, backend="safecache")``.  Idempotent."""
    _memory.register_store_backend("safecache", SafecacheStoreBackend)


# -- one cache per root per process ------------------------------------------------------
_caches: dict[tuple[int, str, str], Cache] = {}
_caches_lock = threading.Lock()


def _bucket_at(location: str, options: dict[str, Any] | None) -> Bucket:
    """The bucket of the cache at ``location``; the cache is opened once per
    process (joblib makes many backends for one location, and ships them to
    worker processes by pickling their plain attributes)."""
    ident = (os.getpid(), os.path.abspath(location), repr(sorted(options.items())) if options else "")
    cache = _caches.get(ident)
    if cache is None:
        with _caches_lock:
            cache = _caches.get(ident)
            if cache is None:
                cache = _caches[ident] = Cache(ident[1], **(options or {}))
    return cache.bucket(BUCKET, version=VERSION)


# -- compute once across joblib's check -> compute -> store --------------------------------
class _Held:
    __slots__ = ("frame", "key", "lock", "root", "thread")

    def __init__(self, root: str, key: tuple[str, ...], lock: Any, frame: Any) -> None:
        self.root, self.key, self.lock, self.frame = root, key, lock, frame
        self.thread = threading.get_ident()


#: The compute-once locks this process holds, each with the frame of the
#: joblib call that took it (its computation is over once that frame is).
_held: list[_Held] = []
_held_lock = threading.Lock()
if hasattr(os, "register_at_fork"):
    # safecache lets go of a forked child's copies of its parent's locks.
    os.register_at_fork(after_in_child=_held.clear)


def _asking_call() -> Any:
    """The frame of joblib's ``MemorizedFunc._cached_call`` that is asking
    (about to compute on a miss), or None: ``check_call_in_cache``, an async
    function (its computation outlives that frame), an unknown joblib."""
    frame: Any = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return None
        if frame.f_code is _memory.MemorizedFunc._cached_call.__code__:
            owner = frame.f_locals.get("self")
            async_class = getattr(_memory, "AsyncMemorizedFunc", ())
            return None if isinstance(owner, async_class) else frame
        frame = frame.f_back
    return None


def _on_stack(top: Any, frame: Any) -> bool:
    while top is not None:
        if top is frame:
            return True
        top = top.f_back
    return False


def _settle() -> None:
    """Let go of the locks whose joblib call has ended without storing (the
    function raised), in any thread of this process."""
    if not _held:
        return
    frames = sys._current_frames()
    with _held_lock:
        done = [h for h in _held if not _on_stack(frames.get(h.thread), h.frame)]
        for h in done:
            _held.remove(h)
    for h in done:
        h.lock.__exit__(None, None, None)


def _find(root: str, key: tuple[str, ...]) -> _Held | None:
    """This thread's hold of ``key``, if any.  (Iterates a copy: another
    thread's ``_settle`` may be removing entries meanwhile.)"""
    me = threading.get_ident()
    for h in list(_held):
        if h.thread == me and h.key == key and h.root == root:
            return h
    return None


def _let_go(root: str, key: tuple[str, ...]) -> None:
    with _held_lock:
        h = _find(root, key)
        if h is not None:
            _held.remove(h)
    if h is not None:
        h.lock.__exit__(None, None, None)


def _wait_or_hold(bucket: Bucket, root: str, key: tuple[str, ...], frame: Any) -> bytes | None:
    """Take ``key``'s lock for the joblib call at ``frame``.  If the process
    we waited for stored the entry meanwhile, let go and return its metadata;
    else hold it (until ``store_metadata`` or the call's end) and return None."""
    lock = bucket.lock(key)
    if not lock.__enter__():
        return None  # the cache cannot lock (it said why, once): compute unlocked
    meta = bucket.get_meta(key)
    if meta is not None:
        lock.__exit__(None, None, None)
        return meta
    with _held_lock:
        _held.append(_Held(root, key, lock, frame))
    return None


#: The metadata ``contains_item`` just read, per thread, for the
#: ``get_metadata`` joblib calls next (one read of the entry instead of two).
_last = threading.local()


#: Results this process could not store (a disabled, read-only or full
#: cache, an unpicklable value), the last few: joblib reads a result back
#: right after storing it (``mmap_mode``, ``call_and_shelve().get()``), and
#: that read must not fail because the cache could not keep it.
_unstored: dict[tuple[str, tuple[str, ...]], Any] = {}
_UNSTORED = 16


def _keep_unstored(root: str, key: tuple[str, ...], item: Any) -> None:
    with _held_lock:
        _unstored.pop((root, key), None)
        _unstored[(root, key)] = item
        while len(_unstored) > _UNSTORED:
            del _unstored[next(iter(_unstored))]


def _forget_unstored(root: str, key: tuple[str, ...] = ()) -> None:
    """Drop the kept results of ``root`` whose key starts with ``key``."""
    with _held_lock:
        for kept in [k for k in _unstored if k[0] == root and k[1][: len(key)] == key]:
            del _unstored[kept]


# -- memory maps of private copies ------------------------------------------------------------
_scratch: dict[int, str] = {}  # pid -> this process's private temp directory
_unremoved: list[str] = []  # copies still mapped where a mapped file cannot be deleted (Windows)


def _load_mapped(stream: IO[bytes], mmap_mode: str) -> Any:
    """Load a result with its arrays memory-mapped from a private copy."""
    pid = os.getpid()
    directory = _scratch.get(pid)
    if directory is None:
        directory = _scratch[pid] = _fs.make_temp_dir(prefix="safecache-joblib-")
        atexit.register(_fs.discard_tree, directory)
    tmp, fd = _fs.create_temp(os.path.join(directory, "value"), mode=0o600)
    try:
        try:
            view = memoryview(bytearray(_CHUNK))
            readinto: Any = stream.readinto  # type: ignore[attr-defined]  # BytesIO and BufferedReader have it
            while n := readinto(view):
                _fs.write_all(fd, view[:n])
        finally:
            _osops.current.close(fd)
        return numpy_pickle.load(tmp, mmap_mode=mmap_mode)
    finally:
        # POSIX: a mapping outlives its file's name.  Windows refuses to
        # delete a mapped file: try again at the next load and at exit.
        _unremoved.append(tmp)
        for path in list(_unremoved):
            try:
                _fs.remove(path, budget=0)
                _unremoved.remove(path)
            except OSError:
                pass


# -- the backend --------------------------------------------------------------------------
class SafecacheStoreBackend(_store_backends.StoreBackendBase, _store_backends.StoreBackendMixin):  # type: ignore[misc]
    """A ``joblib.Memory`` store on a safecache cache (see the module's doc).

    Its state is plain data (location, compress, mmap_mode, verbose,
    cache_options), so it pickles to joblib's worker processes and compares
    equal after a round trip; the cache is opened once per process.
    """

    location: str | None = None
    compress: Any = False
    mmap_mode: str | None = None
    verbose = 1

    def configure(self, location: str, verbose: int = 1, backend_options: dict[str, Any] | None = None) -> None:
        """Set the location (the cache's root) and joblib's options;
        ``backend_options["cache_options"]`` is passed to ``safecache.Cache``.
        Writes nothing (the root is created by the first write)."""
        options = backend_options or {}
        self.location = os.fspath(location)
        self.compress = options.get("compress", False)
        self.mmap_mode = options.get("mmap_mode")
        if self.compress and self.mmap_mode is not None:
            warnings.warn("Compressed items cannot be memmapped in a safecache store. Option will be ignored.", stacklevel=2)
        self.verbose = verbose
        if options.get("cache_options") is not None:
            self.cache_options = dict(options["cache_options"])

    @property
    def _bucket(self) -> Bucket:
        if self.location is None:
            raise ValueError("this store has no location yet (configure it)")
        return _bucket_at(self.location, self.__dict__.get("cache_options"))

    def _root(self) -> str:
        return os.path.abspath(str(self.location))

    def _path(self, *parts: str) -> str:
        return os.path.join(str(self.location), *parts)

    # -- results -------------------------------------------------------------------------
    def contains_item(self, call_id: Any) -> bool:
        """Whether the result of ``call_id`` is stored.  When it is not and
        joblib is about to compute it, take its lock first (see the module's
        doc): if another process was computing it, its result is found."""
        _settle()
        key, root, bucket = _out(call_id), self._root(), self._bucket
        meta = bucket.get_meta(key)
        held = _find(root, key)
        if meta is None and held is None:
            frame = _asking_call()
            if frame is not None:
                meta = _wait_or_hold(bucket, root, key, frame)
        elif meta is not None and held is not None:
            _let_go(root, key)  # found after all (taken for a function's first call)
        if meta is None:
            return False
        _last.found = (root, key, meta)  # for get_metadata, which joblib calls next
        return True

    def load_item(self, call_id: Any, verbose: int = 1, timestamp: float | None = None, metadata: Any = None) -> Any:
        """The stored result of ``call_id``, arrays memory-mapped when
        ``mmap_mode`` is set.  ``KeyError`` when there is none (or it was
        corrupt: corrupt entries read as misses and are removed), unless this
        process computed it and the cache could not keep it: then the value
        itself (one of the last few such)."""
        path = self._path(*_parts(call_id))
        if verbose > 1:
            ts = f"{format_time(time.time() - timestamp): <16}" if timestamp is not None else ""
            signature = os.path.basename(_parts(call_id)[0])
            if metadata is not None and "input_args" in metadata:
                signature += "({})".format(", ".join("{}={}".format(*i) for i in metadata["input_args"].items()))
            msg = f"[Memory]{ts}: Loading {signature}"
            print(f"{msg}..." if verbose < 10 else f"{msg} from {path}")
        stream = self._bucket.open(_out(call_id))
        if stream is None:
            kept = _unstored.get((self._root(), _out(call_id)), _unstored)
            if kept is not _unstored:
                return kept  # not stored by this process: the value itself, never a map
            raise KeyError(f"Non-existing item (it may have been cleared, or it is corrupted and was removed): {path}")
        with stream:
            if self.mmap_mode is not None and not self.compress:
                return _load_mapped(stream, self.mmap_mode)
            return numpy_pickle.load(stream)

    def dump_item(self, call_id: Any, item: Any, verbose: int = 1) -> None:
        """Store ``item`` as the result of ``call_id``: written as it is
        pickled, published whole or not at all.  Never raises: a failure
        warns (``FutureWarning`` for a value that cannot be pickled, joblib's
        ``CacheWarning`` otherwise), as joblib's own store does."""
        if verbose > 10:
            print(f"Persisting in {self._path(*_parts(call_id))}")
        key, stored = _out(call_id), False
        try:
            with self._bucket.writer(key, meta=b"") as f:
                try:
                    numpy_pickle.dump(item, f, compress=self.compress)
                except PicklingError as e:
                    warnings.warn(f"Unable to cache to disk: failed to pickle output. Exception: {e}.", FutureWarning)
                    raise _Abandoned from e  # the partial entry is discarded
            stored = f.stored
        except _Abandoned:
            pass
        except Exception as e:
            warnings.warn(f"Unable to cache to disk. Exception: {e}.", _store_backends.CacheWarning)
        if stored:
            _forget_unstored(self._root(), key)
        else:
            _keep_unstored(self._root(), key, item)

    def clear_item(self, call_id: Any) -> None:
        _forget_unstored(self._root(), _out(call_id))
        self._bucket.delete(_out(call_id))

    def get_metadata(self, call_id: Any) -> dict[str, Any]:
        """The metadata joblib stored with the result of ``call_id``, or ``{}``.
        A result published before its metadata (joblib stores them in two
        steps) waits for the process storing them, which holds its lock."""
        key, root, bucket = _out(call_id), self._root(), self._bucket
        found, _last.found = getattr(_last, "found", None), None
        meta = found[2] if found is not None and found[:2] == (root, key) else bucket.get_meta(key)
        if meta == b"" and _find(root, key) is None:
            with bucket.lock(key):
                meta = bucket.get_meta(key)
        try:
            decoded = json.loads(meta.decode("utf-8")) if meta else {}
        except ValueError:
            return {}
        return decoded if isinstance(decoded, dict) else {}

    def store_metadata(self, call_id: Any, metadata: dict[str, Any]) -> None:
        """Attach ``metadata`` to the stored result (without rewriting it),
        then let go of the call's lock.  Never raises."""
        key = _out(call_id)
        try:
            self._bucket.set_meta(key, _encode_metadata(metadata))
        except Exception:
            pass
        finally:
            _let_go(self._root(), key)

    # -- functions' code -------------------------------------------------------------------
    def store_cached_func_code(self, call_id: Any, func_code: str | None = None) -> None:
        if func_code is not None:
            self._bucket.put(("code", *_parts(call_id)), func_code.encode("utf-8"))

    def get_cached_func_code(self, call_id: Any) -> str:
        """The stored code of a function; ``FileNotFoundError`` if none (which
        joblib takes as "not cached yet": it stores the code and computes the
        call without asking ``contains_item``, so the call's lock is taken
        here, and the code read again once it is held)."""
        code_key, bucket = ("code", *_parts(call_id)), self._bucket
        data = bucket.get(code_key)
        if data is None:
            _settle()
            frame = _asking_call()
            pending = frame.f_locals.get("call_id") if frame is not None else None
            if isinstance(pending, tuple) and _find(self._root(), _out(pending)) is None:
                _wait_or_hold(bucket, self._root(), _out(pending), frame)
                data = bucket.get(code_key)
        if data is None:
            raise FileNotFoundError(errno.ENOENT, "no stored code", self._path(*_parts(call_id), FUNC_CODE))
        return data.decode("utf-8")

    # -- the whole store ------------------------------------------------------------------
    def clear(self) -> None:
        _forget_unstored(self._root())
        self._bucket.clear()

    def clear_path(self, call_id: Any) -> None:
        """Remove a function's results and code (``call_id`` is ``[func_id]``)."""
        parts = _parts(call_id)
        _forget_unstored(self._root(), ("out", *parts))
        for info in list(self._bucket.items()):
            if _ours(info.key) and info.key[1 : 1 + len(parts)] == parts:
                self._bucket.delete(info.key)

    def get_items(self) -> list[Any]:
        """Every stored result as joblib's ``CacheItemInfo(path, size,
        last_access)``: ``path`` the name joblib's layout gives it (for
        ``clear_location``), ``size`` its value and metadata in bytes,
        ``last_access`` when it was stored.  A walk of the bucket."""
        items = []
        for info in self._bucket.items():
            if _ours(info.key) and info.key[0] == "out":
                when = datetime.datetime.fromtimestamp(info.written)
                items.append(_store_backends.CacheItemInfo(self._path(*info.key[1:]), info.size + info.meta_length, when))
        return items

    # -- joblib's path-based primitives, over names (never files) ----------------------------
    def _target(self, path: str) -> tuple[str, Any] | None:
        """What a path of joblib's layout names: ``("value"|"meta"|"code",
        key)``, or ``("dir", normalised path)`` (``""`` for the location
        itself); None for a path outside the location.  A temp name of
        ``concurrency_safe_write`` names its target."""
        root = os.path.normpath(str(self.location))
        path = os.path.normpath(_TEMP_SUFFIX.sub("", os.fspath(path)))
        if path == root:
            return "dir", ""
        prefix = root if root.endswith(os.sep) else root + os.sep
        if not path.startswith(prefix):
            return None
        head, _, name = path[len(prefix) :].rpartition(os.sep)
        if name == FUNC_CODE and head:
            return "code", ("code", head)
        if name in (OUTPUT, METADATA) and os.sep in head:
            return ("value" if name == OUTPUT else "meta"), ("out", *head.rsplit(os.sep, 1))
        return "dir", path

    def _under(self, directory: str) -> Iterator[Any]:
        """The entries (``EntryInfo``) whose names in joblib's layout are
        ``directory`` (normalised) or lie under it.  A walk of the bucket."""
        prefix = directory.rstrip(os.sep) + os.sep
        for info in self._bucket.items():
            if _ours(info.key):
                name = os.path.normpath(self._path(*info.key[1:], *((FUNC_CODE,) if info.key[0] == "code" else ())))
                if name == directory or name.startswith(prefix):
                    yield info

    def _open_item(self, f: str, mode: str) -> IO[bytes]:
        """A stream of the item a path of joblib's layout names (``"rb"``), or
        a writer that stores it when closed (``"wb"``; nothing if a ``with``
        block raises).  ``FileNotFoundError`` as ``open`` would."""
        target = self._target(f)
        if target is None or target[0] == "dir":
            raise FileNotFoundError(errno.ENOENT, "not an item of this store", f)
        what, key = target
        bucket = self._bucket
        if "r" in mode:
            if what == "meta":
                meta = bucket.get_meta(key)
                stream: IO[bytes] | None = io.BytesIO(meta) if meta else None
            else:
                stream = bucket.open(key)
            if stream is None:
                raise FileNotFoundError(errno.ENOENT, "no such item", f)
            return stream
        return _ItemWriter(bucket, key, meta=what == "meta")  # type: ignore[return-value]

    def _item_exists(self, location: str) -> bool:
        target = self._target(location)
        if target is None:
            return False
        what, found = target
        if what == "meta":
            return bool(self._bucket.get_meta(found))
        if what != "dir":
            return found in self._bucket
        return not found or any(True for _ in self._under(found))

    def _move_item(self, src: str, dst: str) -> None:
        """Nothing to move: joblib moves only a temp name onto its target, and
        what ``_open_item`` wrote under a temp name was stored as its target."""

    def create_location(self, location: str) -> None:
        """Nothing to do: entries need no directories."""

    def clear_location(self, location: str) -> None:
        """Remove the entries a path of joblib's layout names: the whole store
        (the location), a directory's (a function's, a result's), one item.
        A path outside the location names nothing."""
        target = self._target(location)
        if target is None:
            return
        what, found = target
        if what == "dir" and not found:
            self.clear()
        elif what == "dir":
            for info in list(self._under(found)):
                self._bucket.delete(info.key)
        elif what == "meta":
            self._bucket.set_meta(found, b"")
        else:
            self._bucket.delete(found)


class _Abandoned(Exception):
    """Raised inside a writer's block to discard the entry."""


class _ItemWriter:
    """What ``_open_item(path, "wb")`` returns: the bytes written become the
    item when it is closed; a ``with`` block that raises stores nothing."""

    def __init__(self, bucket: Bucket, key: tuple[str, ...], *, meta: bool) -> None:
        self._bucket, self._key, self._buffer = bucket, key, bytearray()
        self._writer = None if meta else bucket.writer(key, meta=b"")
        if self._writer is not None:
            self._writer.__enter__()
        self.closed = False

    def write(self, data: bytes) -> int:
        if self._writer is not None:
            return self._writer.write(data)
        self._buffer += data
        return len(data)

    def tell(self) -> int:
        return self._writer.tell() if self._writer is not None else len(self._buffer)

    def flush(self) -> None:
        pass

    def close(self, exc: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.__exit__(type(exc) if exc else None, exc, None)
        elif exc is None:
            self._bucket.set_meta(self._key, bytes(self._buffer))

    def __enter__(self) -> _ItemWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close(exc)


def _parts(call_id: Any) -> tuple[str, ...]:
    return (call_id,) if isinstance(call_id, str) else tuple(call_id)


def _out(call_id: Any) -> tuple[str, ...]:
    return ("out", *_parts(call_id))


def _ours(key: object) -> TypeGuard[tuple[str, ...]]:
    """Whether ``key`` is one of this adapter's: ``("out", ...)`` or ``("code", ...)``."""
    return isinstance(key, tuple) and len(key) >= 2 and key[0] in ("out", "code")


def _encode_metadata(metadata: dict[str, Any]) -> bytes:
    """joblib's metadata as JSON, within safecache's metadata limit: long
    argument reprs are cut, then dropped, rather than the whole lost."""
    data = json.dumps(metadata).encode("utf-8")
    if len(data) > MAX_META and isinstance(metadata.get("input_args"), dict):
        cut = {k: (v if len(str(v)) <= 200 else str(v)[:200] + "...") for k, v in metadata["input_args"].items()}
        data = json.dumps({**metadata, "input_args": cut}).encode("utf-8")
        if len(data) > MAX_META:
            data = json.dumps({k: v for k, v in metadata.items() if k != "input_args"}).encode("utf-8")
    return data

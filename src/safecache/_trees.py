"""Trees: immutable directories, committed atomically, placed by link mode.

The job of uv's distribution cache: a package is downloaded and unpacked
once, then installed into many environments by linking its files.

Layout inside a bucket directory (docs/format.md, "Trees"; spelled in
:mod:`._layout`)::

    trees/<xx>/<digest>            the pointer: an entry (same format as any
                                   entry) whose payload is the tree's manifest
    tree-objects/<id>/             the committed tree; <id> is random, so a
                                   commit never collides and never replaces
    tree-objects/<id>.tmp/         a tree being built (or left by a crash)
    tree-objects/<id>.del-<r>/     a tree being removed

and under the root's ``locks/``: ``<name>/v<N>/trees/<xx>/<digest>.lock``
(compute-once for a key) and ``<name>/v<N>/tree-objects/<id>.lock`` (held
shared by every process using the tree, exclusively by a remover).

Commit protocol: build in ``<id>.tmp``, hash every file into a manifest,
rename to ``<id>`` (atomic: readers see all of it or none), then publish the
pointer without replacing (the first committer wins; a loser removes its own
``<id>`` and uses the winner's).  A crash leaves ``<id>.tmp`` or an
unreferenced ``<id>``; neither is ever visible through a pointer, and
maintenance reclaims both.

This module is the bucket's front: :class:`Trees` and :class:`TreeBuilder`.
The manifest is :mod:`._manifest`'s, placement :mod:`._place`'s, and a
tree's use and removal :mod:`._tree`'s.
"""

from __future__ import annotations

import os
import time

from . import _errcodes, _format, _fs, _keys, _layout, _locks, _osops, _policy
from ._bucket import MTIME_INTERVAL_NS
from ._format import Invalid, read_entry
from ._location import READY
from ._manifest import Manifest, ManifestError, scan
from ._tree import Tree, ephemeral, private_dir, remove_tree, staged

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ._bucket import Bucket, Key

#: A corrupt pointer is removed best-effort: do not spend the retry budget.
_CLEANUP_BUDGET = 0.05


class Trees:
    """The trees of one bucket (``bucket.trees``)."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        if bucket.directory is not None and bucket._locks_dir is not None:
            self._dir: str | None = bucket.directory
            self.index_dir: str | None = _layout.trees_dir(bucket.directory)
            self.objects_dir: str | None = _layout.tree_objects_dir(bucket.directory)
            self.locks_dir: str | None = bucket._locks_dir
        else:
            self._dir = self.index_dir = self.objects_dir = self.locks_dir = None

    # -- paths -----------------------------------------------------------------------------
    def _pointer(self, digest: str) -> str:
        assert self._dir is not None
        return _layout.tree_pointer(self._dir, digest)

    def _object(self, tree_id: str) -> str:
        assert self._dir is not None
        return _layout.tree_object(self._dir, tree_id)

    def _object_lock(self, tree_id: str) -> str:
        assert self.locks_dir is not None
        return _layout.tree_object_lock(self.locks_dir, tree_id)

    def _pin_timeout(self) -> float:
        """How long a user of one of these trees waits for a remover: the
        retry budget (a remover holds a tree only for a rename and a pointer
        removal, each retried within it), never more than ``lock_timeout``."""
        cache = self.bucket.cache
        return min(cache.retry_budget, cache.lock_timeout)

    def _committed(self, manifest: Manifest) -> Tree:
        """The committed tree ``manifest`` describes."""
        tree_id = manifest.tree_id
        return Tree(self._object(tree_id), manifest, self._object_lock(tree_id), pin_timeout=self._pin_timeout())

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: Key) -> Tree | None:
        """The tree committed under ``key``, or None."""
        cache = self.bucket.cache
        if self.index_dir is None or not cache.enabled:
            return None
        digest = _keys.key_digest(key)
        try:
            tree = self._load(digest)
        except OSError as exc:
            self.bucket.counters.error(cache._failed("get_tree", exc, self._pointer(digest)))
            return None
        if tree is None and cache.tier is not None:
            from ._tree_remote import fetch  # only caches with a remote pay for it

            tree = fetch(self, key, digest)
        return tree

    def _load(self, digest: str) -> Tree | None:
        _status, manifest, _st = self._read(digest)
        if manifest is None or not self._present(manifest.tree_id):
            return None  # (a dangling pointer: removed by a concurrent delete or clean: a clean miss)
        return self._committed(manifest)

    def _present(self, tree_id: str) -> bool:
        return _fs.exists(self._object(tree_id))

    def _read(self, digest: str) -> tuple[str, Manifest | None, os.stat_result | None]:
        """Read ``digest``'s pointer: ``("ok", manifest, st)`` (``st``: the
        pointer file's, for :func:`_fs.remove_if_same`); ``("absent", None,
        None)``; ``("newer", None, st)``, written by a newer safecache, left
        alone as ``Bucket`` leaves such entries; ``("corrupt", None, st)``,
        counted and removed (if it is still the file read).  Raises
        ``OSError``."""
        bucket = self.bucket
        pointer = self._pointer(digest)
        opened = _fs.read_file(pointer, budget=bucket.cache.retry_budget)
        if opened is None:
            return "absent", None, None
        fd, block = opened
        ops = _osops.current
        try:
            st = ops.fstat(fd)
            try:
                header, payload = read_entry(fd, block, bytes.fromhex(digest))
                manifest = Manifest.from_bytes(payload or b"")
            except (Invalid, ManifestError) as exc:
                newer = exc.reason == "unsupported-version" if isinstance(exc, Invalid) else exc.newer
                _policy.logger().info(
                    "safecache: %s tree pointer %s (%s)", "newer safecache's" if newer else "invalid", pointer, exc
                )
                if newer:
                    return "newer", None, st
                bucket.counters.corrupt_removed += 1
                if bucket.cache.state is READY:
                    try:
                        _fs.remove_if_same(pointer, st, budget=_CLEANUP_BUDGET)
                    except OSError:
                        pass
                return "corrupt", None, st
            if time.time_ns() - header.written_ns > MTIME_INTERVAL_NS:
                bucket._mark_used(fd, pointer)  # a tree's use time is its pointer's mtime
            return "ok", manifest, st
        finally:
            ops.close(fd)

    def __contains__(self, key: Key) -> bool:
        tree = self.get(key)
        return tree is not None

    # -- writing -----------------------------------------------------------------------------
    def _staging(self) -> str | None:
        """A fresh staging directory under tree-objects, or None when the
        cache cannot store (then the caller builds in a private temp dir)."""
        bucket = self.bucket
        cache = bucket.cache
        if self._dir is None or cache.state is not READY or not bucket._writable("put_tree"):
            return None
        staging = _layout.tree_staging(self._dir, _layout.new_tree_id())
        try:
            _fs.makedirs(staging)
            return staging
        except OSError as exc:
            bucket.counters.error(cache._failed("put_tree", exc, staging))
            return None

    def _pin_staging(self, staging: str) -> _locks.FileLock | None:
        """Hold a staging tree's lock while it is filled: maintenance removes
        an old staging tree only when no one holds it (a long download)."""
        pin = _locks.FileLock(self._object_lock(_layout.staging_tree_id(staging)), shared=True, timeout=0.0)
        try:
            pin.acquire()
            return pin
        except OSError:
            return None

    def commit(self, key: Key, staging: str, *, kind: str = "built") -> Tree:
        """Commit the directory ``staging`` (made by :meth:`_staging`) as the
        tree for ``key``; returns the tree in force afterwards (ours, or the
        one another process committed first).  On failure returns an
        ephemeral tree over ``staging`` so the caller can still use it."""
        kind_code = _format.kind_code(kind)
        bucket = self.bucket
        cache = bucket.cache
        digest = _keys.key_digest(key)
        tree_id = _layout.staging_tree_id(staging)
        try:
            manifest = scan(staging, kind, tree_id)
        except ValueError:
            _fs.discard_tree(staging)
            raise
        except OSError as exc:
            bucket.counters.error(cache._failed("put_tree", exc, staging))
            return self._ephemeral_from(staging, None, kind)
        try:
            manifest.check()
        except ManifestError as exc:
            # Names no manifest may hold (a backslash, a drive-like "c:"):
            # usable here, never published.
            _policy.logger().info("safecache: tree not committed: %s", exc)
            return self._ephemeral_from(staging, manifest, kind)
        final = self._object(tree_id)
        try:
            _fs.retry("rename", _osops.current.rename, staging, final, budget=cache.retry_budget)
        except OSError as exc:
            bucket.counters.error(cache._failed("put_tree", exc, final))
            return self._ephemeral_from(staging, manifest, kind)
        payload = manifest.to_bytes()
        pointer = self._pointer(digest)
        for _attempt in range(3):
            header = _format.pack_header(
                len(payload), time.time_ns(), bytes.fromhex(digest), _format.crc32(payload), kind_code
            )
            try:
                if _fs.write_file(pointer, [header, payload], replace=False, durable=cache.durable, budget=cache.retry_budget):
                    bucket.counters.writes += 1
                    bucket.counters.bytes_written += manifest.size
                    if cache.tier is not None:
                        from ._tree_remote import upload

                        upload(self, digest, manifest)
                    return self._committed(manifest)
                status, winner, st = self._read(digest)
                if winner is not None and self._present(winner.tree_id):
                    # Another process committed this key first: use its tree
                    # and remove ours, which nothing references.
                    self._remove_object(tree_id)
                    return self._committed(winner)
                if status == "newer":
                    break  # a newer safecache's tree: never replaced by ours
                if winner is not None and st is not None:
                    # Dangling (its tree was removed): remove it, but only if
                    # it is still the pointer read, not one committed since.
                    _fs.remove_if_same(pointer, st, budget=cache.retry_budget)
                # (a corrupt one was removed by _read; an absent one: retry)
            except OSError as exc:
                bucket.counters.error(cache._failed("put_tree", exc, pointer))
                break
        # Not published (a failure, a newer safecache's pointer, pointers that
        # keep vanishing and reappearing): our tree is whole; hand it out,
        # pinned like any tree, unreferenced (maintenance reclaims it later).
        return self._committed(manifest)

    def _ephemeral_from(self, directory: str, manifest: Manifest | None, kind: str) -> Tree:
        """Move a staged tree to a private temp dir the caller owns."""
        ops = _osops.current
        try:
            target = private_dir(create=False)
        except OSError:
            return self._staged(directory, manifest, kind)
        try:
            ops.rename(directory, target)
        except OSError:
            # Another file system (the temp dir is often tmpfs), or Windows
            # refusing to move a directory with a file open beneath it: copy.
            try:
                _fs.makedirs(target)
                _fs.copy_tree(directory, target)
            except OSError:
                _fs.discard_tree(os.path.dirname(target))
                return self._staged(directory, manifest, kind)
            _fs.discard_tree(directory)
        return ephemeral(target, kind, manifest)

    def _staged(self, directory: str, manifest: Manifest | None, kind: str) -> Tree:
        """Nowhere private to put it: hand out the staging directory itself,
        held for the tree's life (:func:`staged`) so maintenance leaves it."""
        if manifest is None:
            manifest = scan(directory, kind, _layout.staging_tree_id(directory), digests=False)
        lock = self._object_lock(_layout.staging_tree_id(directory))
        return staged(directory, manifest, lock, pin_timeout=self._pin_timeout())

    def build(self, key: Key, *, kind: str = "built") -> TreeBuilder:
        """A context manager giving an empty directory to fill; on a normal
        exit it is committed as ``key``'s tree (``builder.tree``), on an
        exception it is removed and the exception is yours (the block is
        your code: a full cache file system included).  Entering raises
        ``OSError`` when no directory can be made, in the cache or in the
        temp directory.  ::

            with bucket.trees.build(key, kind="fetched") as b:
                unpack(wheel, b.path)
            b.tree.place(venv)
        """
        return TreeBuilder(self, key, kind)

    def _build_with(self, key: Key, kind: str, fill: Callable[[str], object]) -> Tree:
        """Build ``key``'s tree by ``fill(path)``; the tree in force afterwards.

        If ``fill`` fails for want of space in the cache (``ENOSPC`` or
        ``EDQUOT`` on the staging directory: the cache's file system is
        full), that is the cache's failure, not the caller's: ``fill`` runs
        again in a private temp directory and an ephemeral tree is returned,
        as ``Bucket.get_or_create`` returns its value when it cannot store
        it.  If no private directory can be made either, that ``OSError``
        is raised: there is nowhere left to build.
        """
        builder = self.build(key, kind=kind)
        try:
            with builder:
                fill(builder.path)
        except OSError as exc:
            if builder._private or not _cache_full(exc, builder.path):
                raise
            cache = self.bucket.cache
            self.bucket.counters.error(cache._failed("put_tree", exc, builder.path))  # strict: raises
            builder = TreeBuilder(self, key, kind, private=True)
            with builder:
                fill(builder.path)
        assert builder.tree is not None
        return builder.tree

    def put(self, key: Key, source: str | os.PathLike[str], *, kind: str = "built") -> Tree:
        """Commit a copy of the existing directory ``source`` as ``key``'s tree.

        ``source`` is copied (never moved or modified): symlinks as symlinks,
        files with their permission bits and modification times.  Returns
        the tree in force afterwards; if the cache cannot store it (a full
        file system included), an ephemeral copy.
        """
        source = os.fspath(source)
        return self._build_with(key, kind, lambda path: _fs.copy_tree(source, path))

    def get_or_create(
        self,
        key: Key,
        factory: Callable[[str], object],
        *,
        kind: str = "built",
        timeout: float | None = None,
    ) -> Tree:
        """Return ``key``'s tree, calling ``factory(path)`` to fill an empty
        directory and committing it if the tree is missing.

        Among threads and processes asking for the same missing tree at once,
        one runs the factory and the others wait (at most ``timeout``
        seconds, default the cache's ``lock_timeout``), then use its tree; if
        the builder dies, a waiter takes over.  Exceptions from ``factory``
        propagate and nothing is committed, except ``ENOSPC``/``EDQUOT``
        from the cache's own directory (its file system is full): the
        factory then runs again in a private temp directory and an ephemeral
        tree is returned (strict mode raises ``CacheFullError``).  When the
        cache cannot store, the factory still runs and an ephemeral tree is
        returned.  Raises ``OSError`` only when no directory can be made to
        build in (neither in the cache nor in the temp directory).
        """
        if timeout is not None:
            _locks.check_timeout(timeout)  # at the call: a nan would never return
        tree = self.get(key)
        if tree is not None:
            return tree
        bucket = self.bucket
        cache = bucket.cache
        if self.locks_dir is not None and cache.state is READY:
            cache._ensure_root()  # markers before the lock file
        lock_path = None
        if self.locks_dir is not None and cache.state is READY:
            lock_path = _layout.tree_key_lock(self.locks_dir, _keys.key_digest(key))
        return _locks.compute_once(
            lock_path,
            timeout=cache.lock_timeout if timeout is None else timeout,
            lookup=lambda: self.get(key),
            create=lambda: self._build_with(key, kind, factory),
            lock_failed=lambda exc, path: bucket.counters.error(
                cache._failed("get_or_create_tree", exc, path, lock=True)
            ),
        )

    def delete(self, key: Key, *, timeout: float = 0.0) -> bool:
        """Remove ``key``'s tree.  True if a pointer was removed.

        New readers miss at once.  Processes placing or holding the tree keep
        it: the directory is removed only when no one holds it (waiting at
        most ``timeout`` seconds); otherwise it is left for maintenance.
        """
        cache = self.bucket.cache
        if self.index_dir is None or cache.state is not READY:
            return False
        digest = _keys.key_digest(key)
        pointer = self._pointer(digest)
        try:
            tree = self._load(digest)
            removed = _fs.remove(pointer, budget=cache.retry_budget)
        except OSError as exc:
            self.bucket.counters.error(cache._failed("delete_tree", exc, pointer))
            return False
        if tree is not None:
            self._remove_object(tree.manifest.tree_id, timeout=timeout)
        return removed

    def _remove_object(self, tree_id: str, *, timeout: float = 0.0) -> str:
        """Remove a tree directory if no process holds it (see
        :func:`remove_tree` for the outcomes); failures are logged."""
        assert self._dir is not None and self.locks_dir is not None
        return remove_tree(self._dir, self.locks_dir, tree_id, wait=timeout, budget=self.bucket.cache.retry_budget)


def _cache_full(exc: OSError, staging: str) -> bool:
    """Whether ``exc`` (raised while filling ``staging``) is the cache's file
    system being full, rather than the caller's own business: ``ENOSPC`` or
    ``EDQUOT`` naming no file, or a file under ``staging`` (either path of a
    copy)."""
    if exc.errno not in _errcodes.FULL_ERRNOS:
        return False
    named = [n for n in (exc.filename, exc.filename2) if n is not None]
    if not named:
        return True
    base = os.path.abspath(staging)
    try:
        return any(os.path.commonpath([os.path.abspath(os.fsdecode(n)), base]) == base for n in named)
    except (TypeError, ValueError):  # another drive, a descriptor number
        return False


class TreeBuilder:
    """Returned by :meth:`Trees.build`; see there."""

    def __init__(self, trees: Trees, key: Key, kind: str, *, private: bool = False) -> None:
        _format.kind_code(kind)
        self._trees = trees
        self._key = key
        self.kind = kind
        self.path = ""
        self.tree: Tree | None = None
        self._private = private
        self._pin: _locks.FileLock | None = None

    def __enter__(self) -> TreeBuilder:
        staging = None if self._private else self._trees._staging()
        if staging is None:
            staging = private_dir()  # raises OSError: nowhere to build
            self._private = True
        else:
            self._pin = self._trees._pin_staging(staging)
        self.path = staging
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pin, self._pin = self._pin, None
        if pin is not None:
            pin.release()
        # A private directory is alone in its temp directory: remove both.
        mine = os.path.dirname(self.path) if self._private else self.path
        if exc_type is not None:
            _fs.discard_tree(mine)
            if pin is not None:
                _fs.discard(pin.path)  # tree ids are never reused: nothing else will lock it
            return
        if not self._private:
            self.tree = self._trees.commit(self._key, self.path, kind=self.kind)
            return
        try:
            self.tree = ephemeral(self.path, self.kind)
        except ValueError:  # not a tree (a FIFO, a device): as commit does
            _fs.discard_tree(mine)
            raise


# Manifest and Tree are imported from here by maintenance until it imports
# them from their own modules (_manifest, _tree).
__all__ = ["Manifest", "Tree", "TreeBuilder", "Trees"]

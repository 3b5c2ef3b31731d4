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

from . import _format, _fs, _keys, _layout, _locks, _osops, _policy
from ._bucket import MTIME_INTERVAL_NS
from ._format import Invalid, read_entry
from ._location import READY
from ._manifest import Manifest, scan
from ._tree import Tree, ephemeral, private_dir, remove_tree

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

    def _committed(self, manifest: Manifest) -> Tree:
        """The committed tree ``manifest`` describes."""
        return Tree(self._object(manifest.tree_id), manifest, self._object_lock(manifest.tree_id))

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: Key) -> Tree | None:
        """The tree committed under ``key``, or None."""
        cache = self.bucket.cache
        if self.index_dir is None or not cache.enabled:
            return None
        digest = _keys.key_digest(key)
        try:
            return self._load(digest)
        except OSError as exc:
            self.bucket.counters.error(cache._failed("get_tree", exc, self._pointer(digest)))
            return None

    def _load(self, digest: str) -> Tree | None:
        bucket = self.bucket
        pointer = self._pointer(digest)
        opened = _fs.read_file(pointer, budget=bucket.cache.retry_budget)
        if opened is None:
            return None
        fd, block = opened
        ops = _osops.current
        try:
            header, payload = read_entry(fd, block, bytes.fromhex(digest))
            manifest = Manifest.from_bytes(payload or b"")
            if time.time_ns() - header.written_ns > MTIME_INTERVAL_NS:
                bucket._mark_used(fd, pointer)  # a tree's use time is its pointer's mtime
        except (Invalid, ValueError, KeyError, TypeError) as exc:
            _policy.logger().info("safecache: invalid tree pointer %s (%s)", pointer, exc)
            bucket.counters.corrupt_removed += 1
            if bucket.cache.state is READY:
                try:
                    _fs.remove_if_same(pointer, ops.fstat(fd), budget=_CLEANUP_BUDGET)
                except OSError:
                    pass
            return None
        finally:
            ops.close(fd)
        if not _fs.exists(self._object(manifest.tree_id)):
            return None  # removed by a concurrent delete or clean: a clean miss
        return self._committed(manifest)

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
                    return self._committed(manifest)
                winner = self._load(digest)
            except OSError as exc:
                bucket.counters.error(cache._failed("put_tree", exc, pointer))
                # Our tree is whole but unreferenced (maintenance reclaims it
                # later); the caller can still use it, pinned like any tree.
                return self._committed(manifest)
            if winner is not None:
                # Another process committed this key first: use its tree and
                # remove ours, which nothing references.
                self._remove_object(tree_id)
                return winner
            # A pointer that is corrupt or points at a removed tree: _load
            # removed the corrupt one; remove a dangling one and try again.
            _fs.discard(pointer)
        # Could not publish (pointers keep vanishing or reappearing): our tree
        # is still whole; hand it out without a pointer.
        return self._committed(manifest)

    def _ephemeral_from(self, directory: str, manifest: Manifest | None, kind: str) -> Tree:
        """Move a staged tree to a private temp dir the caller owns."""
        ops = _osops.current
        try:
            target = private_dir(create=False)
        except OSError:
            # Nowhere private to put it: hand out the staged directory itself
            # (not ephemeral: it sits in the cache, and maintenance removes it
            # as an old staging tree).
            return ephemeral(directory, kind, manifest, private=False)
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
                return ephemeral(directory, kind, manifest, private=False)
            _fs.discard_tree(directory)
        return ephemeral(target, kind, manifest)

    def build(self, key: Key, *, kind: str = "built") -> TreeBuilder:
        """A context manager giving an empty directory to fill; on a normal
        exit it is committed as ``key``'s tree (``builder.tree``), on an
        exception it is removed.  ::

            with bucket.trees.build(key, kind="fetched") as b:
                unpack(wheel, b.path)
            b.tree.place(venv)
        """
        return TreeBuilder(self, key, kind)

    def _build_with(self, key: Key, kind: str, fill: Callable[[str], object]) -> Tree:
        """Build ``key``'s tree by ``fill(path)``; the tree in force afterwards."""
        with self.build(key, kind=kind) as builder:
            fill(builder.path)
        assert builder.tree is not None
        return builder.tree

    def put(self, key: Key, source: str | os.PathLike[str], *, kind: str = "built") -> Tree:
        """Commit a copy of the existing directory ``source`` as ``key``'s tree.

        ``source`` is copied (never moved or modified): symlinks as symlinks,
        files with their permission bits and modification times.  Returns
        the tree in force afterwards; if the cache cannot store it, an
        ephemeral copy.
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
        propagate and nothing is committed.  When the cache cannot store, the
        factory still runs and an ephemeral tree is returned.
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


class TreeBuilder:
    """Returned by :meth:`Trees.build`; see there."""

    def __init__(self, trees: Trees, key: Key, kind: str) -> None:
        _format.kind_code(kind)
        self._trees = trees
        self._key = key
        self.kind = kind
        self.path = ""
        self.tree: Tree | None = None
        self._private = False

    def __enter__(self) -> TreeBuilder:
        staging = self._trees._staging()
        if staging is None:
            staging = private_dir()
            self._private = True
        self.path = staging
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # A private directory is alone in its temp directory: remove both.
        mine = os.path.dirname(self.path) if self._private else self.path
        if exc_type is not None:
            _fs.discard_tree(mine)
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

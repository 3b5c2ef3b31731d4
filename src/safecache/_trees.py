"""Trees: immutable directories, committed atomically, placed by link mode.

The job of uv's distribution cache: a package is downloaded and unpacked
once, then installed into many environments by linking its files.

Layout inside a bucket directory (docs/format.md, "Trees")::

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
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import time

from . import _format, _fs, _keys, _link, _locks, _osops, _policy
from ._format import Invalid, pack_header, read_entry
from ._bucket import MTIME_INTERVAL_NS
from ._location import READY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._bucket import Bucket, Key

MANIFEST_VERSION = 1
_CHUNK = 1 << 20
ON_EXISTING = ("replace", "skip", "error")


def _digest_file(path: str) -> tuple[int, str]:
    """Size and BLAKE2b-128 hex digest of a file, read in 1 MiB chunks."""
    ops = _osops.current
    h = _keys.new_blake2b_128()
    size = 0
    fd = _fs.retry("open", ops.open, path, _osops.READ_FLAGS)
    try:
        while True:
            block = ops.read(fd, _CHUNK)
            if not block:
                break
            h.update(block)
            size += len(block)
    finally:
        ops.close(fd)
    return size, h.hexdigest()


class Manifest:
    """Every file of a tree: relative path (``/``-separated), size, permission
    bits and BLAKE2b-128 digest; every directory; every symlink and its target.

    Enough to verify a tree later: a hard-linked file edited in place in an
    installed environment changes the cache's copy too, and ``verify`` finds it.
    """

    __slots__ = ("files", "dirs", "symlinks", "kind", "tree_id", "created_ns")

    def __init__(
        self,
        files: list[tuple[str, int, int, str]],
        dirs: list[str],
        symlinks: list[tuple[str, str]],
        kind: str,
        tree_id: str,
        created_ns: int,
    ) -> None:
        self.files = files
        self.dirs = dirs
        self.symlinks = symlinks
        self.kind = kind
        self.tree_id = tree_id
        self.created_ns = created_ns

    @property
    def size(self) -> int:
        """Total bytes of the tree's files."""
        return sum(f[1] for f in self.files)

    def to_bytes(self) -> bytes:
        import json

        return json.dumps(
            {
                "manifest": MANIFEST_VERSION,
                "tree": self.tree_id,
                "kind": self.kind,
                "created_ns": self.created_ns,
                "dirs": self.dirs,
                "files": [list(f) for f in self.files],
                "symlinks": [list(s) for s in self.symlinks],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a manifest; raises ValueError when it is not one we can trust."""
        import json

        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("manifest") != MANIFEST_VERSION:
            raise ValueError("not a version 1 manifest")
        tree_id = doc["tree"]
        if not (isinstance(tree_id, str) and len(tree_id) == 32 and all(c in "0123456789abcdef" for c in tree_id)):
            raise ValueError("bad tree id")
        files = [(str(p), int(s), int(m), str(d)) for p, s, m, d in doc["files"]]
        dirs = [str(d) for d in doc["dirs"]]
        symlinks = [(str(p), str(t)) for p, t in doc["symlinks"]]
        for rel in [f[0] for f in files] + dirs + [s[0] for s in symlinks]:
            _check_relative(rel)
        return cls(files, dirs, symlinks, str(doc["kind"]), tree_id, int(doc["created_ns"]))


def _check_relative(rel: str) -> None:
    """A manifest path must stay inside its tree and its destination."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe path in manifest: {rel!r}")


def scan(root: str, kind: str, tree_id: str, *, digests: bool = True) -> Manifest:
    """Describe the directory ``root``: never follows symlinks; refuses
    anything that is not a regular file, a directory or a symlink.
    ``digests=False`` records sizes and modes only (no file is opened), for
    a private tree that will never be verified."""
    ops = _osops.current
    files: list[tuple[str, int, int, str]] = []
    dirs: list[str] = []
    symlinks: list[tuple[str, str]] = []
    pending = [("", root)]
    while pending:
        rel_dir, abs_dir = pending.pop()
        with ops.scandir(abs_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if _stat.S_ISDIR(st.st_mode):
                dirs.append(rel)
                pending.append((rel, entry.path))
            elif _stat.S_ISLNK(st.st_mode):
                symlinks.append((rel, os.readlink(entry.path)))
            elif _stat.S_ISREG(st.st_mode):
                size, digest = _digest_file(entry.path) if digests else (st.st_size, "")
                files.append((rel, size, _stat.S_IMODE(st.st_mode), digest))
            else:
                raise ValueError(f"a tree can hold files, directories and symlinks, not {rel!r}")
    dirs.sort()
    files.sort()
    symlinks.sort()
    return Manifest(files, dirs, symlinks, kind, tree_id, time.time_ns())


class PlaceReport:
    """What :meth:`Tree.place` did.

    ``mode``: the mode asked for; ``used``: files placed per actual mode;
    ``fallbacks``: (from, to, reason) for each fallback; ``placed``,
    ``replaced``, ``skipped``: counts of files; ``complete``: False when the
    tree could not be placed in full (it was removed before placement began,
    or a cache file was missing), with ``missing`` listing what is absent.
    """

    __slots__ = ("mode", "used", "fallbacks", "placed", "replaced", "skipped", "complete", "missing")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.used: dict[str, int] = {}
        self.fallbacks: list[tuple[str, str, str]] = []
        self.placed = 0
        self.replaced = 0
        self.skipped = 0
        self.complete = True
        self.missing: list[str] = []

    def __repr__(self) -> str:
        return (
            f"PlaceReport(mode={self.mode!r}, used={self.used!r}, placed={self.placed}, replaced={self.replaced}, "
            f"skipped={self.skipped}, complete={self.complete})"
        )


class Tree:
    """A committed, immutable directory in the cache.

    ``path`` is the directory (never modified while it exists: do not write
    into it), ``manifest`` describes it, ``kind`` is ``"built"`` or
    ``"fetched"``.  Use :meth:`place` to install it somewhere.  To read files
    from ``path`` directly, hold the tree with ``with tree:``, which keeps a
    concurrent removal from deleting it under you.

    A tree made when the cache could not store it (disabled, read-only,
    failing) is *ephemeral*: it lives in a private temporary directory that
    :meth:`close` (or the end of a ``with`` block, or garbage collection)
    removes.
    """

    def __init__(self, path: str, manifest: Manifest, lock_path: str | None, *, ephemeral: bool = False) -> None:
        self.path = path
        self.manifest = manifest
        self.kind = manifest.kind
        self.ephemeral = ephemeral
        self._lock_path = lock_path
        self._pin: _locks.FileLock | None = None
        self._finalizer = None
        if ephemeral:
            import weakref

            self._finalizer = weakref.finalize(self, _remove_quietly, os.path.dirname(path))

    def __repr__(self) -> str:
        return f"<Tree {self.manifest.tree_id} {len(self.manifest.files)} files{' ephemeral' if self.ephemeral else ''}>"

    # -- pinning ------------------------------------------------------------------
    def __enter__(self) -> Tree:
        self._hold()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()
        if self.ephemeral:
            self.close()

    def close(self) -> None:
        """Release the tree; an ephemeral tree is deleted."""
        self._release()
        if self._finalizer is not None:
            self._finalizer()

    def _hold(self) -> bool:
        """Take the tree's shared lock; False if the tree is gone."""
        if self._lock_path is None or self._pin is not None:
            return _fs.exists(self.path)
        pin = _locks.FileLock(self._lock_path, shared=True, timeout=60.0)
        try:
            pin.acquire()
        except OSError as exc:
            # No lock (a file system without locks): go on unprotected, as
            # compute-once does; removal may then race with this reader.
            _policy.logger().info("safecache: cannot pin tree %s: %s", self.path, exc)
            return _fs.exists(self.path)
        if not _fs.exists(self.path):
            pin.release()
            return False
        self._pin = pin
        return True

    def _release(self) -> None:
        pin, self._pin = self._pin, None
        if pin is not None:
            pin.release()

    # -- use ----------------------------------------------------------------------------
    def place(self, dest: str | os.PathLike[str], *, mode: str | None = None, on_existing: str = "replace") -> PlaceReport:
        """Install the tree's contents into ``dest`` (created if needed).

        ``mode``: ``"clone"``, ``"hardlink"``, ``"symlink"``, ``"copy"`` or
        ``"auto"`` (clone, then hardlink, then copy); default from
        ``SAFECACHE_LINK_MODE``, else ``"auto"``.  The fallback is decided on
        the first file and reported once (see :class:`PlaceReport`).

        Files already in ``dest``: ``on_existing="replace"`` (default)
        replaces each one atomically (the new file is made beside it and
        renamed over it); ``"skip"`` leaves it; ``"error"`` raises
        ``FileExistsError`` before anything is placed.  Files in ``dest`` that
        the tree does not have are left alone.

        With ``hardlink`` (and ``auto`` where it links) the destination shares
        the cache's inodes: a program that edits a placed file *in place*
        changes the cache too (:meth:`verify` detects it).  Programs that
        replace files (write new, rename) are safe.  ``symlink`` ties the
        destination to the cache: removing the tree breaks it.

        Errors in the destination (permissions, disk full) are raised: the
        destination is the caller's.  If the tree is removed from the cache
        before placement begins, nothing is placed and the report says
        ``complete=False``; once placement has begun the tree cannot be
        removed under it.
        """
        if on_existing not in ON_EXISTING:
            raise ValueError(f"on_existing must be one of {ON_EXISTING}, not {on_existing!r}")
        placer = _link.Placer(_link.resolve_mode(mode))
        report = PlaceReport(placer.mode)
        dest = os.fspath(dest)
        held_before = self._pin is not None
        if not self._hold():
            report.complete = False
            report.missing = [f[0] for f in self.manifest.files]
            return report
        try:
            self._place(dest, placer, on_existing, report)
        finally:
            if not held_before:
                self._release()
        report.used = dict(placer.used)
        report.fallbacks = list(placer.fallbacks) + report.fallbacks
        return report

    def _place(self, dest: str, placer: _link.Placer, on_existing: str, report: PlaceReport) -> None:
        ops = _osops.current
        m = self.manifest
        if on_existing == "error":
            clash = [rel for rel in [f[0] for f in m.files] + [s[0] for s in m.symlinks] if os.path.lexists(_join(dest, rel))]
            if clash:
                raise FileExistsError(errno.EEXIST, f"{len(clash)} files of the tree already exist in the destination", _join(dest, clash[0]))
        _fs.makedirs(dest)
        for rel in m.dirs:
            _fs.makedirs(_join(dest, rel))
        sep = os.sep
        src_base, dst_base = self.path + sep, dest + sep
        for rel, _size, _mode, _digest in m.files:
            native = rel if sep == "/" else rel.replace("/", sep)
            src = src_base + native
            dst = dst_base + native
            # No existence check first: the link, clone or copy creates the
            # name exclusively, and an existing file is the exception.
            try:
                if self._place_one(placer, src, dst, rel, report):
                    report.placed += 1
                continue
            except FileExistsError:
                if on_existing == "skip":
                    report.skipped += 1
                    continue
            tmp = _fs.temp_name(dst)
            if not self._place_one(placer, src, tmp, rel, report):
                continue
            try:
                _fs.replace_file(tmp, dst)
            except BaseException:
                _fs.discard(tmp)
                raise
            report.replaced += 1
        for rel, target in m.symlinks:
            dst = _join(dest, rel)
            if os.path.lexists(dst):
                if on_existing == "skip":
                    report.skipped += 1
                    continue
                _fs.remove(dst)
            try:
                ops.symlink(target, dst)
            except OSError as exc:
                if not _symlinks_unsupported(exc):
                    raise
                # Windows without the symlink privilege (or a file system
                # without symlinks): place what the link points at instead,
                # if that is a file of this tree; otherwise report it missing.
                src = os.path.normpath(os.path.join(os.path.dirname(_join(self.path, rel)), target))
                inside = os.path.commonpath([src, self.path]) == self.path
                if not (inside and os.path.isfile(src) and not os.path.islink(src)):
                    report.complete = False
                    report.missing.append(rel)
                    continue
                placer.place(src, dst)
                report.fallbacks.append(("symlink", "copy", f"{rel}: {exc}"))
            report.placed += 1

    def _place_one(self, placer: _link.Placer, src: str, dst: str, rel: str, report: PlaceReport) -> bool:
        try:
            placer.place(src, dst)
            return True
        except FileNotFoundError as exc:
            if exc.filename is not None and os.fspath(exc.filename) == src or not _fs.exists(src):
                # The cache's copy is missing: the tree is damaged.
                report.complete = False
                report.missing.append(rel)
                return False
            raise

    def verify(self) -> list[tuple[str, str]]:
        """Check every file against the manifest; return ``(path, problem)``
        pairs, empty when the tree is intact.  Problems: ``missing``,
        ``size``, ``content``, ``mode``, ``unexpected`` (a file the manifest
        does not list), ``not a file``."""
        problems: list[tuple[str, str]] = []
        with self:
            expected = {f[0] for f in self.manifest.files} | set(self.manifest.dirs) | {s[0] for s in self.manifest.symlinks}
            for rel, size, mode, digest in self.manifest.files:
                path = _join(self.path, rel)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    problems.append((rel, "missing"))
                    continue
                if not _stat.S_ISREG(st.st_mode):
                    problems.append((rel, "not a file"))
                    continue
                if st.st_size != size:
                    problems.append((rel, "size"))
                    continue
                if _digest_file(path)[1] != digest:
                    problems.append((rel, "content"))
                elif _stat.S_IMODE(st.st_mode) != mode:
                    problems.append((rel, "mode"))
            for dirpath, dirnames, filenames in os.walk(self.path):
                for name in dirnames + filenames:
                    rel = os.path.relpath(os.path.join(dirpath, name), self.path).replace(os.sep, "/")
                    if rel not in expected:
                        problems.append((rel, "unexpected"))
        return problems


def _symlinks_unsupported(exc: OSError) -> bool:
    """The error a symlink gets where it cannot be made at all: Windows
    without the privilege (1314) or on FAT (1), file systems without them."""
    if getattr(exc, "winerror", None) in (1, 1314):
        return True
    return exc.errno in (errno.EPERM, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", -1))


def _join(base: str, rel: str) -> str:
    return os.path.join(base, *rel.split("/"))


def _remove_quietly(path: str) -> None:
    try:
        _fs.rmtree(path, budget=0.5)
    except OSError:
        pass


class Trees:
    """The trees of one bucket (``bucket.trees``)."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        cache = bucket.cache
        if bucket.directory is not None and cache.path is not None:
            self.index_dir: str | None = os.path.join(bucket.directory, "trees")
            self.objects_dir: str | None = os.path.join(bucket.directory, "tree-objects")
            self.locks_dir: str | None = os.path.join(cache.path, "locks", bucket.name, f"v{bucket.version}")
        else:
            self.index_dir = self.objects_dir = self.locks_dir = None

    # -- paths -----------------------------------------------------------------------------
    def _pointer(self, digest: str) -> str:
        assert self.index_dir is not None
        return os.path.join(self.index_dir, digest[:2], digest)

    def _object(self, tree_id: str) -> str:
        assert self.objects_dir is not None
        return os.path.join(self.objects_dir, tree_id)

    def _object_lock(self, tree_id: str) -> str:
        assert self.locks_dir is not None
        return os.path.join(self.locks_dir, "tree-objects", tree_id + ".lock")

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
        pointer = self._pointer(digest)
        opened = _fs.read_file(pointer, budget=self.bucket.cache.retry_budget)
        if opened is None:
            return None
        fd, block = opened
        ops = _osops.current
        try:
            header, payload = read_entry(fd, block, bytes.fromhex(digest))
            manifest = Manifest.from_bytes(payload or b"")
            if time.time_ns() - header.written_ns > MTIME_INTERVAL_NS:
                self.bucket._mark_used(fd, pointer)  # a tree's use time is its pointer's mtime
        except (Invalid, ValueError, KeyError, TypeError) as exc:
            _policy.logger().info("safecache: invalid tree pointer %s (%s)", pointer, exc)
            self.bucket.counters.corrupt_removed += 1
            if self.bucket.cache.state is READY:
                _discard_if_same(pointer, fd)
            return None
        finally:
            ops.close(fd)
        path = self._object(manifest.tree_id)
        if not _fs.exists(path):
            return None  # removed by a concurrent delete or clean: a clean miss
        return Tree(path, manifest, self._object_lock(manifest.tree_id))

    def __contains__(self, key: Key) -> bool:
        tree = self.get(key)
        return tree is not None

    # -- writing -----------------------------------------------------------------------------
    def _staging(self) -> str | None:
        """A fresh staging directory under tree-objects, or None when the
        cache cannot store (then the caller builds in a private temp dir)."""
        bucket = self.bucket
        cache = bucket.cache
        if self.objects_dir is None or cache.state is not READY or not bucket._writable("put_tree"):
            return None
        staging = os.path.join(self.objects_dir, os.urandom(16).hex() + ".tmp")
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
        tree_id = os.path.basename(staging)[:-4]
        try:
            manifest = scan(staging, kind, tree_id)
        except ValueError:
            _remove_quietly(staging)
            raise
        except OSError as exc:
            bucket.counters.error(cache._failed("put_tree", exc, staging))
            return self._ephemeral_from(staging, manifest=None, kind=kind)
        final = self._object(tree_id)
        try:
            _fs.retry("rename", _osops.current.rename, staging, final, budget=cache.retry_budget)
        except OSError as exc:
            bucket.counters.error(cache._failed("put_tree", exc, final))
            return self._ephemeral_from(staging, manifest, kind)
        payload = manifest.to_bytes()
        pointer = self._pointer(digest)
        for _attempt in range(3):
            header = pack_header(len(payload), time.time_ns(), bytes.fromhex(digest), _crc(payload), kind_code)
            try:
                if _fs.write_file(pointer, [header, payload], replace=False, durable=cache.durable, budget=cache.retry_budget):
                    bucket.counters.writes += 1
                    bucket.counters.bytes_written += manifest.size
                    return Tree(final, manifest, self._object_lock(tree_id))
                winner = self._load(digest)
            except OSError as exc:
                bucket.counters.error(cache._failed("put_tree", exc, pointer))
                # Our tree is whole but unreferenced (maintenance reclaims it
                # later); the caller can still use it, pinned like any tree.
                return Tree(final, manifest, self._object_lock(tree_id))
            if winner is not None:
                # Another process committed this key first: use its tree and
                # remove ours, which nothing references.
                self._remove_object(tree_id)
                return winner
            # A pointer that is corrupt or points at a removed tree: _load
            # removed the corrupt one; remove a dangling one and try again.
            _discard_if_same(pointer, None)
        # Could not publish (pointers keep vanishing or reappearing): our tree
        # is still whole; hand it out without a pointer.
        return Tree(final, manifest, self._object_lock(tree_id))

    def _ephemeral_from(self, directory: str, manifest: Manifest | None, kind: str) -> Tree:
        """Move a staged tree to a private temp dir the caller owns."""
        import tempfile

        ephemeral = True
        try:
            private = tempfile.mkdtemp(prefix="safecache-tree-")
            target = os.path.join(private, "tree")
            try:
                os.rename(directory, target)
            except OSError:
                import shutil

                shutil.copytree(directory, target, symlinks=True)
                _remove_quietly(directory)
        except OSError:
            # Nowhere private to put it: hand out the staged directory itself
            # (not ephemeral: it sits in the cache, and maintenance removes it
            # as an old staging tree).
            target, ephemeral = directory, False
        if manifest is None:
            try:
                manifest = scan(target, kind, os.urandom(16).hex())
            except OSError:  # files still held by someone (Windows): no digests then
                manifest = scan(target, kind, os.urandom(16).hex(), digests=False)
        return Tree(target, manifest, None, ephemeral=ephemeral)

    def build(self, key: Key, *, kind: str = "built") -> TreeBuilder:
        """A context manager giving an empty directory to fill; on a normal
        exit it is committed as ``key``'s tree (``builder.tree``), on an
        exception it is removed.  ::

            with bucket.trees.build(key, kind="fetched") as b:
                unpack(wheel, b.path)
            b.tree.place(venv)
        """
        return TreeBuilder(self, key, kind)

    def put(self, key: Key, source: str | os.PathLike[str], *, kind: str = "built") -> Tree:
        """Commit a copy of the existing directory ``source`` as ``key``'s tree.

        ``source`` is copied (never moved or modified).  Returns the tree in
        force afterwards; if the cache cannot store it, an ephemeral copy.
        """
        with self.build(key, kind=kind) as builder:
            _copy_tree(os.fspath(source), builder.path)
        assert builder.tree is not None
        return builder.tree

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
        one runs the factory and the others wait, then use its tree; if the
        builder dies, a waiter takes over.  Exceptions from ``factory``
        propagate and nothing is committed.  When the cache cannot store, the
        factory still runs and an ephemeral tree is returned.
        """
        tree = self.get(key)
        if tree is not None:
            return tree
        bucket = self.bucket
        cache = bucket.cache
        lock: _locks.FileLock | None = None
        if self.locks_dir is not None and cache.state is READY:
            cache._ensure_root()  # markers before the lock file
        if self.locks_dir is not None and cache.state is READY:
            digest = _keys.key_digest(key)
            lock = _locks.FileLock(
                os.path.join(self.locks_dir, "trees", digest[:2], digest + ".lock"),
                timeout=cache.lock_timeout if timeout is None else timeout,
            )
            try:
                lock.acquire()
            except OSError as exc:
                bucket.counters.error(cache._failed("get_or_create_tree", exc, lock.path, lock=True))
        try:
            if lock is not None and lock.locked:
                tree = self.get(key)
                if tree is not None:
                    return tree
            with self.build(key, kind=kind) as builder:
                factory(builder.path)
            assert builder.tree is not None
            return builder.tree
        finally:
            if lock is not None:
                lock.release()

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

    def _remove_object(self, tree_id: str, *, timeout: float = 0.0) -> bool:
        """Remove a tree directory if no process holds it; False if in use."""
        lock = _locks.FileLock(self._object_lock(tree_id), timeout=timeout)
        try:
            lock.acquire()
        except OSError:
            return False  # in use (or no locks here): maintenance will retry
        try:
            path = self._object(tree_id)
            # Rename first so the tree vanishes from every reader's view at
            # once, even if removing its files takes a while or fails.
            doomed = f"{path}.del-{os.urandom(4).hex()}"
            try:
                _fs.retry("rename", _osops.current.rename, path, doomed, budget=self.bucket.cache.retry_budget)
            except FileNotFoundError:
                return True
            _fs.rmtree(doomed, budget=self.bucket.cache.retry_budget)
            return True
        except OSError as exc:
            _policy.logger().info("safecache: could not remove tree %s: %s", tree_id, exc)
            return False
        finally:
            lock.release()


class TreeBuilder:
    """Returned by :meth:`Trees.build`; see there."""

    def __init__(self, trees: Trees, key: Key, kind: str) -> None:
        
        _format.kind_code(kind)
        self._trees = trees
        self._key = key
        self.kind = kind
        self.path = ""
        self.tree: Tree | None = None
        self._private: str | None = None

    def __enter__(self) -> TreeBuilder:
        staging = self._trees._staging()
        if staging is None:
            import tempfile

            self._private = tempfile.mkdtemp(prefix="safecache-tree-")
            staging = os.path.join(self._private, "tree")
            os.mkdir(staging)
        self.path = staging
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            _remove_quietly(self._private or self.path)
            return
        if self._private is not None:
            manifest = scan(self.path, self.kind, os.urandom(16).hex())
            self.tree = Tree(self.path, manifest, None, ephemeral=True)
        else:
            self.tree = self._trees.commit(self._key, self.path, kind=self.kind)


def _copy_tree(src: str, dst: str) -> None:
    """Copy the contents of directory ``src`` into existing ``dst`` (symlinks
    as symlinks)."""
    import shutil

    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, target, symlinks=True)
        else:
            shutil.copy2(entry.path, target, follow_symlinks=False)


def _crc(data: bytes) -> int:
    from ._format import crc32

    return crc32(data) & 0xFFFFFFFF


def _discard_if_same(path: str, fd: int | None) -> None:
    """Remove ``path`` if it is still the file open as ``fd`` (or any file,
    when ``fd`` is None); best effort."""
    ops = _osops.current
    try:
        if fd is not None:
            mine = ops.fstat(fd)
            theirs = ops.lstat(path)
            if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
                return
        _fs.remove(path, budget=0.05)
    except OSError:
        pass


def iter_tree_files(tree: Tree) -> Iterator[tuple[str, str]]:
    """(relative path, absolute path) of every file of ``tree``."""
    for rel, *_ in tree.manifest.files:
        yield rel, _join(tree.path, rel)


__all__ = ["Manifest", "PlaceReport", "Tree", "TreeBuilder", "Trees", "scan"]

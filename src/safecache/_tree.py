"""A tree: a committed, immutable directory; held while in use, removed when not.

The protocol between users and removers (uv #11694: pruning a tree a running
process used broke it) is written here, on both sides:

* a user holds the tree's lock (``locks/<name>/v<N>/tree-objects/<id>.lock``)
  **shared** while it places or reads the tree, and checks after locking
  that the directory is still there (:meth:`Tree._hold`);
* a remover takes that lock **exclusively**, renames the directory to
  ``<id>.del-<r>`` (every reader's view loses it at once), releases the lock,
  then deletes the files (:func:`remove_tree`).  It never waits on a user
  longer than it was told to; a tree in use is left for maintenance.

Tree ids are never reused, so a removed tree's lock file may be deleted: a
process that opens it afterwards locks some inode and finds the tree gone.

A tree made when the cache could not store it is *ephemeral*: it lives in a
private temporary directory (:func:`private_dir`) that closing it removes.
"""

from __future__ import annotations

import os
import stat as _stat

from . import _fs, _layout, _link, _locks, _osops, _place, _policy
from ._errcodes import locks_unsupported
from ._errors import LockTimeoutError
from ._manifest import Manifest, digest_file, join, scan, walk
from ._place import PlaceReport

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: How long a user waits for a remover to finish renaming a tree away.
_PIN_TIMEOUT = 60.0


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

            self._finalizer = weakref.finalize(self, _fs.discard_tree, os.path.dirname(path))

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
        pin = _locks.FileLock(self._lock_path, shared=True, timeout=_PIN_TIMEOUT)
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
        if on_existing not in _place.ON_EXISTING:
            raise ValueError(f"on_existing must be one of {_place.ON_EXISTING}, not {on_existing!r}")
        placer = _link.Placer(_link.resolve_mode(mode))
        report = PlaceReport(placer.mode)
        dest = os.fspath(dest)
        held_before = self._pin is not None
        if not self._hold():
            report.complete = False
            report.missing = [f[0] for f in self.manifest.files]
            return report
        try:
            _place.place(self.path, self.manifest, dest, placer, on_existing, report)
        finally:
            if not held_before:
                self._release()
        report.used = dict(placer.used)
        report.fallbacks = list(placer.fallbacks) + report.fallbacks
        return report

    def verify(self) -> list[tuple[str, str]]:
        """Check every file against the manifest; return ``(path, problem)``
        pairs, empty when the tree is intact.  Problems: ``missing``,
        ``size``, ``content``, ``mode``, ``unexpected`` (a file the manifest
        does not list), ``not a file``."""
        problems: list[tuple[str, str]] = []
        ops = _osops.current
        with self:
            expected = {f[0] for f in self.manifest.files} | set(self.manifest.dirs) | {s[0] for s in self.manifest.symlinks}
            for rel, size, mode, digest in self.manifest.files:
                path = join(self.path, rel)
                try:
                    st = ops.lstat(path)
                except FileNotFoundError:
                    problems.append((rel, "missing"))
                    continue
                if not _stat.S_ISREG(st.st_mode):
                    problems.append((rel, "not a file"))
                    continue
                if st.st_size != size:
                    problems.append((rel, "size"))
                    continue
                if digest_file(path)[1] != digest:
                    problems.append((rel, "content"))
                elif _stat.S_IMODE(st.st_mode) != mode:
                    problems.append((rel, "mode"))
            problems.extend((rel, "unexpected") for rel, _entry, _st in walk(self.path) if rel not in expected)
        return problems


def iter_tree_files(tree: Tree) -> Iterator[tuple[str, str]]:
    """(relative path, absolute path) of every file of ``tree``."""
    for rel, *_ in tree.manifest.files:
        yield rel, join(tree.path, rel)


# -- ephemeral trees ------------------------------------------------------------------------
def private_dir(*, create: bool = True) -> str:
    """The directory for an ephemeral tree, alone in a new private temp
    directory (which is what closing the tree removes): created empty, or
    with ``create=False`` left for the caller to move a directory there.
    Raises ``OSError``."""
    parent = _fs.make_temp_dir(prefix="safecache-tree-")
    path = os.path.join(parent, "tree")
    if create:
        try:
            _fs.makedirs(path)
        except BaseException:
            _fs.discard_tree(parent)
            raise
    return path


def ephemeral(path: str, kind: str, manifest: Manifest | None = None, *, private: bool = True) -> Tree:
    """A tree over the directory ``path`` that no pointer references,
    described by ``manifest`` or else by a scan of ``path``.  ``private``:
    ``path`` is in a :func:`private_dir`, removed when the tree is closed."""
    if manifest is None:
        tree_id = _layout.new_tree_id()
        try:
            manifest = scan(path, kind, tree_id)
        except OSError:  # files still held by someone (Windows): no digests then
            manifest = scan(path, kind, tree_id, digests=False)
    return Tree(path, manifest, None, ephemeral=private)


# -- removal -------------------------------------------------------------------------------
def _log_failure(exc: OSError, path: str) -> None:
    _policy.logger().info("safecache: could not remove tree %s: %s", path, exc)


def lock_for_removal(
    locks_dir: str,
    tree_id: str,
    *,
    wait: float = 0.0,
    force: bool = False,
    failed: Callable[[OSError, str], object] = _log_failure,
) -> tuple[str, _locks.FileLock | None]:
    """Take tree ``tree_id``'s exclusive lock (under ``locks_dir``, a bucket
    version's locks directory) as a remover must, waiting at most ``wait``
    seconds.

    ``("ok", lock)``: held; release it once the tree is moved away.
    ``("ok", None)``: go on without it: ``force``, or a file system without
    locks (holders could not lock either, so removal degrades to unguarded,
    as compute-once degrades to compute-twice).  ``("held", None)``: another
    process uses the tree.  ``("failed", None)``: the lock could not be
    examined; the error went to ``failed(exc, lock_path)`` (default: logged),
    and the tree must be left.
    """
    lock = _locks.FileLock(_layout.tree_object_lock(locks_dir, tree_id), timeout=0.0 if force else wait)
    try:
        lock.acquire()
        return "ok", lock
    except LockTimeoutError:
        return ("ok", None) if force else ("held", None)
    except OSError as exc:
        if force or locks_unsupported(exc):
            _policy.logger().info("safecache: removing tree %s without its lock: %s", tree_id, exc)
            return "ok", None
        failed(exc, lock.path)
        return "failed", None


def remove_tree(
    bucket_dir: str,
    locks_dir: str,
    tree_id: str,
    *,
    pointer: str | None = None,
    wait: float = 0.0,
    force: bool = False,
    budget: float = _fs.DEFAULT_RETRY_BUDGET,
    failed: Callable[[OSError, str], object] = _log_failure,
) -> str:
    """Remove the tree ``tree_id`` of the bucket version directory
    ``bucket_dir`` (whose locks are under ``locks_dir``) unless a process
    holds it.

    Under the tree's exclusive lock (:func:`lock_for_removal`, with ``wait``
    and ``force``): remove ``pointer`` if given (new readers miss from then
    on), rename the directory to its doomed name; then release the lock,
    delete the tree's lock file and the directory's files.

    Returns ``"removed"``; ``"gone"`` (someone else removed it first);
    ``"held"`` (another process holds it: nothing was touched); or
    ``"failed"`` (the lock or the rename failed: the tree is left).  Errors
    are passed to ``failed(exc, path)`` (default: logged), which applies the
    caller's error policy and may raise; "in use" errors are retried within
    ``budget`` seconds first.  A doomed directory that could not be deleted
    in full is left for maintenance, and the tree still counts as removed.
    """
    status, lock = lock_for_removal(locks_dir, tree_id, wait=wait, force=force, failed=failed)
    if status != "ok":
        return status
    obj = _layout.tree_object(bucket_dir, tree_id)
    doomed = _layout.doomed_name(obj, os.urandom(4).hex())
    try:
        if pointer is not None:
            _remove_pointer(pointer, budget, failed)
        # Rename first so the tree vanishes from every reader at once, even
        # if deleting its files takes a while or fails half-way; delete it
        # after releasing the lock, so no reader waits on a long deletion.
        moved = _rename(obj, doomed, budget, failed)
    finally:
        if lock is not None:
            lock.release()
    if moved is None:
        return "failed"
    # Safe: tree ids are never reused (see the module docstring).  Best
    # effort: on Windows a holder's handle keeps it.
    _fs.discard(_layout.tree_object_lock(locks_dir, tree_id))
    if not moved:
        return "gone"
    try:
        _fs.rmtree(doomed, budget=budget)
    except OSError as exc:
        failed(exc, doomed)  # the next trim removes the doomed directory
    return "removed"


def _remove_pointer(pointer: str, budget: float, failed: Callable[[OSError, str], object]) -> None:
    try:
        _fs.remove(pointer, budget=budget)
    except OSError as exc:
        failed(exc, pointer)


def _rename(obj: str, doomed: str, budget: float, failed: Callable[[OSError, str], object]) -> bool | None:
    """True if renamed, False if ``obj`` was gone, None if the rename failed."""
    try:
        _fs.retry("rename", _osops.current.rename, obj, doomed, budget=budget)
        return True
    except FileNotFoundError:
        try:
            return None if _fs.exists(obj) else False
        except OSError:
            return None  # cannot tell: nothing is counted as gone on a guess
    except OSError as exc:
        failed(exc, obj)
        return None


__all__ = ["Tree", "ephemeral", "iter_tree_files", "lock_for_removal", "private_dir", "remove_tree"]

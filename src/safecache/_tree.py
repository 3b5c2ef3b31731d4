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

A user never waits long for a pin: a remover holds the lock exclusively
only while it renames the directory away, so a user waits at most the
tree's ``pin_timeout`` (the cache's ``retry_budget``, capped by its
``lock_timeout``; a ``timeout`` argument overrides it).  A lock held longer
than that is not a remover at work but a stuck or hostile holder (in a
shared cache, another user can take it): :meth:`Tree.place` then places
without the pin, which is safe because placement opens the tree's
directory once and checks every file it places against the manifest (a
concurrent removal makes files *missing*, reported, never wrong).
Reading ``tree.path`` directly is not checked that way, so :meth:`Tree.hold`
(``with tree:``) says False instead.

A tree made when the cache could not store it is *ephemeral*: it lives in a
private temporary directory (:func:`private_dir`) that closing it removes.
When no private directory can be made either, it is the cache's own
staging directory (:func:`staged`), held for the tree's whole life so that
maintenance leaves it alone, and removed by closing it.
"""

from __future__ import annotations

import os
import stat as _stat
import weakref

from . import _fs, _layout, _link, _locks, _osops, _place, _policy
from ._errcodes import locks_unsupported
from ._errors import LockTimeoutError
from ._link import Dirs, is_real_dir, open_root
from ._manifest import Manifest, digest_fd, join, scan
from ._place import PlaceReport

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: How long a user waits, by default, for a remover to finish renaming a
#: tree away: a remover holds the lock for one rename (and one pointer
#: removal), each retried within the retry budget at most.
_PIN_TIMEOUT = _fs.DEFAULT_RETRY_BUDGET


class Tree:
    """A committed, immutable directory in the cache.

    ``path`` is the directory (never modified while it exists: do not write
    into it), ``manifest`` describes it, ``kind`` is ``"built"`` or
    ``"fetched"``.  Use :meth:`place` to install it somewhere.  To read files
    from ``path`` directly, hold the tree with ``with tree:`` (or
    :meth:`hold`), which keeps a concurrent removal from deleting it under
    you, and check ``tree.held``: False means the tree is gone (or another
    process holds it exclusively, see :meth:`hold`) and ``path`` must not be
    read.

    ``pin_timeout``: how long :meth:`hold`, :meth:`place` and :meth:`verify`
    wait at most for a process that holds the tree exclusively (a remover).

    A tree made when the cache could not store it (disabled, read-only,
    failing) is *ephemeral*: it lives in a private temporary directory that
    :meth:`close` (or the end of a ``with`` block, or garbage collection)
    removes.
    """

    def __init__(
        self,
        path: str,
        manifest: Manifest,
        lock_path: str | None,
        *,
        ephemeral: bool = False,
        pin_timeout: float = _PIN_TIMEOUT,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.kind = manifest.kind
        self.ephemeral = ephemeral
        self.pin_timeout = _locks.check_timeout(pin_timeout)
        #: Whether the last ``with tree:`` (or :meth:`hold`) holds the tree.
        self.held = False
        self._lock_path = lock_path
        self._pin: _locks.FileLock | None = None
        self._depth = 0  # nested ``with`` blocks holding _pin
        self._life: _locks.FileLock | None = None  # a staged tree's pin, for its whole life
        self._finalizer: weakref.finalize[..., Tree] | None = None
        if ephemeral:
            self._finalizer = weakref.finalize(self, _fs.discard_tree, os.path.dirname(path))

    def __repr__(self) -> str:
        return f"<Tree {self.manifest.tree_id} {len(self.manifest.files)} files{' ephemeral' if self.ephemeral else ''}>"

    # -- pinning ------------------------------------------------------------------
    def __enter__(self) -> Tree:
        """Hold the tree (see :meth:`hold`); ``tree.held`` says whether it is."""
        if self._pin is not None and self._depth:
            self._depth += 1
            self.held = self._present()
            return self
        self.held = self.hold()
        if self._pin is not None:
            self._depth = 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._depth > 1:
            self._depth -= 1
            return
        self._depth = 0
        self._release()
        if self.ephemeral:
            self.close()

    def hold(self, timeout: float | None = None) -> bool:
        """Hold the tree against removal (its lock, shared) until
        :meth:`close` or the end of the ``with`` block; return whether it is
        held and ``path`` may be read.

        False when the tree is gone (removed by ``delete`` or maintenance,
        or the cache's copy is unreadable), and also when another process
        holds it exclusively for longer than ``timeout`` seconds (default
        ``pin_timeout``): a remover holds it only for a rename, so that is a
        stuck or hostile holder, and ``path`` may vanish while you read.
        On a file system without locks the tree cannot be held; True then
        means only that it is there.  ``with tree:`` sets ``tree.held`` to
        this.
        """
        return self._pin_status(timeout) in ("held", "unlocked")

    def close(self) -> None:
        """Release the tree; an ephemeral tree is deleted."""
        self._depth = 0
        self._release()
        if self._finalizer is not None:
            self._finalizer()
            self._life = None  # released by the finalizer

    def _present(self) -> bool:
        try:
            return _fs.exists(self.path)
        except OSError:  # cannot tell: not usable
            return False

    def _pin_status(self, timeout: float | None) -> str:
        """Pin the tree unless it is pinned: ``"held"``; ``"gone"``;
        ``"busy"`` (there, but another process held its lock exclusively
        past the wait); ``"unlocked"`` (there, not lockable: an ephemeral
        tree, or a file system without locks)."""
        if self._pin is not None or self._life is not None:
            return "held" if self._present() else "gone"
        if self._lock_path is None:
            return "unlocked" if self._present() else "gone"
        wait = self.pin_timeout if timeout is None else _locks.check_timeout(timeout)
        pin = _locks.FileLock(self._lock_path, shared=True, timeout=wait)
        try:
            pin.acquire()
        except LockTimeoutError:
            _policy.logger().info("safecache: tree %s is held exclusively by another process", self.path)
            return "busy" if self._present() else "gone"
        except OSError as exc:
            # No lock (a file system without locks, a read-only cache): go
            # on unprotected, as compute-once does; removal may then race
            # with this reader.
            _policy.logger().info("safecache: cannot pin tree %s: %s", self.path, exc)
            return "unlocked" if self._present() else "gone"
        if not self._present():
            pin.release()
            return "gone"
        self._pin = pin
        return "held"

    def _release(self) -> None:
        pin, self._pin = self._pin, None
        if pin is not None:
            pin.release()

    # -- use ----------------------------------------------------------------------------
    def place(
        self,
        dest: str | os.PathLike[str],
        *,
        mode: str | None = None,
        on_existing: str = "replace",
        timeout: float | None = None,
    ) -> PlaceReport:
        """Install the tree's contents into ``dest`` (created if needed).

        ``mode``: ``"clone"``, ``"hardlink"``, ``"symlink"``, ``"copy"`` or
        ``"auto"`` (clone, then hardlink, then copy); default from
        ``SAFECACHE_LINK_MODE``, else ``"auto"``.  The fallback is decided on
        the first file and reported once (see :class:`PlaceReport`).

        Files already in ``dest``: ``on_existing="replace"`` (default)
        replaces each one atomically (the new file is made beside it and
        renamed over it); ``"skip"`` leaves it; ``"error"`` raises
        ``FileExistsError`` before anything is placed.  Files in ``dest`` that
        the tree does not have are left alone.  Where the tree has a
        directory and ``dest`` has a file or a symlink, that is an existing
        file too (replaced by the directory, or left with everything the
        tree has beneath it): safecache never places through a symlink.

        With ``hardlink`` (and ``auto`` where it links) the destination shares
        the cache's inodes: a program that edits a placed file *in place*
        changes the cache too (:meth:`verify` detects it).  Programs that
        replace files (write new, rename) are safe.  ``symlink`` ties the
        destination to the cache: removing the tree breaks it.

        Errors in the destination (permissions, disk full) are raised: the
        destination is the caller's.  The cache's side never raises: if the
        tree is removed from the cache before placement begins, nothing is
        placed and the report says ``complete=False``; a file of the cache's
        copy that is absent or not what the manifest lists is not placed
        and is listed in ``report.missing``.  Once placement has begun the
        tree cannot be removed under it, unless its lock could not be taken
        within ``timeout`` seconds (default ``pin_timeout``) or at all: the
        placement then goes on unpinned, and a removal racing it makes
        files missing, never wrong.
        """
        if on_existing not in _place.ON_EXISTING:
            raise ValueError(f"on_existing must be one of {_place.ON_EXISTING}, not {on_existing!r}")
        placer = _link.Placer(_link.resolve_mode(mode))
        report = PlaceReport(placer.mode)
        dest = os.fspath(dest)
        held_before = self._pin is not None
        if self._pin_status(timeout) == "gone":
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
        """Check the tree's directory against the manifest; return
        ``(path, problem)`` pairs, empty when the tree is intact.  Problems:
        ``missing``; ``size``, ``content``, ``mode`` (a file);
        ``not a file``, ``not a directory``, ``not a symlink`` (something
        else is there: a symlink where the manifest has a file or a
        directory is never followed); ``target`` (a symlink pointing
        elsewhere); ``unexpected`` (something the manifest does not list).
        Beneath a directory that is missing or not a directory nothing else
        is reported.  Holds the tree while it checks (an ephemeral tree is
        not closed by it).  Raises ``OSError`` if the tree cannot be read
        (``FileNotFoundError``: it is gone)."""
        held_before = self._pin is not None
        self._pin_status(None)
        try:
            return _problems(self.path, self.manifest)
        finally:
            if not held_before:
                self._release()


def _under(rel: str, tops: set[str]) -> bool:
    while rel:
        if rel in tops:
            return True
        rel = rel.rpartition("/")[0]
    return False


def _problems(path: str, m: Manifest) -> list[tuple[str, str]]:
    """:meth:`Tree.verify`, through :class:`._link.Dir` handles: nothing is
    followed through a symlink, nothing but a regular file is read."""
    try:
        root = open_root(path)
    except NotADirectoryError:
        return [(".", "not a directory")]
    dirs = Dirs(root)
    ops = _osops.current
    problems: list[tuple[str, str]] = []
    bad: set[str] = set()  # missing or not directories: nothing beneath is looked at

    def entry(rel: str) -> tuple[_link.Dir, str, os.stat_result] | None:
        """The entry ``rel`` (its directory, name, lstat); None if it is
        beneath a bad directory or missing (reported)."""
        parent, _, name = rel.rpartition("/")
        if _under(parent, bad):
            return None
        directory = dirs.get(parent)
        try:
            return directory, name, directory.lstat(name)
        except FileNotFoundError:
            problems.append((rel, "missing"))
            return None

    try:
        for rel in m.dirs:
            found = entry(rel)
            if found is None:
                bad.add(rel)
            elif not is_real_dir(found[2]):
                problems.append((rel, "not a directory"))
                bad.add(rel)
        for rel, size, mode, digest in m.files:
            found = entry(rel)
            if found is None:
                continue
            directory, name, st = found
            if not _stat.S_ISREG(st.st_mode):
                problems.append((rel, "not a file"))
                continue
            if st.st_size != size:
                problems.append((rel, "size"))
                continue
            fd = directory.open_file(name)
            try:
                now = ops.fstat(fd)
                if not _stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    problems.append((rel, "not a file"))  # swapped since the lstat
                elif digest_fd(fd)[1] != digest:
                    problems.append((rel, "content"))
                elif _stat.S_IMODE(st.st_mode) != mode:
                    problems.append((rel, "mode"))
            finally:
                ops.close(fd)
        for rel, target in m.symlinks:
            found = entry(rel)
            if found is None:
                continue
            directory, name, st = found
            if not _stat.S_ISLNK(st.st_mode):
                problems.append((rel, "not a symlink"))
            elif directory.readlink(name) != target:
                problems.append((rel, "target"))
        expected = {f[0] for f in m.files} | set(m.dirs) | {s[0] for s in m.symlinks}
        for rel in [""] + [d for d in m.dirs if not _under(d, bad)]:
            for name in sorted(dirs.get(rel).names()):
                child = f"{rel}/{name}" if rel else name
                if child not in expected:
                    problems.append((child, "unexpected"))
    finally:
        dirs.close()
        root.close()
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


def describe(path: str, kind: str) -> Manifest:
    """A manifest of the directory ``path`` under a fresh tree id (for a
    tree no pointer references).  Raises ``OSError`` or ``ValueError`` as
    :func:`scan`."""
    tree_id = _layout.new_tree_id()
    try:
        return scan(path, kind, tree_id)
    except OSError:  # files still held by someone (Windows): no digests then
        return scan(path, kind, tree_id, digests=False)


def ephemeral(path: str, kind: str, manifest: Manifest | None = None) -> Tree:
    """A tree over the directory ``path`` in a :func:`private_dir` (removed
    when the tree is closed), described by ``manifest`` or else by a scan."""
    return Tree(path, manifest if manifest is not None else describe(path, kind), None, ephemeral=True)


def staged(path: str, manifest: Manifest, lock_path: str, *, pin_timeout: float = _PIN_TIMEOUT) -> Tree:
    """An ephemeral tree over the cache's staging directory ``path`` (whose
    lock is ``lock_path``), for when it could be neither committed nor moved
    to a private directory.  It is held for its whole life, so maintenance
    (which removes an old staging tree only when no one holds its lock)
    leaves it to its user; closing it removes it."""
    tree = Tree(path, manifest, lock_path, pin_timeout=pin_timeout)
    tree.ephemeral = True
    life: _locks.FileLock | None = _locks.FileLock(lock_path, shared=True, timeout=tree.pin_timeout)
    assert life is not None
    try:
        life.acquire()
    except OSError as exc:  # no locks here: maintenance could not lock it either
        _policy.logger().info("safecache: cannot pin staged tree %s: %s", path, exc)
        life = None
    tree._life = life
    tree._finalizer = weakref.finalize(tree, _drop_staged, path, life)
    return tree


def _drop_staged(path: str, life: _locks.FileLock | None) -> None:
    _fs.discard_tree(path)
    if life is not None:
        life.release()
        _fs.discard(life.path)  # tree ids are never reused (module docstring)


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


__all__ = ["Tree", "describe", "ephemeral", "iter_tree_files", "lock_for_removal", "private_dir", "remove_tree", "staged"]

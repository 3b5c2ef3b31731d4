"""Maintenance: removing trees, and emptying trash, while other processes
use the cache.

A tree is removed by ``_tree.remove_tree``, the one protocol for it: under
its exclusive lock (``locks/<name>/v<N>/tree-objects/<id>.lock``), which
every process placing or holding the tree has shared, the pointer goes
first (new readers miss), the directory is renamed to ``<id>.del-<r>``, and
it is deleted after the lock is released, so no reader waits on a long
deletion.  :func:`drop_tree` applies the run's error policy to it.

Trash is where ``prune`` and ``clean`` move a bucket version before
deleting it (``<root>/.trash-<pid>-<r>``), so readers miss within
milliseconds however long the deletion takes; :func:`purge` deletes it,
counting what it held.  ``trim`` purges the trash of a killed ``clean``.
Both walk it as :class:`~._examine.Folder` objects: what was moved into the trash
may be a directory another user can still change through a descriptor.
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from . import _fs, _layout, _locks, _policy
from ._errors import LockTimeoutError
from ._examine import REMOVE_BUDGET, Entry, Folder
from ._walk import Dir, Run


# -- trees ----------------------------------------------------------------------------------
def lock_tree(run: Run, b: Dir, tree_id: str, *, wait: float, force: bool) -> tuple[str, _locks.FileLock | None]:
    """``_tree.lock_for_removal`` with the run's error policy: ``("ok",
    lock or None)``, ``("held", None)`` or ``("failed", None)``."""
    from ._tree import lock_for_removal  # here: Cache.close() imports this module, and most tools never use trees

    return lock_for_removal(
        b.locks, tree_id, wait=wait, force=force, failed=lambda exc, path: run.failed(exc, path, b.label)
    )


def drop_tree(
    run: Run, b: Dir, tree_id: str, pointer: str | None, *, wait: float, force: bool, guard: tuple[Folder, ...] = ()
) -> str:
    """Remove a tree (its pointer if given, then its directory) through
    ``_tree.remove_tree``.  Returns ``"removed"``, ``"gone"`` (someone else
    removed it first), ``"held"`` (another process holds it: nothing was
    touched) or ``"failed"``.

    ``remove_tree`` works by path: the folders in ``guard`` (the pointer's
    shard, ``tree-objects``) must still be what their paths lead to (a
    directory swapped for a symlink since the walk opened it leaves the
    tree alone)."""
    from ._tree import remove_tree

    if not all(folder.same() for folder in guard):
        _policy.logger().info("safecache: %s: %s changed while it was walked; tree %s left", run.op, b.path, tree_id)
        return "failed"
    return remove_tree(
        b.path,
        b.locks,
        tree_id,
        pointer=pointer,
        wait=wait,
        force=force,
        budget=REMOVE_BUDGET,
        failed=lambda exc, path: run.failed(exc, path, b.label),
    )


def discard_lock(lock_path: str) -> None:
    """Delete a removed tree's lock file; best effort: on Windows a holder's
    handle blocks it.  Safe because tree ids are random and never reused: a
    process that later opens this lock finds its tree gone whichever inode
    it locks."""
    _fs.discard(lock_path)


def staging_in_use(b: Dir, tree_id: str) -> bool:
    """True if a builder pins staging tree ``tree_id`` (its object lock)."""
    lock = _locks.FileLock(b.object_lock(tree_id), timeout=0)
    try:
        lock.acquire()
    except LockTimeoutError:
        return True
    except OSError:
        return False
    lock.release()
    return False


# -- trash ------------------------------------------------------------------------------------
def new_trash(run: Run, root: Folder) -> Folder | None:
    """A fresh trash directory in the root; None if it cannot be made (a
    full file system: the caller deletes in place instead)."""
    name = _layout.TRASH_PREFIX + f"{os.getpid()}-{os.urandom(6).hex()}"
    try:
        root.mkdir(name, 0o700)
        return root.child(name)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            run.failed(exc, root.join(name))
        else:
            _policy.logger().info("safecache: %s: no room for a trash directory, removing in place: %s", run.op, exc)
        return None


def purge(run: Run, parent: Folder, name: str, label: str | None) -> None:
    """Delete the trash directory ``name`` in ``parent``, counting what it held."""
    report = run.report
    trash = run.enter(parent, name, label)
    if trash is None:
        return
    with trash:
        for entry in run.scan(trash, label):
            child = entry.name
            if _layout.is_shard(child) and entry.is_dir():
                shard = run.enter(trash, child, label)
                if shard is not None:
                    with shard:
                        empty_shard(run, shard, label)
                run.rmtree(trash, child, label)
                run.tick()
            elif child == _layout.TREE_OBJECTS and entry.is_dir():
                objects = run.enter(trash, child, label)
                if objects is not None:
                    with objects:
                        for obj in run.scan(objects, label):
                            _newest, size = run.survey(objects, obj.name)
                            if run.rmtree(objects, obj.name, label):
                                report.freed_bytes += size
                                if _layout.is_tree_id(obj.name):
                                    report.removed_trees += 1
                                else:
                                    report.removed_temp += 1
                run.rmtree(trash, child, label)
            else:
                _newest, size = run.survey(trash, child) if entry.is_dir() else (0.0, _size_of(entry))
                if run.rmtree(trash, child, label):
                    report.freed_bytes += size
    run.rmtree(parent, name, label)


def empty_shard(run: Run, shard: Folder, label: str | None) -> None:
    """Delete the files of the shard directory ``shard`` one by one,
    counting them (a file that cannot be deleted does not stop the others)."""
    report = run.report
    for child in run.scan(shard, label):
        st = run.lstat(child, label)
        if st is None:
            continue
        if _stat.S_ISDIR(st.st_mode):
            _newest, size = run.survey(shard, child.name)
            if run.rmtree(shard, child.name, label):
                report.freed_bytes += size
        elif run.remove(shard, child.name, label):
            report.freed_bytes += st.st_size
            if _layout.is_digest(child.name):
                report.removed_entries += 1
            elif _layout.is_temp(child.name):
                report.removed_temp += 1


def _size_of(entry: Entry) -> int:
    try:
        return entry.stat().st_size
    except OSError:
        return 0

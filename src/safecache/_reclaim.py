"""Maintenance: removing trees, and emptying trash, while other processes
use the cache.

A tree is removed only under its exclusive lock (``locks/<name>/v<N>/
tree-objects/<id>.lock``), which every process placing or holding the tree
has shared.  :func:`drop_tree` removes the pointer first (new readers miss),
renames the directory to ``<id>.del-<r>`` under the lock, and deletes it
after releasing the lock, so no reader waits on a long deletion.

Trash is where ``prune`` and ``clean`` move a bucket version before
deleting it (``<root>/.trash-<pid>-<r>``), so readers miss within
milliseconds however long the deletion takes; :func:`purge` deletes it,
counting what it held.  ``trim`` purges the trash of a killed ``clean``.
"""

from __future__ import annotations

import os
import stat as _stat

from . import _errcodes, _fs, _layout, _locks, _osops, _policy
from ._errors import LockTimeoutError
from ._walk import Dir, Run, is_dir


# -- trees ----------------------------------------------------------------------------------
def lock_tree(run: Run, b: Dir, tree_id: str, *, wait: float, force: bool) -> tuple[str, _locks.FileLock | None]:
    """Take tree ``tree_id``'s exclusive lock, waiting at most ``wait`` seconds.

    ``("ok", lock)``: held, release it after moving the tree away.
    ``("ok", None)``: go on without it (``force``, or a file system without
    locks: holders could not lock either, so removal degrades to unguarded,
    as compute-once degrades to compute-possibly-twice).  ``("held", None)``:
    another process uses the tree.  ``("failed", None)``: the lock could not
    be examined (reported through the error policy); the tree is left.
    """
    lock = _locks.FileLock(b.object_lock(tree_id), timeout=0.0 if force else wait)
    try:
        lock.acquire()
        return "ok", lock
    except LockTimeoutError:
        return ("ok", None) if force else ("held", None)
    except OSError as exc:
        if force or _errcodes.locks_unsupported(exc):
            _policy.logger().info("safecache: %s: removing tree %s without its lock: %s", run.op, tree_id, exc)
            return "ok", None
        run.failed(exc, lock.path, b.label)
        return "failed", None


def drop_tree(run: Run, b: Dir, tree_id: str, pointer: str | None, *, wait: float, force: bool) -> str:
    """Remove a tree: its pointer (if given), then its directory, under the
    tree's exclusive lock.  Returns ``"removed"``, ``"gone"`` (someone else
    removed it first), ``"held"`` (another process holds it: nothing was
    touched) or ``"failed"``."""
    status, lock = lock_tree(run, b, tree_id, wait=wait, force=force)
    if status != "ok":
        return status
    obj = _layout.tree_object(b.path, tree_id)
    doomed = _layout.doomed_name(obj, os.urandom(4).hex())
    try:
        if pointer is not None:
            run.remove(pointer, b.label)  # new readers miss from here on
        # Rename first so the tree vanishes from every reader at once, even
        # if deleting its files takes a while or fails half-way; delete it
        # after releasing the lock, so no reader waits on a long deletion.
        moved = run.rename(obj, doomed, b.label)
    finally:
        if lock is not None:
            lock.release()
    if moved is None:
        return "failed"
    discard_lock(b.object_lock(tree_id))
    if not moved:
        return "gone"
    run.rmtree(doomed, b.label)  # if this fails, the next trim removes the .del- directory
    return "removed"


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
def new_trash(run: Run) -> str | None:
    path = _layout.trash_name(run.root, f"{os.getpid()}-{os.urandom(6).hex()}")
    try:
        _osops.current.mkdir(path, 0o700)
        return path
    except OSError as exc:
        run.failed(exc, path)
        return None


def purge(run: Run, trash: str, label: str | None) -> None:
    """Delete a trash directory, counting what it held."""
    report = run.report
    for entry in run.listdir(trash, label):
        name = entry.name
        if _layout.is_shard(name) and is_dir(entry):
            empty_shard(run, entry.path, label)
            run.rmtree(entry.path, label)
            run.tick()
        elif name == _layout.TREE_OBJECTS and is_dir(entry):
            for child in run.listdir(entry.path, label):
                _newest, size = run.survey(child.path)
                if run.rmtree(child.path, label):
                    report.freed_bytes += size
                    if _layout.is_tree_id(child.name):
                        report.removed_trees += 1
                    else:
                        report.removed_temp += 1
            run.rmtree(entry.path, label)
        else:
            _newest, size = run.survey(entry.path) if is_dir(entry) else (0.0, _size_of(entry))
            if run.rmtree(entry.path, label):
                report.freed_bytes += size
    run.rmtree(trash, label)


def empty_shard(run: Run, path: str, label: str | None) -> None:
    """Delete the files of a shard directory one by one, counting them (a
    file that cannot be deleted does not stop the others)."""
    report = run.report
    for child in run.listdir(path, label):
        st = run.lstat(child, label)
        if st is None:
            continue
        if _stat.S_ISDIR(st.st_mode):
            _newest, size = run.survey(child.path)
            if run.rmtree(child.path, label):
                report.freed_bytes += size
        elif run.remove(child.path, label):
            report.freed_bytes += st.st_size
            if _layout.is_digest(child.name):
                report.removed_entries += 1
            elif _layout.is_temp(child.name):
                report.removed_temp += 1


def _size_of(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0

"""Maintenance: ``prune`` (what the cache no longer needs) and ``clean``
(everything, or the named buckets), both while others use the cache.

Both remove whole bucket versions the same way (:func:`remove_version`):
renamed into trash piece by piece, so readers miss at once, then deleted;
tree objects one by one under their lock.  Both hold the trim lock, so no
trimmer walking meanwhile records the sizes of what they remove.
"""

from __future__ import annotations

import contextlib
import os
import time

from . import _layout, _locks, _policy, _stats
from ._examine import Entry, Folder
from ._reclaim import discard_lock, empty_shard, lock_tree, new_trash, purge, staging_in_use
from ._trim import holding_trim_lock, record_sizes, write_stamp
from ._trimmer import Trimmer
from ._walk import Dir, Report, Run, bucket_dirs, writable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._cache import Cache
    from ._walk import Progress


def prune(
    cache: Cache,
    *,
    ci: bool = False,
    older_than: float | None = None,
    max_size: int | None = None,
    buckets: list[str] | None = None,
    force: bool = False,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> Report:
    """Remove what the cache no longer needs, while others may use it.

    * every bucket version below the highest one on disk for its name;
    * leftovers and unreferenced trees, as :func:`trim` does;
    * ``ci=True``: everything *fetched* (cheap to download again), keeping
      what was *built* (uv's ``cache prune --ci``);
    * ``older_than``: entries and trees not used for that many seconds;
    * ``max_size``: least recently used first, down to 90 % of it.

    ``buckets`` limits it to those names (``"lint"``: every version;
    ``"lint/v3"``: one).  Waits are bounded: ``timeout`` seconds in all for
    another trimmer and for trees other processes hold; held trees are then
    left and counted in ``kept_in_use``.  ``force=True`` does not wait and
    removes held trees anyway: a process placing such a tree gets an
    incomplete placement (``PlaceReport.complete`` False, or a missing file
    in its destination), one reading files under ``tree.path`` sees them
    vanish, and symlink placements into the tree break.
    """
    report = Report()
    with _exclusive(cache, "prune", report, buckets, force=force, timeout=timeout, progress=progress) as started:
        if started is None:
            return report
        run, deadline = started
        # Old versions are judged against every version on disk, whatever
        # the selection: pruning "lint/v3" removes it if a v4 exists.
        highest: dict[str, int] = {}
        for b in bucket_dirs(run):
            highest[b.name] = max(highest.get(b.name, -1), b.version)
        dirs = bucket_dirs(run, buckets)
        old = [b for b in dirs if b.version < highest.get(b.name, -1)]
        keep = [b for b in dirs if b not in old]
        for b in old:
            remove_version(run, b, deadline=deadline, force=force)
        Trimmer(run, max_age=older_than, max_size=max_size, ci=ci, deadline=deadline, force=force).trim(keep)
        record_sizes(run, keep, full=buckets is None, drop=[b.label for b in old])
        if buckets is None:
            write_stamp(run.root, run.now)
    return report


def clean(
    cache: Cache,
    *,
    buckets: list[str] | None = None,
    force: bool = False,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> Report:
    """Remove every bucket (or the named ones: ``"lint"`` for all its
    versions, ``"lint/v3"`` for one), while others may use the cache.

    Each bucket version is renamed aside piece by piece (readers miss at
    once), then deleted.  Trees other processes hold are waited for (at most
    ``timeout`` seconds in all), then left in place, unreferenced, for a
    later trim, and counted in ``kept_in_use``; ``force=True`` removes them
    without waiting (see :func:`prune` for what that does to their users).
    The markers (``CACHEDIR.TAG``, ``.gitignore``, ``README``), ``stats/``
    and ``locks/`` stay: lock files may be in use (only those of removed
    trees are deleted).  The counters of removed buckets are forgotten.
    """
    report = Report()
    with _exclusive(cache, "clean", report, buckets, force=force, timeout=timeout, progress=progress) as started:
        if started is None:
            return report
        run, deadline = started
        if buckets is None:
            _clean_all(run, deadline, force)
        else:
            _clean_some(run, buckets, deadline, force)
    return report


@contextlib.contextmanager
def _exclusive(
    cache: Cache,
    operation: str,
    report: Report,
    buckets: list[str] | None,
    *,
    force: bool,
    timeout: float,
    progress: Progress | None,
) -> Iterator[tuple[Run, float] | None]:
    """The run of a ``prune`` or ``clean`` and its deadline, holding the
    trim lock (a trimmer walking meanwhile would record the sizes of what is
    removed); None when there is nothing to do or it must be skipped (the
    report says why).  The counters are flushed before and after."""
    for spec in buckets or ():
        _layout.parse_label(spec)  # a bad name is the caller's error, raised before anything is touched
    root = writable(cache, operation, report)
    if root is None:
        yield None
        return
    deadline = time.monotonic() + max(0.0, timeout)
    wait = 0.0 if force else max(0.0, timeout)
    with holding_trim_lock(cache, root, wait, report, operation=operation, force=force) as go:
        if not go:
            yield None
            return
        cache.flush()
        yield Run(cache, operation, report, progress), deadline
    cache.flush()


def _clean_all(run: Run, deadline: float, force: bool) -> None:
    """Everything under ``buckets/``, including names no safecache would
    make, and the trash of a killed ``clean``; every counter is forgotten."""
    with run.opened() as root:
        if root is None:
            return
        buckets = run.enter(root, _layout.BUCKETS)
        if buckets is not None:
            with buckets:
                _clean_buckets(run, buckets, deadline, force)
        for entry in run.scan(root):
            if _layout.is_trash(entry.name) and entry.is_dir():
                purge(run, root, entry.name, None)
    _forget(run, drop_all=True)


def _clean_buckets(run: Run, buckets: Folder, deadline: float, force: bool) -> None:
    for entry in run.scan(buckets):
        if not entry.is_dir():
            run.remove(buckets, entry.name)
            continue
        bucket = run.enter(buckets, entry.name)
        if bucket is None:
            continue
        with bucket:
            for child in run.scan(bucket):
                if child.is_dir():
                    remove_version(run, Dir(run.root, entry.name, child.name), deadline=deadline, force=force)
                else:
                    run.remove(bucket, child.name)
        run.rmdir(buckets, entry.name)


def _clean_some(run: Run, buckets: list[str], deadline: float, force: bool) -> None:
    """The named bucket versions; their counters are forgotten."""
    dirs = bucket_dirs(run, buckets)
    for b in dirs:
        remove_version(run, b, deadline=deadline, force=force)
    with run.opened((_layout.BUCKETS,)) as folder:
        if folder is not None:
            for name in sorted({b.name for b in dirs}):
                run.rmdir(folder, name)
    _forget(run, drop=[b.label for b in dirs])


def _forget(run: Run, *, drop: list[str] | None = None, drop_all: bool = False) -> None:
    try:
        _stats.rebase(run.root, {}, full=False, drop=drop or (), drop_all=drop_all)
    except OSError as exc:
        _policy.logger().info("safecache: %s: could not reset the counters: %s", run.op, exc)


# -- removing a bucket version ----------------------------------------------------------------------
def remove_version(run: Run, b: Dir, *, deadline: float | None, force: bool) -> None:
    """Remove a whole bucket version directory while others may use it.

    Everything but ``tree-objects`` is renamed into a trash directory first
    (pointers first, then the shards), so readers miss within milliseconds
    however long the deletion takes.  Tree objects are moved one by one
    under their exclusive lock (waiting until ``deadline``); a held one stays
    where it is, unreferenced, for a later trim.  A staging tree younger
    than LEFTOVER_AGE belongs to a live builder and stays too, unless
    ``force``.  The ``tree-objects`` directory itself is never moved: a
    builder may be creating a staging tree in it right now.  Where no trash
    directory can be made (a full file system), everything is deleted in
    place instead: readers then miss entry by entry.
    """
    with run.opened() as root, run.opened(b.parts, b.label) as vf:
        if root is None or vf is None:
            return
        trash = new_trash(run, root)
        trash_name = os.path.basename(trash.path) if trash is not None else ""
        try:
            _empty_version(run, b, vf, trash, deadline=deadline, force=force)
        finally:
            if trash is not None:
                trash.close()
        if trash is not None:
            purge(run, root, trash_name, b.label)
    with run.opened(b.parts[:-1], b.label) as parent:
        if parent is not None:
            run.rmdir(parent, b.vdir)


def _empty_version(run: Run, b: Dir, vf: Folder, trash: Folder | None, *, deadline: float | None, force: bool) -> None:
    children = run.scan(vf, b.label)
    children.sort(key=lambda e: (e.name != _layout.TREES, e.name))
    objects: Entry | None = None
    for entry in children:
        if entry.name == _layout.TREE_OBJECTS and entry.is_dir():
            objects = entry
            continue
        moved = run.move(vf, entry.name, trash, entry.name, b.label) if trash is not None else None
        if moved is None and entry.is_dir():
            # Could not move it (no trash: a full disk; Windows: a file inside
            # is open without share-delete): delete what can be deleted in place.
            inner = run.enter(vf, entry.name, b.label) if _layout.is_shard(entry.name) else None
            if inner is not None:
                with inner:
                    empty_shard(run, inner, b.label)
                run.rmdir(vf, entry.name)
            else:
                _newest, size = run.survey(vf, entry.name)
                if run.rmtree(vf, entry.name, b.label) and entry.name == _layout.TREES:
                    run.report.freed_bytes += size
        elif moved is None:
            st = run.lstat(entry, b.label)
            if st is not None and run.remove(vf, entry.name, b.label):
                run.report.freed_bytes += st.st_size
    if objects is not None:
        folder = run.enter(vf, objects.name, b.label)
        if folder is not None:
            with folder:
                _move_objects(run, b, folder, trash, deadline=deadline, force=force)
            run.rmdir(vf, objects.name)


def _move_objects(run: Run, b: Dir, objs: Folder, trash: Folder | None, *, deadline: float | None, force: bool) -> None:
    """Move the tree objects into the trash (delete them in place without
    one), each under its exclusive lock; held ones, and a live builder's
    staging trees, stay."""
    moved_objects: Folder | None = None
    try:
        for entry in run.scan(objs, b.label):
            name = entry.name
            if not entry.is_dir():
                run.remove(objs, name, b.label)
                continue
            go, lock = _may_move(run, b, objs, entry, deadline=deadline, force=force)
            if not go:
                continue
            moved: bool | None = None
            try:
                if trash is not None and moved_objects is None:
                    moved_objects = _objects_in(run, trash, b.label)
                if moved_objects is not None:
                    moved = run.move(objs, name, moved_objects, name, b.label)
                else:
                    _newest, size = run.survey(objs, name)
                    moved = run.rmtree(objs, name, b.label) or None
                    if moved:
                        run.report.freed_bytes += size
                        run.report.removed_trees += _layout.is_tree_id(name)
                        run.report.removed_temp += not _layout.is_tree_id(name)
            finally:
                if lock is not None:
                    lock.release()
            if moved is not None and (_layout.is_tree_id(name) or _layout.is_staging(name)):
                discard_lock(b.object_lock(_layout.tree_id_of(name)))  # its tree is gone for good
    finally:
        if moved_objects is not None:
            moved_objects.close()


def _objects_in(run: Run, trash: Folder, label: str) -> Folder | None:
    """``tree-objects/`` in the trash, made on first use."""
    try:
        trash.mkdir(_layout.TREE_OBJECTS, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        run.failed(exc, trash.join(_layout.TREE_OBJECTS), label)
        return None
    return run.enter(trash, _layout.TREE_OBJECTS, label)


def _may_move(
    run: Run, b: Dir, objs: Folder, entry: Entry, *, deadline: float | None, force: bool
) -> tuple[bool, _locks.FileLock | None]:
    """Whether a directory in ``tree-objects/`` may go now, and the lock to
    release once it is moved: a tree only under its exclusive lock, a
    staging tree only once it is old and unpinned (or with ``force``)."""
    name = entry.name
    tree_id = _layout.tree_id_of(name)
    if _layout.is_tree_id(name):
        wait = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
        status, lock = lock_tree(run, b, tree_id, wait=wait, force=force)
        if status == "held":
            run.report.kept_in_use += 1
        return status == "ok", lock
    if _layout.is_staging(name) and not force:
        newest, _size = run.survey(objs, name)
        if not run.old(newest) or staging_in_use(b, tree_id):
            return False, None  # a live builder's
    return True, None

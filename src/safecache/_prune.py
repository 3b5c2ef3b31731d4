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

from . import _layout, _locks, _osops, _policy, _stats
from ._reclaim import discard_lock, empty_shard, lock_tree, new_trash, purge, staging_in_use
from ._trim import holding_trim_lock, record_sizes, write_stamp
from ._trimmer import Trimmer
from ._walk import Dir, Report, Run, bucket_dirs, is_dir, writable

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
    with holding_trim_lock(cache, root, 0.0 if force else max(0.0, timeout), report, force=force) as go:
        if not go:
            yield None
            return
        cache.flush()
        yield Run(cache, operation, report, progress), deadline
    cache.flush()


def _clean_all(run: Run, deadline: float, force: bool) -> None:
    """Everything under ``buckets/``, including names no safecache would
    make, and the trash of a killed ``clean``; every counter is forgotten."""
    dirs: list[Dir] = []
    names: list[str] = []
    for entry in run.listdir(_layout.buckets_dir(run.root)):
        if not is_dir(entry):
            run.remove(entry.path)
            continue
        names.append(entry.path)
        for child in run.listdir(entry.path):
            if is_dir(child):
                dirs.append(Dir(run.root, entry.name, child.name))
            else:
                run.remove(child.path)
    for b in dirs:
        remove_version(run, b, deadline=deadline, force=force)
    for path in names:
        _rmdir_quietly(path)
    for entry in run.listdir(run.root):
        if _layout.is_trash(entry.name) and is_dir(entry):
            purge(run, entry.path, None)
    _forget(run, drop_all=True)


def _clean_some(run: Run, buckets: list[str], deadline: float, force: bool) -> None:
    """The named bucket versions; their counters are forgotten."""
    dirs = bucket_dirs(run, buckets)
    for b in dirs:
        remove_version(run, b, deadline=deadline, force=force)
    for path in sorted({os.path.dirname(b.path) for b in dirs}):
        _rmdir_quietly(path)
    _forget(run, drop=[b.label for b in dirs])


def _forget(run: Run, *, drop: list[str] | None = None, drop_all: bool = False) -> None:
    try:
        _stats.rebase(run.root, {}, full=False, drop=drop or (), drop_all=drop_all)
    except OSError as exc:
        _policy.logger().info("safecache: clean: could not reset the counters: %s", exc)


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
    builder may be creating a staging tree in it right now.
    """
    trash = new_trash(run)
    if trash is None:
        return
    children = run.listdir(b.path, b.label)
    children.sort(key=lambda e: (e.name != _layout.TREES, e.name))
    objects_dir: str | None = None
    for entry in children:
        if entry.name == _layout.TREE_OBJECTS and is_dir(entry):
            objects_dir = entry.path
            continue
        if run.rename(entry.path, os.path.join(trash, entry.name), b.label) is None and is_dir(entry):
            # Could not move it (Windows: a file inside is open without
            # share-delete); delete what can be deleted in place.
            if _layout.is_shard(entry.name):
                empty_shard(run, entry.path, b.label)
                _rmdir_quietly(entry.path)
            else:
                run.rmtree(entry.path, b.label)
    if objects_dir is not None:
        _move_objects(run, b, objects_dir, trash, deadline=deadline, force=force)
        _rmdir_quietly(objects_dir)
    purge(run, trash, b.label)
    _rmdir_quietly(b.path)


def _move_objects(run: Run, b: Dir, objects_dir: str, trash: str, *, deadline: float | None, force: bool) -> None:
    """Move the tree objects into the trash, each under its exclusive lock;
    held ones, and a live builder's staging trees, stay."""
    moved_objects = _layout.tree_objects_dir(trash)
    made = False
    for entry in run.listdir(objects_dir, b.label):
        name = entry.name
        if not is_dir(entry):
            run.remove(entry.path, b.label)
            continue
        tree_id = _layout.tree_id_of(name)
        go, lock = _may_move(run, b, entry, deadline=deadline, force=force)
        if not go:
            continue
        moved: bool | None = None
        try:
            if not made:
                try:
                    _osops.current.mkdir(moved_objects, 0o700)
                except FileExistsError:
                    pass
                made = True
            moved = run.rename(entry.path, os.path.join(moved_objects, name), b.label)
        except OSError as exc:
            run.failed(exc, moved_objects, b.label)
        finally:
            if lock is not None:
                lock.release()
        if moved is not None and (_layout.is_tree_id(name) or _layout.is_staging(name)):
            discard_lock(b.object_lock(tree_id))  # its tree is gone for good


def _may_move(
    run: Run, b: Dir, entry: os.DirEntry[str], *, deadline: float | None, force: bool
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
        newest, _size = run.survey(entry.path)
        if not run.old(newest) or staging_in_use(b, tree_id):
            return False, None  # a live builder's
    return True, None


def _rmdir_quietly(path: str) -> None:
    """Remove a directory if it is empty (a writer may be filling it again)."""
    try:
        _osops.current.rmdir(path)
    except OSError:
        pass

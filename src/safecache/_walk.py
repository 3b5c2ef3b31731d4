"""Maintenance, the part every operation shares: one run (its report, the
error policy, progress), the directories it walks and the bucket
directories it visits.

docs/maintenance.md is the user's description; this is the implementer's.
The operations live in ``_trim`` (with ``_trimmer``, the walk ``trim`` and
``prune`` share), ``_prune`` (``prune``, ``clean``), ``_verify`` and
``_info``; ``_examine`` reaches directories (``Folder``) and reads what a
walk finds, ``_reclaim`` removes trees and trash.  :mod:`safecache.maintenance`
is their public face.

Every operation is safe while other processes use the cache: they keep
working and at worst see misses.  That rests on four rules.

* **Entries** are removed with a plain unlink.  On POSIX a process that has
  the file open keeps reading it; on Windows safecache's readers open entries
  with ``FILE_SHARE_DELETE``, which allows the same.  A writer's temp file is
  never touched while it is younger than :data:`LEFTOVER_AGE`.
* **Trees** are removed only under their exclusive lock, taken without
  waiting (``trim``) or with a bounded wait (``prune``, ``clean``); every
  process placing or holding a tree has that lock shared, so a held tree is
  left and counted in ``Report.kept_in_use``.  ``_tree.remove_tree`` is the
  protocol; ``force=True`` removes held trees too (see ``_prune.prune``).
* **Nothing is followed.**  A walk reaches every directory as a
  :class:`~._examine.Folder`: on POSIX opened with ``O_NOFOLLOW | O_DIRECTORY``
  relative to its parent's descriptor, and everything in it (listing,
  ``lstat``, reading, unlinking, renaming, removing subtrees) is done
  relative to that descriptor, as ``shutil.rmtree`` does.  A directory
  swapped for a symlink between its listing and its use (another user who
  can write ``buckets/`` in a shared cache) is never entered, and nothing
  outside the cache is touched however late the swap.  Windows has no
  ``dir_fd``: there a Folder is a path whose identity (device, inode) is
  checked before each use, which narrows that window without closing it.
* **Lock files are never deleted while they may be in use.**  The only lock
  files removed are those of tree objects that no longer exist: tree ids are
  random and never reused, so a process that later opens such a lock finds
  its tree gone whichever inode it locks.

The error policy is the cache's: ENOENT is "already gone" (another process
cleaned first); "in use" errors that outlast a short retry leave the file for
the next run; anything else is ``cache._failed(...)``: a logged warning in
lenient mode, the typed error in strict mode (:meth:`Run.failed`).
"""

from __future__ import annotations

import contextlib
import os
import stat as _stat
import time

from . import _errcodes, _fs, _layout, _policy
from ._errors import CacheReadOnlyError
from ._examine import REMOVE_BUDGET, Entry, Folder, listing
from ._location import DISABLED, READY

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: Cache.close() imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from ._cache import Cache

    Progress = Callable[[int, "int | None"], None]

#: Temp files, staging trees, unreferenced tree objects and abandoned trash
#: younger than this are left alone: a live writer's are younger (ccache's
#: ``clean_dir`` uses the same hour for its temp files; a tree commit renames
#: its object into place milliseconds before publishing its pointer).
LEFTOVER_AGE = 3600.0

clock = time.time  # the clock (tests may replace it)


class Report:
    """What a maintenance operation did; ``as_dict()`` is JSON-serialisable.

    ``removed_entries``: entry files removed; ``removed_trees``: trees
    (pointer and directory, or an unreferenced directory); ``removed_temp``:
    leftovers (temp files, staging trees, half-removed trees, trash);
    ``freed_bytes``: their sizes (file sizes, not blocks); ``kept_in_use``:
    trees left because a process held them; ``problems`` (``verify``): one
    dict per problem, ``{"bucket": "name/vN" (or "" for the counters),
    "path": path relative to the root, "kind": "entry"|"tree"|"counter",
    "reason": str, "repaired": bool, "remedy": str}``; ``skipped_reason``:
    why the operation did nothing (another process is trimming, the cache is
    read-only...), else ``""``.
    """

    __slots__ = (  # noqa: RUF023 - the order of as_dict()
        "removed_entries",
        "removed_trees",
        "removed_temp",
        "freed_bytes",
        "kept_in_use",
        "problems",
        "skipped_reason",
    )

    def __init__(self) -> None:
        self.removed_entries = 0
        self.removed_trees = 0
        self.removed_temp = 0
        self.freed_bytes = 0
        self.kept_in_use = 0
        self.problems: list[dict[str, object]] = []
        self.skipped_reason = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {name: getattr(self, name) for name in self.__slots__}
        out["problems"] = [dict(p) for p in self.problems]
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__ if name != "problems")
        return f"Report({fields}, problems={len(self.problems)})"


# -- what a walk visits ---------------------------------------------------------------
class Dir:
    """One bucket version directory and what a walk learned about it."""

    def __init__(self, root: str, name: str, vdir: str) -> None:
        self.name = name
        self.vdir = vdir
        self.label = _layout.dir_label(name, vdir)
        self.path = _layout.bucket_dir(root, name, vdir)
        self.locks = _layout.bucket_locks_dir(root, name, vdir)
        #: Where it is, and its locks, from the root, one name at a time.
        self.parts = (_layout.BUCKETS, name, vdir)
        self.lock_parts = (_layout.LOCKS, name, vdir)
        self.shards: list[str] = []
        self.tree_shards: list[str] = []
        self.size = 0
        self.entries = 0
        self.units: list[TreeUnit] = []
        self.referenced: set[str] = set()
        self.pointers: set[str] = set()
        self.unknown_refs = False

    @property
    def version(self) -> int:
        """The version number; only for directories :func:`bucket_dirs` found
        (``clean`` also removes directories whose names are no version)."""
        version = _layout.parse_version_dir(self.vdir)
        assert version is not None, self.vdir
        return version

    def object_lock(self, tree_id: str) -> str:
        return _layout.tree_object_lock(self.locks, tree_id)


class TreeUnit:
    """A tree as the trimmer counts it: one unit, used when its pointer was."""

    __slots__ = ("mtime", "pointer", "size", "tree_id")

    def __init__(self, pointer: str, tree_id: str, mtime: float, size: int) -> None:
        self.pointer = pointer
        self.tree_id = tree_id
        self.mtime = mtime
        self.size = size


# -- one run ----------------------------------------------------------------------------
class Run:
    """State shared by one operation: the cache, the report, the error
    policy, progress."""

    def __init__(self, cache: Cache, operation: str, report: Report, progress: Progress | None) -> None:
        assert cache.path is not None
        self.cache = cache
        self.root = cache.path
        self.op = operation
        self.report = report
        self.progress = progress
        self.now = clock()
        self.done = 0
        self.total: int | None = None

    # -- policy ----------------------------------------------------------------
    def failed(self, exc: OSError, path: str, label: str | None = None) -> None:
        """Apply the error policy to ``exc`` on ``path``.

        A vanished file or directory is not a failure: another process
        removed it first (a directory that became something else, a symlink
        swapped in, counts as vanished: it is not the cache's).  A file
        still "in use" after the short retry is left for the next run.
        Anything else is the cache's error policy: a warning once per cause
        (lenient) or the typed error (strict).
        """
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            return
        if getattr(exc, "_safecache_exhausted", None) or _errcodes.is_transient(exc, "unlink"):
            _policy.logger().info("safecache: %s: %s is in use, left for the next run: %s", self.op, path, exc)
            return
        cause = self.cache._failed(self.op, exc, path)
        if label is not None:
            try:
                name, version = _layout.parse_label(label)
                if version is not None:
                    self.cache.bucket(name, version).counters.error(cause)
            except (ValueError, TypeError):
                pass

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    # -- directories -----------------------------------------------------------
    def folder(self, names: Iterable[str] = (), label: str | None = None) -> Folder | None:
        """The directory reached from the root through ``names``, one at a
        time; None if it is not there (or not a directory) or failed."""
        path = self.root
        try:
            folder = Folder.open(path)
        except OSError as exc:
            self.failed(exc, path, label)
            return None
        for name in names:
            inner = self.enter(folder, name, label)
            folder.close()
            if inner is None:
                return None
            folder = inner
        return folder

    @contextlib.contextmanager
    def opened(self, names: Iterable[str] = (), label: str | None = None) -> Iterator[Folder | None]:
        """:meth:`folder` for a ``with`` block, closed at its end."""
        folder = self.folder(names, label)
        try:
            yield folder
        finally:
            if folder is not None:
                folder.close()

    def enter(self, folder: Folder, name: str, label: str | None = None) -> Folder | None:
        """The subdirectory ``name`` of ``folder``; None if it is not there,
        is not a real directory (a symlink is never entered), or failed."""
        try:
            return folder.child(name)
        except OSError as exc:
            self.failed(exc, folder.join(name), label)
            return None

    def scan(self, folder: Folder, label: str | None = None) -> list[Entry]:
        """The entries of ``folder``; [] if it is gone or failed."""
        try:
            return folder.scan()
        except OSError as exc:
            self.failed(exc, folder.path, label)
            return []

    def lstat(self, entry: Entry, label: str | None = None) -> os.stat_result | None:
        try:
            return entry.stat()
        except OSError as exc:
            self.failed(exc, entry.path, label)
            return None

    # -- removing --------------------------------------------------------------
    def remove(self, folder: Folder, name: str, label: str | None = None, *, same_as: os.stat_result | None = None) -> bool:
        """Unlink ``name`` in ``folder``; True if this call removed it.  With
        ``same_as``, only if it is still that file (another process may have
        put a good one in its place since it was judged)."""
        try:
            return folder.unlink(name, budget=REMOVE_BUDGET, same_as=same_as)
        except OSError as exc:
            self.failed(exc, folder.join(name), label)
            return False

    def rmtree(self, folder: Folder, name: str, label: str | None = None) -> bool:
        """Remove the tree ``name`` in ``folder`` (never following symlinks); True if it is gone."""
        try:
            folder.rmtree(name, budget=REMOVE_BUDGET)
            return True
        except OSError as exc:
            self.failed(exc, folder.join(name), label)
            return not present(folder, name)

    def rmdir(self, folder: Folder, name: str) -> None:
        """Remove the directory ``name`` if it is empty (a writer may be filling it again)."""
        try:
            folder.rmdir(name)
        except OSError:
            pass

    def move(self, folder: Folder, name: str, dest: Folder, new_name: str, label: str | None = None) -> bool | None:
        """Rename into ``dest``; True if done, False if ``name`` was gone, None if it failed."""
        try:
            folder.move(name, dest, new_name, budget=REMOVE_BUDGET)
            return True
        except FileNotFoundError:
            return False if not present(folder, name) else None
        except OSError as exc:
            self.failed(exc, folder.join(name), label)
            return None

    def survey(self, folder: Folder, name: str) -> tuple[float, int]:
        """Newest mtime and total file size of the tree ``name`` in
        ``folder`` (symlinks not followed; unreadable parts skipped).
        Depth first: one open directory per level."""
        newest = 0.0
        size = 0
        try:
            newest = folder.lstat(name).st_mtime
            stack: list[tuple[Folder, list[Entry]]] = [(folder.child(name), [])]
        except OSError:
            return newest, size
        stack[0][1].extend(listing(stack[0][0]))
        try:
            while stack:
                directory, entries = stack[-1]
                if not entries:
                    stack.pop()[0].close()
                    continue
                entry = entries.pop()
                try:
                    st = entry.stat()
                except OSError:
                    continue
                newest = max(newest, st.st_mtime)
                if not _stat.S_ISDIR(st.st_mode):
                    size += st.st_size
                    continue
                try:
                    inner = directory.child(entry.name)
                except OSError:
                    continue
                stack.append((inner, listing(inner)))
        finally:
            for directory, _entries in stack:
                directory.close()
        return newest, size

    def old(self, mtime: float) -> bool:
        return self.now - mtime > LEFTOVER_AGE


def writable(cache: Cache, operation: str, report: Report) -> str | None:
    """The root, if ``operation`` may write to it; else None with the reason
    in the report (strict mode raises for a read-only cache)."""
    if cache.path is None or cache.state == DISABLED:
        report.skipped_reason = "the cache is disabled" + (f": {cache.state_reason}" if cache.state_reason else "")
        return None
    if cache.state != READY:
        if cache.strict:
            raise CacheReadOnlyError(
                f"cannot {operation}: {cache.state_reason}", filename=cache.path, operation=operation
            )
        report.skipped_reason = f"the cache is read-only: {cache.state_reason}"
        return None
    try:
        present = _fs.exists(_layout.buckets_dir(cache.path))
    except OSError as exc:
        cache._failed(operation, exc, cache.path)
        report.skipped_reason = f"the cache cannot be examined: {exc}"
        return None
    if not present:
        return None  # nothing stored yet: nothing to do
    return cache.path


# -- bucket directories ---------------------------------------------------------------
def bucket_dirs(run: Run, select: Iterable[str] | None = None) -> list[Dir]:
    """Bucket version directories on disk (valid names, ``v<N>``), sorted;
    only those ``select`` names (``name`` or ``name/vN``) when given."""
    wanted = None if select is None else _selection(select)
    out: list[Dir] = []
    with run.opened((_layout.BUCKETS,)) as buckets:
        if buckets is None:
            return out
        for entry in sorted(run.scan(buckets), key=lambda e: e.name):
            if not (_layout.valid_bucket_name(entry.name) and entry.is_dir()):
                continue
            if wanted is not None and entry.name not in wanted:
                continue
            only = wanted.get(entry.name) if wanted is not None else None
            for version in _versions(run, buckets, entry.name):
                if only is None or version in only:
                    out.append(Dir(run.root, entry.name, _layout.version_dir(version)))
    return out


def _selection(select: Iterable[str]) -> dict[str, set[int] | None]:
    """Bucket name -> the versions ``select`` names (None: every version)."""
    wanted: dict[str, set[int] | None] = {}
    for spec in select:
        name, version = _layout.parse_label(spec)
        if version is None:
            wanted[name] = None  # every version
        elif name not in wanted:
            wanted[name] = {version}
        else:
            versions = wanted[name]
            if versions is not None:
                versions.add(version)
    return wanted


def _versions(run: Run, buckets: Folder, name: str) -> list[int]:
    """The versions of a bucket directory, sorted: exactly the directories
    Bucket names ("v" and the decimal version, no leading zeros, so no two
    directories mean one version)."""
    found: list[int] = []
    bucket = run.enter(buckets, name)
    if bucket is None:
        return found
    with bucket:
        for child in run.scan(bucket):
            version = _layout.parse_version_dir(child.name)
            if version is not None and child.is_dir():
                found.append(version)
    return sorted(found)


def plan(run: Run, b: Dir) -> None:
    """List a bucket directory's shards (real directories only)."""
    with run.opened(b.parts, b.label) as vf:
        if vf is None:
            return
        b.shards = shards(run, vf, b.label)
        trees = run.enter(vf, _layout.TREES, b.label)
        if trees is not None:
            with trees:
                b.tree_shards = shards(run, trees, b.label)


def walk_shards(run: Run, b: Dir, vf: Folder, *, trees: bool = False) -> Iterator[tuple[str, Folder, Entry]]:
    """``(shard, its folder, entry)`` for every name in ``b``'s entry shards
    (``trees``: its pointer shards) as :func:`plan` listed them, shard by
    shard, in the bucket version folder ``vf``; each entry is valid during
    its iteration.  Progress ticks after each shard."""
    names = b.tree_shards if trees else b.shards
    top = run.enter(vf, _layout.TREES, b.label) if trees and names else vf
    try:
        for xx in names:
            shard = run.enter(top, xx, b.label) if top is not None else None
            if shard is not None:
                with shard:
                    for entry in run.scan(shard, b.label):
                        yield xx, shard, entry
            run.tick()
    finally:
        if top is not None and top is not vf:
            top.close()


def shards(run: Run, folder: Folder, label: str) -> list[str]:
    """The fan-out directories in ``folder`` (real directories only), sorted."""
    return sorted(entry.name for entry in run.scan(folder, label) if _layout.is_shard(entry.name) and entry.is_dir())


def present(folder: Folder, name: str) -> bool:
    """Whether ``name`` exists in ``folder``; True when that cannot be told
    (so nothing is removed, and nothing counted as gone, on a guess)."""
    try:
        folder.lstat(name)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True

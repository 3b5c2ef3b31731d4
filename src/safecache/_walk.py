"""Maintenance, the part every operation shares: one run (its report, the
error policy, progress) and the bucket directories it visits.

docs/maintenance.md is the user's description; this is the implementer's.
The operations live in ``_trim`` (with ``_trimmer``, the walk ``trim`` and
``prune`` share), ``_prune`` (``prune``, ``clean``), ``_verify`` and
``_info``; ``_examine`` reads what a walk finds, ``_reclaim`` removes trees
and trash.  :mod:`safecache.maintenance`
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
  left and counted in ``Report.kept_in_use``.  The pointer goes first (new
  readers miss), then the directory is renamed to ``<id>.del-<r>`` under the
  lock and deleted after the lock is released.  ``force=True`` removes held
  trees too (see ``_prune.prune``).
* **Nothing is followed.**  Directories are entered only after ``lstat``
  says they are real directories, and removal goes through :func:`_fs.rmtree`,
  which never follows symlinks and copes with read-only files.
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

import os
import stat as _stat
import time

from . import _errcodes, _fs, _layout, _osops, _policy
from ._errors import CacheReadOnlyError
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
#: Removing one file retries "in use" errors this long, then leaves it for
#: the next run (a bulk operation must not spend 2 s on every busy file).
REMOVE_BUDGET = 0.1

clock = time.time  # the clock (tests may replace it)


class Report:
    """What a maintenance operation did; ``as_dict()`` is JSON-serialisable.

    ``removed_entries``: entry files removed; ``removed_trees``: trees
    (pointer and directory, or an unreferenced directory); ``removed_temp``:
    leftovers (temp files, staging trees, half-removed trees, trash);
    ``freed_bytes``: their sizes (file sizes, not blocks); ``kept_in_use``:
    trees left because a process held them; ``problems`` (``verify``): one
    dict per problem, ``{"bucket": "name/vN", "path": path relative to the
    root, "kind": "entry"|"tree", "reason": str, "repaired": bool}``;
    ``skipped_reason``: why the operation did nothing (another process is
    trimming, the cache is read-only...), else ``""``.
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
        removed it first.  A file still "in use" after the short retry is
        left for the next run.  Anything else is the cache's error policy:
        a warning once per cause (lenient) or the typed error (strict).
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

    # -- file system -----------------------------------------------------------
    def listdir(self, path: str, label: str | None = None) -> list[os.DirEntry[str]]:
        """The entries of directory ``path``; [] if it is gone or failed."""
        try:
            with _osops.current.scandir(path) as it:
                return list(it)
        except OSError as exc:
            self.failed(exc, path, label)
            return []

    def lstat(self, entry: os.DirEntry[str], label: str | None = None) -> os.stat_result | None:
        try:
            return entry.stat(follow_symlinks=False)
        except OSError as exc:
            self.failed(exc, entry.path, label)
            return None

    def remove(self, path: str, label: str | None = None, *, same_as: os.stat_result | None = None) -> bool:
        """Unlink ``path``; True if this call removed it.  With ``same_as``,
        only if ``path`` is still that file (another process may have put a
        good one in its place since it was judged)."""
        try:
            if same_as is not None:
                return _fs.remove_if_same(path, same_as, budget=REMOVE_BUDGET)
            return _fs.remove(path, budget=REMOVE_BUDGET)
        except OSError as exc:
            self.failed(exc, path, label)
            return False

    def rmtree(self, path: str, label: str | None = None) -> bool:
        """Remove directory ``path`` (never following symlinks); True if it is gone."""
        try:
            _fs.rmtree(path, budget=REMOVE_BUDGET)
            return True
        except OSError as exc:
            self.failed(exc, path, label)
            return not present(path)

    def rename(self, src: str, dst: str, label: str | None = None) -> bool | None:
        """Rename; True if done, False if ``src`` was gone, None if it failed."""
        try:
            _fs.retry("rename", _osops.current.rename, src, dst, budget=REMOVE_BUDGET)
            return True
        except FileNotFoundError:
            return False if not present(src) else None
        except OSError as exc:
            self.failed(exc, src, label)
            return None

    def survey(self, path: str) -> tuple[float, int]:
        """Newest mtime and total file size under directory ``path``
        (symlinks not followed; unreadable parts skipped)."""
        ops = _osops.current
        newest = 0.0
        size = 0
        pending = [path]
        try:
            newest = ops.lstat(path).st_mtime
        except OSError:
            return newest, size
        while pending:
            directory = pending.pop()
            try:
                with ops.scandir(directory) as it:
                    children = list(it)
            except OSError:
                continue
            for child in children:
                try:
                    st = child.stat(follow_symlinks=False)
                except OSError:
                    continue
                newest = max(newest, st.st_mtime)
                if _stat.S_ISDIR(st.st_mode):
                    pending.append(child.path)
                else:
                    size += st.st_size
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
    for entry in sorted(run.listdir(_layout.buckets_dir(run.root)), key=lambda e: e.name):
        if not (_layout.valid_bucket_name(entry.name) and is_dir(entry)):
            continue
        if wanted is not None and entry.name not in wanted:
            continue
        only = wanted.get(entry.name) if wanted is not None else None
        for version in _versions(run, entry):
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


def _versions(run: Run, bucket: os.DirEntry[str]) -> list[int]:
    """The versions of a bucket directory, sorted: exactly the directories
    Bucket names ("v" and the decimal version, no leading zeros, so no two
    directories mean one version)."""
    found: list[int] = []
    for child in run.listdir(bucket.path):
        version = _layout.parse_version_dir(child.name)
        if version is not None and is_dir(child):
            found.append(version)
    return sorted(found)


def plan(run: Run, b: Dir) -> None:
    """List a bucket directory's shards (real directories only)."""
    b.shards = shards(run, b.path, b.label)
    b.tree_shards = shards(run, _layout.trees_dir(b.path), b.label)


def walk_shards(run: Run, b: Dir, *, trees: bool = False) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``(shard, entry)`` for every name in ``b``'s entry shards (``trees``:
    its pointer shards) as :func:`plan` listed them, shard by shard; progress
    ticks after each shard."""
    top = _layout.trees_dir(b.path) if trees else b.path
    for xx in b.tree_shards if trees else b.shards:
        for entry in run.listdir(os.path.join(top, xx), b.label):
            yield xx, entry
        run.tick()


def shards(run: Run, path: str, label: str) -> list[str]:
    """The fan-out directories in ``path`` (real directories only), sorted."""
    return sorted(entry.name for entry in run.listdir(path, label) if _layout.is_shard(entry.name) and is_dir(entry))


def is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def present(path: str) -> bool:
    """Whether ``path`` exists; True when that cannot be told (so nothing
    is removed, and nothing counted as gone, on a guess)."""
    try:
        _osops.current.lstat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True

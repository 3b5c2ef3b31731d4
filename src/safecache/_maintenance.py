"""Maintenance: ``info``, ``trim``, ``prune``, ``clean``, ``verify``.

docs/maintenance.md is the user's description; this is the implementer's.

Every operation here is safe while other processes use the cache: they keep
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
  trees too (see :func:`prune`).
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
lenient mode, the typed error in strict mode.

Trim is Go's ``Trim`` (at most once per interval, a stamp file, an age
limit) with ccache's size limit (trim to 90 %) and ccache's rule that one
process trims at a time and the others do not wait.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as _stat
import time

from . import _format, _fs, _layout, _locks, _osops, _policy, _stats
from ._errors import CacheReadOnlyError, LockTimeoutError
from ._format import Invalid
from ._location import DISABLED, READY

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: Cache.close() imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from ._cache import Cache
    from ._trees import Manifest

    Progress = Callable[[int, "int | None"], None]

#: Temp files, staging trees, unreferenced tree objects and abandoned trash
#: younger than this are left alone: a live writer's are younger (ccache's
#: ``clean_dir`` uses the same hour for its temp files; a tree commit renames
#: its object into place milliseconds before publishing its pointer).
LEFTOVER_AGE = 3600.0
#: A trim for size goes down to this share of the limit (ccache), so a full
#: cache is not trimmed again by the very next write.
TRIM_TO = 0.9
#: ``<root>/stats/trim`` holds the Unix time of the last completed trim (Go's
#: ``trim.txt``); ``<root>/locks/trim.lock`` admits one trimmer at a time.
TRIM_STAMP = "trim"
TRIM_LOCK = "trim.lock"
#: ``clean`` moves what it removes to ``<root>/.trash-<pid>-<random>`` first.
TRASH_PREFIX = ".trash-"
#: A stamp more than this far in the future is a clock that jumped: trim.
_FUTURE_SLACK = 3600.0
#: Over its size limit, the cache is trimmed again at most this often: if a
#: trim could not get under the limit (trees in use, files that cannot be
#: removed), the next processes to close must not each walk it again.
OVER_LIMIT_SPACING = 60.0
#: Removing one file retries "in use" errors this long, then leaves it for
#: the next run (a bulk operation must not spend 2 s on every busy file).
_REMOVE_BUDGET = 0.1
#: The LRU histogram keeps at most this many time slots (see _Histogram).
_HIST_SLOTS = 1 << 16
_BLOCK = 1 << 16

_now = time.time  # the clock (tests may replace it)


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


# -- names -------------------------------------------------------------------------
_HEXDIGITS = "0123456789abcdef"


def _is_hex(name: str, n: int) -> bool:
    # strip() stops at the first character that is not a hex digit, so
    # anything but n hex digits leaves something behind.
    return len(name) == n and not name.strip(_HEXDIGITS)


def _is_staging(name: str) -> bool:
    return name.endswith(".tmp") and _is_hex(name[:-4], 32)


def _is_doomed(name: str) -> bool:
    return len(name) > 37 and name[32:37] == ".del-" and _is_hex(name[:32], 32)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _parse_label(spec: str) -> tuple[str, int | None]:
    """``"lint"`` -> ("lint", None); ``"lint/v3"`` -> ("lint", 3).  ValueError
    for anything else (a programming error, raised in both modes)."""
    from ._layout import valid_bucket_name

    name, _, version = spec.partition("/")
    if not valid_bucket_name(name):
        raise ValueError(f"invalid bucket {spec!r}: expected a bucket name or name/vN")
    if not version:
        return name, None
    digits = version[1:]
    if not (version.startswith("v") and digits.isascii() and digits.isdigit() and len(digits) <= 10 and int(digits) < 2**31):
        raise ValueError(f"invalid bucket {spec!r}: expected a bucket name or name/vN")
    return name, int(digits)


# -- one run -----------------------------------------------------------------------
class _Dir:
    """One bucket version directory and what a walk learned about it."""

    def __init__(self, root: str, name: str, version_dir: str) -> None:
        from ._layout import BUCKETS as BUCKETS_DIR, LOCKS as LOCKS_DIR

        self.name = name
        self.vdir = version_dir
        self.label = f"{name}/{version_dir}"
        self.path = os.path.join(root, BUCKETS_DIR, name, version_dir)
        self.locks = os.path.join(root, LOCKS_DIR, name, version_dir)
        self.shards: list[str] = []
        self.tree_shards: list[str] = []
        self.size = 0
        self.entries = 0
        self.units: list[_TreeUnit] = []
        self.referenced: set[str] = set()
        self.pointers: set[str] = set()
        self.unknown_refs = False

    def object_lock(self, tree_id: str) -> str:
        return os.path.join(self.locks, "tree-objects", tree_id + ".lock")


class _TreeUnit:
    __slots__ = ("mtime", "pointer", "size", "tree_id")

    def __init__(self, pointer: str, tree_id: str, mtime: float, size: int) -> None:
        self.pointer = pointer
        self.tree_id = tree_id
        self.mtime = mtime
        self.size = size


class _Run:
    """State shared by one operation: the cache, the report, the error
    policy, progress."""

    def __init__(self, cache: Cache, operation: str, report: Report, progress: Progress | None) -> None:
        assert cache.path is not None
        self.cache = cache
        self.root = cache.path
        self.op = operation
        self.report = report
        self.progress = progress
        self.now = _now()
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
        if getattr(exc, "_safecache_exhausted", None) or _policy.is_transient(exc, "unlink"):
            _policy.logger().info("safecache: %s: %s is in use, left for the next run: %s", self.op, path, exc)
            return
        cause = self.cache._failed(self.op, exc, path)
        if label is not None:
            name, _, version = label.partition("/v")
            try:
                self.cache.bucket(name, int(version)).counters.error(cause)
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

    def remove(self, path: str, label: str | None = None) -> bool:
        """Unlink ``path``; True if this call removed it."""
        try:
            return _fs.remove(path, budget=_REMOVE_BUDGET)
        except OSError as exc:
            self.failed(exc, path, label)
            return False

    def rmtree(self, path: str, label: str | None = None) -> bool:
        """Remove directory ``path`` (never following symlinks); True if it is gone."""
        try:
            _fs.rmtree(path, budget=_REMOVE_BUDGET)
            return True
        except OSError as exc:
            self.failed(exc, path, label)
            return not _present(path)

    def rename(self, src: str, dst: str, label: str | None = None) -> bool | None:
        """Rename; True if done, False if ``src`` was gone, None if it failed."""
        try:
            _fs.retry("rename", _osops.current.rename, src, dst, budget=_REMOVE_BUDGET)
            return True
        except FileNotFoundError:
            return False if not _present(src) else None
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


def _bucket_dirs(run: _Run, select: Iterable[str] | None = None) -> list[_Dir]:
    """Bucket version directories on disk (valid names, ``v<N>``), sorted;
    only those ``select`` names (``name`` or ``name/vN``) when given."""
    from ._layout import BUCKETS as BUCKETS_DIR, valid_bucket_name

    wanted: dict[str, set[int] | None] | None = None
    if select is not None:
        wanted = {}
        for spec in select:
            name, version = _parse_label(spec)
            if version is None:
                wanted[name] = None  # every version
            elif name not in wanted:
                wanted[name] = {version}
            else:
                versions = wanted[name]
                if versions is not None:
                    versions.add(version)
    out: list[_Dir] = []
    top = os.path.join(run.root, BUCKETS_DIR)
    for entry in sorted(run.listdir(top), key=lambda e: e.name):
        if not (valid_bucket_name(entry.name) and _is_dir(entry)):
            continue
        if wanted is not None and entry.name not in wanted:
            continue
        found: list[int] = []
        for child in run.listdir(entry.path):
            v = child.name
            # Exactly what Bucket names: "v" and the decimal version, no
            # leading zeros (so no two directories mean one version).
            if v[1:].isascii() and v[1:].isdigit() and v == f"v{int(v[1:])}" and int(v[1:]) < 2**31 and _is_dir(child):
                found.append(int(v[1:]))
        only = wanted.get(entry.name) if wanted is not None else None
        for version in sorted(found):
            if only is None or version in only:
                out.append(_Dir(run.root, entry.name, f"v{version}"))
    return out


def _plan(run: _Run, b: _Dir) -> None:
    """List a bucket directory's shards (real directories only)."""
    for entry in run.listdir(b.path, b.label):
        if _is_hex(entry.name, 2) and _is_dir(entry):
            b.shards.append(entry.name)
    b.shards.sort()
    for entry in run.listdir(os.path.join(b.path, "trees"), b.label):
        if _is_hex(entry.name, 2) and _is_dir(entry):
            b.tree_shards.append(entry.name)
    b.tree_shards.sort()


# -- reading entries ---------------------------------------------------------------------
def _load(
    path: str,
    digest: str,
    *,
    payload: bool,
    exact_version: bool = False,
    opened_as: list[os.stat_result] | None = None,
) -> tuple[_format.Header, bytes | None, os.stat_result] | None:
    """Read and fully validate the entry at ``path`` (as ``get`` does:
    length, both CRCs, key); return ``(header, payload or None, fstat)``,
    None if it is gone.  Raises :class:`Invalid` or ``OSError``.

    ``exact_version``: a version other than 1 whose header CRC does not
    match is reported as ``bad-header`` (a bit flip in the version field),
    not as an entry from a newer safecache.  ``opened_as`` receives the
    file's ``fstat``, so a caller can later remove the very file it judged.
    """
    opened = _fs.read_file(path, budget=_REMOVE_BUDGET)
    if opened is None:
        return None
    fd, block = opened
    ops = _osops.current
    try:
        st = ops.fstat(fd)
        if opened_as is not None:
            opened_as.append(st)
        raw = bytes.fromhex(digest)
        try:
            header, data = _format.read_entry(fd, block, raw, keep=payload, size=st.st_size)
        except Invalid as invalid:
            if (
                exact_version
                and invalid.reason == "unsupported-version"
                and _format.crc32(block[:44]) != int.from_bytes(block[44:48], "little")
            ):
                raise Invalid("bad-header", "header checksum mismatch (damaged version field)") from None
            raise
        return header, data, st
    finally:
        ops.close(fd)


def _kind_of(path: str, digest: str) -> int | None:
    """The kind byte of a valid entry header; None if unreadable or invalid."""
    try:
        opened = _fs.read_file(path, budget=_REMOVE_BUDGET)  # retries "in use" errors
    except OSError:
        return None
    if opened is None:
        return None
    fd, block = opened
    try:
        return _format.parse_header(block, bytes.fromhex(digest)).kind
    except Invalid:
        return None
    finally:
        _osops.current.close(fd)


def _read_pointer(
    path: str, digest: str, opened_as: list[os.stat_result] | None = None
) -> tuple[_format.Header, Manifest, os.stat_result] | None:
    """A tree pointer's header and manifest; None if gone.  Raises
    ``Invalid`` or ``ValueError`` (a pointer no reader would use), ``OSError``."""
    from ._trees import Manifest

    loaded = _load(path, digest, payload=True, opened_as=opened_as)
    if loaded is None:
        return None
    header, payload, st = loaded
    assert payload is not None
    try:
        manifest = Manifest.from_bytes(payload)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad manifest: {exc}") from None
    return header, manifest, st


def _present(path: str) -> bool:
    """Whether ``path`` exists; True when that cannot be told (so nothing
    is removed, and nothing counted as gone, on a guess)."""
    try:
        _osops.current.lstat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def _same_file(path: str, st: os.stat_result) -> bool:
    try:
        now = _osops.current.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


# -- removing trees ---------------------------------------------------------------------------
_NO_LOCKS = frozenset(
    e for e in (errno.ENOLCK, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", None), getattr(errno, "ENOTSUP", None)) if e is not None
)


def _lock_tree(run: _Run, b: _Dir, tree_id: str, *, wait: float, force: bool) -> tuple[str, _locks.FileLock | None]:
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
        if force or exc.errno in _NO_LOCKS:
            _policy.logger().info("safecache: %s: removing tree %s without its lock: %s", run.op, tree_id, exc)
            return "ok", None
        run.failed(exc, lock.path, b.label)
        return "failed", None


def _drop_tree(run: _Run, b: _Dir, tree_id: str, pointer: str | None, *, wait: float, force: bool) -> str:
    """Remove a tree: its pointer (if given), then its directory, under the
    tree's exclusive lock.  Returns ``"removed"``, ``"gone"`` (someone else
    removed it first), ``"held"`` (another process holds it: nothing was
    touched) or ``"failed"``."""
    status, lock = _lock_tree(run, b, tree_id, wait=wait, force=force)
    if status != "ok":
        return status
    obj = os.path.join(b.path, "tree-objects", tree_id)
    doomed = f"{obj}.del-{os.urandom(4).hex()}"
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
    _discard_lock(b.object_lock(tree_id))
    if not moved:
        return "gone"
    run.rmtree(doomed, b.label)  # if this fails, the next trim removes the .del- directory
    return "removed"


def _discard_lock(lock_path: str) -> None:
    """Delete a removed tree's lock file (see the module docstring for why
    this one is safe); best effort: on Windows a holder's handle blocks it."""
    try:
        _osops.current.unlink(lock_path)
    except OSError:
        pass


def _staging_in_use(b: _Dir, tree_id: str) -> bool:
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


# -- the LRU cutoff ---------------------------------------------------------------------------
class _Histogram:
    """Bytes per time slot, to find the least-recently-used cutoff without
    keeping every entry in memory.

    Slots start one second wide; whenever there are more than
    :data:`_HIST_SLOTS` of them, they are merged four to one.  Memory is
    therefore bounded (a few MB) whatever the cache holds, and the order is
    exact LRU up to the slot width (one second for caches whose entries
    were used in fewer than 65,536 distinct seconds, coarser beyond).
    """

    def __init__(self) -> None:
        self.width = 1
        self.slots: dict[int, int] = {}
        self.total = 0

    def slot(self, mtime: float) -> int:
        return int(mtime // self.width)

    def add(self, mtime: float, size: int) -> None:
        key = self.slot(mtime)
        self.slots[key] = self.slots.get(key, 0) + size
        self.total += size
        if len(self.slots) > _HIST_SLOTS:
            merged: dict[int, int] = {}
            for key, value in self.slots.items():
                merged[key // 4] = merged.get(key // 4, 0) + value
            self.slots = merged
            self.width *= 4

    def cutoff(self, need: int) -> tuple[int, int]:
        """``(T, before)``: removing everything in slots below ``T`` frees
        ``before`` < ``need`` bytes, and removing slot ``T`` too frees at
        least ``need`` (``T`` is the newest slot when even everything is not
        enough)."""
        before = 0
        last = 0
        for key in sorted(self.slots):
            last = key
            if before + self.slots[key] >= need:
                return key, before
            before += self.slots[key]
        return last, before - self.slots.get(last, 0)


# -- trimming -----------------------------------------------------------------------------------
class _Trimmer:
    """The walk shared by ``trim`` and ``prune``.

    Pass 1 visits every shard of every bucket once: it removes leftovers,
    entries and trees past ``max_age`` and (``ci``) everything fetched, and
    records what stays in a histogram of use times.  If the cache is then
    over ``max_size``, pass 2 walks again and removes, oldest first, until
    the cache is under ``TRIM_TO`` of the limit; it re-reads each mtime, so
    an entry used while the trim ran survives.
    """

    def __init__(
        self,
        run: _Run,
        *,
        max_age: float | None,
        max_size: int | None,
        ci: bool = False,
        deadline: float | None = None,
        force: bool = False,
    ) -> None:
        self.run = run
        self.max_age = max_age
        self.max_size = max_size
        self.ci = ci
        self.deadline = deadline
        self.force = force
        self.hist = _Histogram()
        self.kept: set[tuple[str, str]] = set()

    def wait(self) -> float:
        if self.deadline is None or self.force:
            return 0.0
        return max(0.0, self.deadline - time.monotonic())

    def expired(self, mtime: float) -> bool:
        return self.max_age is not None and self.run.now - mtime > self.max_age

    def trim(self, dirs: list[_Dir]) -> None:
        run = self.run
        for b in dirs:
            _plan(run, b)
        run.total = sum(len(b.shards) + len(b.tree_shards) + 1 for b in dirs) + 1
        for b in dirs:
            self.pass1(b)
        self.root_leftovers()
        total = sum(b.size for b in dirs)
        if self.max_size is None or total <= self.max_size or not self.hist.slots:
            return
        need = total - int(self.max_size * TRIM_TO)
        cutoff, before = self.hist.cutoff(need)
        run.total += sum(len(b.shards) + 1 for b in dirs)
        # Everything used before the cutoff slot goes; of the cutoff slot
        # itself, only what is still needed (in walk order).
        budget = [need - before]
        for b in dirs:
            self.pass2(b, cutoff, budget)

    # -- pass 1 ------------------------------------------------------------------
    def pass1(self, b: _Dir) -> None:
        run = self.run
        report = run.report
        for xx in b.shards:
            for entry in run.listdir(os.path.join(b.path, xx), b.label):
                name = entry.name
                if _is_hex(name, 32):
                    if name[:2] != xx:
                        continue  # misplaced: no reader finds it; verify reports it
                    st = run.lstat(entry, b.label)
                    if st is None or not _stat.S_ISREG(st.st_mode):
                        continue
                    if self.expired(st.st_mtime) or (self.ci and _kind_of(entry.path, name) == _format.KIND_FETCHED):
                        if run.remove(entry.path, b.label):
                            report.removed_entries += 1
                            report.freed_bytes += st.st_size
                            continue
                        if not _present(entry.path):
                            continue
                    b.size += st.st_size
                    b.entries += 1
                    self.hist.add(st.st_mtime, st.st_size)
                elif name.endswith(_fs.TEMP_SUFFIX):
                    self.leftover_file(entry, b)
            run.tick()
        for xx in b.tree_shards:
            for entry in run.listdir(os.path.join(b.path, "trees", xx), b.label):
                if _is_hex(entry.name, 32) and entry.name[:2] == xx:
                    self.pointer(entry, b)
                elif entry.name.endswith(_fs.TEMP_SUFFIX):
                    self.leftover_file(entry, b)
            run.tick()
        self.objects(b)
        run.tick()

    def leftover_file(self, entry: os.DirEntry[str], b: _Dir | None) -> None:
        """A temp file: removed once older than LEFTOVER_AGE (a live
        writer's is younger)."""
        run = self.run
        label = b.label if b is not None else None
        st = run.lstat(entry, label)
        if st is None or _stat.S_ISDIR(st.st_mode) or not run.old(st.st_mtime):
            return
        if run.remove(entry.path, label):
            run.report.removed_temp += 1
            run.report.freed_bytes += st.st_size

    def pointer(self, entry: os.DirEntry[str], b: _Dir) -> None:
        run = self.run
        report = run.report
        digest = entry.name
        b.pointers.add(digest)
        st = run.lstat(entry, b.label)
        if st is None or not _stat.S_ISREG(st.st_mode):
            return
        judged: list[os.stat_result] = []
        try:
            loaded = _read_pointer(entry.path, digest, judged)
        except Invalid as invalid:
            if invalid.reason == "unsupported-version":
                b.unknown_refs = True  # a newer safecache's tree: we cannot know what it references
                b.size += st.st_size
                return
            loaded = None
            corrupt = True
        except ValueError:
            loaded = None
            corrupt = True
        except OSError as exc:
            b.unknown_refs = True
            run.failed(exc, entry.path, b.label)
            return
        else:
            corrupt = False
            if loaded is None:
                return  # gone meanwhile
        if corrupt or loaded is None or not _present(os.path.join(b.path, "tree-objects", loaded[1].tree_id)):
            # A pointer no reader would use (they remove it too), or one whose
            # tree is gone (a remover deletes the pointer first, so this is a
            # leftover, not a commit in progress).  Removed only if it is
            # still the file judged: a committer may have published a good
            # one in its place since.
            if judged and _same_file(entry.path, judged[0]) and run.remove(entry.path, b.label):
                report.removed_entries += 1
                report.freed_bytes += st.st_size
            return
        header, manifest, _st = loaded
        tree_id = manifest.tree_id
        unit = _TreeUnit(entry.path, tree_id, st.st_mtime, st.st_size + manifest.size)
        b.referenced.add(tree_id)
        if self.expired(st.st_mtime) or (self.ci and header.kind == _format.KIND_FETCHED):
            outcome = _drop_tree(run, b, tree_id, entry.path, wait=self.wait(), force=self.force)
            if outcome in ("removed", "gone"):
                b.referenced.discard(tree_id)
                report.removed_trees += outcome == "removed"
                report.freed_bytes += unit.size if outcome == "removed" else 0
                return
            if outcome == "held":
                report.kept_in_use += 1
                self.kept.add((b.label, tree_id))
            b.size += unit.size
            return
        b.size += unit.size
        b.units.append(unit)
        self.hist.add(unit.mtime, unit.size)

    def objects(self, b: _Dir) -> None:
        """``tree-objects/``: staging trees and half-removed trees left by
        dead processes, and trees no pointer references."""
        run = self.run
        report = run.report
        odir = os.path.join(b.path, "tree-objects")
        candidates: list[os.DirEntry[str]] = []
        for entry in run.listdir(odir, b.label):
            name = entry.name
            if not _is_dir(entry):
                continue
            if _is_hex(name, 32):
                if name not in b.referenced:
                    candidates.append(entry)
            elif _is_staging(name):
                newest, size = run.survey(entry.path)
                if run.old(newest) and not _staging_in_use(b, name[:32]) and run.rmtree(entry.path, b.label):
                    report.removed_temp += 1
                    report.freed_bytes += size
                    _discard_lock(b.object_lock(name[:32]))
            elif _is_doomed(name):
                _newest, size = run.survey(entry.path)
                if run.rmtree(entry.path, b.label):
                    report.removed_temp += 1
                    report.freed_bytes += size
        if candidates and not b.unknown_refs:
            self.rescan_pointers(b)
        for entry in candidates:
            tree_id = entry.name
            newest, size = run.survey(entry.path)
            if tree_id in b.referenced or b.unknown_refs or not run.old(newest):
                b.size += size
                continue
            outcome = _drop_tree(run, b, tree_id, None, wait=self.wait(), force=self.force)
            if outcome == "removed":
                report.removed_trees += 1
                report.freed_bytes += size
            elif outcome == "held":
                report.kept_in_use += 1
                b.size += size
            elif outcome == "failed":
                b.size += size
        self.orphan_locks(b)

    def rescan_pointers(self, b: _Dir) -> None:
        """Read pointers published since pass 1 listed them, so a tree
        committed meanwhile is not taken for unreferenced."""
        run = self.run
        for entry in run.listdir(os.path.join(b.path, "trees"), b.label):
            if not (_is_hex(entry.name, 2) and _is_dir(entry)):
                continue
            for child in run.listdir(entry.path, b.label):
                if _is_hex(child.name, 32) and child.name not in b.pointers:
                    b.pointers.add(child.name)
                    try:
                        loaded = _read_pointer(child.path, child.name)
                    except (Invalid, ValueError):
                        continue
                    except OSError:
                        b.unknown_refs = True
                        continue
                    if loaded is not None:
                        b.referenced.add(loaded[1].tree_id)

    def orphan_locks(self, b: _Dir) -> None:
        """Delete lock files of tree objects that no longer exist (older
        than LEFTOVER_AGE; see the module docstring for why this is safe)."""
        run = self.run
        ldir = os.path.join(b.locks, "tree-objects")
        odir = os.path.join(b.path, "tree-objects")
        for entry in run.listdir(ldir):
            name = entry.name
            if not (name.endswith(".lock") and _is_hex(name[:-5], 32)):
                continue
            tree_id = name[:-5]
            st = run.lstat(entry)
            if st is None or not run.old(st.st_mtime):
                continue
            # Staging first, then the object: a commit renames the one into
            # the other, so at every moment one of the two names exists.
            if _present(os.path.join(odir, tree_id + ".tmp")) or _present(os.path.join(odir, tree_id)):
                continue
            _discard_lock(entry.path)

    def root_leftovers(self) -> None:
        """Temp files of markers and counters, and abandoned trash."""
        run = self.run
        for directory in (run.root, _layout.stats_dir(run.root)):
            for entry in run.listdir(directory):
                if entry.name.endswith(_fs.TEMP_SUFFIX):
                    self.leftover_file(entry, None)
                elif directory == run.root and entry.name.startswith(TRASH_PREFIX) and _is_dir(entry):
                    newest, _size = run.survey(entry.path)
                    if run.old(newest):
                        _purge(run, entry.path, None)  # a killed clean's
                        run.report.removed_temp += not _present(entry.path)
        run.tick()

    # -- pass 2 ------------------------------------------------------------------
    def pass2(self, b: _Dir, cutoff: int, budget: list[int]) -> None:
        run = self.run
        report = run.report
        hist = self.hist

        def wanted(mtime: float, size: int) -> bool:
            slot = hist.slot(mtime)
            if slot < cutoff:
                return True
            if slot == cutoff and budget[0] > 0:
                budget[0] -= size
                return True
            return False  # newer, or used since pass 1

        for unit in sorted(b.units, key=lambda u: u.mtime):
            try:
                mtime = _osops.current.lstat(unit.pointer).st_mtime
            except OSError:
                continue
            if not wanted(mtime, unit.size):
                continue
            outcome = _drop_tree(run, b, unit.tree_id, unit.pointer, wait=self.wait(), force=self.force)
            if outcome == "removed":
                report.removed_trees += 1
                report.freed_bytes += unit.size
                b.size -= unit.size
            elif outcome == "held":
                report.kept_in_use += (b.label, unit.tree_id) not in self.kept
                self.kept.add((b.label, unit.tree_id))
        for xx in b.shards:
            for entry in run.listdir(os.path.join(b.path, xx), b.label):
                name = entry.name
                if not (_is_hex(name, 32) and name[:2] == xx):
                    continue
                st = run.lstat(entry, b.label)
                if st is None or not _stat.S_ISREG(st.st_mode) or not wanted(st.st_mtime, st.st_size):
                    continue
                if run.remove(entry.path, b.label):
                    report.removed_entries += 1
                    report.freed_bytes += st.st_size
                    b.size -= st.st_size
                    b.entries -= 1
            run.tick()
        run.tick()


# -- trash ------------------------------------------------------------------------------------------
def _new_trash(run: _Run) -> str | None:
    path = os.path.join(run.root, f"{TRASH_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")
    try:
        _osops.current.mkdir(path, 0o700)
        return path
    except OSError as exc:
        run.failed(exc, path)
        return None


def _purge(run: _Run, trash: str, label: str | None) -> None:
    """Delete a trash directory, counting what it held."""
    report = run.report
    for entry in run.listdir(trash, label):
        name = entry.name
        if _is_hex(name, 2) and _is_dir(entry):
            _empty_shard(run, entry.path, label)
            run.rmtree(entry.path, label)
            run.tick()
        elif name == "tree-objects" and _is_dir(entry):
            for child in run.listdir(entry.path, label):
                _newest, size = run.survey(child.path)
                if run.rmtree(child.path, label):
                    report.freed_bytes += size
                    if _is_hex(child.name, 32):
                        report.removed_trees += 1
                    else:
                        report.removed_temp += 1
            run.rmtree(entry.path, label)
        else:
            _newest, size = run.survey(entry.path) if _is_dir(entry) else (0.0, _size_of(entry))
            if run.rmtree(entry.path, label):
                report.freed_bytes += size
    run.rmtree(trash, label)


def _empty_shard(run: _Run, path: str, label: str | None) -> None:
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
            if _is_hex(child.name, 32):
                report.removed_entries += 1
            elif child.name.endswith(_fs.TEMP_SUFFIX):
                report.removed_temp += 1


def _size_of(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0


def _remove_version(run: _Run, b: _Dir, *, deadline: float | None, force: bool) -> None:
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
    report = run.report
    trash = _new_trash(run)
    if trash is None:
        return
    children = run.listdir(b.path, b.label)
    children.sort(key=lambda e: (e.name != "trees", e.name))
    objects_dir: str | None = None
    for entry in children:
        if entry.name == "tree-objects" and _is_dir(entry):
            objects_dir = entry.path
            continue
        if run.rename(entry.path, os.path.join(trash, entry.name), b.label) is None and _is_dir(entry):
            # Could not move it (Windows: a file inside is open without
            # share-delete); delete what can be deleted in place.
            if _is_hex(entry.name, 2):
                _empty_shard(run, entry.path, b.label)
                _rmdir_quietly(entry.path)
            else:
                run.rmtree(entry.path, b.label)
    if objects_dir is not None:
        moved_objects = os.path.join(trash, "tree-objects")
        made = False
        for entry in run.listdir(objects_dir, b.label):
            name = entry.name
            if not _is_dir(entry):
                run.remove(entry.path, b.label)
                continue
            tree_id = name[:32]
            lock: _locks.FileLock | None = None
            if _is_hex(name, 32):
                wait = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
                status, lock = _lock_tree(run, b, tree_id, wait=wait, force=force)
                if status == "held":
                    report.kept_in_use += 1
                if status != "ok":
                    continue
            elif _is_staging(name) and not force:
                newest, _size = run.survey(entry.path)
                if not run.old(newest) or _staging_in_use(b, tree_id):
                    continue  # a live builder's
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
            if moved is not None and (_is_hex(name, 32) or _is_staging(name)):
                _discard_lock(b.object_lock(tree_id))  # its tree is gone for good
        _rmdir_quietly(objects_dir)
    _purge(run, trash, b.label)
    _rmdir_quietly(b.path)


def _rmdir_quietly(path: str) -> None:
    """Remove a directory if it is empty (a writer may be filling it again)."""
    try:
        _osops.current.rmdir(path)
    except OSError:
        pass


# -- counters -------------------------------------------------------------------------------------
def _edit_counts(
    root: str,
    *,
    sizes: dict[str, tuple[int, int]] | None = None,
    drop: Iterable[str] = (),
    drop_all: bool = False,
    full: bool = False,
    timeout: float = 2.0,
) -> None:
    """Edit the shared counters under every shard's lock (so no flush lands
    in between): forget the labels in ``drop`` (every label with
    ``drop_all``) entirely, and record exact ``(size, entries)`` for the
    labels in ``sizes``, zeroing their shard deltas.  ``full``: every other
    label's size is zero too (the walk saw all of the cache), as
    :func:`_stats.rebase` does.  Unlike ``rebase``, labels that were not
    walked keep their counts, which a partial walk needs."""
    sizes = sizes or {}
    dropped = set(drop)
    directory = _layout.stats_dir(root)
    if not _present(directory) and not sizes:
        return
    locks = [_locks.FileLock(os.path.join(directory, f"{n:x}.lock"), timeout=timeout) for n in range(_stats.SHARDS)]
    held: list[_locks.FileLock] = []

    def rebased(label: str) -> bool:
        return full or label in sizes

    try:
        for lock in locks:
            lock.acquire()
            held.append(lock)
        for n in range(_stats.SHARDS):
            path = os.path.join(directory, f"{n:x}")
            doc = _stats._read_doc(path)
            changed = False
            for label in list(doc):
                data = doc[label]
                if drop_all or label in dropped:
                    del doc[label]
                    changed = True
                elif rebased(label) and (data.get("size") or data.get("entries")):
                    data["size"] = data["entries"] = 0
                    changed = True
            if changed:
                _stats._write_doc(path, doc)
        baseline_path = os.path.join(directory, _layout.STATS_BASELINE)
        baseline = _stats._read_doc(baseline_path)
        for label in list(baseline):
            if drop_all or label in dropped:
                del baseline[label]
        for label in (set(baseline) | set(sizes)) if full else set(sizes):
            if drop_all or label in dropped:
                continue
            entry = baseline.setdefault(label, _stats._empty())
            entry["size"], entry["entries"] = sizes.get(label, (0, 0))
        _stats._write_doc(baseline_path, baseline)
    finally:
        for lock in held:
            lock.release()


def _rebase(run: _Run, dirs: list[_Dir], *, full: bool, drop: Iterable[str] = ()) -> None:
    """Record the sizes a walk found; counters are advisory, so a failure
    is logged, never raised."""
    sizes = {b.label: (max(0, b.size), max(0, b.entries)) for b in dirs}
    drop = set(drop)
    try:
        if full and not drop:
            _stats.rebase(run.root, sizes)
        else:
            _edit_counts(run.root, sizes=sizes, drop=drop, full=full)
    except OSError as exc:
        _policy.logger().info("safecache: %s: could not record the cache's size: %s", run.op, exc)


# -- the trim stamp -------------------------------------------------------------------------------
def _stamp_path(root: str) -> str:
    return os.path.join(_layout.stats_dir(root), TRIM_STAMP)


def _read_stamp(root: str) -> float | None:
    """The time in ``stats/trim``; None if there is none or it is unreadable."""
    return _stamp(root)[1]


def _stamp(root: str) -> tuple[bool, float | None]:
    """``(present, time)`` of ``stats/trim``; a present file that does not
    parse gives ``(True, None)``: the cache then looks untrimmed, and is trimmed."""
    opened = _fs.read_file(_stamp_path(root), budget=0.2)
    if opened is None:
        return False, None
    fd, block = opened
    _osops.current.close(fd)
    try:
        return True, float(block.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return True, None


def _write_stamp(run: _Run) -> None:
    _record_stamp(run.root, run.now)


def _record_stamp(root: str, now: float) -> None:
    try:
        _fs.write_file(_stamp_path(root), [f"{now:.0f}\n".encode()], budget=0.2)
    except OSError as exc:
        # As Go: the cache will look older than it is and be trimmed again.
        _policy.logger().info("safecache: could not record the trim time: %s", exc)


# -- entry points -----------------------------------------------------------------------------------
def _writable(cache: Cache, operation: str, report: Report) -> str | None:
    """The root, if ``operation`` may write to it; else None with the reason
    in the report (strict mode raises for a read-only cache)."""
    from ._layout import BUCKETS as BUCKETS_DIR

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
        present = _fs.exists(os.path.join(cache.path, BUCKETS_DIR))
    except OSError as exc:
        cache._failed(operation, exc, cache.path)
        report.skipped_reason = f"the cache cannot be examined: {exc}"
        return None
    if not present:
        return None  # nothing stored yet: nothing to do
    return cache.path


def _trim_lock(cache: Cache, root: str, timeout: float, report: Report) -> _locks.FileLock | None | bool:
    """Take the trim lock: the lock, True to go on without one (no locks on
    this file system), or None (skip: another process is trimming)."""
    from ._layout import LOCKS as LOCKS_DIR

    lock = _locks.FileLock(os.path.join(root, LOCKS_DIR, TRIM_LOCK), timeout=timeout)
    try:
        lock.acquire()
        return lock
    except LockTimeoutError:
        report.skipped_reason = "another process is trimming"
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)):
            return True
        cache._failed("trim", exc, lock.path, lock=True)
        report.skipped_reason = f"the trim lock could not be taken: {exc}"
        return None


@contextlib.contextmanager
def _holding_trim_lock(
    cache: Cache, root: str, timeout: float, report: Report, *, force: bool = False
) -> Iterator[bool]:
    """Hold the trim lock for the ``with`` block; yields False (the report
    says why) when the operation must be skipped.  With ``force`` it goes
    on without the lock rather than skip."""
    lock = _trim_lock(cache, root, timeout, report)
    if lock is None and not force:
        yield False
        return
    report.skipped_reason = ""
    try:
        yield True
    finally:
        if isinstance(lock, _locks.FileLock):
            lock.release()


def trim(
    cache: Cache,
    *,
    max_size: int | None = None,
    max_age: float | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Trim the cache now: remove entries and trees not used for ``max_age``
    seconds, then, if the cache is over ``max_size`` bytes, the least
    recently used until it is under 90 % of it; and leftovers of dead
    processes (temp files, staging trees, half-removed trees older than an
    hour, trees no pointer references).  ``None`` means the cache's own
    limit (``Cache(max_size=, max_age=)``).

    One process trims at a time: if another holds ``locks/trim.lock`` this
    returns at once with ``skipped_reason`` set (``wait=True`` waits up to
    the cache's ``lock_timeout``).  Trees a process holds are left
    (``kept_in_use``).  Afterwards the cache's size counters are exact and
    ``stats/trim`` records the time.  Never raises in lenient mode.
    """
    report = Report()
    root = _writable(cache, "trim", report)
    if root is None:
        return report
    with _holding_trim_lock(cache, root, cache.lock_timeout if wait else 0.0, report) as go:
        if not go:
            return report
        cache.flush()  # this process's deltas into the shards, which the rebase resets
        run = _Run(cache, "trim", report, progress)
        dirs = _bucket_dirs(run)
        _Trimmer(
            run,
            max_age=cache.max_age if max_age is None else max_age,
            max_size=cache.max_size if max_size is None else max_size,
        ).trim(dirs)
        _rebase(run, dirs, full=True)
        _write_stamp(run)
    cache.flush()  # errors counted during the trim
    return report


def maybe_trim(cache: Cache) -> Report | None:
    """The automatic trim, called by ``Cache.close()``: trims if the last
    trim is older than ``cache.trim_interval`` (or the stamp is unreadable,
    or in the future), or if the counters say the cache is over
    ``cache.max_size`` and the last trim is at least
    :data:`OVER_LIMIT_SPACING` seconds old; otherwise returns None after
    reading one small file (18 when a size limit is set).  A cache without
    a stamp (never trimmed) starts its interval instead: the stamp is
    written, and the cache is trimmed only if it is over its limit.  Never
    waits for another trimmer.

    Only a process that wrote to the cache trims it: a process that only
    read leaves the cache as it found it (opening and reading a cache writes
    nothing), and it did not make it grow.
    """
    from ._layout import BUCKETS as BUCKETS_DIR

    root = cache.path
    if root is None or cache.state != READY or not cache._root_ready:
        return None
    try:
        if not _fs.exists(os.path.join(root, BUCKETS_DIR)):
            return None
        present, last = _stamp(root)
        now = _now()
        if not present:
            # Never trimmed: a cache this young has nothing to age out, so
            # the interval starts now (unless it is already over its limit).
            # Walking it at the first close would also race with the
            # processes still filling it, whose counts are not flushed yet.
            if cache.max_size is not None and _total_size(root) > cache.max_size:
                return trim(cache)
            _record_stamp(root, now)
            return None
        due = last is None or now - last >= cache.trim_interval or last > now + _FUTURE_SLACK
        if not due and cache.max_size is not None and last is not None and now - last >= OVER_LIMIT_SPACING:
            due = _total_size(root) > cache.max_size
    except OSError as exc:
        cache._failed("trim", exc, root)
        return None
    if not due:
        return None
    return trim(cache)


def _total_size(root: str) -> int:
    """The cache's size according to its counters (17 small files)."""
    return sum(int(data.get("size", 0)) for data in _stats.read_totals(root).values())  # type: ignore[call-overload]


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
    for spec in buckets or ():
        _parse_label(spec)
    report = Report()
    root = _writable(cache, "prune", report)
    if root is None:
        return report
    deadline = time.monotonic() + max(0.0, timeout)
    with _holding_trim_lock(cache, root, 0.0 if force else max(0.0, timeout), report, force=force) as go:
        if not go:
            return report
        cache.flush()
        run = _Run(cache, "prune", report, progress)
        # Old versions are judged against every version on disk, whatever
        # the selection: pruning "lint/v3" removes it if a v4 exists.
        highest: dict[str, int] = {}
        for b in _bucket_dirs(run):
            highest[b.name] = max(highest.get(b.name, -1), int(b.vdir[1:]))
        dirs = _bucket_dirs(run, buckets)
        old = [b for b in dirs if int(b.vdir[1:]) < highest.get(b.name, -1)]
        keep = [b for b in dirs if b not in old]
        for b in old:
            _remove_version(run, b, deadline=deadline, force=force)
        _Trimmer(run, max_age=older_than, max_size=max_size, ci=ci, deadline=deadline, force=force).trim(keep)
        _rebase(run, keep, full=buckets is None, drop=[b.label for b in old])
        if buckets is None:
            _write_stamp(run)
    cache.flush()
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
    for spec in buckets or ():
        _parse_label(spec)  # a bad name is the caller's error, raised before anything is touched
    report = Report()
    root = _writable(cache, "clean", report)
    if root is None:
        return report
    deadline = time.monotonic() + max(0.0, timeout)
    # A trimmer walking meanwhile would record the sizes of what is removed.
    with _holding_trim_lock(cache, root, 0.0 if force else max(0.0, timeout), report, force=force) as go:
        if not go:
            return report
        _clean(cache, root, report, buckets, deadline, force, progress)
    cache.flush()
    return report


def _clean(
    cache: Cache,
    root: str,
    report: Report,
    buckets: list[str] | None,
    deadline: float,
    force: bool,
    progress: Progress | None,
) -> None:
    from ._layout import BUCKETS as BUCKETS_DIR

    cache.flush()
    run = _Run(cache, "clean", report, progress)
    if buckets is None:
        # Everything under buckets/, including names no safecache would make.
        dirs: list[_Dir] = []
        names: list[str] = []
        top = os.path.join(root, BUCKETS_DIR)
        for entry in run.listdir(top):
            if _is_dir(entry):
                names.append(entry.path)
                for child in run.listdir(entry.path):
                    if _is_dir(child):
                        dirs.append(_Dir(root, entry.name, child.name))
                    else:
                        run.remove(child.path)
            else:
                run.remove(entry.path)
    else:
        dirs = _bucket_dirs(run, buckets)
        names = sorted({os.path.dirname(b.path) for b in dirs})
    for b in dirs:
        _remove_version(run, b, deadline=deadline, force=force)
    for path in names:
        _rmdir_quietly(path)
    if buckets is None:
        for entry in run.listdir(root):
            if entry.name.startswith(TRASH_PREFIX) and _is_dir(entry):
                _purge(run, entry.path, None)
    try:
        if buckets is None:
            _edit_counts(root, drop_all=True)
        else:
            _edit_counts(root, drop=[b.label for b in dirs])
    except OSError as exc:
        _policy.logger().info("safecache: clean: could not reset the counters: %s", exc)


def verify(cache: Cache, *, repair: bool = False, progress: Progress | None = None) -> Report:
    """Check every entry (length, header and payload checksums, key) and
    every tree (pointer, object present, every file against the manifest);
    report each problem in ``Report.problems``.  ``repair=True`` removes
    what is corrupt: the entry, or a damaged tree's pointer and directory
    (a directory another process holds is left, unreferenced, for a later
    trim).  Entries written by a newer safecache are not problems.  Never
    raises in lenient mode; a read-only cache is checked but not repaired.
    """
    from ._trees import Tree

    report = Report()
    if cache.path is None or cache.state == DISABLED:
        report.skipped_reason = "the cache is disabled"
        return report
    if repair and cache.state != READY:
        if cache.strict:
            raise CacheReadOnlyError(f"cannot repair: {cache.state_reason}", filename=cache.path, operation="verify")
        report.skipped_reason = f"the cache is read-only: problems are reported, not repaired ({cache.state_reason})"
        repair = False
    run = _Run(cache, "verify", report, progress)
    dirs = _bucket_dirs(run)
    for b in dirs:
        _plan(run, b)
    run.total = sum(len(b.shards) + len(b.tree_shards) for b in dirs)
    root = cache.path

    def problem(b: _Dir, path: str, kind: str, reason: str, repaired: bool) -> None:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        report.problems.append({"bucket": b.label, "path": rel, "kind": kind, "reason": reason, "repaired": repaired})

    for b in dirs:
        counters = cache.bucket(b.name, int(b.vdir[1:])).counters
        for xx in b.shards:
            for entry in run.listdir(os.path.join(b.path, xx), b.label):
                name = entry.name
                if name.endswith(_fs.TEMP_SUFFIX) or _is_zombie(name):
                    continue
                try:
                    regular = entry.is_file(follow_symlinks=False)
                    link = not regular and entry.is_symlink()
                except OSError:
                    regular = link = False
                if not regular or not _is_hex(name, 32) or name[:2] != xx:
                    # No reader ever uses it (a symlink where an entry should
                    # be makes every read of that key fail, though).
                    if not regular:
                        reason = "symlink" if link else "not a regular file"
                    else:
                        reason = "misplaced" if _is_hex(name, 32) else "unexpected file"
                    removed = False
                    if repair and _is_hex(name, 32) and (regular or link):
                        removed = run.remove(entry.path, b.label)
                    problem(b, entry.path, "entry", reason, removed)
                    continue
                judged: list[os.stat_result] = []
                try:
                    _load(entry.path, name, payload=False, exact_version=True, opened_as=judged)
                except Invalid as invalid:
                    if invalid.reason == "unsupported-version":
                        continue
                    removed = False
                    # Remove it only if it is still the file judged: another
                    # process may have put a good entry there since.
                    if repair and judged and _same_file(entry.path, judged[0]):
                        st = judged[0]
                        if run.remove(entry.path, b.label):
                            removed = True
                            counters.corrupt_removed += 1
                            counters.size -= st.st_size
                            counters.entries -= 1
                    problem(b, entry.path, "entry", invalid.reason, removed)
                except OSError as exc:
                    run.failed(exc, entry.path, b.label)
                    if not isinstance(exc, FileNotFoundError):
                        problem(b, entry.path, "entry", f"unreadable: {_policy.describe_exception(exc)}", False)
            run.tick()
        for xx in b.tree_shards:
            for entry in run.listdir(os.path.join(b.path, "trees", xx), b.label):
                name = entry.name
                if not (_is_hex(name, 32) and name[:2] == xx):
                    continue
                reason = ""
                repairable = True
                tree_id: str | None = None
                judged = []
                try:
                    loaded = _read_pointer(entry.path, name, judged)
                except Invalid as invalid:
                    if invalid.reason == "unsupported-version":
                        continue
                    loaded, reason = None, f"pointer: {invalid.reason}"
                except ValueError as exc:
                    loaded, reason = None, f"pointer: {exc}"
                except OSError as exc:
                    run.failed(exc, entry.path, b.label)
                    continue
                else:
                    if loaded is None:
                        continue
                if loaded is not None:
                    manifest = loaded[1]
                    tree_id = manifest.tree_id
                    obj = os.path.join(b.path, "tree-objects", tree_id)
                    if not _present(obj):
                        reason = "tree directory missing"
                    else:
                        try:
                            found = Tree(obj, manifest, b.object_lock(tree_id)).verify()
                        except OSError as exc:
                            run.failed(exc, obj, b.label)
                            found = []
                            if not isinstance(exc, FileNotFoundError):
                                reason = f"unreadable: {_policy.describe_exception(exc)}"
                                repairable = False  # not known to be damaged
                        if found and not _present(obj):
                            continue  # removed while it was being checked: not damage
                        if found:
                            shown = ", ".join(f"{path}: {what}" for path, what in found[:5])
                            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
                            reason = f"files: {shown}{more}"
                if not reason:
                    continue
                removed = False
                if repair and repairable and judged and _same_file(entry.path, judged[0]):
                    removed = run.remove(entry.path, b.label)
                    if tree_id is not None:
                        _drop_tree(run, b, tree_id, None, wait=0.0, force=False)
                    counters.corrupt_removed += removed
                problem(b, entry.path, "tree", reason, removed)
            run.tick()
    cache.flush()
    return report


def _is_zombie(name: str) -> bool:
    # Windows: a file deleted while open stays listed until it is closed
    # (safecache.testing names it so when it emulates that).
    return ".~delete-pending-" in name


def list_buckets(cache: Cache) -> list[tuple[str, int]]:
    """``(name, version)`` of every bucket version directory on disk, sorted."""
    if cache.path is None or cache.state == DISABLED:
        return []
    run = _Run(cache, "list_buckets", Report(), None)
    return [(b.name, int(b.vdir[1:])) for b in _bucket_dirs(run)]


def info(cache: Cache) -> dict[str, object]:
    """What the cache holds and did, per bucket, in constant time: from the
    shared counters (``stats/``: 17 small files) plus this process's
    counters not yet flushed, never walking the entries.

    ``{"path", "state", "size", "entries", "max_size", "max_age",
    "trim_interval", "last_trim" (Unix time or None), "buckets": {"name/vN":
    {"size", "entries", "hits", "misses", "hit_rate" (None before any
    lookup), "writes", "bytes_read", "bytes_written", "corrupt_removed",
    "errors": {cause: n}}}}``.  Sizes are exact after each trim and move
    with every flushed write in between (see docs/maintenance.md).
    """
    totals: dict[str, dict[str, object]] = {}
    last_trim: float | None = None
    if cache.path is not None and cache.state != DISABLED:
        try:
            totals = _stats.read_totals(cache.path)
            last_trim = _read_stamp(cache.path)
        except OSError as exc:
            cache._failed("info", exc, cache.path)
    for label, data in cache.stats().items():
        _stats.add_into(totals, label, data)
    buckets: dict[str, dict[str, object]] = {}
    size = entries = 0
    for label in sorted(totals):
        data = totals[label]
        row: dict[str, object] = {name: int(data.get(name, 0)) for name in _stats.FIELDS}  # type: ignore[call-overload]
        row["size"] = max(0, int(row["size"]))  # type: ignore[call-overload]
        row["entries"] = max(0, int(row["entries"]))  # type: ignore[call-overload]
        hits, misses = int(row["hits"]), int(row["misses"])  # type: ignore[call-overload]
        row["hit_rate"] = hits / (hits + misses) if hits + misses else None
        row["errors"] = dict(data.get("errors", {}))  # type: ignore[call-overload]
        if not any(row[name] for name in _stats.FIELDS) and not row["errors"]:
            continue
        size += int(row["size"])  # type: ignore[call-overload]
        entries += int(row["entries"])  # type: ignore[call-overload]
        buckets[label] = row
    return {
        "path": cache.path,
        "state": cache.state,
        "size": size,
        "entries": entries,
        "max_size": cache.max_size,
        "max_age": cache.max_age,
        "trim_interval": cache.trim_interval,
        "last_trim": last_trim,
        "buckets": buckets,
    }


__all__ = ["Report", "clean", "info", "list_buckets", "maybe_trim", "prune", "trim", "verify"]

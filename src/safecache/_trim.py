"""Maintenance: ``trim`` and the automatic ``maybe_trim``; the trim stamp
and the trim lock, which ``prune`` and ``clean`` take too.

Trim is Go's ``Trim`` (at most once per interval, a stamp file, an age
limit) with ccache's size limit (trim to 90 %) and ccache's rule that one
process trims at a time and the others do not wait.  The walk itself is
``_trimmer.Trimmer``.
"""

from __future__ import annotations

import contextlib
import errno
import math

from . import _errcodes, _fs, _layout, _locks, _osops, _policy, _stats, _walk
from ._errors import LockTimeoutError
from ._location import READY
from ._trimmer import Trimmer
from ._walk import Dir, Report, Run, bucket_dirs, writable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: Cache.close() imports this module
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ._cache import Cache
    from ._walk import Progress

#: A stamp more than this far in the future is a clock that jumped: trim.
_FUTURE_SLACK = 3600.0
#: Over its size limit, the cache is trimmed again at most this often: if a
#: trim could not get under the limit (trees in use, files that cannot be
#: removed), the next processes to close must not each walk it again.
OVER_LIMIT_SPACING = 60.0


# -- the trim stamp -------------------------------------------------------------------------------
# ``stats/trim`` holds the Unix time of the last trim (Go's trim.txt), or that
# time and the word ``started`` when no trim ran: a cache never trimmed starts
# its interval at the first close (see maybe_trim), which is not a trim.
_STARTED = "started"


def read_stamp(root: str) -> float | None:
    """The time of the last trim in ``stats/trim``; None if none ran (or
    the file is missing or unreadable)."""
    _present, when, trimmed = _stamp(root)
    return when if trimmed else None


def _stamp(root: str) -> tuple[bool, float | None, bool]:
    """``(present, time, trimmed)`` of ``stats/trim``.  A present file that
    does not parse gives ``(True, None, False)``: the cache then looks
    untrimmed, and is trimmed.  A time that is not finite (``nan``, ``inf``)
    counts as no stamp at all: ``nan`` compares false with everything and
    would disable the automatic trim for good."""
    opened = _fs.read_file(_layout.trim_stamp(root), budget=0.2)
    if opened is None:
        return False, None, False
    fd, block = opened
    _osops.current.close(fd)
    parsed = parse_stamp(block)
    if parsed is None:
        return not _not_finite(block), None, False
    return True, parsed[0], parsed[1]


def parse_stamp(data: bytes) -> tuple[float, bool] | None:
    """``(time, whether a trim ran then)`` from the text of ``stats/trim``;
    None unless it holds a finite time (and at most the word ``started``)."""
    try:
        words = data.decode("ascii").split()
        if not (len(words) == 1 or words[1:] == [_STARTED]):
            return None
        when = float(words[0])
    except (UnicodeDecodeError, ValueError):
        return None
    return (when, len(words) == 1) if math.isfinite(when) else None


def _not_finite(data: bytes) -> bool:
    try:
        return not math.isfinite(float(data.decode("ascii").split()[0]))
    except (UnicodeDecodeError, ValueError, IndexError):
        return False


def write_stamp(root: str, now: float, *, started: bool = False) -> None:
    """Record a trim at ``now`` (``started``: the interval starts, no trim ran)."""
    text = f"{now:.0f} {_STARTED}\n" if started else f"{now:.0f}\n"
    try:
        _fs.write_file(_layout.trim_stamp(root), [text.encode()], budget=0.2)
    except OSError as exc:
        # As Go: the cache will look older than it is and be trimmed again.
        _policy.logger().info("safecache: could not record the trim time: %s", exc)


# -- the trim lock --------------------------------------------------------------------------------
#: No room on the file system (ENOSPC; EDQUOT: over the user's quota).
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _trim_lock(
    cache: Cache, root: str, timeout: float, report: Report, operation: str, *, explicit: bool
) -> _locks.FileLock | None | bool:
    """Take the trim lock: the lock, True to go on without one, or None
    (skip: another process is trimming, or the lock failed).

    Without one: on a file system that cannot lock (holders could not
    either), and, for an operation a person asked for (``explicit``), on a
    full file system where ``locks/trim.lock`` does not exist yet and cannot
    be created.  Freeing space is then the point, and going on is safe: a
    lock file that does not exist is held by nobody (lock files are never
    deleted, and a holder created its own); another trimmer starting
    meanwhile cannot create it either and skips (the automatic trim) or
    goes on unlocked too (``clean``, ``prune``); removals already tolerate
    a concurrent walk (a file already gone is not an error, trees are
    removed only under their own locks), and the counters two walks record
    are corrected by the next trim.  The automatic trim skips instead.
    """
    path = _layout.trim_lock(root)
    lock = _locks.FileLock(path, timeout=timeout)
    try:
        lock.acquire()
        return lock
    except LockTimeoutError:
        report.skipped_reason = "another process is trimming"
        return None
    except OSError as exc:
        if _errcodes.locks_unsupported(exc):
            return True
        if explicit and exc.errno in _FULL and not _present(path):
            _policy.logger().info("safecache: %s: no room to create %s; going on without the trim lock", operation, path)
            return True
        cache._failed(operation, exc, lock.path, lock=True)
        report.skipped_reason = f"the trim lock could not be taken: {exc}"
        return None


def _present(path: str) -> bool:
    try:
        return _fs.exists(path)
    except OSError:
        return True  # cannot tell: someone may hold it


@contextlib.contextmanager
def holding_trim_lock(
    cache: Cache,
    root: str,
    timeout: float,
    report: Report,
    *,
    operation: str = "trim",
    force: bool = False,
    explicit: bool = True,
) -> Iterator[bool]:
    """Hold the trim lock for the ``with`` block; yields False (the report
    says why) when the operation must be skipped.  With ``force`` it goes
    on without the lock rather than skip.  ``operation`` names it in the
    logs and warnings; ``explicit``: a person asked for it (see _trim_lock)."""
    lock = _trim_lock(cache, root, timeout, report, operation, explicit=explicit)
    if lock is None and not force:
        yield False
        return
    report.skipped_reason = ""
    try:
        yield True
    finally:
        if isinstance(lock, _locks.FileLock):
            lock.release()


# -- counters -------------------------------------------------------------------------------------
def record_sizes(run: Run, dirs: list[Dir], *, full: bool, drop: Iterable[str] = ()) -> None:
    """Record the sizes a walk found (and forget the bucket versions in
    ``drop``); counters are advisory, so a failure is logged, never raised."""
    sizes = {b.label: (max(0, b.size), max(0, b.entries)) for b in dirs}
    try:
        _stats.rebase(run.root, sizes, full=full, drop=drop)
    except OSError as exc:
        _policy.logger().info("safecache: %s: could not record the cache's size: %s", run.op, exc)


def _total_size(root: str) -> int:
    """The cache's size according to its counters (17 small files)."""
    return sum(int(data.get("size", 0)) for data in _stats.read_totals(root).values())  # type: ignore[call-overload]


# -- entry points -----------------------------------------------------------------------------------
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
    return _trim(cache, max_size=max_size, max_age=max_age, wait=wait, progress=progress, explicit=True)


def _trim(
    cache: Cache,
    *,
    max_size: int | None = None,
    max_age: float | None = None,
    wait: bool = False,
    progress: Progress | None = None,
    explicit: bool,
) -> Report:
    report = Report()
    root = writable(cache, "trim", report)
    if root is None:
        return report
    with holding_trim_lock(cache, root, cache.lock_timeout if wait else 0.0, report, explicit=explicit) as go:
        if not go:
            return report
        cache.flush()  # this process's deltas into the shards, which the rebase resets
        run = Run(cache, "trim", report, progress)
        dirs = bucket_dirs(run)
        Trimmer(
            run,
            max_age=cache.max_age if max_age is None else max_age,
            max_size=cache.max_size if max_size is None else max_size,
        ).trim(dirs)
        record_sizes(run, dirs, full=True)
        write_stamp(run.root, run.now)
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
    root = cache.path
    if root is None or cache.state != READY or not cache._root_ready:
        return None
    try:
        if not _fs.exists(_layout.buckets_dir(root)):
            return None
        present, last, _trimmed = _stamp(root)
        now = _walk.clock()
        if not present:
            # Never trimmed: a cache this young has nothing to age out, so
            # the interval starts now (unless it is already over its limit).
            # Walking it at the first close would also race with the
            # processes still filling it, whose counts are not flushed yet.
            if cache.max_size is not None and _total_size(root) > cache.max_size:
                return _trim(cache, explicit=False)
            write_stamp(root, now, started=True)
            return None
        due = last is None or now - last >= cache.trim_interval or last > now + _FUTURE_SLACK
        if not due and cache.max_size is not None and last is not None and now - last >= OVER_LIMIT_SPACING:
            due = _total_size(root) > cache.max_size
    except OSError as exc:
        cache._failed("trim", exc, root)
        return None
    if not due:
        return None
    return _trim(cache, explicit=False)

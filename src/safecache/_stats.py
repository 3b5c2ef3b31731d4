"""Counters, kept without scanning: in memory per process, flushed into
small sharded files (ccache's design).

Each process adds up what its buckets did (hits, misses, writes, bytes in and
out, corrupt entries removed, errors by cause, and the change in size and
entry count it caused).  On ``Cache.close()`` and at interpreter exit it adds
those deltas into one of 16 shard files, ``<root>/stats/<n>``, chosen by its
pid, under that shard's lock: concurrent processes rarely touch the same
shard, and a flush is one small read-modify-write.  Opening a cache writes
nothing; a read-only or disabled cache never flushes.

The size of the cache is ``baseline + sum of shard deltas``.  Maintenance
(which walks the cache anyway) writes the exact size into ``stats/baseline``
and zeroes the size deltas, so drift from races between writers of the same
key is corrected at every trim.  Reading totals is 17 small files, whatever
the cache holds.
"""

from __future__ import annotations

from . import _fs, _layout, _locks, _osops

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

SHARDS = _layout.STATS_SHARDS
_FORMAT = 1
#: Fields summed across shards (``errors`` is a dict of cause -> count).
FIELDS = (
    "hits", "misses", "writes", "bytes_read", "bytes_written", "corrupt_removed", "size", "entries",
    # the remote tier (docs/remote.md): what the remote answered, what was sent, the time spent waiting
    "remote_hits", "remote_misses", "remote_bytes_read", "remote_bytes_written", "remote_uploads",
    "remote_dropped", "remote_ms",
)
#: Fields added after format 1 was first written: absent means 0.
_OPTIONAL = frozenset(name for name in FIELDS if name.startswith("remote_"))


class Counters:
    """What one bucket did in this process since its last flush.

    ``size`` and ``entries`` are the change this process made to the bytes
    on disk and the number of entries (negative when it removed more than it
    added).
    """

    __slots__ = FIELDS + ("errors",)

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.corrupt_removed = 0
        self.size = 0
        self.entries = 0
        self.remote_hits = 0
        self.remote_misses = 0
        self.remote_bytes_read = 0
        self.remote_bytes_written = 0
        self.remote_uploads = 0
        self.remote_dropped = 0
        self.remote_ms = 0
        self.errors: dict[str, int] = {}

    def error(self, cause: str) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + 1

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {name: getattr(self, name) for name in FIELDS}
        out["errors"] = dict(self.errors)
        return out

    def take(self) -> dict[str, object] | None:
        """Return the counts so far and reset them; None if nothing happened."""
        data = self.as_dict()
        if not any(data[name] for name in FIELDS) and not self.errors:
            return None
        for name in FIELDS:
            setattr(self, name, 0)
        self.errors = {}
        return data

    def give_back(self, data: dict[str, object]) -> None:
        """Re-add counts a failed flush could not store."""
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + int(data[name]))  # type: ignore[call-overload]
        for cause, n in dict(data["errors"]).items():  # type: ignore[call-overload]
            self.errors[cause] = self.errors.get(cause, 0) + n


def _empty() -> dict[str, object]:
    out: dict[str, object] = {name: 0 for name in FIELDS}
    out["errors"] = {}
    return out


def add_into(total: dict[str, dict[str, object]], label: str, data: dict[str, object]) -> None:
    into = total.setdefault(label, _empty())
    for name in FIELDS:
        into[name] = int(into[name]) + int(data.get(name, 0))  # type: ignore[call-overload]
    errors = into["errors"]
    assert isinstance(errors, dict)
    for cause, n in dict(data.get("errors", {})).items():  # type: ignore[call-overload]
        errors[cause] = errors.get(cause, 0) + int(n)


def _read_doc(path: str) -> dict[str, dict[str, object]]:
    """A shard or baseline file's buckets; {} if missing, not a regular
    file, or not a valid document (:func:`parse_doc`)."""
    opened = _fs.read_file(path, budget=0.2)
    if opened is None:
        return {}
    fd, block = opened
    try:
        data = block + _fs.read_exact(fd, 1 << 24) if len(block) == 1 << 16 else block
    finally:
        _osops.current.close(fd)
    parsed = parse_doc(data)
    return {} if parsed is None else parsed  # a torn or foreign file: counts are advisory, start again


#: No count reaches this (a signed 64-bit counter's range): anything beyond is not ours.
_LIMIT = 1 << 63
#: The fields that are deltas in a shard: negative when a process removed more than it added.
_SIGNED = frozenset({"size", "entries"})


def parse_doc(data: bytes) -> dict[str, dict[str, object]] | None:
    """The buckets of a counters document (a shard or the baseline),
    validated strictly; None if it is not one.

    Valid: a JSON object ``{"format": 1, "buckets": {label: record}}``
    whose every label is a bucket version (``name/vN``) and every record
    holds each of :data:`FIELDS` as an int (not a bool, not a float: no
    ``1e400``), non-negative except the ``size`` and ``entries`` deltas,
    within 64 bits, and ``errors`` as a dict of cause (str) to such a count.
    Anything else (torn, foreign, nested deep enough to exhaust the stack)
    is corrupt as a whole: every reader then starts again from nothing, and
    nothing raises out of ``close()``, ``info()`` or maintenance."""
    import json

    try:
        doc = json.loads(data, parse_float=_refuse, parse_constant=_refuse)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, huge ints, _refuse
        return None
    if not isinstance(doc, dict) or type(doc.get("format")) is not int or doc["format"] != _FORMAT:
        return None
    buckets = doc.get("buckets")
    if not isinstance(buckets, dict):
        return None
    out: dict[str, dict[str, object]] = {}
    for label, record in buckets.items():
        checked = _check_record(label, record)
        if checked is None:
            return None
        out[label] = checked
    return out


def _check_record(label: str, record: object) -> dict[str, object] | None:
    try:
        if not isinstance(record, dict) or _layout.parse_label(label)[1] is None:
            return None
    except ValueError:
        return None
    out: dict[str, object] = {}
    for name in FIELDS:
        value = record.get(name, 0 if name in _OPTIONAL else None)
        if type(value) is not int or not -_LIMIT < value < _LIMIT or (value < 0 and name not in _SIGNED):
            return None
        out[name] = value
    errors = record.get("errors")
    if not isinstance(errors, dict) or not all(
        isinstance(cause, str) and type(n) is int and 0 <= n < _LIMIT for cause, n in errors.items()
    ):
        return None
    out["errors"] = dict(errors)
    return out


def _refuse(text: str) -> object:
    raise ValueError(f"not a count: {text}")


def _write_doc(path: str, buckets: dict[str, dict[str, object]]) -> None:
    import json

    data = json.dumps({"format": _FORMAT, "buckets": buckets}, sort_keys=True, separators=(",", ":")).encode()
    _fs.write_file(path, [data], budget=0.2)


shard_path = _layout.stats_shard


def flush(root: str, deltas: dict[str, dict[str, object]], *, timeout: float = 2.0) -> None:
    """Add ``deltas`` (bucket label -> counts) into this process's shard.

    Raises OSError (including LockTimeoutError) when it cannot; the caller
    keeps the deltas for a later flush.
    """
    if not deltas:
        return
    path = shard_path(root)
    with _locks.FileLock(path + _layout.LOCK_SUFFIX, timeout=timeout):
        current = _read_doc(path)
        for label, data in deltas.items():
            add_into(current, label, data)
        _write_doc(path, current)


def read_totals(root: str) -> dict[str, dict[str, object]]:
    """Totals per bucket label: the baseline plus every shard's deltas.
    Reads 17 small files, however many entries the cache holds."""
    total: dict[str, dict[str, object]] = {}
    for label, data in _read_doc(_layout.stats_baseline(root)).items():
        add_into(total, label, data)
    for n in range(SHARDS):
        for label, data in _read_doc(_layout.stats_shard_n(root, n)).items():
            add_into(total, label, data)
    return total


def rebase(
    root: str,
    sizes: dict[str, tuple[int, int]],
    *,
    full: bool = True,
    drop: Iterable[str] = (),
    drop_all: bool = False,
    timeout: float = 2.0,
) -> None:
    """Record exact ``(size, entries)`` per bucket label (from a walk) as the
    baseline and zero those labels' size and entry deltas in the shards.

    ``full`` (the walk saw all of the cache): every other label's size is
    zero too.  Otherwise labels that were not walked keep their counts,
    which a walk of some buckets needs.  The labels in ``drop`` (every
    label with ``drop_all``) are forgotten entirely, counters and all (their
    bucket versions were removed).  With nothing to record and no counters
    on disk there is nothing to do.

    Holds every shard's lock while it does so, so no flush lands between
    the reset and the new baseline.  Writers still running during the walk
    make the result approximate: a file the walk saw whose writer flushes
    later is counted twice, one written after the walk passed its shard and
    flushed before the rebase is missed.  The next rebase corrects both.
    """
    dropped = set(drop)
    if not sizes and not _fs.exists(_layout.stats_dir(root)):
        return

    def forgotten(label: str) -> bool:
        return drop_all or label in dropped

    def rebased(label: str) -> bool:
        return full or label in sizes

    locks = [_locks.FileLock(_layout.stats_shard_lock(root, n), timeout=timeout) for n in range(SHARDS)]
    held: list[_locks.FileLock] = []
    try:
        for lock in locks:
            lock.acquire()
            held.append(lock)
        for n in range(SHARDS):
            _reset_shard(_layout.stats_shard_n(root, n), forgotten, rebased)
        baseline_path = _layout.stats_baseline(root)
        baseline = {label: data for label, data in _read_doc(baseline_path).items() if not forgotten(label)}
        for label in (set(baseline) | set(sizes)) if full else set(sizes):
            if forgotten(label):
                continue
            entry = baseline.setdefault(label, _empty())
            entry["size"], entry["entries"] = sizes.get(label, (0, 0))
        _write_doc(baseline_path, baseline)
    finally:
        for lock in held:
            lock.release()


def _reset_shard(path: str, forgotten: Callable[[str], bool], rebased: Callable[[str], bool]) -> None:
    """Delete the ``forgotten`` labels from a shard and zero the size and
    entry deltas of the ``rebased`` ones (under the shard's lock)."""
    doc = _read_doc(path)
    changed = False
    for label in list(doc):
        data = doc[label]
        if forgotten(label):
            del doc[label]
            changed = True
        elif rebased(label) and (data.get("size") or data.get("entries")):
            data["size"] = data["entries"] = 0
            changed = True
    if changed:
        _write_doc(path, doc)


def entry_size(path: str) -> int:
    """Size of the file at ``path``; 0 if it is not there or cannot be
    examined (size accounting is advisory: the next trim corrects it, and
    the operation that needs the file reports its own error)."""
    try:
        return _osops.current.lstat(path).st_size
    except OSError:
        return 0

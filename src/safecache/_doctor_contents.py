"""Doctor's checks of what the root holds: its markers, leftovers of dead
processes, and the error causes its counters record.

They need no writing (except that the create step writes missing markers
first), so they run on a cache this user cannot write too.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import time

from . import _errcodes, _fs, _layout, _location, _osops, _stats, _walk
from ._doctor_remedies import ERROR_CAUSES, Advice, cause_remedy, quote
from ._doctor_report import OK, WARN, Finding
from ._units import format_size

#: Temp files and staging trees older than this are leftovers of processes
#: that died (a live writer finishes in far less): maintenance's age, so that
#: what doctor reports is what ``safecache prune`` removes.
STALE_AFTER_S = _walk.LEFTOVER_AGE
#: The leftover scan stops after examining this many directory entries, so
#: doctor stays quick on a huge cache (the count is then a lower bound).
SCAN_LIMIT = 200_000

_WHY = {
    _layout.CACHEDIR_TAG: "backup tools skip the cache only with a valid tag",
    _layout.GITIGNORE: "without it the cache can be committed by accident",
    _layout.README: "it tells people what the directory is",
}


# -- markers --------------------------------------------------------------------------------
_KINDS = (
    (_stat.S_ISLNK, "a symbolic link"),
    (_stat.S_ISFIFO, "a FIFO"),
    (_stat.S_ISDIR, "a directory"),
    (_stat.S_ISSOCK, "a socket"),
    (_stat.S_ISCHR, "a device"),
    (_stat.S_ISBLK, "a device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _read_marker(path: str) -> tuple[str, bytes]:
    """``(state, first bytes)`` of a marker: ``missing``, ``not-regular``
    (a symlink, FIFO, directory or device: never opened, or opened without
    blocking and not read), ``unreadable``, or ``read``."""
    try:
        st = _osops.current.lstat(path)
    except FileNotFoundError:
        return "missing", b""
    except OSError:
        return "unreadable", b""
    if not _stat.S_ISREG(st.st_mode):
        return "not-regular", b""
    try:
        opened = _fs.read_file(path, budget=0.1)  # O_NOFOLLOW, O_NONBLOCK, regular files only
    except OSError as exc:
        return ("not-regular" if exc.errno == errno.ELOOP else "unreadable"), b""
    if opened is None:  # replaced since the lstat: gone, or no longer a regular file
        return ("missing" if not _fs.exists(path) else "not-regular"), b""
    fd, block = opened
    _osops.current.close(fd)
    return "read", block[:4096]


def markers(root: str) -> dict[str, str]:
    """Each marker's state: ``ok``, ``missing``, ``wrong``, ``not-regular`` or ``unreadable``."""
    states = {}
    for name in _layout.MARKERS:
        state, text = _read_marker(os.path.join(root, name))
        if state != "read":
            states[name] = state
            continue
        if name == _layout.CACHEDIR_TAG:
            good = text.startswith(_location.CACHEDIR_TAG.split("\n", 1)[0].encode())
        elif name == _layout.GITIGNORE:
            good = b"*" in (line.strip() for line in text.splitlines())
        else:
            good = bool(text.strip())
        states[name] = "ok" if good else "wrong"
    return states


def check_markers(root: str, before: dict[str, str] | None, *, created: bool) -> Finding:
    """The ``markers`` check.  ``before``: :func:`markers` before the create
    step (None: the root did not exist); ``created``: whether that step worked."""
    now = markers(root)
    data: dict[str, object] = {"markers": now}
    fresh = before is None
    if before is None:
        before = {name: "missing" for name in _layout.MARKERS}  # the root did not exist: created just now
    repaired = [name for name in _layout.MARKERS if before[name] == "missing" and now[name] == "ok"]
    data["created"] = repaired
    bad = {name: state for name, state in now.items() if state != "ok"}
    if not bad:
        detail = "present and correct: " + ", ".join(_layout.MARKERS)
        if fresh:
            detail = "created with the root: " + ", ".join(_layout.MARKERS)
        elif repaired:
            detail += f" (created the missing {', '.join(repaired)})"
        return Finding("markers", OK, detail, data=data)
    parts = []
    for name, state in bad.items():
        if state == "not-regular":
            try:
                what = _kind(_osops.current.lstat(os.path.join(root, name)).st_mode)
            except OSError:
                what = "not a regular file"
            parts.append(f"{name} is {what}, not a regular file: not read ({_WHY[name]})")
        else:
            parts.append(f"{name} is {state} ({_WHY[name]})")
    planted = [quote(os.path.join(root, n)) for n, s in bad.items() if s in ("wrong", "not-regular")]
    if planted:
        remedy = (f"remove {', '.join(planted)} (not what safecache writes there); then `safecache doctor`, run by "
                  "the cache's owner, writes correct ones")
    elif created:
        remedy = "the markers could not be written: see the create check"
    else:
        remedy = "the cache's owner can run `safecache doctor` to write them (this user cannot write the cache)"
    return Finding("markers", WARN, "; ".join(parts), remedy, data)


# -- leftovers ----------------------------------------------------------------------------------
class _Scan:
    """A bounded walk: lists directories and surveys trees until SCAN_LIMIT
    names have been examined."""

    def __init__(self, cutoff: float) -> None:
        self.cutoff = cutoff
        self.examined = 0
        self.truncated = False

    def list(self, directory: str) -> list[os.DirEntry[str]]:
        if self.truncated:
            return []
        try:
            with _osops.current.scandir(directory) as it:
                entries = list(it)
        except OSError:
            return []
        room = SCAN_LIMIT - self.examined
        if len(entries) > room:
            self.truncated = True
            entries = entries[:max(room, 0)]
        self.examined += len(entries)
        return entries

    def old_tree(self, path: str) -> bool:
        """Whether everything under ``path`` is older than the cutoff (what
        maintenance checks before removing a staging tree or trash)."""
        pending = [path]
        try:
            if _osops.current.lstat(path).st_mtime >= self.cutoff:
                return False
        except OSError:
            return False
        while pending:
            for entry in self.list(pending.pop()):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_mtime >= self.cutoff:
                    return False
                if _stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
        return not self.truncated


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def check_leftovers(root: str, *, writable: bool = True, now: float | None = None) -> Finding:
    """The ``stale-temp`` check: the leftovers of killed processes that
    ``safecache prune`` removes, older than an hour, found where it looks
    for them and named by the same :mod:`._layout` predicates: temp files
    in the root, ``stats/`` and the fan-out directories of bucket versions
    (entries and tree pointers); staging and half-removed trees in
    ``tree-objects/``; abandoned trash in the root.  ``writable``: whether
    this user may run prune (else the remedy names the cache's owner)."""
    scan = _Scan((time.time() if now is None else now) - STALE_AFTER_S)
    temp_files = temp_bytes = staging_trees = trash = 0
    try:
        _osops.current.listdir(root)
    except OSError as exc:
        reason = _errcodes.describe(exc, with_type=False, errno_name=True)
        return Finding("stale-temp", WARN, f"cannot look for leftovers: {reason}",
                       "see the read check; the cache's owner can run `safecache doctor`",
                       {"temp_files": 0, "temp_bytes": 0, "staging_trees": 0, "trash": 0, "complete": False})

    def temp(entry: os.DirEntry[str]) -> None:
        nonlocal temp_files, temp_bytes
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return
        if not _stat.S_ISDIR(st.st_mode) and st.st_mtime < scan.cutoff:
            temp_files += 1
            temp_bytes += st.st_size

    for directory in (root, _layout.stats_dir(root)):
        for entry in scan.list(directory):
            if _layout.is_temp(entry.name):
                temp(entry)
            elif directory == root and _layout.is_trash(entry.name) and _is_dir(entry) and scan.old_tree(entry.path):
                trash += 1
    for bucket in scan.list(_layout.buckets_dir(root)):
        if not (_layout.valid_bucket_name(bucket.name) and _is_dir(bucket)):
            continue
        for vdir in scan.list(bucket.path):
            if _layout.parse_version_dir(vdir.name) is None or not _is_dir(vdir):
                continue
            for top in (vdir.path, _layout.trees_dir(vdir.path)):
                for shard in scan.list(top):
                    if _layout.is_shard(shard.name) and _is_dir(shard):
                        for entry in scan.list(shard.path):
                            if _layout.is_temp(entry.name):
                                temp(entry)
            for obj in scan.list(_layout.tree_objects_dir(vdir.path)):
                if (_layout.is_staging(obj.name) or _layout.is_doomed(obj.name)) and _is_dir(obj) \
                        and scan.old_tree(obj.path):
                    staging_trees += 1
    data: dict[str, object] = {"temp_files": temp_files, "temp_bytes": temp_bytes, "staging_trees": staging_trees,
                               "trash": trash, "complete": not scan.truncated}
    at_least = "at least " if scan.truncated else ""
    if not temp_files and not staging_trees and not trash:
        detail = "no temp files, staging trees or trash older than 1 hour"
        if scan.truncated:
            detail += f" among the first {SCAN_LIMIT} files examined"
        return Finding("stale-temp", OK, detail, data=data)
    trash_note = f" and {trash} abandoned trash directories" if trash else ""
    prune = "run `safecache prune` (safe while other processes use the cache); automatic trimming removes them too"
    if not writable:
        prune = "the cache's owner can " + prune
    return Finding(
        "stale-temp", WARN,
        f"{at_least}{temp_files} temp files ({format_size(temp_bytes)}), {staging_trees} staging or half-removed "
        f"trees{trash_note} older than 1 hour: left by processes that were killed or crashed",
        prune,
        data,
    )


# -- the counters ---------------------------------------------------------------------------------
def totals(root: str) -> dict[str, dict[str, object]] | None:
    """The counters per bucket label; None when they cannot be read."""
    try:
        return _stats.read_totals(root)
    except OSError:
        return None


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def cached_size(counters: dict[str, dict[str, object]] | None) -> int:
    """What the cache holds, in bytes, by its counters (0 without them)."""
    return max(0, sum(_int(b.get("size")) for b in (counters or {}).values()))


def check_errors(counters: dict[str, dict[str, object]], advice: Advice) -> Finding:
    """The ``errors`` check: the causes the counters record, each explained."""
    by_cause: dict[str, int] = {}
    by_bucket: dict[str, dict[str, int]] = {}
    corrupt = 0
    for label, counts in sorted(counters.items()):
        corrupt += _int(counts.get("corrupt_removed"))
        errors = counts.get("errors")
        if not isinstance(errors, dict):
            continue
        for cause, n in errors.items():
            if isinstance(n, int) and n > 0:
                by_cause[str(cause)] = by_cause.get(str(cause), 0) + n
                by_bucket.setdefault(label, {})[str(cause)] = n
    data: dict[str, object] = {"by_cause": by_cause, "by_bucket": by_bucket, "corrupt_removed": corrupt}
    corrupt_note = (
        f"; {corrupt} corrupt entries were found and removed (a crash, power loss, or another program writing "
        "into the cache)" if corrupt else ""
    )
    if not by_cause:
        return Finding("errors", OK, f"the counters record no errors{corrupt_note}", data=data)
    parts = []
    remedies = []
    for cause, n in sorted(by_cause.items(), key=lambda item: (-item[1], item[0])):
        meaning = ERROR_CAUSES.get(cause, (f"errors of kind {cause!r}", ""))[0]
        parts.append(f"{cause}: {n} — {meaning}")
        remedies.append(f"{cause}: {cause_remedy(cause, advice)}")
    return Finding("errors", WARN, "errors recorded by the counters: " + "; ".join(parts) + corrupt_note,
                   "; ".join(remedies), data)

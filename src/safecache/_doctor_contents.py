"""Doctor's checks of what the root holds: its markers, leftovers of dead
processes, and the error causes its counters record.

They need no writing (except that the create step writes missing markers
first), so they run on a cache this user cannot write too.
"""

from __future__ import annotations

import os
import time

from . import _errcodes, _layout, _location, _osops, _stats
from ._doctor_remedies import ERROR_CAUSES
from ._doctor_report import OK, WARN, Finding
from ._units import format_size

#: Temp files and staging trees older than this are leftovers of processes
#: that died (a live writer finishes in far less).
STALE_AFTER_S = 3600.0
#: The leftover scan stops after examining this many directory entries, so
#: doctor stays quick on a huge cache (the count is then a lower bound).
SCAN_LIMIT = 200_000

_WHY = {
    _layout.CACHEDIR_TAG: "backup tools skip the cache only with a valid tag",
    _layout.GITIGNORE: "without it the cache can be committed by accident",
    _layout.README: "it tells people what the directory is",
}


# -- markers --------------------------------------------------------------------------------
def markers(root: str) -> dict[str, str]:
    """Each marker's state: ``ok``, ``missing``, ``wrong`` or ``unreadable``."""
    states = {}
    for name in _layout.MARKERS:
        try:
            with open(os.path.join(root, name), "rb") as f:
                text = f.read(4096)
        except FileNotFoundError:
            states[name] = "missing"
            continue
        except OSError:
            states[name] = "unreadable"
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
    parts = [f"{name} is {state} ({_WHY[name]})" for name, state in bad.items()]
    wrong = [os.path.join(root, n) for n, s in bad.items() if s == "wrong"]
    if wrong:
        remedy = (f"remove {', '.join(wrong)}; `safecache doctor` (run by the cache's owner) writes correct ones")
    elif created:
        remedy = "the markers could not be written: see the create check"
    else:
        remedy = "the cache's owner can run `safecache doctor` to write them (this user cannot write the cache)"
    return Finding("markers", WARN, "; ".join(parts), remedy, data)


# -- leftovers ----------------------------------------------------------------------------------
def check_leftovers(root: str, scratch: str | None, *, now: float | None = None) -> Finding:
    """The ``stale-temp`` check: temp files and staging trees older than an
    hour, left by killed processes.  ``scratch`` (doctor's own) is skipped."""
    cutoff = (time.time() if now is None else now) - STALE_AFTER_S
    ops = _osops.current
    temp_files = staging_trees = examined = 0
    temp_bytes = 0
    truncated = False
    errors: list[str] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(ops.scandir(directory))
        except OSError as exc:
            if directory == root:
                errors.append(_errcodes.describe(exc, with_type=False, errno_name=True))
            continue
        in_objects = os.path.basename(directory) == _layout.TREE_OBJECTS
        for entry in entries:
            examined += 1
            if examined > SCAN_LIMIT:
                truncated = True
                stack.clear()
                break
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if directory == root and (name == _layout.LOCKS or entry.path == scratch):
                    continue
                # A tree being built or removed counts once, as a tree: its
                # files are not leftovers of their own.
                if in_objects and (name.endswith(_layout.STAGING_SUFFIX) or _layout.DOOMED_INFIX in name):
                    if st.st_mtime < cutoff:
                        staging_trees += 1
                    continue
                stack.append(entry.path)
            elif _layout.is_temp(name) and st.st_mtime < cutoff:
                temp_files += 1
                temp_bytes += st.st_size
    data: dict[str, object] = {"temp_files": temp_files, "temp_bytes": temp_bytes, "staging_trees": staging_trees,
                               "complete": not truncated}
    if errors:
        return Finding("stale-temp", WARN, f"cannot look for leftovers: {errors[0]}",
                       "see the read check; the cache's owner can run `safecache doctor`", data)
    at_least = "at least " if truncated else ""
    if not temp_files and not staging_trees:
        detail = "no temp files or staging trees older than 1 hour"
        if truncated:
            detail += f" among the first {SCAN_LIMIT} files examined"
        return Finding("stale-temp", OK, detail, data=data)
    return Finding(
        "stale-temp", WARN,
        f"{at_least}{temp_files} temp files ({format_size(temp_bytes)}) and {staging_trees} staging trees older than "
        "1 hour: left by processes that were killed or crashed",
        "run `safecache prune` (safe while other processes use the cache); automatic trimming removes them too",
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


def check_errors(counters: dict[str, dict[str, object]]) -> Finding:
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
        meaning, remedy = ERROR_CAUSES.get(cause, (f"errors of kind {cause!r}", "see the `safecache` logger"))
        parts.append(f"{cause}: {n} — {meaning}")
        remedies.append(f"{cause}: {remedy}")
    return Finding("errors", WARN, "errors recorded by the counters: " + "; ".join(parts) + corrupt_note,
                   "; ".join(remedies), data)

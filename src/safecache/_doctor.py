"""``safecache doctor``: where the cache is, why, and whether it works.

Each check performs the real operation the cache needs, in a scratch
directory inside the root, through the same file-system layer the cache
uses, and reports what failed with what to do about it.  Checks that need
no writing (the file system's type, the markers, free space, leftovers, the
counters' error causes) also run on a cache this user cannot write.

This module runs the checks in order; each lives with its kind:
:mod:`._doctor_probes` (operations in the scratch directory),
:mod:`._doctor_links` (link modes into the target), :mod:`._doctor_fs` (the
disk), :mod:`._doctor_contents` (markers, leftovers, counters);
:mod:`._doctor_report` holds the findings, :mod:`._doctor_remedies` the
advice.  docs/doctor.md lists every check and documents the JSON schema.
"""

from __future__ import annotations

import os
import stat as _stat

from . import _fs, _layout, _location, _osops
from ._doctor_contents import cached_size, check_errors, check_leftovers, check_markers, markers, totals
from ._doctor_fs import check_filesystem, check_free_space
from ._doctor_links import check_links
from ._doctor_probes import probe_operations
from ._doctor_remedies import euid, remedy_for, user
from ._doctor_report import FAIL, OK, WARN, Finding, Report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._cache import Cache


def diagnose(cache: Cache, *, target: str | os.PathLike[str] | None = None, prog: str = "safecache") -> Report:
    """Check ``cache``'s location by performing each operation it needs.

    ``target``: the directory to test link modes into (where trees would be
    placed); default: the current directory, or the cache's own file system
    when the current directory cannot be written.  ``prog``: how remedies
    name the command line (``"mytool cache"`` turns "run `safecache prune`"
    into "run `mytool cache prune`").

    Never raises for a cache problem: each one is a finding.  Leaves nothing
    behind: probes live in a scratch directory that is removed afterwards.
    """
    findings = _diagnose(cache, None if target is None else os.fspath(target))
    if prog != "safecache":
        for f in findings:
            f.detail = f.detail.replace("`safecache ", f"`{prog} ")
            f.remedy = f.remedy.replace("`safecache ", f"`{prog} ")
    return Report(cache.path, cache.location.source, findings, cache.state)


def _diagnose(cache: Cache, target: str | None) -> list[Finding]:
    findings: list[Finding] = []
    loc = cache.location
    path = cache.path
    if path is None:
        findings.append(Finding("location", WARN, f"caching is off: {loc.source}", "unset the switch to enable caching"))
        return findings
    findings.append(Finding("location", OK, f"{path} (chosen by {loc.source})", data={"path": path, "source": loc.source}))
    try:
        st = _osops.current.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # the create check below says what is in the way
    except OSError as exc:
        findings.append(Finding("owner", FAIL, f"cannot examine {path}: {exc}", remedy_for(exc, path, "read")))
        findings.append(check_filesystem(path))
        return findings
    findings.append(_check_owner(path, st))
    if cache.state != _location.READY:
        findings.append(Finding("state", FAIL if cache.state == _location.DISABLED else WARN,
                                f"the cache opens {cache.state}: {cache.state_reason}",
                                "see the checks below for the operation that fails", {"state": cache.state}))
    findings.append(check_filesystem(path))
    listable = st is not None and _listable(path)
    markers_before = markers(path) if listable else None

    # create: the root, its markers, and a scratch directory for the probes
    scratch = _layout.doctor_scratch(path)
    try:
        _location.write_markers(path, cache.app_name)
        _fs.makedirs(scratch)
        findings.append(Finding("create", OK, f"created directories and markers in {path}"))
    except OSError as exc:
        where = _location.nearest_existing(path)
        findings.append(Finding("create", FAIL, f"cannot create directories in {path}: {exc}",
                                remedy_for(exc, where, "create files")))
        if st is not None:
            _check_read_only(cache, findings)
            if markers_before is not None:
                findings.append(check_markers(path, markers_before, created=False))
        if _listable(path):  # it existed, or it was created before the failure
            _read_only_checks(cache, None, target, findings)
        else:
            findings.append(check_free_space(cache, 0))
        return findings
    try:
        findings.append(check_markers(path, markers_before, created=True))
        probe_operations(cache, scratch, findings)
        _read_only_checks(cache, scratch, target, findings)
    finally:
        _fs.discard_tree(scratch, budget=cache.retry_budget)
    return findings


def _check_owner(path: str, st: os.stat_result | None) -> Finding:
    """The root's owner and mode against the user this process runs as."""
    if st is None:
        return Finding("owner", OK, "does not exist yet; it will be created by the first write")
    me = euid()
    mode = _stat.filemode(st.st_mode)
    owner = f"owned by {user(st.st_uid)}, mode {mode}"
    if me is not None:
        owner += f"; this process runs as {user(me)}"
    status, remedy = OK, ""
    if me is not None and st.st_uid != me:
        status = WARN
        remedy = "the cache belongs to another user: writes may fail or leave files that user cannot remove; " \
                 f"use a per-user cache (SAFECACHE_DIR) or `chown -R $(id -u) '{path}'`"
    return Finding("owner", status, owner, remedy, {"uid": st.st_uid, "mode": mode, "euid": me})


def _read_only_checks(cache: Cache, scratch: str | None, target: str | None, findings: list[Finding]) -> None:
    """The checks that need no writing inside the cache (links writes only
    in the target, when it has no scratch directory)."""
    assert cache.path is not None
    links = check_links(cache, scratch, target)
    if links is not None:
        findings.append(links)
    counters = totals(cache.path)
    findings.append(check_free_space(cache, cached_size(counters)))
    findings.append(check_leftovers(cache.path, scratch))
    if counters is not None:
        findings.append(check_errors(counters))


def _listable(path: str) -> bool:
    try:
        _osops.current.listdir(path)
        return True
    except OSError:
        return False


def _check_read_only(cache: Cache, findings: list[Finding]) -> None:
    """When nothing can be created, say whether existing entries can still be read."""
    assert cache.path is not None
    try:
        _osops.current.listdir(cache.path)
        findings.append(Finding("read", OK, "existing entries can still be read: the cache works read-only (hits are served)"))
    except OSError as exc:
        findings.append(Finding("read", FAIL, f"cannot list {cache.path}: {exc}", remedy_for(exc, cache.path, "read")))

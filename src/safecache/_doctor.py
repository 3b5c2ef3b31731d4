"""``safecache doctor``: where the cache is, why, and whether it works.

Each check performs the real operation the cache needs, in a scratch
directory inside the root, through the same file-system layer the cache
uses, and reports what failed with what to do about it.  Checks that need
no writing (the file system's type, the markers, free space, leftovers, the
counters' error causes) also run on a cache this user cannot write.

Doctor follows the cache's own trust rules (docs/security.md): it writes
into the root only when the cache would (its state is ``ready``: the root
and the directories it uses are this user's, or shared mode is on), and
reads nothing from a cache that is not used because another user owns it.
Its scratch directory is made exclusively, under a fresh random name, so a
name planted in the root (a ``.doctor-<pid>`` symlink) is never followed or
reused.

This module runs the checks in order and holds the owner check; the others
live with their kind: :mod:`._doctor_probes` (operations in the scratch
directory), :mod:`._doctor_links` (link modes into the target),
:mod:`._doctor_fs` (the disk), :mod:`._doctor_contents` (markers, leftovers,
counters); :mod:`._doctor_report` holds the findings,
:mod:`._doctor_remedies` the advice.  docs/doctor.md lists every check and
documents the JSON schema.
"""

from __future__ import annotations

import os
import stat as _stat

from . import _fs, _layout, _location, _osops, _trust
from ._doctor_contents import cached_size, check_errors, check_leftovers, check_markers, markers, totals
from ._doctor_fs import check_filesystem, check_free_space
from ._doctor_links import check_links
from ._doctor_probes import probe_operations
from ._doctor_remote import check_remote
from ._doctor_remedies import (
    Advice,
    advice_for,
    foreign_remedy,
    give_back,
    group,
    missing_root,
    quote,
    remedy_for,
    shared_opt_in,
    user,
)
from ._doctor_report import FAIL, OK, WARN, Finding, Report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._cache import Cache

_WORSE = {_location.READY: 0, _location.READ_ONLY: 1, _location.DISABLED: 2}


def diagnose(cache: Cache, *, target: str | os.PathLike[str] | None = None, prog: str = "safecache") -> Report:
    """Check ``cache``'s location by performing each operation it needs.

    ``target``: the directory to test link modes into (where trees would be
    placed); default: the current directory, or the cache's own file system
    when the current directory cannot be written.  ``prog``: how remedies
    name the command line (``"mytool cache"`` turns "run `safecache prune`"
    into "run `mytool cache prune`").

    Never raises for a cache problem: each one is a finding.  Writes into
    the cache only when the cache itself would (its state is ``ready``), and
    leaves nothing behind: probes live in a scratch directory that is
    removed afterwards.
    """
    findings, state = _diagnose(cache, None if target is None else os.fspath(target))
    findings += check_remote(cache)
    if prog != "safecache":
        for f in findings:
            f.detail = f.detail.replace("`safecache ", f"`{prog} ")
            f.remedy = f.remedy.replace("`safecache ", f"`{prog} ")
    return Report(cache.path, cache.location.source, findings, state)


def _diagnose(cache: Cache, target: str | None) -> tuple[list[Finding], str]:
    findings: list[Finding] = []
    loc = cache.location
    path = cache.path
    if path is None:
        findings.append(Finding("location", WARN, f"caching is off: {loc.source}", "unset the switch to enable caching"))
        return findings, cache.state
    findings.append(Finding("location", OK, f"{path} (chosen by {loc.source})", data={"path": path, "source": loc.source}))
    advice = advice_for(cache)
    try:
        st = _osops.current.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # the state and create checks say what is in the way
    except OSError as exc:
        findings.append(Finding("owner", FAIL, f"cannot examine {path}: {exc}", remedy_for(exc, path, "examine files", advice)))
        findings.append(check_filesystem(path, advice))
        return findings, _location.DISABLED
    # The cache's state as it opens now (the trust rules are applied afresh:
    # the root may have changed hands since the Cache was made), or worse if
    # the cache was demoted since.
    probed = _probe(cache)
    state, reason = cache.state, cache.state_reason
    if _WORSE[probed.state] >= _WORSE[state]:
        state, reason = probed.state, probed.reason
    owner = _check_owner(cache, st, probed, advice)
    findings.append(owner)
    remedy = _state_remedy(cache, st, state, probed, owner, advice)
    if state != _location.READY:
        findings.append(Finding("state", FAIL if state == _location.DISABLED else WARN,
                                f"the cache opens {state}: {reason}", remedy, {"state": state}))
    findings.append(check_filesystem(path, advice))
    if state == _location.READY:
        _writable_checks(cache, st, target, advice, findings)
        return findings, state
    why = f"the cache opens {state}, so it writes nothing in {path}, and neither does doctor"
    if st is None and probed.cause == "permission":
        why = missing_root(advice)[0]
    findings.append(Finding("create", FAIL, f"not attempted: {why}", remedy))
    if probed.cause == "owner" or owner.status == FAIL:
        return findings, state  # another user's cache is not used: nothing in it is read either
    if st is None:
        findings.append(check_free_space(cache, 0, advice))
        return findings, state
    try:
        _osops.current.listdir(path)
    except OSError as exc:
        findings.append(Finding("read", FAIL, f"cannot list {path}: {exc}", remedy))
        findings.append(check_free_space(cache, 0, advice))
        return findings, state
    if state == _location.DISABLED:
        findings.append(Finding("read", FAIL, "the cache is disabled: nothing is read from it", remedy))
        findings.append(check_free_space(cache, 0, advice))
        return findings, state
    findings.append(Finding("read", OK, "existing entries can still be read: the cache works read-only (hits are served)"))
    findings.append(check_markers(path, markers(path), created=False))
    _read_only_checks(cache, None, target, advice, findings)
    return findings, state


def _probe(cache: Cache) -> _location.RootState:
    assert cache.path is not None
    try:
        return _location.probe(cache.path, shared=cache.shared, env_var=cache.env_var)
    except OSError as exc:
        return _location.RootState(_location.DISABLED, f"the cache directory could not be examined: {exc}", "unavailable")


def _writable_checks(cache: Cache, st: os.stat_result | None, target: str | None, advice: Advice,
                     findings: list[Finding]) -> None:
    """A cache that opens ready: create the root, its markers and a scratch
    directory, then perform every operation in it."""
    path = cache.path
    assert path is not None
    markers_before = markers(path) if st is not None and _listable(path) else None
    try:
        _location.write_markers(path, cache.app_name, mode=cache.file_mode)
        # Exclusively, under a fresh name: a name that exists (planted, or
        # left by a doctor that was killed) is never followed or reused.
        scratch = _fs.make_temp_dir(path, prefix=_layout.doctor_scratch_prefix())
    except OSError as exc:
        findings.append(Finding("create", FAIL, f"cannot create directories in {path}: {exc}",
                                remedy_for(exc, path, "create files", advice)))
        if st is not None:
            try:
                _osops.current.listdir(path)
                findings.append(Finding("read", OK, "existing entries can still be read: the cache works read-only (hits are served)"))
            except OSError as exc2:
                findings.append(Finding("read", FAIL, f"cannot list {path}: {exc2}", remedy_for(exc2, path, "read files", advice)))
            if markers_before is not None:
                findings.append(check_markers(path, markers_before, created=False))
        if _listable(path):  # it existed, or it was created before the failure
            _read_only_checks(cache, None, target, advice, findings)
        else:
            findings.append(check_free_space(cache, 0, advice))
        return
    findings.append(Finding("create", OK, f"created directories and markers in {path}"))
    try:
        findings.append(check_markers(path, markers_before, created=True))
        probe_operations(cache, scratch, advice, findings)
        _read_only_checks(cache, scratch, target, advice, findings)
    finally:
        _fs.discard_tree(scratch, budget=cache.retry_budget)


def _read_only_checks(cache: Cache, scratch: str | None, target: str | None, advice: Advice,
                      findings: list[Finding]) -> None:
    """The checks that need no writing inside the cache (links writes only
    in the target, when it has no scratch directory)."""
    assert cache.path is not None
    links = check_links(cache, scratch, target, advice)
    if links is not None:
        findings.append(links)
    counters = totals(cache.path)
    findings.append(check_free_space(cache, cached_size(counters), advice))
    findings.append(check_leftovers(cache.path, writable=scratch is not None))
    if counters is not None:
        findings.append(check_errors(counters, advice))


def _listable(path: str) -> bool:
    try:
        _osops.current.listdir(path)
        return True
    except OSError:
        return False


# -- the owner check -----------------------------------------------------------------------------
def _check_owner(cache: Cache, st: os.stat_result | None, probed: _location.RootState, advice: Advice) -> Finding:
    """The root's owner and mode against the user this process runs as, by
    the trust rules (docs/security.md): fails exactly when they refuse the
    root or a directory the cache uses in it; in shared mode, says who can
    write the cache."""
    path = cache.path
    assert path is not None
    me = advice.euid
    if st is None:
        ancestor = _location.nearest_existing(os.path.dirname(path))
        if probed.cause == "owner":
            return Finding("owner", FAIL, f"does not exist yet, and would be created in {ancestor}, which another user "
                           "owns: the cache is not used (a directory root creates there would not be the user's to keep)",
                           missing_root(advice)[1], {"shared": cache.shared})
        if probed.state != _location.READY:
            return Finding("owner", OK, "does not exist (the create check says why it cannot be created)",
                           data={"shared": cache.shared})
        return Finding("owner", OK, f"does not exist yet; the first write creates it in {ancestor}", data={"shared": cache.shared})
    mode = _stat.filemode(st.st_mode)
    detail = f"owned by {user(st.st_uid)}, mode {mode}"
    if me is not None:
        detail += f"; this process runs as {user(me)}"
    data: dict[str, object] = {"uid": st.st_uid, "mode": mode, "euid": me, "shared": cache.shared}
    if me is None or not _stat.S_ISDIR(st.st_mode):
        return Finding("owner", OK, detail, data=data)
    not_used = "the cache is not used: every get misses and every put is a no-op"
    if st.st_uid != me and not cache.shared:
        return Finding("owner", FAIL,
                       f"{detail}: {not_used} (a cache is private to the user who runs it, so another user's entries "
                       "are never served, and nothing is written into another user's directory)",
                       foreign_remedy(advice, st.st_uid), data)
    refused = _trust.distrust(path, st, shared=cache.shared)
    if refused:  # shared mode: writable by every user
        return Finding("owner", FAIL, f"{detail}: {refused}; {not_used}, even in shared mode",
                       f"as its owner: `chmod o-w {quote(path)}`, or point {advice.var} at a directory of your own", data)
    for inner, ist in _inner_dirs(path):
        refused = _trust.distrust(inner, ist, shared=cache.shared)
        if refused:
            return Finding("owner", FAIL, f"{detail}; but {refused}: {not_used}",
                           _inner_remedy(advice, inner, ist, cache.shared), data)
    if not cache.shared:
        return Finding("owner", OK, detail, data=data)
    writers = _writers(path, st, me)
    data["writers"] = writers
    detail += f"; shared mode is on ({advice.shared_by}): directories other users own are trusted"
    if not writers:
        return Finding("owner", OK, detail + "; no other user (besides root) can write the cache now", data=data)
    return Finding(
        "owner", WARN,
        f"{detail}. Who can write it, and so make every user of this cache read bytes of their choosing and place "
        f"files of their choosing from its trees: {', '.join(writers)}, and root; checksums do not stop a writer who "
        "means it",
        f"keep shared mode only if every one of them is trusted; otherwise turn it off (unset {advice.shared_var} and "
        f"SAFECACHE_SHARED) and give each user a cache of their own ({advice.var})",
        data,
    )


def _inner_dirs(root: str) -> list[tuple[str, os.stat_result]]:
    """The directories the cache uses in the root (``buckets/``, ``locks/``,
    ``stats/``) that exist, with their ``lstat``."""
    out = []
    for name in (_layout.BUCKETS, _layout.LOCKS, _layout.STATS):
        inner = os.path.join(root, name)
        try:
            out.append((inner, _osops.current.lstat(inner)))
        except OSError:
            continue
    return out


def _inner_remedy(advice: Advice, inner: str, st: os.stat_result, shared: bool) -> str:
    if _stat.S_ISLNK(st.st_mode) or not _stat.S_ISDIR(st.st_mode):
        return f"remove it (`rm {quote(inner)}`): safecache makes the directory it needs there"
    if shared:
        return f"as its owner: `chmod o-w {quote(inner)}`, or remove it (`rm -r {quote(inner)}`)"
    if advice.euid == 0:
        return foreign_remedy(advice, st.st_uid)
    return (
        f"{inner} belongs to {user(st.st_uid)}: if the cache is yours, give it all back: {give_back(advice)}; or "
        f"remove that directory (`sudo rm -r {quote(inner)}`), or point {advice.var} at a directory of your own. "
        f"Or, {shared_opt_in(advice)}"
    )


def _writers(root: str, st: os.stat_result, me: int) -> list[str]:
    """Who, besides this user and root, can write the root or a directory
    the cache uses in it (shared mode's trust, spelled out)."""
    found: list[str] = []
    for _path, s in [(root, st), *_inner_dirs(root)]:
        if not _stat.S_ISDIR(s.st_mode):
            continue
        for who, yes in (
            (f"{user(s.st_uid)} (an owner)", s.st_uid not in (me, 0)),
            (f"every member of the group {group(s.st_gid)}", bool(s.st_mode & _stat.S_IWGRP)),
            ("every user of this machine", bool(s.st_mode & _stat.S_IWOTH)),
        ):
            if yes and who not in found:
                found.append(who)
    return found


def _state_remedy(cache: Cache, st: os.stat_result | None, state: str, probed: _location.RootState, owner: Finding,
                  advice: Advice) -> str:
    """What to do about a cache that does not open ready: the real cause,
    with real paths and this cache's variable."""
    path = cache.path
    assert path is not None
    cause = probed.cause if probed.state == state else ""
    if state == _location.READY:
        return ""
    if owner.status == FAIL:
        return "see the owner check: the cache is not used until that is fixed"
    if st is None:
        if cause == "permission":
            return missing_root(advice)[1]
        if cause == "read-only":
            return f"the file system is mounted read-only: point {advice.var} at a writable location"
        return f"part of the path {path} is not a directory: remove what is in the way, or point {advice.var} elsewhere"
    if cause == "read-only":
        return f"the file system holding {path} is mounted read-only: point {advice.var} at a writable location"
    if not _stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory: remove it, or point {advice.var} at another location"
    if cause == "permission" and advice.euid is not None and advice.euid != 0:
        need = "u+rwx" if state == _location.DISABLED else "u+w"
        if st.st_uid == advice.euid:
            return f"`chmod {need} {quote(path)}`, or point {advice.var} at another directory"
        lets = "read" if state == _location.DISABLED else "write"
        return (
            f"its owner is {user(st.st_uid)}: ask them to let a group this user is in {lets} it (a group-shared "
            f"cache: docs/security.md, \"Shared mode\"); or, if the cache is yours "
            f"(restored by CI under another account, or written with sudo), give it back: {give_back(advice)}; or "
            f"point {advice.var} at a directory of your own"
        )
    return f"see the checks below; or point {advice.var} at another directory"

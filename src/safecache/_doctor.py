"""``safecache doctor``: where the cache is, why, and whether it works.

Each check performs the real operation the cache needs, in a scratch
directory inside the root, through the same file-system layer the cache
uses, and reports what failed with what to do about it.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import sys

from . import _fs, _location, _locks, _osops
from ._cache import Cache

OK = "ok"
WARN = "warn"
FAIL = "fail"


class Finding:
    """One check: ``name``, ``status`` (ok, warn, fail), what was seen
    (``detail``) and, unless ok, what to do (``remedy``)."""

    __slots__ = ("name", "status", "detail", "remedy")

    def __init__(self, name: str, status: str, detail: str, remedy: str = "") -> None:
        self.name = name
        self.status = status
        self.detail = detail
        self.remedy = remedy

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "remedy": self.remedy}


class Report:
    """The result of :func:`diagnose`."""

    def __init__(self, path: str | None, source: str, findings: list[Finding]) -> None:
        self.path = path
        self.source = source
        self.findings = findings

    @property
    def healthy(self) -> bool:
        return all(f.status != FAIL for f in self.findings)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "source": self.source,
            "healthy": self.healthy,
            "findings": [f.as_dict() for f in self.findings],
        }


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _remedy_for(exc: OSError, path: str, action: str) -> str:
    code = exc.errno
    winerror = getattr(exc, "winerror", None)
    if winerror in (32, 33) or code in (errno.EBUSY, errno.ETXTBSY):
        return (
            f"another process (often an antivirus scanner or indexer on Windows) holds files open in {path}; "
            "exclude the cache directory from real-time scanning, or retry when it is idle"
        )
    if code == errno.EROFS:
        return "the file system is mounted read-only: point the cache at a writable location (SAFECACHE_DIR or --cache-dir)"
    if code in (errno.EACCES, errno.EPERM):
        uid = getattr(os, "geteuid", lambda: None)()
        who = f"user {uid}" if uid is not None else "the current user"
        return (
            f"this user cannot {action} in {path}: fix the owner or mode (e.g. `chown -R $(id -u) '{path}'`, "
            f"as {who} needs write access), or choose another location with SAFECACHE_DIR. A cache directory "
            "restored by CI often arrives owned by another user"
        )
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "the disk or quota is full: free space, or run `safecache clean`"
    if code in (errno.ENOLCK, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", -1)):
        return (
            "the file system does not support locks (NFS without lockd, some network or FUSE mounts): "
            "compute-once may run a factory more than once; put the cache on a local disk"
        )
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"part of the path {path} is a file, not a directory: remove it or choose another location"
    if code == errno.ENAMETOOLONG:
        return "the cache path is too long for this file system: choose a shorter location"
    return f"the operating system reported {exc}; check the file system holding {path}"


def diagnose(cache: Cache) -> Report:
    """Check ``cache``'s location by performing each operation it needs.

    Never raises for a cache problem: each one is a finding.
    """
    findings: list[Finding] = []
    loc = cache.location
    path = cache.path
    if path is None:
        findings.append(Finding("location", WARN, f"caching is off: {loc.source}", "unset the switch to enable caching"))
        return Report(None, loc.source, findings)
    findings.append(Finding("location", OK, f"{path} (chosen by {loc.source})"))
    ops = _osops.current
    try:
        st = ops.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # the create check below says what is in the way
    except OSError as exc:
        findings.append(Finding("owner", FAIL, f"cannot examine {path}: {exc}", _remedy_for(exc, path, "read")))
        return Report(path, loc.source, findings)
    me = getattr(os, "geteuid", lambda: None)()
    if st is not None:
        mode = _stat.filemode(st.st_mode)
        owner = f"owned by {_user(st.st_uid)}, mode {mode}"
        if me is not None:
            owner += f"; this process runs as {_user(me)}"
        status, remedy = OK, ""
        if me is not None and st.st_uid != me:
            status = WARN
            remedy = "the cache belongs to another user: writes may fail or leave files that user cannot remove; " \
                     f"use a per-user cache (SAFECACHE_DIR) or `chown -R $(id -u) '{path}'`"
        findings.append(Finding("owner", status, owner, remedy))
    else:
        findings.append(Finding("owner", OK, "does not exist yet; it will be created by the first write"))
    if cache.state != _location.READY:
        findings.append(Finding("state", FAIL if cache.state == _location.DISABLED else WARN,
                                f"the cache opens {cache.state}: {cache.state_reason}",
                                "see the checks below for the operation that fails"))

    # create: the root, its markers, and a scratch directory for the probes
    scratch = os.path.join(path, f".doctor-{os.getpid()}")
    try:
        _location.write_markers(path)
        _fs.makedirs(scratch)
        findings.append(Finding("create", OK, f"created directories and markers in {path}"))
    except OSError as exc:
        where = _location.nearest_existing(path)
        findings.append(Finding("create", FAIL, f"cannot create directories in {path}: {exc}", _remedy_for(exc, where, "create files")))
        if st is not None:
            _check_read_only(cache, findings)
        return Report(path, loc.source, findings)
    try:
        _probe_operations(cache, scratch, findings)
    finally:
        try:
            _fs.rmtree(scratch, budget=cache.retry_budget)
        except OSError:
            pass
    return Report(path, loc.source, findings)


def _check_read_only(cache: Cache, findings: list[Finding]) -> None:
    """When nothing can be created, say whether existing entries can still be read."""
    assert cache.path is not None
    try:
        os.listdir(cache.path)
        findings.append(Finding("read", OK, "existing entries can still be read: the cache works read-only (hits are served)"))
    except OSError as exc:
        findings.append(Finding("read", FAIL, f"cannot list {cache.path}: {exc}", _remedy_for(exc, cache.path, "read")))


def _probe_operations(cache: Cache, scratch: str, findings: list[Finding]) -> None:
    budget = cache.retry_budget
    ops = _osops.current
    target = os.path.join(scratch, "entry")
    payload = b"safecache doctor probe\n" * 10
    # write
    try:
        _fs.write_file(target, [payload], budget=budget)
        findings.append(Finding("write", OK, "wrote a file through a temp file and rename"))
    except OSError as exc:
        findings.append(Finding("write", FAIL, f"cannot write {target}: {exc}", _remedy_for(exc, scratch, "write files")))
        return
    # read
    try:
        opened = _fs.read_file(target, budget=budget)
        if opened is None:
            raise FileNotFoundError(errno.ENOENT, "written file vanished", target)
        fd, block = opened
        ops.close(fd)
        if block != payload:
            findings.append(Finding("read", FAIL, "read back different bytes than were written",
                                    "the file system is not preserving data: put the cache on another disk"))
        else:
            findings.append(Finding("read", OK, "read back what was written"))
    except OSError as exc:
        findings.append(Finding("read", FAIL, f"cannot read {target}: {exc}", _remedy_for(exc, scratch, "read files")))
    # replace while another handle has the file open (ruff #12284's failure)
    try:
        reader = ops.open(target, _osops.READ_FLAGS, share_delete=False)
    except OSError as exc:
        findings.append(Finding("replace-open", FAIL, f"cannot open {target}: {exc}", _remedy_for(exc, scratch, "open files")))
    else:
        try:
            _fs.write_file(target, [payload + b"2"], budget=min(budget, 0.2))
            findings.append(Finding("replace-open", OK, "replaced a file while another handle had it open"))
        except OSError as exc:
            if getattr(exc, "winerror", None) in (5, 32) or exc.errno in (errno.EACCES, errno.EBUSY):
                findings.append(Finding(
                    "replace-open", WARN,
                    f"replacing a file that another handle has open fails here ({exc}): Windows semantics. "
                    "safecache copes (it never replaces an identical entry, retries, then keeps the old entry); "
                    "other tools that rename over open files fail here",
                    "nothing to do for safecache; exclude the cache from antivirus scanning to reduce retries",
                ))
            else:
                findings.append(Finding("replace-open", FAIL, f"cannot replace {target}: {exc}", _remedy_for(exc, scratch, "replace files")))
        finally:
            ops.close(reader)
    # lock
    lock = _locks.FileLock(os.path.join(scratch, "probe.lock"), timeout=1.0)
    try:
        lock.acquire()
        lock.release()
        findings.append(Finding("lock", OK, "took and released an OS file lock"))
    except OSError as exc:
        findings.append(Finding("lock", FAIL, f"cannot lock a file here: {exc}", _remedy_for(exc, scratch, "lock files")))
    # delete
    try:
        _fs.remove(target, budget=budget)
        findings.append(Finding("delete", OK, "deleted a file"))
    except OSError as exc:
        findings.append(Finding("delete", FAIL, f"cannot delete {target}: {exc}", _remedy_for(exc, scratch, "delete files")))


def render(report: Report) -> str:
    marks = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}
    lines = [f"cache: {report.path or '(disabled)'}", f"chosen by: {report.source}", ""]
    for f in report.findings:
        lines.append(f"[{marks[f.status]}] {f.name}: {f.detail}")
        if f.remedy and f.status != OK:
            lines.append(f"       fix: {f.remedy}")
    lines.append("")
    lines.append("healthy" if report.healthy else "problems found")
    return "\n".join(lines)


def _isatty() -> bool:
    return sys.stdout.isatty()

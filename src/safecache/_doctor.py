"""``safecache doctor``: where the cache is, why, and whether it works.

Each check performs the real operation the cache needs, in a scratch
directory inside the root, through the same file-system layer the cache
uses, and reports what failed with what to do about it.  Checks that need
no writing (the file system's type, the markers, free space, leftovers, the
counters' error causes) also run on a cache this user cannot write.

docs/doctor.md lists every check and documents the JSON schema.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import sys
import time

from . import _fs, _link, _location, _locks, _osops
from ._cache import Cache

OK = "ok"
WARN = "warn"
FAIL = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

#: Version of the JSON document ``Report.as_dict`` returns.  Bumped only for
#: an incompatible change; new fields may appear without a bump.
SCHEMA = 1

#: Temp files and staging trees older than this are leftovers of processes
#: that died (a live writer finishes in far less).
STALE_AFTER_S = 3600.0
#: The leftover scan stops after examining this many directory entries, so
#: doctor stays quick on a huge cache (the count is then a lower bound).
SCAN_LIMIT = 200_000

_MOUNTS = "/proc/self/mounts"
_LINK_CHAIN = ("clone", "hardlink", "copy")  # what "auto" tries, in order


class Finding:
    """One check: ``name``, ``status`` (ok, warn, fail), what was seen
    (``detail``), unless ok what to do (``remedy``), and machine-readable
    facts (``data``, a JSON-serialisable dict, empty for most checks)."""

    __slots__ = ("name", "status", "detail", "remedy", "data")

    def __init__(
        self, name: str, status: str, detail: str, remedy: str = "", data: dict[str, object] | None = None
    ) -> None:
        self.name = name
        self.status = status
        self.detail = detail
        self.remedy = remedy
        self.data: dict[str, object] = data if data is not None else {}

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "remedy": self.remedy, "data": self.data}

    def __repr__(self) -> str:
        return f"Finding({self.name!r}, {self.status!r}, {self.detail!r})"


class Report:
    """The result of :func:`diagnose`: the location, its state, and the findings in order."""

    def __init__(self, path: str | None, source: str, findings: list[Finding], state: str = "") -> None:
        self.path = path
        self.source = source
        self.findings = findings
        self.state = state

    @property
    def healthy(self) -> bool:
        """False exactly when some finding failed."""
        return all(f.status != FAIL for f in self.findings)

    @property
    def status(self) -> str:
        """The worst status among the findings."""
        return max((f.status for f in self.findings), key=_RANK.__getitem__, default=OK)

    def finding(self, name: str) -> Finding | None:
        """The finding called ``name``, if that check ran."""
        for f in self.findings:
            if f.name == name:
                return f
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "path": self.path,
            "source": self.source,
            "state": self.state,
            "healthy": self.healthy,
            "status": self.status,
            "findings": [f.as_dict() for f in self.findings],
        }


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _describe(exc: BaseException) -> str:
    winerror = getattr(exc, "winerror", None)
    if winerror:
        return f"[WinError {winerror}] {getattr(exc, 'strerror', '') or exc}"
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc)


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
    ops = _osops.current
    try:
        st = ops.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # the create check below says what is in the way
    except OSError as exc:
        findings.append(Finding("owner", FAIL, f"cannot examine {path}: {exc}", _remedy_for(exc, path, "read")))
        findings.append(_check_filesystem(path))
        return findings
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
        findings.append(Finding("owner", status, owner, remedy, {"uid": st.st_uid, "mode": mode, "euid": me}))
    else:
        findings.append(Finding("owner", OK, "does not exist yet; it will be created by the first write"))
    if cache.state != _location.READY:
        findings.append(Finding("state", FAIL if cache.state == _location.DISABLED else WARN,
                                f"the cache opens {cache.state}: {cache.state_reason}",
                                "see the checks below for the operation that fails", {"state": cache.state}))
    findings.append(_check_filesystem(path))
    listable = st is not None and _listable(path)
    markers_before = _markers(path) if listable else None

    # create: the root, its markers, and a scratch directory for the probes
    scratch = os.path.join(path, f".doctor-{os.getpid()}")
    try:
        _location.write_markers(path, cache.app_name)
        _fs.makedirs(scratch)
        findings.append(Finding("create", OK, f"created directories and markers in {path}"))
    except OSError as exc:
        where = _location.nearest_existing(path)
        findings.append(Finding("create", FAIL, f"cannot create directories in {path}: {exc}", _remedy_for(exc, where, "create files")))
        if st is not None:
            _check_read_only(cache, findings)
            if markers_before is not None:
                findings.append(_check_markers(path, markers_before, created=False))
        if _listable(path):  # it existed, or it was created before the failure
            _read_only_checks(cache, None, target, findings)
        else:
            findings.append(_check_free_space(cache, None))
        return findings
    try:
        findings.append(_check_markers(path, markers_before, created=True))
        _probe_operations(cache, scratch, findings)
        _read_only_checks(cache, scratch, target, findings)
    finally:
        try:
            _fs.rmtree(scratch, budget=cache.retry_budget)
        except OSError:
            pass
    return findings


def _read_only_checks(cache: Cache, scratch: str | None, target: str | None, findings: list[Finding]) -> None:
    """The checks that need no writing inside the cache (links writes only
    in the target, when it has no scratch directory)."""
    assert cache.path is not None
    links = _check_links(cache, scratch, target)
    if links is not None:
        findings.append(links)
    totals = _totals(cache.path)
    findings.append(_check_free_space(cache, totals))
    findings.append(_check_leftovers(cache.path, scratch))
    if totals is not None:
        findings.append(_check_errors(totals))


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
    # locks: exclusive, then shared
    lock_path = os.path.join(scratch, "probe.lock")
    lock = _locks.FileLock(lock_path, timeout=1.0)
    try:
        lock.acquire()
        lock.release()
        findings.append(Finding("lock", OK, "took and released an OS file lock"))
    except OSError as exc:
        findings.append(Finding("lock", FAIL, f"cannot lock a file here: {exc}", _remedy_for(exc, scratch, "lock files")))
    findings.append(_check_shared_lock(lock_path, scratch))
    # delete
    try:
        _fs.remove(target, budget=budget)
        findings.append(Finding("delete", OK, "deleted a file"))
    except OSError as exc:
        findings.append(Finding("delete", FAIL, f"cannot delete {target}: {exc}", _remedy_for(exc, scratch, "delete files")))


def _check_shared_lock(lock_path: str, scratch: str) -> Finding:
    """Two shared holders at once, and an exclusive lock kept out while they
    hold it: what a tree in use relies on (readers share, a remover waits)."""
    first = _locks.FileLock(lock_path, timeout=1.0, shared=True)
    second = _locks.FileLock(lock_path, timeout=1.0, shared=True)
    exclusive = _locks.FileLock(lock_path, timeout=0.05)
    try:
        first.acquire()
    except OSError as exc:
        return Finding("shared-lock", FAIL, f"cannot take a shared lock here: {exc}", _remedy_for(exc, scratch, "lock files"))
    try:
        try:
            second.acquire()
        except TimeoutError:
            return Finding(
                "shared-lock", WARN, "a second shared lock waited for the first: shared locks behave as exclusive here",
                "processes using the same tree wait for each other; put the cache on a local disk",
            )
        except OSError as exc:
            return Finding("shared-lock", FAIL, f"cannot take a second shared lock: {exc}", _remedy_for(exc, scratch, "lock files"))
        try:
            exclusive.acquire()
        except TimeoutError:
            return Finding("shared-lock", OK, "two shared locks held at once, and they kept an exclusive lock out")
        except OSError as exc:
            return Finding("shared-lock", FAIL, f"cannot take an exclusive lock next to shared ones: {exc}",
                           _remedy_for(exc, scratch, "lock files"))
        exclusive.release()
        return Finding(
            "shared-lock", FAIL, "an exclusive lock was granted while shared locks were held: locks do not exclude here",
            "the file system does not honour locks (some network or FUSE mounts): trees in use may be removed "
            "under their readers and compute-once may run twice; put the cache on a local disk",
        )
    finally:
        second.release()
        first.release()


# -- the file system ------------------------------------------------------------------------
def _read_mounts() -> str | None:
    try:
        with open(_MOUNTS, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _is_wsl() -> bool:
    try:
        with open("/proc/sys/kernel/osrelease", encoding="ascii", errors="replace") as f:
            release = f.read().lower()
    except OSError:
        return False
    return "microsoft" in release or "wsl" in release


def _unescape_mount(field: str) -> str:
    """/proc/self/mounts escapes space, tab, newline and backslash as octal."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mounts: str) -> tuple[str, str, str] | None:
    """``(fstype, mount point, device)`` of the mount holding ``path`` in a
    /proc/self/mounts text: the longest matching mount point, the last one
    listed when mounts are stacked."""
    best: tuple[str, str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, point, fstype = _unescape_mount(fields[0]), _unescape_mount(fields[1]), fields[2]
        if point != "/" and path != point and not path.startswith(point.rstrip("/") + "/"):
            continue
        if best is None or len(point) >= len(best[1]):
            best = (fstype, point, device)
    return best


def filesystem_of(path: str) -> dict[str, object]:
    """What holds ``path``: ``type`` (lower case, ``"unknown"`` when it
    cannot be told), ``mount_point``, ``device``, ``wsl`` and ``remote``."""
    info: dict[str, object] = {"type": "unknown", "mount_point": None, "device": None, "wsl": False, "remote": False}
    existing = os.path.realpath(_location.nearest_existing(path))
    if sys.platform.startswith("linux"):
        mounts = _read_mounts()
        found = mount_of(existing, mounts) if mounts else None
        if found is not None:
            info["type"], info["mount_point"], info["device"] = found[0].lower(), found[1], found[2]
        info["wsl"] = _is_wsl()
    elif sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        info.update(_windows_volume(existing))
    return info


def _windows_volume(path: str) -> dict[str, object]:  # pragma: no cover - Windows only
    if sys.platform != "win32":
        return {}
    try:
        import ctypes

        kernel32 = ctypes.windll.kernel32
        volume = ctypes.create_unicode_buffer(261)
        if not kernel32.GetVolumePathNameW(path, volume, 261):
            return {}
        name = ctypes.create_unicode_buffer(261)
        if not kernel32.GetVolumeInformationW(volume.value, None, 0, None, None, None, name, 261):
            return {}
        remote = kernel32.GetDriveTypeW(volume.value) == 4  # DRIVE_REMOTE
        return {"type": name.value.lower() or "unknown", "mount_point": volume.value, "remote": bool(remote)}
    except (OSError, AttributeError, ValueError):
        return {}


_NFS = ("nfs", "nfs3", "nfs4")
_SMB = ("cifs", "smb3", "smb2", "smbfs")
_FAT = ("vfat", "msdos", "fat", "fat12", "fat16", "fat32", "exfat")


def _caveat(fs: dict[str, object]) -> tuple[str, str] | None:
    """``(caveat, remedy)`` for a file system with known caveats, else None."""
    kind = str(fs["type"])
    wsl = bool(fs.get("wsl"))
    local = "put the cache on a local disk (SAFECACHE_DIR or --cache-dir)"
    caveat: str
    remedy: str
    if kind in _NFS:
        caveat = ("NFS: locks are unreliable (they need lockd and may silently not exclude), so there is no "
                  "compute-once guarantee; clocks of other machines skew the least-recently-used order")
        remedy = f"{local}; to share between machines use a remote tier instead of a shared directory"
    elif kind in _SMB or fs.get("remote"):
        caveat = ("SMB/CIFS network share: locks and rename-over semantics are not those of a local disk (a file "
                  "open elsewhere cannot be replaced or deleted), and every operation is a network round trip")
        remedy = f"{local}; to share between machines use a remote tier"
    elif kind in ("overlay", "overlayfs", "aufs"):
        caveat = ("overlay file system (a container's writable layer): a file from a lower layer is copied up "
                  "when first written, hard links across layers break into copies, and writes are slower")
        remedy = "mount a volume for the cache (`docker run -v` or a BuildKit cache mount: --mount=type=cache)"
    elif kind in ("9p", "v9fs", "drvfs"):
        where = "a Windows drive seen from WSL" if wsl or kind == "drvfs" else "a host directory shared over 9p"
        caveat = (f"{where}: every operation crosses to the host (slow), renames over files open on the other "
                  "side fail, and locks are not shared with the host")
        remedy = "keep the cache in the Linux file system (e.g. under ~/.cache, the default)" if wsl else local
    elif kind == "virtiofs":
        caveat = ("virtiofs (a host directory shared into a VM or Docker Desktop): slow, and ownership, locks "
                  "and renames depend on the host")
        remedy = local
    elif kind in ("tmpfs", "ramfs"):
        caveat = "tmpfs: kept in memory, so the cache is emptied at every reboot and its size counts against RAM"
        remedy = "fine for a throw-away cache (CI); for one that persists, point SAFECACHE_DIR at a disk"
    elif kind in ("fuse", "fuseblk") or kind.startswith("fuse."):
        caveat = (f"FUSE file system ({kind}): locks, renames over open files and hard links depend on the "
                  "implementation (see the lock and links checks)")
        remedy = local
    elif kind in _FAT:
        caveat = (f"{kind}: no hard links, no symlinks, no permissions, 2-second timestamps; FAT32 also limits "
                  "files to 4 GiB")
        remedy = "put the cache on an NTFS, ext4, APFS, btrfs or XFS volume"
    else:
        return None
    return caveat, remedy


def _check_filesystem(path: str) -> Finding:
    try:
        fs = filesystem_of(path)
    except OSError as exc:  # pragma: no cover - realpath of an existing path
        return Finding("filesystem", OK, f"could not tell the file system type: {exc}", data={"type": "unknown"})
    kind = str(fs["type"])
    where = f" mounted at {fs['mount_point']}" if fs["mount_point"] else ""
    wsl = " under WSL" if fs["wsl"] else ""
    caveat = _caveat(fs)
    if caveat is None:
        return Finding("filesystem", OK, f"{kind}{where}{wsl}", data=fs)
    return Finding("filesystem", WARN, f"{kind}{where}{wsl}: {caveat[0]}", caveat[1], fs)


# -- markers --------------------------------------------------------------------------------
_MARKERS = ("CACHEDIR.TAG", ".gitignore", "README")


def _markers(root: str) -> dict[str, str]:
    """Each marker's state: ``ok``, ``missing``, ``wrong`` or ``unreadable``."""
    states = {}
    for name in _MARKERS:
        try:
            with open(os.path.join(root, name), "rb") as f:
                text = f.read(4096)
        except FileNotFoundError:
            states[name] = "missing"
            continue
        except OSError:
            states[name] = "unreadable"
            continue
        if name == "CACHEDIR.TAG":
            good = text.startswith(_location.CACHEDIR_TAG.split("\n", 1)[0].encode())
        elif name == ".gitignore":
            good = b"*" in (line.strip() for line in text.splitlines())
        else:
            good = bool(text.strip())
        states[name] = "ok" if good else "wrong"
    return states


def _check_markers(root: str, before: dict[str, str] | None, *, created: bool) -> Finding:
    why = {
        "CACHEDIR.TAG": "backup tools skip the cache only with a valid tag",
        ".gitignore": "without it the cache can be committed by accident",
        "README": "it tells people what the directory is",
    }
    now = _markers(root)
    data: dict[str, object] = {"markers": now}
    fresh = before is None
    if before is None:
        before = {name: "missing" for name in _MARKERS}  # the root did not exist: created just now
    repaired = [name for name in _MARKERS if before[name] == "missing" and now[name] == "ok"]
    data["created"] = repaired
    bad = {name: state for name, state in now.items() if state != "ok"}
    if not bad:
        detail = "present and correct: " + ", ".join(_MARKERS)
        if fresh:
            detail = "created with the root: " + ", ".join(_MARKERS)
        elif repaired:
            detail += f" (created the missing {', '.join(repaired)})"
        return Finding("markers", OK, detail, data=data)
    parts = [f"{name} is {state} ({why[name]})" for name, state in bad.items()]
    wrong = [os.path.join(root, n) for n, s in bad.items() if s == "wrong"]
    if wrong:
        remedy = (f"remove {', '.join(wrong)}; `safecache doctor` (run by the cache's owner) writes correct ones")
    elif created:
        remedy = "the markers could not be written: see the create check"
    else:
        remedy = "the cache's owner can run `safecache doctor` to write them (this user cannot write the cache)"
    return Finding("markers", WARN, "; ".join(parts), remedy, data)


# -- links ------------------------------------------------------------------------------------
def _probe_source(cache: Cache, scratch: str | None) -> str | None:
    """A file in the cache to link from: a fresh probe file when the cache
    can be written, else an existing file (what is already there is what
    will be linked)."""
    assert cache.path is not None
    if scratch is not None:
        source = os.path.join(scratch, "link-source")
        try:
            _fs.write_file(source, [b"safecache doctor link probe\n"], budget=cache.retry_budget)
            return source
        except OSError:
            pass
    for name in _MARKERS:
        candidate = os.path.join(cache.path, name)
        try:
            if _stat.S_ISREG(_osops.current.lstat(candidate).st_mode) and os.access(candidate, os.R_OK):
                return candidate
        except OSError:
            continue
    return None


def _make_probe_dir(parent: str) -> str:
    ops = _osops.current
    for _ in range(10):
        path = os.path.join(parent, f".safecache-doctor-{os.getpid()}-{os.urandom(3).hex()}")
        try:
            ops.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not find a free probe directory name", parent)


def _check_links(cache: Cache, scratch: str | None, target: str | None) -> Finding | None:
    """Try every link mode from a file in the cache into the target directory."""
    assert cache.path is not None
    source = _probe_source(cache, scratch)
    if source is None:
        return None  # nothing to link from: the create and read checks say why
    explicit = target is not None
    if target is None:
        try:
            target = os.getcwd()
        except OSError:
            target = None
    where_from = "--target" if explicit else "the current directory"
    probe_dir: str | None = None
    error: OSError | None = None
    if target is not None:
        target = os.path.abspath(target)
        try:
            probe_dir = _make_probe_dir(target)
        except OSError as exc:
            error = exc
    if probe_dir is None and explicit:
        assert error is not None and target is not None
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            remedy = f"{target} is not an existing directory: pass --target a directory where files would be placed"
        else:
            remedy = _remedy_for(error, target, "create files")
        return Finding("links", WARN, f"cannot create a probe directory in the target {target}: {_describe(error)}",
                       remedy, {"target": target, "target_source": where_from})
    if probe_dir is None:
        if scratch is None:
            return Finding(
                "links", WARN,
                f"could not test link modes: {target or 'the current directory'} is not writable, nor is the cache",
                "pass --target DIR with a directory this user can write where files would be placed",
                {"target": target, "target_source": where_from},
            )
        probe_dir = os.path.join(scratch, "links")
        _fs.makedirs(probe_dir)
        note = f" (the current directory {target} is not writable; pass --target DIR to test a destination)"
        target, where_from = cache.path, "the cache's own file system"
    else:
        note = ""
    try:
        return _link_finding(cache, source, probe_dir, target or "", where_from, note)
    finally:
        try:
            _fs.rmtree(probe_dir, budget=cache.retry_budget)
        except OSError:
            pass


def _link_finding(cache: Cache, source: str, probe_dir: str, target: str, where_from: str, note: str) -> Finding:
    ops = _osops.current
    results: dict[str, OSError | None] = {}
    for mode in ("clone", "hardlink", "symlink", "copy"):
        dst = os.path.join(probe_dir, mode)
        try:
            if mode == "clone":
                ops.clone(source, dst)
            elif mode == "hardlink":
                ops.link(source, dst)
            elif mode == "symlink":
                ops.symlink(os.path.abspath(source), dst)
            else:
                ops.copyfile(source, dst)
            results[mode] = None
        except OSError as exc:
            results[mode] = exc
    # What Placer("auto") does: down the chain while a mode is unsupported here.
    auto: str | None = None
    auto_error: OSError | None = None
    for mode in _LINK_CHAIN:
        failure = results[mode]
        if failure is None:
            auto = mode
            break
        if mode != "copy" and _link._unsupported(mode, failure):
            continue
        auto_error = failure
        break
    try:
        configured = _link.resolve_mode(None)
    except ValueError as exc:
        configured = "invalid"
        config_error = str(exc)
    else:
        config_error = ""
    modes = {m: {"works": e is None, "error": "" if e is None else _describe(e)} for m, e in results.items()}
    data: dict[str, object] = {"target": target, "target_source": where_from, "modes": modes, "auto": auto,
                               "configured": configured}
    listing = ", ".join(
        f"{m} {'yes' if e is None else 'no (' + _describe(e) + ')'}" for m, e in results.items()
    )
    detail = f"from the cache to {target}{note}: {listing}; auto uses {auto or 'nothing (it fails)'}"
    if auto is None:
        assert auto_error is not None
        return Finding("links", FAIL, detail, _remedy_for(auto_error, target, "place files"), data)
    if config_error:
        return Finding("links", WARN, detail + f"; {config_error}",
                       f"set {_link.ENV_VAR} to one of {', '.join(_link.MODES)}, or unset it", data)
    if configured not in ("auto", "clone") and results[configured] is not None:
        fallback = "copy"
        return Finding(
            "links", WARN, detail + f"; {_link.ENV_VAR}={configured} does not work here, so safecache falls back to {fallback}",
            f"unset {_link.ENV_VAR} or set it to auto", data,
        )
    if auto == "copy":
        assert results["hardlink"] is not None
        return Finding("links", WARN, detail + ": placing a tree copies every file (slower, uses disk space)",
                       _no_hardlink_remedy(results["hardlink"], source, target), data)
    return Finding("links", OK, detail, data=data)


def _no_hardlink_remedy(exc: OSError, source: str, target: str) -> str:
    winerror = getattr(exc, "winerror", None)
    if exc.errno == errno.EXDEV or winerror == 17:
        return (
            f"the cache and {target} are on different file systems (cross-device), and hard links and clones cannot "
            "cross them: put the cache on the same file system as the target (SAFECACHE_DIR), "
            "or accept copies"
        )
    if winerror == 1 or exc.errno in (errno.ENOSYS, getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)):
        return (
            "the file system has no hard links (FAT/exFAT, some network and FUSE file systems): put the cache "
            "and the target on NTFS, ext4, APFS, btrfs or XFS, or accept copies"
        )
    if exc.errno in (errno.EPERM, errno.EACCES):
        try:
            owner = _osops.current.lstat(source).st_uid
        except OSError:
            owner = None
        me = getattr(os, "geteuid", lambda: None)()
        if owner is not None and me is not None and owner != me:
            return (
                f"the cache's files belong to {_user(owner)}, and Linux (fs.protected_hardlinks) refuses to hard-link "
                f"another user's files: `chown -R $(id -u)` the cache (a cache restored by CI often arrives owned by "
                "another user), or use a per-user cache (SAFECACHE_DIR)"
            )
        return (
            "the file system refuses hard links (FAT/exFAT have none; some network and FUSE file systems refuse "
            "them): put the cache and the target on NTFS, ext4, APFS, btrfs or XFS, or accept copies"
        )
    return f"hard links fail here ({_describe(exc)}); check the file systems holding the cache and {target}"


# -- space, leftovers, counters ---------------------------------------------------------------
def _totals(root: str) -> dict[str, dict[str, object]] | None:
    from . import _stats

    try:
        return _stats.read_totals(root)
    except OSError:
        return None


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _disk_usage(path: str) -> tuple[int, int, int]:
    import shutil

    usage = shutil.disk_usage(path)
    return usage.total, usage.used, usage.free


def _check_free_space(cache: Cache, totals: dict[str, dict[str, object]] | None) -> Finding:
    assert cache.path is not None
    where = _location.nearest_existing(cache.path)
    try:
        total, _used, free = _disk_usage(where)
    except OSError as exc:
        return Finding("free-space", WARN, f"cannot tell the free space of {where}: {_describe(exc)}",
                       _remedy_for(exc, where, "examine files"))
    size = max(0, sum(_int(b.get("size")) for b in (totals or {}).values()))
    limit = cache.max_size
    data: dict[str, object] = {"free": free, "total": total, "size": size, "max_size": limit}
    if limit is None:
        if total and free < min(total // 100, 1 << 30):
            return Finding("free-space", WARN, f"{_human(free)} free of {_human(total)}, and the cache has no size limit",
                           "free space, or give the cache a size limit (Cache(max_size=...)) and run `safecache prune`", data)
        return Finding("free-space", OK, f"{_human(free)} free; the cache has no size limit", data=data)
    room = max(0, limit - size)
    data["room"] = room
    if free < room:
        return Finding(
            "free-space", WARN,
            f"{_human(free)} free, but the cache may still grow by {_human(room)} (limit {_human(limit)}, "
            f"now {_human(size)}): the disk fills before the cache reaches its limit",
            "free space on the disk, lower the cache's size limit (Cache(max_size=...), then `safecache prune "
            "--max-size SIZE`), or move the cache to a larger disk (SAFECACHE_DIR)",
            data,
        )
    return Finding("free-space", OK, f"{_human(free)} free; the cache uses {_human(size)} of its {_human(limit)} limit",
                   data=data)


def _check_leftovers(root: str, scratch: str | None, *, now: float | None = None) -> Finding:
    """Temp files and staging trees older than an hour: left by killed processes."""
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
                errors.append(_describe(exc))
            continue
        in_objects = os.path.basename(directory) == "tree-objects"
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
                if directory == root and (name == "locks" or entry.path == scratch):
                    continue
                if in_objects and (name.endswith(_fs.TEMP_SUFFIX) or ".del-" in name):
                    if st.st_mtime < cutoff:
                        staging_trees += 1
                    continue
                stack.append(entry.path)
            elif name.endswith(_fs.TEMP_SUFFIX) and st.st_mtime < cutoff:
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
        f"{at_least}{temp_files} temp files ({_human(temp_bytes)}) and {staging_trees} staging trees older than "
        "1 hour: left by processes that were killed or crashed",
        "run `safecache prune` (safe while other processes use the cache); automatic trimming removes them too",
        data,
    )


#: What each error cause of the counters means, and what to do about it.
ERROR_CAUSES: dict[str, tuple[str, str]] = {
    "busy": (
        "files held open by another process (antivirus? an indexer? another tool?)",
        "exclude the cache directory from real-time scanning and indexing",
    ),
    "permission": (
        "the operating system denied access",
        "fix the cache's owner or mode (`chown -R $(id -u) <dir>`), or use a per-user cache (SAFECACHE_DIR)",
    ),
    "read-only": ("writes refused by a read-only file system or cache", "point the cache at a writable location (SAFECACHE_DIR)"),
    "owner": ("writes refused because the cache belongs to another user", "use a per-user cache (SAFECACHE_DIR), or sudo -H"),
    "full": ("the disk or quota was full", "free space, lower the size limit, or run `safecache prune`"),
    "lock-unsupported": (
        "the file system could not lock files (compute-once may have run twice)",
        "put the cache on a local disk",
    ),
    "lock-timeout": (
        "waited too long for a lock held by another process (a long computation, or a hung process)",
        "find the hung process, or raise the cache's lock_timeout",
    ),
    "name-too-long": ("a path was too long for the file system", "choose a shorter cache location"),
    "too-many-files": ("the process ran out of file descriptors", "raise the open-file limit (ulimit -n)"),
    "unavailable": ("the cache directory could not be used", "run `safecache doctor` where the error happened"),
    "io": (
        "other I/O errors",
        "the `safecache` logger has the details (logging.getLogger('safecache')); check the disk",
    ),
    "internal": ("unexpected errors inside safecache", "please report them with the `safecache` logger's output"),
}


def _check_errors(totals: dict[str, dict[str, object]]) -> Finding:
    by_cause: dict[str, int] = {}
    by_bucket: dict[str, dict[str, int]] = {}
    corrupt = 0
    for label, counts in sorted(totals.items()):
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


# -- text -------------------------------------------------------------------------------------
_COLORS = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[1;31m"}
_RESET = "\033[0m"


def render(report: Report, *, color: bool = False) -> str:
    """The report as text; ``color`` adds ANSI colours to the status marks."""
    marks = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}

    def paint(status: str, text: str) -> str:
        return f"{_COLORS[status]}{text}{_RESET}" if color else text

    lines = [f"cache: {report.path or '(disabled)'}", f"chosen by: {report.source}", ""]
    for f in report.findings:
        lines.append(f"[{paint(f.status, marks[f.status])}] {f.name}: {f.detail}")
        if f.remedy and f.status != OK:
            lines.append(f"       fix: {f.remedy}")
    lines.append("")
    lines.append(paint(OK, "healthy") if report.healthy else paint(FAIL, "problems found"))
    return "\n".join(lines)

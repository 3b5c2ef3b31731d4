"""Doctor's checks of the disk under the cache: its file system's caveats, and free space.

They need no writing, so they run on a cache this user cannot write too.
The facts come from :mod:`._fsinfo`; this module judges them.
"""

from __future__ import annotations

from . import _errcodes, _fsinfo, _location
from ._doctor_remedies import Advice, remedy_for
from ._doctor_report import OK, WARN, Finding
from ._units import format_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._cache import Cache

_NFS = ("nfs", "nfs3", "nfs4")
_SMB = ("cifs", "smb3", "smb2", "smbfs")
_FAT = ("vfat", "msdos", "fat", "fat12", "fat16", "fat32", "exfat")


def _caveat(fs: dict[str, object], var: str) -> tuple[str, str] | None:
    """``(caveat, remedy)`` for a file system with known caveats, else None;
    ``var`` is the variable that moves the cache."""
    kind = str(fs["type"])
    wsl = bool(fs.get("wsl"))
    local = f"put the cache on a local disk ({var} or --cache-dir)"
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
        remedy = f"fine for a throw-away cache (CI); for one that persists, point {var} at a disk"
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


def check_filesystem(path: str, advice: Advice) -> Finding:
    """The ``filesystem`` check: the type holding ``path``, and its caveats."""
    try:
        fs = _fsinfo.filesystem_of(path)
    except OSError as exc:  # pragma: no cover - realpath of an existing path
        return Finding("filesystem", OK, f"could not tell the file system type: {exc}", data={"type": "unknown"})
    kind = str(fs["type"])
    where = f" mounted at {fs['mount_point']}" if fs["mount_point"] else ""
    wsl = " under WSL" if fs["wsl"] else ""
    caveat = _caveat(fs, advice.var)
    if caveat is None:
        return Finding("filesystem", OK, f"{kind}{where}{wsl}", data=fs)
    return Finding("filesystem", WARN, f"{kind}{where}{wsl}: {caveat[0]}", caveat[1], fs)


def check_free_space(cache: Cache, size: int, advice: Advice) -> Finding:
    """The ``free-space`` check: free space against what the cache may still
    grow by (its limit less ``size``, what it holds by its counters)."""
    assert cache.path is not None
    where = _location.nearest_existing(cache.path)
    try:
        total, _used, free = _fsinfo.disk_usage(where)
    except OSError as exc:
        return Finding("free-space", WARN,
                       f"cannot tell the free space of {where}: {_errcodes.describe(exc, with_type=False, errno_name=True)}",
                       remedy_for(exc, where, "examine files", advice))
    limit = cache.max_size
    data: dict[str, object] = {"free": free, "total": total, "size": size, "max_size": limit}
    if limit is None:
        if total and free < min(total // 100, 1 << 30):
            return Finding("free-space", WARN,
                           f"{format_size(free)} free of {format_size(total)}, and the cache has no size limit",
                           "free space, or give the cache a size limit (Cache(max_size=...)) and run `safecache prune`", data)
        return Finding("free-space", OK, f"{format_size(free)} free; the cache has no size limit", data=data)
    room = max(0, limit - size)
    data["room"] = room
    if free < room:
        return Finding(
            "free-space", WARN,
            f"{format_size(free)} free, but the cache may still grow by {format_size(room)} (limit {format_size(limit)}, "
            f"now {format_size(size)}): the disk fills before the cache reaches its limit",
            "free space on the disk, lower the cache's size limit (Cache(max_size=...), then `safecache prune "
            f"--max-size SIZE`), or move the cache to a larger disk ({advice.var})",
            data,
        )
    return Finding("free-space", OK,
                   f"{format_size(free)} free; the cache uses {format_size(size)} of its {format_size(limit)} limit",
                   data=data)

"""What doctor tells a user to do: the remedy for a failed operation, and
the meaning and remedy of each error cause the counters record.

Remedies name the command as ``safecache ...``; :func:`._doctor.diagnose`
rewrites that to the embedding tool's command (``mytool cache ...``).
"""

from __future__ import annotations

import errno
import os

from . import _errcodes


def euid() -> int | None:
    """This process's effective user id (None where there is none: Windows)."""
    geteuid = getattr(os, "geteuid", None)
    return None if geteuid is None else int(geteuid())


def user(uid: int) -> str:
    """``"me (uid 1000)"``, or ``"uid 1000"`` when the name cannot be told."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def remedy_for(exc: OSError, path: str, action: str) -> str:
    """What to do when ``action`` (``"write files"``, ``"lock files"``...)
    failed in ``path`` with ``exc``."""
    code = exc.errno
    if _errcodes.is_busy(exc):
        return (
            f"another process (often an antivirus scanner or indexer on Windows) holds files open in {path}; "
            "exclude the cache directory from real-time scanning, or retry when it is idle"
        )
    if code == errno.EROFS:
        return "the file system is mounted read-only: point the cache at a writable location (SAFECACHE_DIR or --cache-dir)"
    if code in (errno.EACCES, errno.EPERM):
        uid = euid()
        who = f"user {uid}" if uid is not None else "the current user"
        return (
            f"this user cannot {action} in {path}: fix the owner or mode (e.g. `chown -R $(id -u) '{path}'`, "
            f"as {who} needs write access), or choose another location with SAFECACHE_DIR. A cache directory "
            "restored by CI often arrives owned by another user"
        )
    if code in _errcodes.FULL_ERRNOS:
        return "the disk or quota is full: free space, or run `safecache clean`"
    if _errcodes.locks_unsupported(exc):
        return (
            "the file system does not support locks (NFS without lockd, some network or FUSE mounts): "
            "compute-once may run a factory more than once; put the cache on a local disk"
        )
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"part of the path {path} is a file, not a directory: remove it or choose another location"
    if code == errno.ENAMETOOLONG:
        return "the cache path is too long for this file system: choose a shorter location"
    return f"the operating system reported {exc}; check the file system holding {path}"


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

"""Whom a cache trusts: the owner rule, written once.  docs/security.md is its specification.

A cache is private to the user who runs it (pip's rule, #7488, applied in
full).  A directory of the cache is *trusted* when it is a real directory
(not a symlink), owned by the effective user, and not writable by group or
others.  A cache whose root, or a directory safecache is about to use in it
(``buckets/``, ``buckets/NAME``, ``buckets/NAME/vN``, the same under
``locks/``, ``stats/``), is not trusted is not used: its entries could be
another user's bytes, and its trees another user's code.

Why checking those few directories is enough: a trusted directory can only
be written by its owner, so everything below it was put there by its owner
(or by root, who can do anything anyway).  Deeper directories (the fan-out
``xx/``, tree objects) are trusted by that induction; ``safecache verify``
checks them all, for caches written before this rule.

**Shared mode** (``Cache(shared=True)`` or ``SAFECACHE_SHARED=1``) is the
opt-in for caches several users write on purpose (a CI cache restored by
another account, a team cache on a build host).  It trusts every owner: the
caller states that whoever can write the cache is trusted.  What still holds
in shared mode: no symlink is followed, nothing world-writable is trusted,
and what safecache creates is writable by the group at most (files 0664,
directories 02775 so the group is inherited).

Owners are a POSIX notion: on Windows the user's profile ACLs protect the
default location and only the symlink rule is applied here.
"""

from __future__ import annotations

import os
import stat as _stat
import sys

from . import _osops

#: Modes of what safecache creates: never writable by others, and by the
#: group only in shared mode (then directories are setgid, so the group is
#: inherited by what is created inside them).
FILE_MODE = 0o644
DIR_MODE = 0o755
SHARED_FILE_MODE = 0o664
SHARED_DIR_MODE = 0o2775
LOCK_MODE = 0o600
SHARED_LOCK_MODE = 0o660

_POSIX = sys.platform != "win32"


def euid() -> int:
    """The effective user id (-1 where there is none: Windows)."""
    return os.geteuid() if _POSIX else -1


def file_mode(shared: bool) -> int:
    return SHARED_FILE_MODE if shared else FILE_MODE


def dir_mode(shared: bool) -> int:
    return SHARED_DIR_MODE if shared else DIR_MODE


def lock_mode(shared: bool) -> int:
    return SHARED_LOCK_MODE if shared else LOCK_MODE


def owner_name(uid: int) -> str:
    """``alice (uid 1000)``, or ``uid 1000`` when the name is unknown."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def distrust(path: str, st: os.stat_result, *, shared: bool) -> str:
    """Why the directory ``path`` (its ``lstat`` is ``st``) must not be used,
    or ``""`` if it may.  A directory we own that is merely writable by
    others is not refused here: :func:`repair` takes those bits away."""
    if _stat.S_ISLNK(st.st_mode):
        return f"{path!r} is a symbolic link; safecache never follows links inside a cache"
    if not _stat.S_ISDIR(st.st_mode):
        return f"{path!r} is not a directory"
    if not _POSIX:
        return ""
    me = euid()
    if st.st_uid != me:
        if not shared:
            return (
                f"{path!r} is owned by {owner_name(st.st_uid)}, not by this user ({owner_name(me)}); "
                "a cache is private to its user, so another user's entries are never served"
            )
        if st.st_mode & _stat.S_IWOTH and not st.st_mode & _stat.S_ISVTX:
            return f"{path!r} is writable by every user of this machine (mode {_stat.filemode(st.st_mode)})"
    return ""


def repair(path: str, st: os.stat_result, *, shared: bool) -> None:
    """Take away write permission for others (and for the group unless
    shared) from a directory we own: a cache created under ``umask 0`` by
    an older version must not stay open to everyone.  Best effort."""
    if not _POSIX or st.st_uid != euid():
        return
    loose = _stat.S_IWOTH | (0 if shared else _stat.S_IWGRP)
    if st.st_mode & loose:
        try:
            _osops.current.chmod(path, _stat.S_IMODE(st.st_mode) & ~loose)
        except OSError:
            pass


def check_dir(path: str, *, shared: bool) -> str:
    """``lstat`` ``path`` and apply :func:`distrust` and :func:`repair`.
    A directory that does not exist yet is trusted (we will create it).
    Returns the reason it must not be used, or ``""``."""
    try:
        st = _osops.current.lstat(path)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"{path!r} cannot be examined ({exc.strerror})"
    reason = distrust(path, st, shared=shared)
    if not reason:
        repair(path, st, shared=shared)
    return reason


def check_dirs(paths: tuple[str, ...], *, shared: bool) -> str:
    """:func:`check_dir` of each path in order; the first reason, or ``""``."""
    for path in paths:
        reason = check_dir(path, shared=shared)
        if reason:
            return reason
    return ""


def check_ancestor(root: str, ancestor: str, *, shared: bool) -> str:
    """Whether a root that does not exist yet may be created under
    ``ancestor`` (its nearest existing ancestor).  Root running without
    ``sudo -H`` must not create a root-owned ``~user/.cache/mytool`` that
    leaves the user locked out of it for good: the ancestor must be ours, or
    a sticky directory anyone may create in (``/tmp``)."""
    if not _POSIX or shared:
        return ""
    try:
        st = _osops.current.stat(ancestor)
    except OSError:
        return ""
    if st.st_uid == euid() or st.st_mode & _stat.S_ISVTX:
        return ""
    return (
        f"the cache directory {root!r} would be created inside {ancestor!r}, which is owned by "
        f"{owner_name(st.st_uid)}, not by this user ({owner_name(euid())}); creating it would leave a directory "
        "that user cannot write (running as root? use sudo -H)"
    )

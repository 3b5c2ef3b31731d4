"""Where a cache lives, why, and what state its root is in.

Resolution order (PRODUCT.md): an explicit path; else the application's own
environment variable (``MYTOOL_CACHE_DIR``); else ``SAFECACHE_DIR``; else the
platform's user cache directory for the application (platformdirs, imported
only here and only then).  ``SAFECACHE_DISABLE=1`` (or the application's own
variable given as ``disable_env``) turns caching off.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import sys
from . import _fs, _layout, _osops, _trust

READY = "ready"  # reads and writes
READ_ONLY = "read-only"  # hits are served, writes are no-ops
DISABLED = "disabled"  # every operation is a miss or a no-op

_TRUE = {"1", "true", "yes", "on"}

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by safecache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
README = (
    "This directory is a cache managed by safecache{owner}.\n"
    "Everything in it can be re-created: it is safe to delete while no program is using it,\n"
    "and `safecache clean` removes it safely even while programs are.\n"
    "`safecache doctor` explains what is wrong with it, if anything.\n"
)


class Location:
    """A resolved cache location: ``path`` (absolute, or None when disabled),
    ``source``, the setting that chose it in words a user can act on, and
    ``disabled_by``, the switch that turned caching off (if one did)."""

    __slots__ = ("path", "source", "disabled_by")

    def __init__(self, path: str | None, source: str, disabled_by: str | None = None) -> None:
        self.path = path
        self.source = source
        self.disabled_by = disabled_by

    def __repr__(self) -> str:
        return f"Location(path={self.path!r}, source={self.source!r})"


def env_truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def resolve(
    path: str | os.PathLike[str] | None,
    *,
    app_name: str | None,
    env_var: str | None,
    disable_env: str | None = None,
    enabled: bool | None = None,
) -> Location:
    """Resolve a cache location without touching the file system (except
    platformdirs' own look-ups)."""
    if enabled is False:
        return Location(None, "disabled by the caller (enabled=False)", "argument")
    if enabled is None:
        for var in (disable_env, "SAFECACHE_DISABLE"):
            if var and env_truthy(os.environ.get(var)):
                return Location(None, f"disabled by the environment variable {var}", var)
    if path is not None:
        return Location(_absolute(os.fspath(path)), "the path passed by the program")
    for var in (env_var, "SAFECACHE_DIR"):
        if var:
            value = os.environ.get(var)
            if value:
                return Location(_absolute(os.path.expanduser(value)), f"the environment variable {var}")
    name = app_name or "safecache"
    try:
        import platformdirs
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        base = _fallback_user_cache_dir()
        return Location(os.path.join(base, name), f"the default user cache directory for {name!r}")
    return Location(
        _absolute(platformdirs.user_cache_dir(name, appauthor=False)),
        f"the platform's user cache directory for {name!r} (platformdirs)",
    )


def _absolute(path: str) -> str:
    return os.path.abspath(path)


def _fallback_user_cache_dir() -> str:
    if sys.platform == "win32":
        return os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches")
    return os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")


class RootState:
    """What opening the root found.  ``state`` is READY, READ_ONLY or
    DISABLED; ``reason`` says why it is not READY, naming what to do;
    ``cause`` is the short name used by warnings and counters."""

    __slots__ = ("state", "reason", "cause", "exists", "error")

    def __init__(
        self, state: str, reason: str = "", cause: str = "", exists: bool = True, error: OSError | None = None
    ) -> None:
        self.state = state
        self.reason = reason
        self.cause = cause
        self.exists = exists
        self.error = error


def probe(root: str, *, shared: bool = False, env_var: str | None = None) -> RootState:
    """Decide, from a few stat-like calls and without writing, what the root
    allows.  ``shared``: the caller opted into a cache other users write
    (see :mod:`._trust`).  ``env_var`` is the variable remedies name."""
    ops = _osops.current
    where = env_var or "SAFECACHE_DIR"
    try:
        st = ops.stat(root)
    except FileNotFoundError:
        return _probe_missing(root, shared=shared, where=where)
    except NotADirectoryError as exc:
        return RootState(DISABLED, f"a parent of the cache directory {root!r} is not a directory", "unavailable", error=exc)
    except PermissionError as exc:
        return RootState(
            DISABLED,
            f"the cache directory {root!r} cannot be reached ({exc.strerror}); "
            "check the permissions of its parent directories",
            "permission",
            error=exc,
        )
    except OSError as exc:
        return RootState(
            DISABLED, f"the cache directory {root!r} cannot be examined ({exc.strerror})", "unavailable", error=exc
        )
    if not _stat.S_ISDIR(st.st_mode):
        return RootState(DISABLED, f"{root!r} exists but is not a directory; remove it or choose another cache location", "unavailable")
    distrusted = _trust.distrust(root, st, shared=shared)
    if distrusted:
        if _trust.euid() == 0:
            # pip #7488: root reaching a user's cache is sudo without -H;
            # chown-ing it to root would lock that user out of it.
            fix = f"use sudo -H, or set {where} to a directory of root's own; do not chown that user's cache"
        else:
            fix = (
                f"if this cache is yours (restored by CI under another account, or written with sudo), give "
                f"it back: sudo chown -R {_trust.euid()} {_quote(root)}; otherwise set {where} to a directory "
                "of your own, or, if you trust every user who writes it, opt into a shared cache with "
                "SAFECACHE_SHARED=1 (docs/security.md)"
            )
        return RootState(DISABLED, f"{distrusted}; the cache is disabled. Fix: {fix}", "owner")
    _trust.repair(root, st, shared=shared)
    euid = _trust.euid()
    if not os.access(root, os.R_OK | os.X_OK):
        return RootState(
            DISABLED,
            f"the cache directory {root!r} is not readable by this user (owner {_trust.owner_name(st.st_uid)}, "
            f"mode {_stat.filemode(st.st_mode)}); the cache is disabled. Fix with: chmod u+rwx {_quote(root)}, "
            f"or set {where} to another directory",
            "permission",
        )
    for name in (_layout.BUCKETS, _layout.LOCKS, _layout.STATS):
        inner = _trust.check_dir(os.path.join(root, name), shared=shared)
        if inner:
            return RootState(
                DISABLED,
                f"{inner}; the cache is disabled. Remove it (rm -r {_quote(os.path.join(root, name))}) "
                f"or set {where} to another directory",
                "owner",
            )
    if _read_only_fs(root):
        return RootState(READ_ONLY, f"the file system holding {root!r} is mounted read-only", "read-only")
    if euid != 0 and not os.access(root, os.W_OK):
        fix = f"chmod u+w {_quote(root)}" if st.st_uid == euid else f"ask its owner for write access to {_quote(root)}"
        return RootState(
            READ_ONLY,
            f"the cache directory {root!r} is not writable by this user (owner {_trust.owner_name(st.st_uid)}, "
            f"mode {_stat.filemode(st.st_mode)}); hits are served, nothing new is stored. Fix with: {fix}, "
            f"or set {where} to another directory",
            "permission",
        )
    return RootState(READY)


def _quote(path: str) -> str:
    import shlex

    return shlex.quote(path)


def nearest_existing(path: str) -> str:
    """The closest ancestor of ``path`` that exists (``path`` itself if it does)."""
    while True:
        if os.path.lexists(path):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return path
        path = parent


def _probe_missing(root: str, *, shared: bool, where: str) -> RootState:
    """A root that does not exist yet is ready if it can be created: its
    nearest existing ancestor must be a writable directory (pip's check)
    that this user owns, or a sticky one like ``/tmp`` (see :mod:`._trust`)."""
    ancestor = nearest_existing(os.path.dirname(root))
    if not os.path.isdir(ancestor):
        return RootState(DISABLED, f"the cache directory {root!r} cannot be created: {ancestor!r} is not a directory",
                         "unavailable", exists=False)
    euid = _trust.euid()
    if euid != 0 and not os.access(ancestor, os.W_OK | os.X_OK):
        return RootState(
            DISABLED,
            f"the cache directory {root!r} does not exist and cannot be created: {ancestor!r} is not writable "
            f"by this user; the cache is disabled. Create it with the right owner, or set {where}",
            "permission",
            exists=False,
        )
    foreign = _trust.check_ancestor(root, ancestor, shared=shared)
    if foreign:
        return RootState(DISABLED, f"{foreign}; the cache is disabled. Set {where} to a directory of this user's",
                         "owner", exists=False)
    if _read_only_fs(ancestor):
        return RootState(DISABLED, f"the cache directory {root!r} cannot be created: the file system holding "
                         f"{ancestor!r} is mounted read-only", "read-only", exists=False)
    return RootState(READY, exists=False)


def _read_only_fs(root: str) -> bool:
    statvfs = getattr(os, "statvfs", None)
    if statvfs is None:
        return False
    try:
        return bool(statvfs(root).f_flag & getattr(os, "ST_RDONLY", 1))
    except OSError:
        return False


def write_markers(root: str, owner: str | None = None, *, mode: int = _fs.FILE_MODE) -> None:
    """Create the root and its markers (CACHEDIR.TAG, .gitignore, README).

    Safe to race with any number of processes doing the same: each marker is
    written to a temp file and published without replacing (whoever is first
    wins, the others see it there).  Errors propagate.
    """
    _fs.makedirs(root, _fs.dir_mode_for(mode))
    owner_text = f" for {owner}" if owner else ""
    for name, text in (
        (_layout.CACHEDIR_TAG, CACHEDIR_TAG),
        (_layout.GITIGNORE, "# Created by safecache: this directory is a cache.\n*\n"),
        (_layout.README, README.format(owner=owner_text)),
    ):
        target = os.path.join(root, name)
        if _fs.exists(target):
            continue
        _fs.write_file(target, [text.encode()], replace=False, mode=mode)


def markers_present(root: str) -> bool:
    return _fs.exists(os.path.join(root, _layout.CACHEDIR_TAG))


def is_permission_problem(exc: OSError) -> bool:
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)

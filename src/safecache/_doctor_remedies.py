"""What doctor tells a user to do: the remedy for a failed operation, for a
cache another user owns, for a root that cannot be created, and the meaning
and remedy of each error cause the counters record.

Three rules, from the hardening issue and docs/security.md:

* Remedies name the variable that chose the location (``MYTOOL_CACHE_DIR``
  for a cache opened with an application name) and real paths, shell-quoted,
  never a placeholder.
* They never advise a recursive ``chown`` of a directory the cache does not
  own (the root's parent, ``/``, the user's project); a root that cannot be
  created gets its real cause (``HOME`` does not exist, say).
* Run as root over another user's cache, they advise ``sudo -H``, never
  chowning that user's cache to root (pip #7488: the user could no longer
  update it).

Remedies name the command as ``safecache ...``; :func:`._doctor.diagnose`
rewrites that to the embedding tool's command (``mytool cache ...``).
"""

from __future__ import annotations

import errno
import os
import shlex
import stat as _stat

from . import _errcodes, _location, _osops

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._cache import Cache


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


def group(gid: int) -> str:
    """``"staff (gid 50)"``, or ``"gid 50"`` when the name cannot be told."""
    try:
        import grp

        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except (ImportError, KeyError):
        return f"gid {gid}"


def quote(path: str) -> str:
    """``path`` as a POSIX shell word (remedies are commands to paste)."""
    return shlex.quote(path)


class Advice:
    """Whom a remedy is for, about which cache: the ``root``; ``var``, the
    variable that moves it (``MYTOOL_CACHE_DIR``, else ``SAFECACHE_DIR``);
    ``shared_var``, the one that opts into shared mode; ``shared_by``, what
    turned shared mode on (``""`` when it is off); ``euid`` (None on Windows)."""

    __slots__ = ("euid", "root", "shared_by", "shared_var", "var")

    def __init__(
        self, root: str, *, var: str = "SAFECACHE_DIR", shared_var: str = "SAFECACHE_SHARED", shared_by: str = "",
        uid: int | None = None,
    ) -> None:
        self.root = root
        self.var = var
        self.shared_var = shared_var
        self.shared_by = shared_by
        self.euid = uid

    def inside(self, path: str) -> bool:
        """Whether ``path`` is the root or in it (a directory the cache owns)."""
        return path == self.root or path.startswith(self.root.rstrip(os.sep) + os.sep)


def advice_for(cache: Cache) -> Advice:
    """The :class:`Advice` for ``cache`` and the user this process runs as."""
    assert cache.path is not None
    prefix = "".join(c if c.isascii() and c.isalnum() else "_" for c in cache.app_name.upper()) if cache.app_name else ""
    app_shared = f"{prefix}_CACHE_SHARED" if prefix else ""
    shared_by = ""
    if cache.shared:
        on = [v for v in (app_shared, "SAFECACHE_SHARED") if v and _location.env_truthy(os.environ.get(v))]
        shared_by = f"the environment variable {on[0]}" if on else "the program (Cache(shared=True))"
    return Advice(cache.path, var=cache.env_var or "SAFECACHE_DIR", shared_var=app_shared or "SAFECACHE_SHARED",
                  shared_by=shared_by, uid=euid())


# -- another user's cache ---------------------------------------------------------------------
def shared_opt_in(advice: Advice) -> str:
    """How to opt into shared mode, and what it costs."""
    names = f"{advice.shared_var}=1"
    if advice.shared_var != "SAFECACHE_SHARED":
        names += " (or SAFECACHE_SHARED=1)"
    return (
        f"if every user who writes this cache is trusted, opt into a shared cache: {names}, or Cache(shared=True) "
        "in the program (docs/security.md); anyone who can write a shared cache can make its users read bytes of "
        "their choosing"
    )


def give_back(advice: Advice) -> str:
    """``sudo chown -R UID ROOT``: the cache root only, to this user.  The
    number, not ``$(id -u)``: pasted into a root shell that would be 0."""
    return f"`sudo chown -R {advice.euid} {quote(advice.root)}`"


def foreign_remedy(advice: Advice, owner: int) -> str:
    """A cache (or a directory in it) that ``owner`` owns, not this user:
    the two ways out, and never a chown to root."""
    if advice.euid == 0:
        return (
            f"this cache belongs to {user(owner)}, and root does not use another user's cache: run the tool as "
            f"that user, or with `sudo -H` so that root uses a cache in its own home, or point {advice.var} at a "
            f"directory of root's own. Do not chown that user's cache to root: they could no longer update it. "
            f"Or, {shared_opt_in(advice)}"
        )
    return (
        f"its owner is {user(owner)}, not this user: if the cache is yours (restored by CI under another account, "
        f"or written with sudo), give it back: {give_back(advice)}; otherwise point {advice.var} at a directory "
        f"of your own. Or, {shared_opt_in(advice)}"
    )


# -- a root that does not exist -----------------------------------------------------------------
def missing_root(advice: Advice) -> tuple[str, str]:
    """``(cause, remedy)`` for a root that does not exist and cannot be
    created: the real cause (a home directory that does not exist, the
    directory that refuses), never a chown of a directory the cache does not own."""
    root = advice.root
    ancestor = _location.nearest_existing(os.path.dirname(root))
    home_env = os.environ.get("HOME")
    homes = [("XDG_CACHE_HOME", os.environ.get("XDG_CACHE_HOME") or "")]
    homes.append(("HOME", home_env if home_env else os.path.expanduser("~")))
    for var, value in homes:
        if not value or not os.path.isabs(value) or os.path.lexists(value):
            continue
        if root.startswith(value.rstrip(os.sep) + os.sep):
            if var == "HOME":
                described = f"HOME ({value})" if home_env else f"this user's home directory {value} (HOME is not set)"
                fix = "set HOME to this user's home directory (or create that directory)"
            else:
                described = f"XDG_CACHE_HOME ({value})"
                fix = "create that directory, or unset XDG_CACHE_HOME"
            cause = f"{described} does not exist, so the cache directory {root} in it cannot be created"
            return cause, f"{fix}, or point {advice.var} at a directory this user can write"
    try:
        st = _osops.current.stat(ancestor)
        whose = f", owned by {user(st.st_uid)} (mode {_stat.filemode(st.st_mode)})"
    except OSError:
        st = None
        whose = ""
    cause = f"the cache directory {root} does not exist, and the nearest directory that does, {ancestor}{whose}"
    if advice.euid == 0:
        return cause + ", belongs to another user", (
            f"use `sudo -H` (so that root uses a cache in its own home), or point {advice.var} at a directory of root's own"
        )
    if advice.euid is not None and st is not None and st.st_uid != advice.euid:
        return cause + ", does not let this user create it", (
            f"point {advice.var} at a directory this user can write, or ask that directory's owner to create "
            f"{quote(root)} for this user (`mkdir -p {quote(root)} && chown {advice.euid} {quote(root)}`)"
        )
    return cause + ", does not let this user create it", (
        f"give yourself write access to it (`chmod u+wx {quote(ancestor)}`), or point {advice.var} at a directory "
        "this user can write"
    )


# -- an operation that failed -------------------------------------------------------------------
def denied(advice: Advice, path: str, action: str) -> str:
    """What to do when this user may not ``action`` in ``path``."""
    if advice.euid is None:  # pragma: no cover - Windows
        return (
            f"this user cannot {action} in {path}: check its permissions (`icacls \"{path}\"`): a directory restored "
            f"by CI often keeps another account's ACLs; or point {advice.var} at a directory of your own"
        )
    if advice.euid == 0:
        return (
            f"root was refused to {action} in {quote(path)}: not by a mode or an owner (root bypasses those) but by a "
            "security module (SELinux, AppArmor), an immutable attribute (`lsattr`), or a read-only bind mount: "
            f"check those, or point {advice.var} at another directory"
        )
    if not advice.inside(path):
        return (
            f"this user cannot {action} in {quote(path)}, which is not the cache's: use a directory this user can "
            "write, or ask its owner for write access"
        )
    try:
        st = _osops.current.stat(advice.root)
    except FileNotFoundError:
        return missing_root(advice)[1]
    except OSError:
        return (
            f"this user cannot reach {quote(advice.root)}: a parent directory is not searchable (see `namei -l "
            f"{quote(advice.root)}`); fix that parent's mode, or point {advice.var} at a directory of your own"
        )
    if st.st_uid != advice.euid:
        return f"this user cannot {action} in the cache: {foreign_remedy(advice, st.st_uid)}"
    return (
        f"the cache directory is this user's, but something in it is not (another user's files, from `sudo` without "
        f"-H or a cache restored by CI, or a mode without write permission): give them back with "
        f"{give_back(advice)} and `chmod -R u+rwX {quote(advice.root)}`, or point {advice.var} at another directory"
    )


def remedy_for(exc: OSError, path: str, action: str, advice: Advice) -> str:
    """What to do when ``action`` (``"write files"``, ``"lock files"``...)
    failed in ``path`` (the root, or a directory outside the cache) with ``exc``."""
    code = exc.errno
    if _errcodes.is_busy(exc):
        return (
            f"another process (often an antivirus scanner or indexer on Windows) holds files open in {path}; "
            "exclude the cache directory from real-time scanning, or retry when it is idle"
        )
    if code == errno.EROFS:
        return f"the file system holding {path} is mounted read-only: point {advice.var} (or --cache-dir) at a writable location"
    if code in (errno.EACCES, errno.EPERM):
        return denied(advice, path, action)
    if code in _errcodes.FULL_ERRNOS:
        return "the disk or quota is full: free space, or run `safecache clean`"
    if _errcodes.locks_unsupported(exc):
        return (
            "the file system does not support locks (NFS without lockd, some network or FUSE mounts): "
            "compute-once may run a factory more than once; put the cache on a local disk"
        )
    if isinstance(exc, TimeoutError):  # doctor's own probe lock: nobody else knows its name
        return (
            f"a lock in {path} was not granted in time though no other process could hold it: the file system's "
            "locks misbehave (some network or FUSE mounts); put the cache on a local disk"
        )
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"part of the path {path} is a file, not a directory: remove it, or point {advice.var} elsewhere"
    if code == errno.ENAMETOOLONG:
        return f"the cache path is too long for this file system: point {advice.var} at a shorter location"
    reason = _errcodes.describe(exc, with_type=False, errno_name=True)
    return f"the operating system reported {reason}; check the file system holding {path}"


#: What each error cause of the counters means, and what to do about it.
ERROR_CAUSES: dict[str, tuple[str, str]] = {
    "busy": (
        "files held open by another process (antivirus? an indexer? another tool?)",
        "exclude the cache directory from real-time scanning and indexing",
    ),
    "permission": (
        "the operating system denied access",
        (
            "give the cache's files back to the user who runs the tool, or point the cache at a directory of that "
            "user's own (its environment variable, e.g. SAFECACHE_DIR)"
        ),
    ),
    "read-only": ("writes refused by a read-only file system or cache", "point the cache at a writable location"),
    "owner": (
        "the cache, or a directory in it, belongs to another user, so it was not used",
        "give it back to the user who runs the tool, use a per-user cache, or run as root with sudo -H",
    ),
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


def cause_remedy(cause: str, advice: Advice) -> str:
    """:data:`ERROR_CAUSES`' remedy for ``cause``, made concrete for this cache."""
    if cause == "permission":
        return denied(advice, advice.root, "write files")
    if cause == "owner":
        try:
            owner = _osops.current.stat(advice.root).st_uid
        except OSError:
            owner = None
        if owner is not None and advice.euid is not None and owner != advice.euid:
            return foreign_remedy(advice, owner)
        return "a directory in the cache belongs to another user or is a symbolic link: see the owner check"
    if cause in ("read-only", "name-too-long"):
        return f"point {advice.var} at a {'writable' if cause == 'read-only' else 'shorter'} location"
    return ERROR_CAUSES.get(cause, ("", "see the `safecache` logger"))[1]

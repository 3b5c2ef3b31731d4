"""Placing cached files into a destination: clone, hard link, symlink or copy.

The modes and their fallbacks follow uv's (``crates/uv-fs/src/link.rs``):

* ``"clone"`` (alias ``"reflink"``) falls back to ``"hardlink"``, which falls
  back to ``"copy"``; ``"symlink"`` falls back to ``"copy"``; ``"copy"`` is
  terminal.  ``"auto"`` is ``"clone"`` without the warning for its first step
  (a file system that cannot clone is the common case, not a surprise).
* The decision is made on the first file: if a mode is not supported here
  (cross-device, no privilege, a file system without reflinks or hard links),
  the placer moves down the chain and stays there.  Once a hard link or
  symlink has worked, a later failure is an error like any other, with two
  exceptions: too many links (``EMLINK``) copies that one file, and a clone
  may fail for one file (ZFS's ``EAGAIN``, a special inode) and that file
  goes down the chain alone.

Each fallback is recorded in :attr:`Placer.fallbacks`, logged to the
``safecache`` logger, and the first of each kind in a process is reported as
a :class:`safecache.CacheWarning`.  Every system call goes through
``_osops.current``.
"""

from __future__ import annotations

import errno
import os

from . import _errcodes, _osops, _policy

MODES = ("auto", "clone", "hardlink", "symlink", "copy")
ENV_VAR = "SAFECACHE_LINK_MODE"
_ALIASES = {"reflink": "clone"}
_NEXT = {"clone": "hardlink", "hardlink": "copy", "symlink": "copy"}


def _codes(*names: str) -> frozenset[int]:
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# Errors meaning "this mode does not work here" (not "this file failed").
_UNSUPPORTED = _codes("EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EXDEV")
_UNSUPPORTED_BY_MODE = {
    # FICLONE: ENOTTY or EINVAL from file systems without the ioctl, EBADF
    # from some (ioctl_ficlone(2)).
    "clone": _UNSUPPORTED | _codes("ENOTTY", "EINVAL", "EBADF"),
    # Linux protected_hardlinks, FAT, a cache owned by another user.
    "hardlink": _UNSUPPORTED | _codes("EPERM", "EACCES"),
    "symlink": _UNSUPPORTED | _codes("EPERM", "EACCES"),
}
# Windows: no hard links on FAT, across volumes, no symlink privilege.
_UNSUPPORTED_WINERRORS = frozenset({
    _errcodes.ERROR_INVALID_FUNCTION,
    _errcodes.ERROR_NOT_SAME_DEVICE,
    _errcodes.ERROR_NOT_SUPPORTED,
    _errcodes.ERROR_PRIVILEGE_NOT_HELD,
})
# A sharing or lock violation is another process holding the file, not a
# missing capability (its errno is EACCES all the same).
_BUSY_WINERRORS = _errcodes.TRANSIENT_WINERRORS
# A clone that worked before may still fail for one file: ZFS reports EAGAIN
# (uv #19674), a file being written or executed EBUSY or ETXTBSY.
_CLONE_ONE_FILE = _codes("EAGAIN", "EWOULDBLOCK", "EBUSY", "ETXTBSY")


def resolve_mode(mode: str | None) -> str:
    """The link mode to use: ``mode``, else ``$SAFECACHE_LINK_MODE``, else
    ``"auto"``.  Raises ``ValueError`` for a name that is not a mode."""
    origin = "link mode"
    if mode is None:
        mode = os.environ.get(ENV_VAR, "").strip()
        origin = ENV_VAR
        if not mode:
            return "auto"
    name = mode.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in MODES:
        raise ValueError(f"invalid {origin} {mode!r}: use one of {', '.join(MODES)}")
    return name


def unsupported(mode: str, exc: OSError) -> bool:
    """Whether ``exc`` means that ``mode`` (``"clone"``, ``"hardlink"`` or
    ``"symlink"``) does not work here at all, rather than that one file
    failed: the placer falls back on it, and so does a tree's symlink."""
    winerror = _errcodes.winerror(exc)
    if winerror is not None:
        if winerror in _UNSUPPORTED_WINERRORS:
            return True
        if winerror in _BUSY_WINERRORS:
            return False
    return exc.errno in _UNSUPPORTED_BY_MODE.get(mode, frozenset())


class Placer:
    """Places regular files by one link mode, falling back as uv does.

    ``mode``: one of :data:`MODES` or ``None`` (see :func:`resolve_mode`).
    ``used`` counts the files placed per mode actually used; ``fallbacks``
    lists ``(from_mode, to_mode, reason)`` for every fallback, in order.
    Not thread-safe: use one per thread.
    """

    def __init__(self, mode: str | None = None) -> None:
        self.mode = resolve_mode(mode)
        self.used: dict[str, int] = {}
        self.fallbacks: list[tuple[str, str, str]] = []
        self._current = "clone" if self.mode == "auto" else self.mode
        self._decided = False  # whether _current has worked for a file

    def __repr__(self) -> str:
        return f"Placer(mode={self.mode!r}, current={self._current!r}, used={self.used!r})"

    def place(self, src: str, dst: str) -> str:
        """Place the regular file ``src`` at ``dst``, which must not exist.

        Returns the mode used for this file.  Raises the ``OSError`` of the
        last mode tried when no fallback applies (a missing ``src``, an
        existing ``dst``, a full disk, a later failure of a decided mode).
        """
        mode = self._current
        while True:
            try:
                self._attempt(mode, src, dst)
            except OSError as exc:
                next_mode = self._next_mode(mode, exc, src)
                if next_mode is None:
                    raise
                mode = next_mode
                continue
            if mode == self._current:
                self._decided = True
            self.used[mode] = self.used.get(mode, 0) + 1
            return mode

    def _next_mode(self, mode: str, exc: OSError, src: str) -> str | None:
        """The mode to try next after ``mode`` failed with ``exc``, or None
        to raise it."""
        if mode == "hardlink" and exc.errno == errno.EMLINK:
            return self._fall_back(mode, exc, src, decide=False, to="copy")
        if mode == "copy":
            return None
        refused = unsupported(mode, exc)
        if mode != self._current:  # already going down the chain for this file
            return self._fall_back(mode, exc, src, decide=False) if refused else None
        if refused and not self._decided:  # the first file decides
            return self._fall_back(mode, exc, src, decide=True)
        if mode == "clone" and (refused or exc.errno in _CLONE_ONE_FILE):
            return self._fall_back(mode, exc, src, decide=False)
        return None

    def _attempt(self, mode: str, src: str, dst: str) -> None:
        ops = _osops.current
        if mode == "clone":
            ops.clone(src, dst)
        elif mode == "hardlink":
            ops.link(src, dst)
        elif mode == "symlink":
            ops.symlink(os.path.abspath(src), dst)
        else:
            ops.copyfile(src, dst)

    def _fall_back(self, mode: str, exc: OSError, src: str, *, decide: bool, to: str | None = None) -> str:
        """Record and report the fallback from ``mode``; return the next
        mode.  ``decide``: the placer stays on the next mode for later files."""
        new = to or _NEXT[mode]
        reason = _policy.describe_exception(exc)
        self.fallbacks.append((mode, new, reason))
        if decide:
            self._current = new
            self._decided = False
        scope = "" if decide else " for this file"
        _policy.logger().info("link mode %s failed for %s (%s); using %s%s", mode, src, reason, new, scope)
        if not (self.mode == "auto" and mode == "clone"):
            kind = f"link-fallback:{mode}->{new}" + (":too-many-links" if exc.errno == errno.EMLINK else "")
            _policy.warn_once(kind, "", _warning(mode, new, exc, reason))
        return new


#: The name doctor knows it by, until it calls :func:`unsupported`.
_unsupported = unsupported


def _warning(mode: str, new: str, exc: OSError, reason: str) -> str:
    if mode == "hardlink" and exc.errno == errno.EMLINK:
        return f"safecache: a cached file has too many hard links ({reason}); copying such files instead."
    verb = {"clone": "clone", "hardlink": "hard-link", "symlink": "symlink"}[mode]
    hint = {
        "clone": "This file system cannot clone files (btrfs, XFS with reflink and APFS can; on Windows, not yet).",
        "hardlink": "If the cache and the destination are on different file systems, this is expected.",
        "symlink": "On Windows, creating symlinks needs Developer Mode or administrator rights.",
    }[mode]
    advice = "auto" if mode == "clone" else "copy"
    return (
        f"safecache: failed to {verb} files ({reason}); falling back to {new}. {hint}"
        f" Set {ENV_VAR}={advice} to silence this warning."
    )

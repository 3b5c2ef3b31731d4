"""Names as Windows sees them.

The names Windows refuses or reads differently (reserved characters, a
trailing dot or space, device names), rename without replacing (what
``MoveFileExW`` does without ``MOVEFILE_REPLACE_EXISTING``), and the hidden
names under which classic delete keeps a file that is deleted while open
("delete-pending") until its last handle closes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from typing import Callable

from ._handles import _handles, _offsets

_INVALID_CHARS = frozenset('<>:"|?*\\') | frozenset(chr(c) for c in range(32))
_RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)]
)
_PENDING = ".~delete-pending-"


def _name_problem(path: str) -> str | None:
    """Why the last component of ``path`` would not name the same file on
    Windows, or None."""
    name = os.path.basename(path.rstrip("/")) or path
    if name in (".", ".."):
        return None
    bad = sorted(set(name) & _INVALID_CHARS)
    if bad:
        return f"name {name!r} contains {''.join(bad)!r}, which Windows does not allow"
    if name.endswith((".", " ")):
        return f"Windows strips the trailing dot or space of {name!r}"
    if name.split(".")[0].rstrip(" ").upper() in _RESERVED_NAMES:
        return f"{name!r} names a device on Windows"
    return None


def _is_zombie(path: str) -> bool:
    return _PENDING in os.path.basename(path)


@functools.lru_cache(maxsize=None)
def _renameat2() -> Callable[..., int] | None:
    """glibc's renameat2, or None (musl before 1.2.5, very old glibc)."""
    import ctypes

    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
    return func


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename without ever replacing ``dst`` (Windows' MoveFileExW without
    MOVEFILE_REPLACE_EXISTING), atomically where renameat2 exists.

    A check-then-rename would let a racing creator's file be replaced
    silently, which Windows never does; code that relies on "rename fails if
    the name exists" must see that failure under the emulation too.
    """
    renameat2 = _renameat2()
    if renameat2 is not None:
        import ctypes

        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # not supported by this file system
            raise OSError(code, os.strerror(code), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), src, None, dst)
    os.rename(src, dst)


def _pending(path: str) -> bool:
    """Whether ``path`` names a file that was deleted while open and is
    still open somewhere.

    Such a file lives on as ``<name>.~delete-pending-<hex>``; one whose
    handles have all closed is removed here, as Windows removes it when
    the last handle closes.
    """
    directory, name = os.path.split(path.rstrip("/"))
    prefix = name + _PENDING
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return False
    pending = False
    for entry in entries:
        if entry.startswith(prefix) and _PENDING not in entry[len(prefix) :]:
            zombie = os.path.join(directory, entry)
            if _handles(zombie).open:
                pending = True
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(zombie)
    return pending


def _reap(directory: str) -> None:
    """Remove the delete-pending files in ``directory`` whose handles closed."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            zombie = os.path.join(directory, entry)
            if _is_zombie(entry) and not _handles(zombie).open:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(zombie)


def _zombie_name(path: str) -> str:
    """A fresh delete-pending name for the file at ``path``."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{name}{_PENDING}{_offsets.getrandbits(32):08x}")

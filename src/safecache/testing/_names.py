"""Names as Windows sees them.

The names Windows refuses or reads differently (reserved characters, a
trailing dot or space, device names), rename without replacing (what
``MoveFileExW`` does without ``MOVEFILE_REPLACE_EXISTING``), and the hidden
names under which classic delete keeps a file that is deleted while open
("delete-pending") until its last handle closes -- listed, as Windows lists
it, under its own name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from typing import Any, Callable, Iterator

from ._handles import _handles, _offsets

_INVALID_CHARS = frozenset('<>:"|?*\\') | frozenset(chr(c) for c in range(32))
_RESERVED_NAMES = frozenset(["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)])
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


def _pending_file(path: str) -> str | None:
    """The file that ``path`` names while it is delete-pending: deleted
    while open, and still open somewhere; None if there is none.

    Such a file lives on as ``<name>.~delete-pending-<hex>``; one whose
    handles have all closed is removed here, as Windows removes it when
    the last handle closes.
    """
    directory, name = os.path.split(path.rstrip("/"))
    prefix = name + _PENDING
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return None
    found = None
    for entry in entries:
        if entry.startswith(prefix) and _PENDING not in entry[len(prefix) :]:
            zombie = os.path.join(directory, entry)
            if _handles(zombie).open:
                found = zombie
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(zombie)
    return found


def _pending(path: str) -> bool:
    """Whether ``path`` names a delete-pending file (see :func:`_pending_file`)."""
    return _pending_file(path) is not None


def _listed(directory: str, name: str, seen: set[str]) -> str | None:
    """The name under which a directory listing shows the entry ``name`` of
    ``directory``: a delete-pending file under its own name (once), as the
    classic delete leaves its directory entry in place; a pending file whose
    handles have closed not at all (it is removed here)."""
    if _PENDING not in name:
        return name
    zombie = os.path.join(directory, name)
    if not _handles(zombie).open:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(zombie)
        return None
    original = name[: name.index(_PENDING)]
    if original in seen:
        return None
    seen.add(original)
    return original


def _listdir(directory: str, names: list[str]) -> list[str]:
    """``names`` (a listing of ``directory``) as Windows lists them."""
    if not any(_PENDING in name for name in names):
        return names
    seen = {name for name in names if _PENDING not in name}
    listed = (_listed(directory, name, seen) for name in names)
    return [name for name in listed if name is not None]


class _PendingEntry:
    """An ``os.DirEntry`` of a delete-pending file, under its own name."""

    def __init__(self, entry: os.DirEntry[str], name: str) -> None:
        self._entry = entry
        self.name = name
        self.path = os.path.join(os.path.dirname(entry.path), name)

    def __getattr__(self, attribute: str) -> Any:  # inode, is_dir, is_file, stat, ...
        return getattr(self._entry, attribute)

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


class _Scandir:
    """``os.scandir`` as Windows lists a directory (see :func:`_listed`)."""

    def __init__(self, directory: str, entries: Any) -> None:
        self._directory = directory
        self._entries = entries
        self._seen: set[str] | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            entry = next(self._entries)
            if _PENDING not in entry.name:
                return entry
            if self._seen is None:  # names listed before it could repeat it: look once
                self._seen = {name for name in os.listdir(self._directory) if _PENDING not in name}
            name = _listed(self._directory, entry.name, self._seen)
            if name is not None:
                return _PendingEntry(entry, name)

    def close(self) -> None:
        self._entries.close()

    def __enter__(self) -> _Scandir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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

"""A tree's manifest: what a committed directory holds, and how to describe one.

The manifest is the payload of a tree's pointer (docs/format.md, "Trees"):
JSON with sorted keys, every path relative and ``/``-separated.  It is
enough to place a tree without listing its directory and to verify it later
against its files.  Nothing read from a manifest can reach outside the tree
or its destination: :meth:`Manifest.from_bytes` refuses any path that could.
"""

from __future__ import annotations

import os
import stat as _stat
import time

from . import _fs, _keys, _layout, _osops

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Iterator

MANIFEST_VERSION = 1
_CHUNK = 1 << 20


class Manifest:
    """Every file of a tree: relative path (``/``-separated), size, permission
    bits and BLAKE2b-128 digest; every directory; every symlink and its target.

    Enough to verify a tree later: a hard-linked file edited in place in an
    installed environment changes the cache's copy too, and ``verify`` finds it.
    """

    __slots__ = ("files", "dirs", "symlinks", "kind", "tree_id", "created_ns")

    def __init__(
        self,
        files: list[tuple[str, int, int, str]],
        dirs: list[str],
        symlinks: list[tuple[str, str]],
        kind: str,
        tree_id: str,
        created_ns: int,
    ) -> None:
        self.files = files
        self.dirs = dirs
        self.symlinks = symlinks
        self.kind = kind
        self.tree_id = tree_id
        self.created_ns = created_ns

    @property
    def size(self) -> int:
        """Total bytes of the tree's files."""
        return sum(f[1] for f in self.files)

    def to_bytes(self) -> bytes:
        import json

        return json.dumps(
            {
                "manifest": MANIFEST_VERSION,
                "tree": self.tree_id,
                "kind": self.kind,
                "created_ns": self.created_ns,
                "dirs": self.dirs,
                "files": [list(f) for f in self.files],
                "symlinks": [list(s) for s in self.symlinks],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a manifest: the one strict parser every reader uses.

        Raises :class:`ManifestError` (a ``ValueError``, and nothing else)
        for anything that is not a manifest this version can trust: not
        JSON, non-finite or huge numbers, nesting deep enough to exhaust
        the stack, a missing or unknown key, a value of the wrong type or
        range, an unsafe path (:func:`check_relative`), a path listed twice,
        or a path whose parent is not one of its directories (a path under
        a file or a symlink would be placed *through* it).  A manifest of a
        later version raises it with ``newer`` set: a newer safecache's
        tree, to be left alone rather than removed as corrupt.
        """
        import json

        try:
            doc = json.loads(data, parse_constant=_no_constant, parse_float=_no_float, parse_int=_bounded_int)
        except RecursionError:
            raise ManifestError("nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ours
            raise ManifestError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ManifestError("not a JSON object")
        version = doc.get("manifest")
        if not _is_int(version) or version != MANIFEST_VERSION:
            if isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_VERSION:
                raise ManifestError(f"manifest version {version} is newer than this safecache's", newer=True)
            raise ManifestError("not a version 1 manifest")
        if set(doc) != _KEYS:
            raise ManifestError(f"keys {sorted(doc)}, expected {sorted(_KEYS)}")
        tree_id, kind, created_ns = doc["tree"], doc["kind"], doc["created_ns"]
        if not (isinstance(tree_id, str) and _layout.is_tree_id(tree_id)):
            raise ManifestError("bad tree id")
        if kind not in ("built", "fetched"):
            raise ManifestError("bad kind")
        if not (_is_int(created_ns) and 0 <= created_ns < _MAX_INT):
            raise ManifestError("bad created_ns")
        dirs = [_path(d) for d in _list(doc["dirs"], "dirs")]
        files = [_file(f) for f in _list(doc["files"], "files")]
        symlinks = [_symlink(s) for s in _list(doc["symlinks"], "symlinks")]
        manifest = cls(files, dirs, symlinks, kind, tree_id, created_ns)
        manifest.check()
        return manifest

    def check(self) -> None:
        """Raise :class:`ManifestError` unless every path is safe, listed
        once, and under a listed directory (or the root)."""
        paths = [f[0] for f in self.files] + self.dirs + [s[0] for s in self.symlinks]
        for rel in paths:
            check_relative(rel)
        if len(set(paths)) != len(paths):
            raise ManifestError("a path is listed twice")
        dirs = set(self.dirs)
        for rel in paths:
            parent = rel.rpartition("/")[0]
            if parent and parent not in dirs:
                raise ManifestError(f"{rel!r} is not under a directory of the tree")


class ManifestError(ValueError):
    """A manifest that cannot be trusted (see :meth:`Manifest.from_bytes`);
    ``newer``: it is a later version's, not a damaged one."""

    def __init__(self, message: str, *, newer: bool = False) -> None:
        super().__init__(message)
        self.newer = newer

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_error, (str(self), self.newer)


def _rebuild_error(message: str, newer: bool) -> ManifestError:
    return ManifestError(message, newer=newer)


_KEYS = frozenset({"manifest", "tree", "kind", "created_ns", "dirs", "files", "symlinks"})
#: Sizes and times are 64-bit on disk; anything larger is not ours.
_MAX_INT = 1 << 63
_MAX_INT_DIGITS = 19


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number a manifest holds")


def _no_float(text: str) -> object:
    raise ValueError(f"{text} is not a number a manifest holds (integers only)")


def _bounded_int(text: str) -> int:
    # Refuse before converting: int() of thousands of digits is slow, and
    # no size, mode or time of ours has more than 19.
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError("a number too large for a manifest")
    return int(text)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise ManifestError(f"{what} is not a list")
    return value


def _path(value: object) -> str:
    if not isinstance(value, str):
        raise ManifestError("a path is not a string")
    return value


def _file(value: object) -> tuple[str, int, int, str]:
    if not (isinstance(value, list) and len(value) == 4):
        raise ManifestError("a file is not [path, size, mode, digest]")
    rel, size, mode, digest = value
    if not (_is_int(size) and 0 <= size < _MAX_INT and _is_int(mode) and 0 <= mode <= 0o7777):
        raise ManifestError(f"bad size or mode for {rel!r}")
    if not (isinstance(digest, str) and _layout.is_hex(digest, 32)):
        raise ManifestError(f"bad digest for {rel!r}")
    return _path(rel), size, mode, digest


def _symlink(value: object) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2):
        raise ManifestError("a symlink is not [path, target]")
    rel, target = value
    if not isinstance(target, str) or not target or "\0" in target:
        raise ManifestError(f"bad target for {rel!r}")
    return _path(rel), target


def check_relative(rel: str) -> None:
    """A manifest path must stay inside its tree and its destination:
    relative, ``/``-separated, no empty, ``.`` or ``..`` part, no
    backslash, no drive (``c:``), no NUL.  Raises :class:`ManifestError`."""
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or "\0" in rel
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ManifestError(f"unsafe path in manifest: {rel!r}")


def join(base: str, rel: str) -> str:
    """The native path of the manifest path ``rel`` under ``base``."""
    return os.path.join(base, *rel.split("/"))


def digest_file(path: str) -> tuple[int, str]:
    """Size and BLAKE2b-128 hex digest of a file, read in 1 MiB chunks."""
    ops = _osops.current
    fd = _fs.retry("open", ops.open, path, _osops.READ_FLAGS)
    try:
        return digest_fd(fd)
    finally:
        ops.close(fd)


def digest_fd(fd: int) -> tuple[int, str]:
    """:func:`digest_file` of the file open at ``fd``, from its position."""
    read = _osops.current.read
    h = _keys.new_blake2b_128()
    size = 0
    while True:
        block = read(fd, _CHUNK)
        if not block:
            break
        h.update(block)
        size += len(block)
    return size, h.hexdigest()


def walk(root: str) -> Iterator[tuple[str, os.DirEntry[str], os.stat_result]]:
    """``(relative path, entry, lstat)`` of everything under ``root``, each
    directory's entries by name, a directory before its contents; never
    follows a symlink."""
    ops = _osops.current
    pending = [("", root)]
    while pending:
        rel_dir, abs_dir = pending.pop()
        with ops.scandir(abs_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            yield rel, entry, st
            if _stat.S_ISDIR(st.st_mode):
                pending.append((rel, entry.path))


def scan(root: str, kind: str, tree_id: str, *, digests: bool = True) -> Manifest:
    """Describe the directory ``root``: never follows symlinks; refuses
    anything that is not a regular file, a directory or a symlink.
    ``digests=False`` records sizes and modes only (no file is opened), for
    a private tree that will never be verified."""
    ops = _osops.current
    files: list[tuple[str, int, int, str]] = []
    dirs: list[str] = []
    symlinks: list[tuple[str, str]] = []
    for rel, entry, st in walk(root):
        if _stat.S_ISDIR(st.st_mode):
            dirs.append(rel)
        elif _stat.S_ISLNK(st.st_mode):
            symlinks.append((rel, ops.readlink(entry.path)))
        elif _stat.S_ISREG(st.st_mode):
            size, digest = digest_file(entry.path) if digests else (st.st_size, "")
            files.append((rel, size, _stat.S_IMODE(st.st_mode), digest))
        else:
            raise ValueError(f"a tree can hold files, directories and symlinks, not {rel!r}")
    dirs.sort()
    files.sort()
    symlinks.sort()
    return Manifest(files, dirs, symlinks, kind, tree_id, time.time_ns())


__all__ = ["MANIFEST_VERSION", "Manifest", "ManifestError", "check_relative", "digest_fd", "digest_file", "join", "scan", "walk"]

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
        """Parse a manifest; raises ValueError when it is not one we can trust."""
        import json

        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("manifest") != MANIFEST_VERSION:
            raise ValueError("not a version 1 manifest")
        tree_id = doc["tree"]
        if not (isinstance(tree_id, str) and _layout.is_tree_id(tree_id)):
            raise ValueError("bad tree id")
        files = [(str(p), int(s), int(m), str(d)) for p, s, m, d in doc["files"]]
        dirs = [str(d) for d in doc["dirs"]]
        symlinks = [(str(p), str(t)) for p, t in doc["symlinks"]]
        for rel in [f[0] for f in files] + dirs + [s[0] for s in symlinks]:
            check_relative(rel)
        return cls(files, dirs, symlinks, str(doc["kind"]), tree_id, int(doc["created_ns"]))


def check_relative(rel: str) -> None:
    """A manifest path must stay inside its tree and its destination."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe path in manifest: {rel!r}")


def join(base: str, rel: str) -> str:
    """The native path of the manifest path ``rel`` under ``base``."""
    return os.path.join(base, *rel.split("/"))


def digest_file(path: str) -> tuple[int, str]:
    """Size and BLAKE2b-128 hex digest of a file, read in 1 MiB chunks."""
    ops = _osops.current
    h = _keys.new_blake2b_128()
    size = 0
    fd = _fs.retry("open", ops.open, path, _osops.READ_FLAGS)
    try:
        while True:
            block = ops.read(fd, _CHUNK)
            if not block:
                break
            h.update(block)
            size += len(block)
    finally:
        ops.close(fd)
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


__all__ = ["MANIFEST_VERSION", "Manifest", "check_relative", "digest_file", "join", "scan", "walk"]

"""Placing a tree into a destination: every file by link mode, then the symlinks.

:meth:`Tree.place <safecache.Tree.place>` pins the tree and calls
:func:`place`; the link modes and their fallbacks are :mod:`._link`'s.  The
destination is the caller's: its errors are raised, not degraded.
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from . import _fs, _link, _osops
from ._manifest import join

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from ._manifest import Manifest

ON_EXISTING = ("replace", "skip", "error")


class PlaceReport:
    """What :meth:`Tree.place` did.

    ``mode``: the mode asked for; ``used``: files placed per actual mode;
    ``fallbacks``: (from, to, reason) for each fallback; ``placed``,
    ``replaced``, ``skipped``: counts of files; ``complete``: False when the
    tree could not be placed in full (it was removed before placement began,
    or a cache file was missing), with ``missing`` listing what is absent.
    """

    __slots__ = ("mode", "used", "fallbacks", "placed", "replaced", "skipped", "complete", "missing")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.used: dict[str, int] = {}
        self.fallbacks: list[tuple[str, str, str]] = []
        self.placed = 0
        self.replaced = 0
        self.skipped = 0
        self.complete = True
        self.missing: list[str] = []

    def __repr__(self) -> str:
        return (
            f"PlaceReport(mode={self.mode!r}, used={self.used!r}, placed={self.placed}, replaced={self.replaced}, "
            f"skipped={self.skipped}, complete={self.complete})"
        )


def place(tree_path: str, m: Manifest, dest: str, placer: _link.Placer, on_existing: str, report: PlaceReport) -> None:
    """Place the tree at ``tree_path`` (described by ``m``, held by the
    caller) into ``dest``, counting in ``report``; see :meth:`Tree.place`."""
    if on_existing == "error":
        clash = [rel for rel in [f[0] for f in m.files] + [s[0] for s in m.symlinks] if _fs.exists(join(dest, rel))]
        if clash:
            raise FileExistsError(errno.EEXIST, f"{len(clash)} files of the tree already exist in the destination", join(dest, clash[0]))
    _fs.makedirs(dest)
    for rel in m.dirs:
        _fs.makedirs(join(dest, rel))
    sep = os.sep
    src_base, dst_base = tree_path + sep, dest + sep
    for rel, _size, _mode, _digest in m.files:
        native = rel if sep == "/" else rel.replace("/", sep)
        src = src_base + native
        dst = dst_base + native
        # No existence check first: the link, clone or copy creates the
        # name exclusively, and an existing file is the exception.
        try:
            if _place_one(placer, src, dst, rel, report):
                report.placed += 1
            continue
        except FileExistsError:
            if on_existing == "skip":
                report.skipped += 1
                continue
        tmp = _fs.temp_name(dst)
        if not _place_one(placer, src, tmp, rel, report):
            continue
        try:
            _fs.replace_file(tmp, dst)
        except BaseException:
            _fs.discard(tmp)
            raise
        report.replaced += 1
    for rel, target in m.symlinks:
        _place_symlink(tree_path, dest, rel, target, placer, on_existing, report)


def _place_one(placer: _link.Placer, src: str, dst: str, rel: str, report: PlaceReport) -> bool:
    try:
        placer.place(src, dst)
        return True
    except FileNotFoundError as exc:
        if exc.filename is not None and os.fspath(exc.filename) == src or not _fs.exists(src):
            # The cache's copy is missing: the tree is damaged.
            report.complete = False
            report.missing.append(rel)
            return False
        raise


def _place_symlink(
    tree_path: str, dest: str, rel: str, target: str, placer: _link.Placer, on_existing: str, report: PlaceReport
) -> None:
    ops = _osops.current
    dst = join(dest, rel)
    if _fs.exists(dst):
        if on_existing == "skip":
            report.skipped += 1
            return
        _fs.remove(dst)
    try:
        ops.symlink(target, dst)
    except OSError as exc:
        if not _link.unsupported("symlink", exc):
            raise
        # Windows without the symlink privilege (or a file system without
        # symlinks): place what the link points at instead, if that is a
        # file of this tree; otherwise report it missing.
        src = os.path.normpath(os.path.join(os.path.dirname(join(tree_path, rel)), target))
        inside = os.path.commonpath([src, tree_path]) == tree_path
        if not (inside and _is_regular(src)):
            report.complete = False
            report.missing.append(rel)
            return
        placer.place(src, dst)
        report.fallbacks.append(("symlink", "copy", f"{rel}: {exc}"))
    report.placed += 1


def _is_regular(path: str) -> bool:
    """A regular file, not through a symlink (the fallback copies only those)."""
    try:
        return _stat.S_ISREG(_osops.current.lstat(path).st_mode)
    except OSError:
        return False


__all__ = ["ON_EXISTING", "PlaceReport", "place"]

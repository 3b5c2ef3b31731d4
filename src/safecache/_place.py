"""Placing a tree into a destination: its directories, its files by link
mode, then its symlinks.

:meth:`Tree.place <safecache.Tree.place>` pins the tree and calls
:func:`place`; the link modes and their fallbacks are :mod:`._link`'s.  The
destination is the caller's: its errors are raised, not degraded.  The
cache's side is not: a file of the tree that is absent, or is not what the
manifest lists (a symlink, a directory, another size), is reported missing
and never placed.

Nothing is followed through a symlink (docs/security.md, "Trees").  Both
trees are walked through :class:`._link.Dir` handles: by directory
descriptor where the OS has them, so a directory of the tree or of the
destination swapped for a symlink, before or during the placement, is
refused rather than entered.  A tree's own symlinks are placed last, as
symlinks, and their targets are never read; the manifest parser already
refuses any path listed under one.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat as _stat

from . import _fs, _link, _policy
from ._link import Dir, Dirs, Source, SourceChanged, is_real_dir, open_root

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from ._manifest import Manifest

ON_EXISTING = ("replace", "skip", "error")


class PlaceReport:
    """What :meth:`Tree.place` did.

    ``mode``: the mode asked for; ``used``: files placed per actual mode;
    ``fallbacks``: (from, to, reason) for each fallback; ``placed``,
    ``replaced``, ``skipped``: counts of files and symlinks; ``complete``:
    False when the tree could not be placed in full (it was removed before
    placement began, or a file of the cache's copy was absent or not the
    file its manifest lists: a symlink, a directory, another size), with
    ``missing`` listing the manifest paths not placed for that reason.
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
    caller if it could) into ``dest``, counting in ``report``; see
    :meth:`Tree.place`.  If the tree's directory is gone (or is not a
    directory), nothing is placed and ``report.complete`` is False."""
    try:
        src_root = open_root(tree_path)
    except OSError as exc:  # gone, not a directory, unreadable: the cache's side never raises
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            _policy.logger().info("safecache: cannot open tree %s: %s", tree_path, exc)
        report.complete = False
        report.missing = [f[0] for f in m.files]
        return
    try:
        if on_existing == "error":
            clash = _clashes(dest, m)
            if clash:
                raise FileExistsError(
                    errno.EEXIST, f"{len(clash)} files of the tree already exist in the destination", _join(dest, clash[0])
                )
        _fs.makedirs(dest)
        dst_root = open_root(dest, follow=True)
        try:
            _Placement(m, Dirs(src_root), Dirs(dst_root), placer, on_existing, report).run()
        finally:
            dst_root.close()
    finally:
        src_root.close()


def _join(base: str, rel: str) -> str:
    return os.path.join(base, *rel.split("/"))


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


def _under(rel: str, tops: set[str]) -> bool:
    """Whether ``rel`` is at or under one of the directories ``tops``."""
    while rel:
        if rel in tops:
            return True
        rel = rel.rpartition("/")[0]
    return False


class _Placement:
    """One placement: directories first (each made, or found, a real
    directory), then files, then symlinks, so nothing is ever placed
    through a symlink this placement made."""

    def __init__(
        self, m: Manifest, src: Dirs, dst: Dirs, placer: _link.Placer, on_existing: str, report: PlaceReport
    ) -> None:
        self.m = m
        self.src = src
        self.dst = dst
        self.placer = placer
        self.on_existing = on_existing
        self.report = report
        #: Directories of the tree left alone in the destination (``skip``
        #: with something else in their place): all beneath them is skipped.
        self.blocked: set[str] = set()
        #: Directories of the tree that are not directories in the cache.
        self.broken: set[str] = set()

    def run(self) -> None:
        try:
            for rel in self.m.dirs:
                self._directory(rel)
            for rel, size, _mode, _digest in self.m.files:
                self._file(rel, rel, size)
            for rel, target in self.m.symlinks:
                self._symlink(rel, target)
        finally:
            self.src.close()
            self.dst.close()

    def _missing(self, rel: str) -> None:
        self.report.complete = False
        self.report.missing.append(rel)

    # -- directories --------------------------------------------------------------------------
    def _directory(self, rel: str) -> None:
        if self.blocked and _under(rel, self.blocked):
            self.blocked.add(rel)
            return
        parent, _, name = rel.rpartition("/")
        into = self.dst.get(parent)
        try:
            into.mkdir(name)
            return
        except FileExistsError:
            pass
        if is_real_dir(into.lstat(name)):
            return
        # A file or a symlink where the tree has a directory.  A symlink is
        # never followed (its target may be anywhere): it is replaced, or
        # with "skip" everything beneath is left alone ("error" refused
        # before anything was placed).
        if self.on_existing == "skip":
            self.blocked.add(rel)
            return
        into.unlink(name)
        into.mkdir(name)

    # -- files ---------------------------------------------------------------------------------
    def _file(self, rel: str, src_rel: str, size: int) -> None:
        """Place the tree's file ``src_rel`` at ``rel`` (the same path, but
        for a symlink placed as the file it names).  A file the cache's
        copy does not hold as listed is reported missing, never placed."""
        parent, _, name = rel.rpartition("/")
        if self.blocked and _under(parent, self.blocked):
            self.report.skipped += 1
            return
        src_parent, _, src_name = src_rel.rpartition("/")
        if self.broken and _under(src_parent, self.broken):
            self._missing(rel)
            return
        try:
            directory = self.src.get(src_parent)
        except OSError:  # gone, a symlink now (never entered), unreadable
            self.broken.add(src_parent)
            self._missing(rel)
            return
        source = Source(directory, src_name, size)
        try:
            self._place_file(source, self.dst.get(parent), name)
        except SourceChanged:
            self._missing(rel)
        finally:
            source.close()

    def _place_file(self, source: Source, into: Dir, name: str) -> None:
        report = self.report
        # No existence check first: the link, clone or copy creates the name
        # exclusively, and an existing file is the exception.
        try:
            self._place(source, into, name)
            report.placed += 1
            return
        except FileExistsError:
            if self.on_existing == "skip":
                report.skipped += 1
                return
        if _same_file(into, name, source):
            # Already this very file (hard-linked by an earlier placement):
            # done.  Renaming a second link over it would do nothing and
            # leave the temp behind (rename(2) between links of one inode).
            report.replaced += 1
            return
        tmp = _fs.temp_name(name)
        used = self._place(source, into, tmp)
        try:
            into.replace(tmp, name)
        except BaseException:
            into.discard(tmp)
            raise
        if used == "hardlink":
            into.discard(tmp)  # the same inode appeared at name meanwhile: see above
        report.replaced += 1

    def _place(self, source: Source, into: Dir, name: str) -> str:
        try:
            return self.placer.place_at(source, into, name)
        except FileNotFoundError:
            try:
                source.lstat()
            except SourceChanged:
                raise SourceChanged(errno.ENOENT, "the cache's file is gone", source.path) from None
            raise  # the destination's

    # -- symlinks ------------------------------------------------------------------------------
    def _symlink(self, rel: str, target: str) -> None:
        parent, _, name = rel.rpartition("/")
        report = self.report
        if self.blocked and _under(parent, self.blocked):
            report.skipped += 1
            return
        into = self.dst.get(parent)
        try:
            into.symlink(target, name)
        except FileExistsError:
            if self.on_existing == "skip":
                report.skipped += 1
                return
            # Replaced atomically, as files are: made beside, renamed over.
            tmp = _fs.temp_name(name)
            try:
                into.symlink(target, tmp)
            except OSError as exc:
                if not _link.unsupported("symlink", exc):
                    raise
                self._symlink_as_file(rel, target, exc)
                return
            try:
                into.replace(tmp, name)
            except BaseException:
                into.discard(tmp)
                raise
            report.replaced += 1
            return
        except OSError as exc:
            if not _link.unsupported("symlink", exc):
                raise
            self._symlink_as_file(rel, target, exc)
            return
        report.placed += 1

    def _symlink_as_file(self, rel: str, target: str, exc: OSError) -> None:
        """Windows without the symlink privilege (or a file system without
        symlinks): place the file the link names instead, if that is a file
        of this tree, found in the manifest (the link is never followed on
        disk); otherwise report it missing."""
        named = _resolve(rel, target)
        sizes = {f[0]: f[1] for f in self.m.files}
        if named not in sizes:
            self._missing(rel)
            return
        before = self.report.placed + self.report.replaced
        self._file(rel, named, sizes[named])
        if self.report.placed + self.report.replaced > before:
            self.report.fallbacks.append(("symlink", "copy", f"{rel}: {exc}"))


def _same_file(into: Dir, name: str, source: Source) -> bool:
    """Whether ``name`` in ``into`` is the tree's very file (a hard link)."""
    try:
        st, mine = into.lstat(name), source.lstat()
    except OSError:
        return False
    return _stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _resolve(rel: str, target: str) -> str | None:
    """The manifest path the symlink ``rel`` -> ``target`` names inside its
    tree, or None if it names something outside (absolute, a drive, or
    ``..`` past the root)."""
    target = target.replace("\\", "/")
    if target.startswith("/") or ":" in target.split("/")[0]:
        return None
    joined = posixpath.normpath(posixpath.join(_split(rel)[0], target))
    if joined in (".", "") or joined.startswith("../") or joined == "..":
        return None
    return joined


def _clashes(dest: str, m: Manifest) -> list[str]:
    """What of the tree already exists in ``dest`` (``on_existing="error"``):
    its files and symlinks, and anything but a directory where the tree has
    one.  Reads only, never through a symlink."""
    try:
        root = open_root(dest, follow=True)
    except FileNotFoundError:
        return []
    dirs = Dirs(root)
    absent: set[str] = set()
    clash: list[str] = []
    try:
        for rel in m.dirs:
            if _under(_split(rel)[0], absent):
                absent.add(rel)
                continue
            parent, name = _split(rel)
            try:
                if not is_real_dir(dirs.get(parent).lstat(name)):
                    clash.append(rel)
                    absent.add(rel)  # nothing of the tree can be beneath it
            except FileNotFoundError:
                absent.add(rel)
        for rel in [f[0] for f in m.files] + [s[0] for s in m.symlinks]:
            parent, name = _split(rel)
            if _under(parent, absent):
                continue
            try:
                dirs.get(parent).lstat(name)
                clash.append(rel)
            except FileNotFoundError:
                pass
    finally:
        dirs.close()
        root.close()
    return sorted(clash)


__all__ = ["ON_EXISTING", "PlaceReport", "place"]

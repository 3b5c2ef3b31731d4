"""Maintenance: ``verify``, which reads every entry and every tree as a
reader would and reports (and with ``repair``, removes) what is damaged.

A file is removed only if it is still the very file that was judged
(``Run.remove(same_as=)``): another process may have put a good entry in
its place since.
"""

from __future__ import annotations

import os

from . import _errcodes, _fs, _layout
from ._errors import CacheReadOnlyError
from ._examine import load, read_pointer
from ._format import Invalid
from ._location import DISABLED, READY
from ._reclaim import drop_tree
from ._walk import Dir, Report, Run, bucket_dirs, plan, present, walk_shards

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from ._cache import Cache
    from ._manifest import Manifest
    from ._stats import Counters
    from ._walk import Progress

#: How many damaged files of one tree a problem's reason names.
_SHOWN = 5


def verify(cache: Cache, *, repair: bool = False, progress: Progress | None = None) -> Report:
    """Check every entry (length, header and payload checksums, key) and
    every tree (pointer, object present, every file against the manifest);
    report each problem in ``Report.problems``.  ``repair=True`` removes
    what is corrupt: the entry, or a damaged tree's pointer and directory
    (a directory another process holds is left, unreferenced, for a later
    trim).  Entries written by a newer safecache are not problems.  Never
    raises in lenient mode; a read-only cache is checked but not repaired.
    """
    report = Report()
    if cache.path is None or cache.state == DISABLED:
        report.skipped_reason = "the cache is disabled"
        return report
    if repair and cache.state != READY:
        if cache.strict:
            raise CacheReadOnlyError(f"cannot repair: {cache.state_reason}", filename=cache.path, operation="verify")
        report.skipped_reason = f"the cache is read-only: problems are reported, not repaired ({cache.state_reason})"
        repair = False
    run = Run(cache, "verify", report, progress)
    dirs = bucket_dirs(run)
    for b in dirs:
        plan(run, b)
    run.total = sum(len(b.shards) + len(b.tree_shards) for b in dirs)
    for b in dirs:
        _Verifier(run, b, repair).check()
    cache.flush()
    return report


class _Verifier:
    """Verifies one bucket version directory."""

    def __init__(self, run: Run, b: Dir, repair: bool) -> None:
        self.run = run
        self.b = b
        self.repair = repair
        self.counters: Counters = run.cache.bucket(b.name, b.version).counters

    def check(self) -> None:
        for xx, entry in walk_shards(self.run, self.b):
            self.entry(entry, xx)
        for xx, entry in walk_shards(self.run, self.b, trees=True):
            if _layout.is_digest(entry.name) and _layout.shard_of(entry.name) == xx:
                self.tree(entry)

    def problem(self, path: str, kind: str, reason: str, repaired: bool) -> None:
        rel = os.path.relpath(path, self.run.root).replace(os.sep, "/")
        self.run.report.problems.append(
            {"bucket": self.b.label, "path": rel, "kind": kind, "reason": reason, "repaired": repaired}
        )

    # -- entries -------------------------------------------------------------------
    def entry(self, entry: os.DirEntry[str], xx: str) -> None:
        name = entry.name
        if _layout.is_temp(name) or _layout.is_zombie(name):
            return
        try:
            regular = entry.is_file(follow_symlinks=False)
            link = not regular and entry.is_symlink()
        except OSError:
            regular = link = False
        if regular and _layout.is_digest(name) and _layout.shard_of(name) == xx:
            self.content(entry)
        else:
            self.stray(entry, regular, link)

    def stray(self, entry: os.DirEntry[str], regular: bool, link: bool) -> None:
        """A file no reader ever uses (a symlink where an entry should be
        makes every read of that key fail, though)."""
        digest = _layout.is_digest(entry.name)
        if not regular:
            reason = "symlink" if link else "not a regular file"
        else:
            reason = "misplaced" if digest else "unexpected file"
        removed = False
        if self.repair and digest and (regular or link):
            removed = self.run.remove(entry.path, self.b.label)
        self.problem(entry.path, "entry", reason, removed)

    def content(self, entry: os.DirEntry[str]) -> None:
        judged: list[os.stat_result] = []
        try:
            load(entry.path, entry.name, payload=False, exact_version=True, opened_as=judged)
        except Invalid as invalid:
            if invalid.reason != "unsupported-version":
                self.problem(entry.path, "entry", invalid.reason, self.remove_judged(entry, judged))
        except OSError as exc:
            self.run.failed(exc, entry.path, self.b.label)
            if not isinstance(exc, FileNotFoundError):
                self.problem(entry.path, "entry", f"unreadable: {_errcodes.describe(exc)}", False)

    def remove_judged(self, entry: os.DirEntry[str], judged: list[os.stat_result]) -> bool:
        """Repair: remove a corrupt entry, only if it is still the file
        judged (another process may have put a good entry there since)."""
        if not (self.repair and judged and self.run.remove(entry.path, self.b.label, same_as=judged[0])):
            return False
        self.counters.corrupt_removed += 1
        self.counters.size -= judged[0].st_size
        self.counters.entries -= 1
        return True

    # -- trees ---------------------------------------------------------------------
    def tree(self, entry: os.DirEntry[str]) -> None:
        judged: list[os.stat_result] = []
        damage = self.tree_damage(entry, judged)
        if damage is None:
            return
        reason, tree_id, repairable = damage
        removed = False
        if self.repair and repairable and judged and _fs.same_file(entry.path, judged[0]):
            removed = self.run.remove(entry.path, self.b.label)
            if tree_id is not None:
                drop_tree(self.run, self.b, tree_id, None, wait=0.0, force=False)
            self.counters.corrupt_removed += removed
        self.problem(entry.path, "tree", reason, removed)

    def tree_damage(self, entry: os.DirEntry[str], judged: list[os.stat_result]) -> tuple[str, str | None, bool] | None:
        """What is wrong with the tree behind pointer ``entry``: ``(reason,
        its tree id if the pointer names one, whether repair may remove
        it)``; None if nothing is known to be (a newer safecache's pointer,
        one gone meanwhile, one that cannot be read)."""
        try:
            loaded = read_pointer(entry.path, entry.name, judged)
        except Invalid as invalid:
            if invalid.reason == "unsupported-version":
                return None
            return f"pointer: {invalid.reason}", None, True
        except ValueError as exc:
            return f"pointer: {exc}", None, True
        except OSError as exc:
            self.run.failed(exc, entry.path, self.b.label)
            return None
        if loaded is None:
            return None
        manifest = loaded[1]
        damage = self.object_damage(manifest)
        if damage is None:
            return None
        reason, repairable = damage
        return reason, manifest.tree_id, repairable

    def object_damage(self, manifest: Manifest) -> tuple[str, bool] | None:
        """What is wrong with a tree's directory: ``(reason, whether repair
        may remove it)``; None if nothing."""
        from ._tree import Tree  # here: importing safecache.maintenance stays cheap

        tree_id = manifest.tree_id
        obj = _layout.tree_object(self.b.path, tree_id)
        if not present(obj):
            return "tree directory missing", True
        try:
            found = Tree(obj, manifest, self.b.object_lock(tree_id)).verify()
        except OSError as exc:
            self.run.failed(exc, obj, self.b.label)
            if isinstance(exc, FileNotFoundError):
                return None
            return f"unreadable: {_errcodes.describe(exc)}", False  # not known to be damaged
        if not found or not present(obj):
            return None  # whole, or removed while it was being checked: not damage
        shown = ", ".join(f"{path}: {what}" for path, what in found[:_SHOWN])
        more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        return f"files: {shown}{more}", True

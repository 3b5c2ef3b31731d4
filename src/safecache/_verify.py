"""Maintenance: ``verify``, which reads every entry and every tree as a
reader would and reports (and with ``repair``, removes) what is damaged.

A file is removed only if it is still the very file that was judged
(``Run.remove(same_as=)``): another process may have put a good entry in
its place since.  Files safecache does not make (names it never uses) are
reported and left alone: ``verify`` says what they are and what to do.
"""

from __future__ import annotations

import os
import stat as _stat

from . import _errcodes, _fs, _layout, _osops, _stats
from ._errors import CacheReadOnlyError
from ._examine import Entry, Folder, load, open_regular, read_pointer
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
#: What to do about a file verify does not remove because safecache did not make it.
FOREIGN = "not made by safecache, so --repair leaves it: remove it by hand if nothing of yours needs it"
#: What to do when a removal or a read failed (the warning said why).
FAILED = "could not be removed (see the warning); `safecache doctor` diagnoses why"
UNREADABLE = "could not be read; `safecache doctor` diagnoses why"


def verify(cache: Cache, *, repair: bool = False, progress: Progress | None = None) -> Report:
    """Check every entry (length, header and payload checksums, key) and
    every tree (pointer, object present, every file against the manifest),
    and the counter files; report each problem in ``Report.problems``.
    ``repair=True`` removes what is corrupt: the entry, or a damaged tree's
    pointer and directory (a directory another process holds is left,
    unreferenced, for a later trim), or a FIFO, device or symlink where an
    entry, a pointer or a counter file should be.  Entries written by a
    newer safecache are not problems; files safecache never makes are
    reported and left.  Never raises in lenient mode; a read-only cache is
    checked but not repaired.
    """
    report = Report()
    if cache.path is None or cache.state == DISABLED:
        report.skipped_reason = "the cache is disabled" + (f": {cache.state_reason}" if cache.state_reason else "")
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
        with run.opened(b.parts, b.label) as vf:
            if vf is not None:
                _Verifier(run, b, vf, repair).check()
    _counters(run, repair)
    cache.flush()
    return report


def _problem(run: Run, label: str, path: str, kind: str, reason: str, repaired: bool, remedy: str = "") -> None:
    rel = os.path.relpath(path, run.root).replace(os.sep, "/")
    run.report.problems.append(
        {"bucket": label, "path": rel, "kind": kind, "reason": reason, "repaired": repaired, "remedy": remedy}
    )


def _what(st: os.stat_result) -> str:
    """What a file that is not a regular file is, for a problem's reason."""
    for test, name in (
        (_stat.S_ISLNK, "symlink"),
        (_stat.S_ISFIFO, "FIFO"),
        (_stat.S_ISCHR, "character device"),
        (_stat.S_ISBLK, "block device"),
        (_stat.S_ISSOCK, "socket"),
        (_stat.S_ISDIR, "directory"),
    ):
        if test(st.st_mode):
            return name
    return "special file"


class _Verifier:
    """Verifies one bucket version directory."""

    def __init__(self, run: Run, b: Dir, vf: Folder, repair: bool) -> None:
        self.run = run
        self.b = b
        self.vf = vf
        self.repair = repair
        self.counters: Counters = run.cache.bucket(b.name, b.version).counters
        self.objs: Folder | None = None

    def check(self) -> None:
        for xx, shard, entry in walk_shards(self.run, self.b, self.vf):
            self.entry(shard, entry, xx)
        try:
            self.objs = self.vf.child(_layout.TREE_OBJECTS)
        except OSError:
            self.objs = None
        try:
            for xx, shard, entry in walk_shards(self.run, self.b, self.vf, trees=True):
                if _layout.is_digest(entry.name) and _layout.shard_of(entry.name) == xx:
                    self.tree(shard, entry)
                elif not (_layout.is_temp(entry.name) or _layout.is_zombie(entry.name)):
                    self.stray(shard, entry, "tree")
        finally:
            if self.objs is not None:
                self.objs.close()

    def problem(self, path: str, kind: str, reason: str, repaired: bool, remedy: str = "") -> None:
        _problem(self.run, self.b.label, path, kind, reason, repaired, "" if repaired else remedy)

    def removed(self, shard: Folder, entry: Entry, st: os.stat_result | None) -> bool:
        """Repair: remove what is at ``entry`` (a file, a link, a FIFO, a
        directory), only if it is still what was judged."""
        if not self.repair:
            return False
        if st is not None and _stat.S_ISDIR(st.st_mode):
            return self.run.rmtree(shard, entry.name, self.b.label)
        return self.run.remove(shard, entry.name, self.b.label, same_as=st)

    # -- entries -------------------------------------------------------------------
    def entry(self, shard: Folder, entry: Entry, xx: str) -> None:
        name = entry.name
        if _layout.is_temp(name) or _layout.is_zombie(name) or (_layout.is_meta(name) and entry.is_file()):
            return  # (a set_meta sidecar is checked by every reader against its value)
        if entry.is_file() and _layout.is_digest(name) and _layout.shard_of(name) == xx:
            self.content(shard, entry)
        else:
            self.stray(shard, entry, "entry")

    def stray(self, shard: Folder, entry: Entry, kind: str) -> None:
        """A file no reader ever uses: misplaced, not a regular file, or not
        safecache's.  A symlink, FIFO or device where an entry or pointer
        should be makes every read of that key miss: repair removes it, as
        it removes a misplaced entry; a name safecache never makes is left."""
        st = self.run.lstat(entry, self.b.label)
        if st is None:
            return
        digest = _layout.is_digest(entry.name)
        regular = _stat.S_ISREG(st.st_mode)
        if not digest:
            what = "file" if regular else _what(st)
            self.problem(entry.path, kind, f"unexpected {what}", False, FOREIGN)
            return
        reason = "misplaced" if regular else f"not a regular file: a {_what(st)}"
        if kind == "tree" and not regular:
            reason = f"pointer: {reason}"
        removed = self.removed(shard, entry, st)
        self.problem(entry.path, kind, reason, removed, FAILED if self.repair else "")

    def content(self, shard: Folder, entry: Entry) -> None:
        judged: list[os.stat_result] = []
        try:
            loaded = load(shard, entry.name, payload=False, exact_version=True, opened_as=judged)
        except Invalid as invalid:
            if invalid.reason != "unsupported-version":
                removed = self.remove_judged(shard, entry, judged)
                self.problem(entry.path, "entry", invalid.reason, removed, FAILED if self.repair else "")
            return
        except OSError as exc:
            self.run.failed(exc, entry.path, self.b.label)
            if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                self.problem(entry.path, "entry", f"unreadable: {_errcodes.describe(exc)}", False, UNREADABLE)
            return
        if loaded is None and present(shard, entry.name):
            self.stray(shard, entry, "entry")  # no longer a regular file (a FIFO swapped in)

    def remove_judged(self, shard: Folder, entry: Entry, judged: list[os.stat_result]) -> bool:
        """Repair: remove a corrupt entry, only if it is still the file
        judged (another process may have put a good entry there since)."""
        if not (self.repair and judged and self.run.remove(shard, entry.name, self.b.label, same_as=judged[0])):
            return False
        self.counters.corrupt_removed += 1
        self.counters.size -= judged[0].st_size
        self.counters.entries -= 1
        return True

    # -- trees ---------------------------------------------------------------------
    def tree(self, shard: Folder, entry: Entry) -> None:
        if not entry.is_file():
            self.stray(shard, entry, "tree")
            return
        judged: list[os.stat_result] = []
        damage = self.tree_damage(shard, entry, judged)
        if damage is None:
            return
        reason, tree_id, repairable = damage
        removed = False
        if self.repair and repairable and judged:
            removed = self.run.remove(shard, entry.name, self.b.label, same_as=judged[0])
            if removed and tree_id is not None:
                guard = (shard,) + ((self.objs,) if self.objs is not None else ())
                drop_tree(self.run, self.b, tree_id, None, wait=0.0, force=False, guard=guard)
            self.counters.corrupt_removed += removed
        remedy = (FAILED if self.repair else "") if repairable else UNREADABLE
        self.problem(entry.path, "tree", reason, removed, remedy)

    def tree_damage(
        self, shard: Folder, entry: Entry, judged: list[os.stat_result]
    ) -> tuple[str, str | None, bool] | None:
        """What is wrong with the tree behind pointer ``entry``: ``(reason,
        its tree id if the pointer names one, whether repair may remove
        it)``; None if nothing is known to be (a newer safecache's pointer,
        one gone meanwhile, one that cannot be read)."""
        try:
            loaded = read_pointer(shard, entry.name, judged)
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
        objs = self.objs
        if objs is None or not present(objs, tree_id):
            return "tree directory missing", True
        obj = objs.join(tree_id)
        try:
            found = Tree(obj, manifest, self.b.object_lock(tree_id)).verify()
        except OSError as exc:
            self.run.failed(exc, obj, self.b.label)
            if isinstance(exc, FileNotFoundError):
                return None
            return f"unreadable: {_errcodes.describe(exc)}", False  # not known to be damaged
        if not found or not present(objs, tree_id):
            return None  # whole, or removed while it was being checked: not damage
        shown = ", ".join(f"{path}: {what}" for path, what in found[:_SHOWN])
        more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        return f"files: {shown}{more}", True


# -- the counters --------------------------------------------------------------------------------
def _counters(run: Run, repair: bool) -> None:
    """The counter files (``stats/<n>``, ``stats/baseline``, ``stats/trim``
    and the shards' locks): a FIFO, a device or a symlink there, or a file
    that does not parse, is a problem; repair removes it (counts are
    advisory: the next flush or trim writes them again)."""
    names = {_layout.STATS_BASELINE: "counts", _layout.TRIM_STAMP: "stamp"}
    for n in range(_layout.STATS_SHARDS):
        shard = os.path.basename(_layout.stats_shard_n(run.root, n))
        names[shard] = "counts"
        names[shard + _layout.LOCK_SUFFIX] = "lock"
    with run.opened((_layout.STATS,)) as stats:
        if stats is None:
            return
        for entry in run.scan(stats):
            what = names.get(entry.name)
            if what is None:
                continue
            st = run.lstat(entry)
            if st is None:
                continue
            reason = ""
            if not _stat.S_ISREG(st.st_mode):
                reason = f"not a regular file: a {_what(st)}"
            elif what != "lock":
                reason = _unparsable(run, stats, entry, what)
            if reason:
                removed = repair and (
                    run.rmtree(stats, entry.name) if _stat.S_ISDIR(st.st_mode) else run.remove(stats, entry.name, same_as=st)
                )
                _problem(run, "", entry.path, "counter", reason, removed, "" if removed else FAILED if repair else "")


def _unparsable(run: Run, stats: Folder, entry: Entry, what: str) -> str:
    """Why a counter file does not parse, or ``""``."""
    from ._trim import parse_stamp

    try:
        opened = open_regular(stats, entry.name)
        if opened is None:
            return ""
        fd, block, _st = opened
        try:
            data = block if len(block) < 1 << 16 else block + _fs.read_exact(fd, 1 << 24)
        finally:
            _osops.current.close(fd)
    except OSError as exc:
        run.failed(exc, entry.path)
        return ""
    if what == "counts":
        return "" if _stats.parse_doc(data) is not None else "counts: not a valid document (torn or foreign)"
    return "" if parse_stamp(data) is not None else "trim stamp: not a time"
